"""How many threads a training chunk runs on.

Two rules: never more threads than there are idle cores (a neighbour's busy cores are
measured from /proc/stat, less this process's own CPU time), and among what is left, one
thread or all, whichever is measured faster. Results do not depend on the thread count
(every output element has one owner), so switching between chunks is free."""
from __future__ import annotations

import os
import time
from typing import Optional


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class NeighbourMeter:
    """Cores kept busy by other processes since the last look: the machine's busy CPU time
    (/proc/stat) minus this process's, per second of wall time. None where unknown."""

    def __init__(self):
        self._last = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        values = [int(x) for x in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        t = os.times()
        return time.monotonic(), (sum(values) - idle) / ticks, t.user + t.system

    @staticmethod
    def _running_now() -> Optional[float]:
        """Other runnable tasks at this instant (/proc/loadavg), for a first look."""
        try:
            with open("/proc/loadavg") as f:
                return max(0.0, float(f.read().split()[3].split("/")[0]) - 1)  # less this thread
        except (OSError, IndexError, ValueError):
            return None

    def busy_cores(self) -> Optional[float]:
        now = self._sample()
        if now is None or self._last is None:
            return None
        (w0, busy0, own0), (w1, busy1, own1) = self._last, now
        if w1 - w0 < 0.05:  # too short a window to average over: what runs right now
            return self._running_now()
        self._last = now
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (w1 - w0))


class ThreadChooser:
    """Picks the thread count of each chunk: 1 or the most the idle cores allow,
    whichever is measured faster (seconds per step, smoothed), re-measuring the other
    every `probe_every` chunks with a short probe so a change (a neighbour arriving or
    leaving) is seen within a few hundred steps. fixed: always max_threads."""

    def __init__(self, max_threads: int, probe_every: int = 4, fixed: bool = False, meter=None,
                 cores: Optional[int] = None):
        self.max_threads, self.fixed = max_threads, fixed or max_threads == 1
        self.cores = cores or usable_cores()
        self.cost: dict = {}  # threads -> seconds per step, smoothed
        self.chunks = 0
        self.probe_every = self.interval = probe_every
        self.meter = meter if meter is not None else (None if self.fixed else NeighbourMeter())
        self.top = max_threads
        self.probing = False
        self.last_probe = 0
        self.warm = False  # the first chunk on a team pays for starting its threads: not a measurement

    @property
    def options(self) -> list:
        if self.fixed:
            return [self.max_threads]
        return [self.top, 1] if self.top > 1 else [1]

    def pick(self) -> int:
        """The thread count for the next chunk; self.probing says whether it is a probe."""
        self.chunks += 1
        self.probing = False
        if self.fixed:
            return self.max_threads
        busy = self.meter.busy_cores() if self.meter is not None else None
        if busy is not None:  # never more threads than idle cores (and at least one)
            top = max(1, min(self.max_threads, int(self.cores - busy + 0.5)))
            if top != self.top:
                self.top, self.interval = top, self.probe_every
                self.cost.pop(top, None)  # measured under other conditions
        for t in self.options:
            if t not in self.cost:
                self.probing = True
                return t
        best = self.best
        if len(self.options) > 1 and self.chunks - self.last_probe >= self.interval:
            # probe the other choice; each probe that confirms the best doubles the wait
            self.probing, self.last_probe = True, self.chunks
            return next(t for t in self.options if t != best)
        return best

    def record(self, threads: int, seconds_per_step: float) -> None:
        if not self.warm:
            self.warm = True
            if threads > 1:
                return
        before = self.best if len(self.cost) == len(self.options) else None
        old = self.cost.get(threads)
        self.cost[threads] = seconds_per_step if old is None else 0.5 * (old + seconds_per_step)
        if before is not None:
            self.interval = min(32, 2 * self.interval) if self.best == before else self.probe_every

    @property
    def best(self) -> int:
        return min(self.options, key=lambda t: self.cost.get(t, float("inf")))
