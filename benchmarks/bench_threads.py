"""Threads: a busy neighbour, and how a team shares its work (run by bench_train.py, or alone).

    python benchmarks/bench_threads.py        # ~2 minutes on 2 cores

Busy neighbour: the lecture's config for 5,000 steps through `python -m fastmlp.train`,
on 1 thread, on all threads and with the default (automatic) choice, first alone and
then beside another fastmlp training (`--preset best_one_layer` on all threads), in one run.

Thread scaling: µs/step for 1..cores threads, and from the loop's own counter
(train_steps(profile=...)) the share of each thread's time spent waiting in the team's
barriers. On a machine with few cores that share shows where more threads would stop
paying: work per thread shrinks as 1/threads, the barriers (three a step) do not.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from fastmlp import MLP, _core
from fastmlp.data import load_dataset

STEPS = 5000


def train_us_per_step(threads) -> float:
    with tempfile.TemporaryDirectory() as d:
        args = [sys.executable, "-m", "fastmlp.train", "-o", d, "--max-steps", str(STEPS), "--eval-interval",
                str(STEPS), "--init", "scaled", "--json", "--no-progress"]
        if threads:
            args += ["--num-threads", str(threads)]
        r = subprocess.run(args, capture_output=True, text=True, check=True)
        return json.loads(r.stdout)["us_per_step"]


def busy_neighbour(repeats: int = 2) -> dict:
    cores = os.cpu_count() or 1
    modes = {"1 thread": 1, f"{cores} threads": cores, "default (automatic)": None}
    out = {}
    for busy in (False, True):
        neighbour = None
        if busy:
            neighbour = subprocess.Popen([sys.executable, "-m", "fastmlp.train", "--preset", "best_one_layer", "-o",
                                          tempfile.mkdtemp(), "--max-steps", "10000000", "--no-progress"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(5)  # let it start training
        try:
            times = {m: [] for m in modes}
            for _ in range(repeats):
                for m, t in modes.items():
                    times[m].append(train_us_per_step(t))
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        out["busy" if busy else "alone"] = {m: statistics.median(v) for m, v in times.items()}
    return out


def thread_scaling(block_size=3, n_embd=10, n_hidden=200, batch_size=32, steps=5000, repeats=3) -> list:
    X, Y = load_dataset(block_size=block_size).train
    rows = []
    for threads in range(1, (os.cpu_count() or 1) + 1):
        m = MLP(27, block_size, n_embd, n_hidden, init="scaled")
        state = _core.rng_state(0)
        lrs = np.full(steps, 0.01, np.float32)
        _core.train_steps(m.arrays(), X, Y, lrs[:steps // 10], batch_size=batch_size, rng_state=state,
                          threads=threads)
        us, share = [], []
        for _ in range(repeats):
            pr = np.zeros((threads, 2))
            t0 = time.perf_counter()
            _core.train_steps(m.arrays(), X, Y, lrs, batch_size=batch_size, rng_state=state, threads=threads,
                              profile=pr)
            us.append(1e6 * (time.perf_counter() - t0) / steps)
            share.append(float((pr[:, 0] / np.maximum(pr[:, 1], 1e-12)).mean()))
        rows.append({"config": f"block {block_size}, E {n_embd}, H {n_hidden}, batch {batch_size}",
                     "threads": threads, "us": statistics.median(us), "barrier_share": statistics.median(share)})
    return rows


def render(busy: dict, scaling: list) -> str:
    lines = ["Busy neighbour (lecture config, 5,000 steps of `python -m fastmlp.train`; the neighbour trains "
             "`--preset best_one_layer` on all cores; µs/step, median of 2):", "",
             "| mode | alone | beside a busy neighbour |", "|---|---:|---:|"]
    for m in busy["alone"]:
        lines.append(f"| {m} | {busy['alone'][m]:.1f} | {busy['busy'][m]:.1f} |")
    best = min(busy["busy"][m] for m in busy["busy"] if not m.startswith("default"))
    lines += ["", f"With the neighbour the default is {busy['busy']['default (automatic)'] / best:.2f}× the better "
              "of the fixed choices.", "", "Thread scaling (median µs/step, and the mean share of each thread's "
              "time spent waiting in the team's barriers, from train_steps' profile counter):", "",
              "| config | threads | µs/step | × vs 1 thread | time in barriers |", "|---|---:|---:|---:|---:|"]
    one = {r["config"]: r["us"] for r in scaling if r["threads"] == 1}
    for r in scaling:
        lines.append(f"| {r['config']} | {r['threads']} | {r['us']:.1f} | {one[r['config']] / r['us']:.2f}× | "
                     f"{100 * r['barrier_share']:.0f}% |")
    return "\n".join(lines) + "\n"


def measure() -> dict:
    scaling = thread_scaling() + thread_scaling(8, 24, 512, 256, steps=300)
    busy = busy_neighbour()
    return {"busy_neighbour": busy, "thread_scaling": scaling, "markdown": render(busy, scaling)}


if __name__ == "__main__":
    print(measure()["markdown"])
