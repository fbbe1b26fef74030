"""What --diagnostics costs: the same trainings with and without it, taking turns, in one
run on one machine. Medians of --repeats of the whole train() call (chunks, evaluations
and the diagnostic steps included; no plots) and of its training time alone.

    python benchmarks/bench_diagnostics.py              # lecture recipe, --preset fast, a large config
    python benchmarks/bench_diagnostics.py --repeats 3 --quick

Writes benchmarks/results/diagnostics.md and .json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import fastmlp
from fastmlp.config import PRESETS
from fastmlp.data import load_dataset
from fastmlp.train import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
CASES = {
    "lecture (200k steps)": {},
    "--preset fast (30k)": dict(PRESETS["fast"]),
    "large (8/24/512, B 256, 3k)": dict(block_size=8, n_embd=24, n_hidden=512, batch_size=256, init="scaled",
                                        max_steps=3000, eval_interval=1000),
}


def one(values: dict, diagnostics: bool, ds) -> tuple:
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(**{**values, "work_dir": d, "diagnostics": diagnostics})
        t0 = time.perf_counter()
        m = train(cfg, progress=False, log=lambda s: None, dataset=ds, plots=False)
        return time.perf_counter() - t0, m["seconds"], len((m.get("diagnostics") or {}).get("steps", []))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="the lecture recipe at 50k steps, no large config")
    args = p.parse_args(argv)
    cases = dict(CASES)
    if args.quick:
        cases = {"lecture (50k steps)": dict(max_steps=50_000, lr_decay_step=25_000)}
    rows = []
    for name, values in cases.items():
        ds = load_dataset(block_size=values.get("block_size", 3))
        runs = {False: [], True: []}
        one(values, False, ds)  # warm-up
        for _ in range(args.repeats):
            for diag in (False, True):  # taking turns: a noisy neighbour hits both alike
                runs[diag].append(one(values, diag, ds))
        med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in runs.items()}
        rows.append({"case": name, "records": runs[True][0][2], "wall_off": med[False][0], "wall_on": med[True][0],
                     "train_off": med[False][1], "train_on": med[True][1],
                     "overhead_wall": med[True][0] / med[False][0] - 1, "overhead_train": med[True][1] / med[False][1] - 1})
        r = rows[-1]
        print(f"{name}: {r['records']} records; whole run {r['wall_off']:.3f} -> {r['wall_on']:.3f} s "
              f"({100 * r['overhead_wall']:+.1f}%), training {r['train_off']:.3f} -> {r['train_on']:.3f} s "
              f"({100 * r['overhead_train']:+.1f}%)", flush=True)
    info = fastmlp.build_info()
    lines = [f"--diagnostics at its default interval (~250 records a run); medians of {args.repeats}, taking turns; "
             f"{info['isa']} kernels, {info['cpus']} CPUs, {time.strftime('%Y-%m-%d')}", "",
             "| run | records | whole run off → on (s) | overhead | training off → on (s) | overhead |",
             "|---|---:|---|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['records']} | {r['wall_off']:.3f} → {r['wall_on']:.3f} | "
                     f"{100 * r['overhead_wall']:+.1f}% | {r['train_off']:.3f} → {r['train_on']:.3f} | "
                     f"{100 * r['overhead_train']:+.1f}% |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "diagnostics.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "diagnostics.json").write_text(json.dumps({"rows": rows, "build": info}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
