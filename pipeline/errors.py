"""The base of every error that is the input's fault (a bad flag, a missing table, data that
cannot be read as asked): `fiqa` reports it in one line and exits with status 2, where any
other exception shows its traceback."""


class FiqaError(Exception):
    """An error the user can fix from its message alone."""
