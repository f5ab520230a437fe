"""What the benchmarks measure with: a steady rate, the machine's GEMM rate and a process
tree's peak memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch


def rate(step: Callable[[], int], seconds: float, warmup: int = 2) -> float:
    """Units per second of `step()` (which returns how many units it did), timed for at least
    `seconds` after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done == 0:
        done += step()
    return done / elapsed


def gemm_flops(seconds: float = 2.0, n: int = 1024) -> float:
    """This machine's fp32 matrix-multiply rate in FLOP/s (n x n times n x n)."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)

    def step() -> int:
        torch.mm(a, b, out=out)
        return 2 * n**3

    return rate(step, seconds)


class ProcessPeakMemory:
    """Peak RSS (VmHWM) of the processes whose command line contains `pattern`, sampled from
    /proc while the block runs (Ray names actor processes after their class). Linux only."""

    def __init__(self, pattern: str, interval: float = 0.25):
        self.pattern, self.interval = pattern.encode(), interval
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    if self.pattern not in (proc / "cmdline").read_bytes():
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_mib = max(self.peak_mib, int(line.split()[1]) / 1024)
                except OSError:  # the process ended between listing and reading
                    continue

    def __enter__(self) -> ProcessPeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
