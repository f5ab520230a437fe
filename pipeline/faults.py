"""Fault hooks for tests: a process that dies once, at a chosen point of a long job, so the
tests can check that the job recovers with nothing lost or written twice.

Each hook is one environment variable of the driver, `N:FILE`: the N-th time a worker
reaches the hook's point it creates FILE and exits, unless FILE exists (so the death happens
once, also across restarts). The driver reads the variable when it plans the job and hands
the hook to its workers; in a worker's loop an unset hook costs one test of None.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

# The n-th batch a scorer actor is given.
SCORER_CALL = "FIQA_FAULT_SCORER_CALL"
# The n-th optimiser step of training's rank 0.
TRAIN_STEP = "FIQA_FAULT_TRAIN_STEP"


@dataclass(frozen=True)
class ExitOnce:
    at: int
    marker: str
    # Seconds to wait before exiting, so that what the process reported just before (such
    # as a checkpoint) reaches its controller first.
    delay_s: float = 0.0

    def __call__(self, count: int) -> None:
        if count == self.at and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            time.sleep(self.delay_s)
            os._exit(1)


def exit_once(variable: str, delay_s: float = 0.0) -> ExitOnce | None:
    """The hook `variable` sets, or None where it is unset."""
    value = os.environ.get(variable)
    if not value:
        return None
    count, _, marker = value.partition(":")
    if not (count.isdigit() and marker):
        raise ValueError(f"{variable}={value!r}: expected N:FILE")
    return ExitOnce(int(count), marker, delay_s)
