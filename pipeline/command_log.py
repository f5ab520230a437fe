"""The command log: one file per command for everything that is not the pipeline's own output.

Ray, pyiceberg and the libraries under them log a great deal that a user of `fiqa` does not
need on the terminal: Ray's start-up and token notices, Ray Data's execution plans, Ray
Train's reports, the native core worker's lines. While a command runs:

- every logger outside our packages writes to the command log, ours to both;
- Ray workers' output is not relayed to the driver (`cluster.connect`);
- file descriptor 2, where native code writes, points at the command log, while Python's
  `sys.stderr` stays on the terminal: progress bars, our warnings and errors still show.

`--verbose` leaves the terminal as it was and copies everything to the command log too. A command
run by another one (the demo's steps) shares the outer command's log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

OURS = ("jobs", "pipeline", "models", "infra")  # top-level packages whose lines are ours
LOG_DIR = "logs"  # under FIQA_HOME
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class CommandLog:
    path: Path
    verbose: bool
    handler: logging.FileHandler
    holds_fd2: bool  # file descriptor 2 points at the file
    announced: bool = False

    def announce(self, if_written: bool = False) -> None:
        """Say once where the log is: when Ray starts, or with an error (`if_written`: only
        if it holds something)."""
        if if_written and not self.path.stat().st_size:
            return
        if not self.announced:
            self.announced = True
            print(f"log: {self.path}", file=sys.stderr, flush=True)

    def move_to(self, directory: Path) -> None:
        """Carry on in `directory`, with the lines so far: for a command that chooses where
        its outputs go (the demo), before it starts work."""
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / self.path.name
        stream = open(target, "a", encoding="utf-8")  # noqa: SIM115 (the handler closes it)
        self.handler.acquire()
        try:
            self.handler.flush()
            stream.write(self.path.read_text(encoding="utf-8"))
            stream.flush()
            self.handler.setStream(stream).close()
            self.handler.baseFilename = os.fspath(target)
        finally:
            self.handler.release()
        if self.holds_fd2:
            os.dup2(stream.fileno(), 2)
        self.path.unlink()
        self.path = target


_current: CommandLog | None = None


def current() -> CommandLog | None:
    """The command log of the command running in this process, if any."""
    return _current


def _ours(record: logging.LogRecord) -> bool:
    return record.name.split(".")[0] in OURS


class _Terminal(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (as pytest swaps it): our
    lines as they are, another library's (with --verbose) after its logger's name, warnings
    and errors after their level."""

    def __init__(self, verbose: bool):
        super().__init__()
        if not verbose:
            self.addFilter(_ours)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if not _ours(record):
            message = f"{record.name}: {message}"
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [
        h
        for h in logger.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


@contextlib.contextmanager
def command_log(verb: str, verbose: bool, directory: Path) -> Iterator[CommandLog]:
    """Route logging as the module says for the duration of one command, into a new file
    `VERB-TIME-PID.log` under `directory`."""
    global _current
    if _current is not None:
        yield _current
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{verb}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FILE_FORMAT))
    to_file.setLevel(logging.DEBUG if verbose else logging.INFO)
    root, ours = logging.getLogger(), [to_file, _Terminal(verbose)]
    saved_level = root.level
    for handler in ours:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Loggers that keep handlers of their own and do not propagate (Ray's): file instead of
    # terminal, or file as well with --verbose.
    saved_loggers = {}
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and not logger.propagate and logger.handlers:
            saved_loggers[logger] = logger.handlers[:]
            kept = (
                logger.handlers
                if verbose
                else [h for h in logger.handlers if h not in _console_handlers(logger)]
            )
            logger.handlers = [*kept, to_file]
    terminal_fd = None
    if not verbose and sys.stderr is sys.__stderr__ and sys.stderr.fileno() == 2:
        sys.stderr.flush()
        terminal_fd = os.dup(2)
        os.dup2(to_file.stream.fileno(), 2)
        # Closed (with the descriptor) in the finally below.
        sys.stderr = open(terminal_fd, "w", buffering=1, encoding=sys.__stderr__.encoding)  # noqa: SIM115
    log = _current = CommandLog(path, verbose, to_file, terminal_fd is not None)
    try:
        yield log
    finally:
        _current = None
        if terminal_fd is not None:
            sys.stderr.flush()
            os.dup2(terminal_fd, 2)
            sys.stderr.close()
            sys.stderr = sys.__stderr__
        for logger, handlers in saved_loggers.items():
            logger.handlers = handlers
        for handler in ours:
            root.removeHandler(handler)
        root.setLevel(saved_level)
        to_file.close()
        if log.path.stat().st_size == 0:  # a command that logged nothing leaves no file
            log.path.unlink()
