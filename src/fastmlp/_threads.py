"""How many threads a training chunk runs on: one, or all, whichever is measured faster."""
from __future__ import annotations


class ThreadChooser:
    """Runs the C++ loop on one thread or on all of them, whichever is measured faster.

    On a quiet machine a team of threads wins even at the lecture's size, but on shared
    cores a busy neighbour makes every barrier wait, and one thread wins. Results do not
    depend on the thread count (every output element has one owner), so switching is
    free; every `probe_every`-th chunk tries the other choice again."""

    def __init__(self, max_threads: int, probe_every: int = 10, fixed: bool = False):
        self.options = [max_threads, 1] if max_threads > 1 and not fixed else [max_threads]
        self.cost: dict = {}  # threads -> seconds per step, smoothed
        self.chunks = 0
        self.probe_every = probe_every

    def pick(self) -> int:
        self.chunks += 1
        for t in self.options:
            if t not in self.cost:
                return t
        best = min(self.options, key=self.cost.__getitem__)
        if len(self.options) > 1 and self.chunks % self.probe_every == 0:
            return next(t for t in self.options if t != best)
        return best

    def record(self, threads: int, seconds_per_step: float) -> None:
        old = self.cost.get(threads)
        self.cost[threads] = seconds_per_step if old is None else 0.5 * (old + seconds_per_step)

    @property
    def best(self) -> int:
        return min(self.options, key=lambda t: self.cost.get(t, float("inf")))
