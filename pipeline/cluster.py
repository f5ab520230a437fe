"""Ray, started or joined in one place.

Every stage that needs a cluster calls `connect` before its first Ray call: it starts a local
Ray, or joins the cluster RAY_ADDRESS names, once per process. While a command's log is open
(`command_log`), workers' output stays in their log files instead of being relayed to the
terminal, Ray Data's own progress bars are off (each stage prints its own progress), and the
log's path is printed once.
"""

from __future__ import annotations

import ray
import ray.data

from pipeline import command_log


def connect(**init_args) -> None:
    """Start or join Ray unless this process already has; `init_args` go to `ray.init`."""
    if ray.is_initialized():
        return
    log = command_log.current()
    quiet = log is not None and not log.verbose
    if quiet:
        log.announce()
        ray.data.DataContext.get_current().enable_progress_bars = False
    if log is not None:  # Ray sets this format on every handler of its logger, the log's too
        init_args.setdefault("logging_format", command_log.FILE_FORMAT)
    ray.init(log_to_driver=not quiet, **init_args)
