"""Trials per minute of fastmlp.sweep with --jobs 1 and --jobs 2, and the engine's per-trial
overhead (a trial's wall time minus its training time), on a fixed small space of
lecture-sized trials. Measured in one run on one machine.

    python benchmarks/bench_sweep.py            # 16 trials per setting (~3 minutes on 2 cores)
    python benchmarks/bench_sweep.py --trials 8

Writes benchmarks/results/sweep.md and sweep.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

from fastmlp.sweep import sweep, usable_cores

RESULTS = Path(__file__).resolve().parent / "results"
SPACE = {  # lecture-sized trials of a fixed length: the cost per trial is what changes with --jobs
    "n_hidden": {"low": 100, "high": 300},
    "lr_sgd": {"field": "learning_rate", "low": 0.05, "high": 0.3, "log": True},
    "init": "scaled", "lr_schedule": "cosine", "max_steps": 20000, "eval_interval": 5000,
}


def run(jobs: int, trials: int, space_file: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        opts = dict(input_file=None, work_dir=tmp, study="bench", storage=None, n_trials=trials, jobs=jobs,
                    timeout=None, space=str(space_file), max_steps=None, seed=0, heartbeat=5,
                    prune=False)  # every trial runs to the end: the cost per trial is what is measured
        t0 = time.perf_counter()
        r = sweep(opts, log=lambda s: None, progress=False)
        wall = time.perf_counter() - t0
        study = optuna.load_study(study_name="bench", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(Path(tmp) / "study.journal"))))
        done = [t for t in study.get_trials(deepcopy=False) if "seconds" in t.user_attrs]
        assert len(done) == trials, f"{len(done)} of {trials} trials ran to the end"
        train_s = [t.user_attrs["seconds"] for t in done]
        trial_wall = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
        return {"jobs": jobs, "trials": len(done), "wall_seconds": round(wall, 2),
                "trials_per_minute": round(60 * len(done) / wall, 2),
                "median_training_seconds": round(statistics.median(train_s), 3),
                "median_trial_wall_seconds": round(statistics.median(trial_wall), 3),
                "median_overhead_in_trial_seconds": round(statistics.median(w - s for w, s in zip(trial_wall, train_s)), 3),
                "engine_overhead_per_trial_seconds": round(wall * jobs / len(done) - statistics.median(train_s), 3),
                "pruned": r["trials"]["pruned"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(SPACE, f)
    rows = [run(jobs, args.trials, Path(f.name)) for jobs in (1, 2)]
    speedup = rows[1]["trials_per_minute"] / rows[0]["trials_per_minute"]
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {usable_cores()} usable cores; {args.trials} lecture-sized trials "
             "(20,000 steps, H 100-300, SGD cosine) per setting, default journal storage.", "",
             "| --jobs | trials | wall (s) | trials/min | median training (s) | median trial wall (s) | "
             "overhead per trial, all (s) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['jobs']} | {r['trials']} | {r['wall_seconds']} | {r['trials_per_minute']} | "
                     f"{r['median_training_seconds']} | {r['median_trial_wall_seconds']} | "
                     f"{r['engine_overhead_per_trial_seconds']} |")
    lines += ["", f"--jobs 2 vs --jobs 1: {speedup:.2f}× the trials per minute. Overhead per trial = wall × jobs / "
              "trials − median training time: everything a trial costs beyond training (worker start-up, data loading, "
              "evaluation, checkpoints, Optuna, the final report)."]
    md = "\n".join(lines) + "\n"
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(md)
    (out / "sweep.json").write_text(json.dumps({"rows": rows, "speedup": speedup}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
