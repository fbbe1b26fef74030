"""Where one training step's time goes, phase by phase (one thread): compiles
benchmarks/step_phases.cpp, which includes the extension's own kernels, with the flags of
the best ISA build this CPU runs, and prints its markdown tables: each phase timed alone,
then the same phases timed where they run, inside the fused training loop.

    python benchmarks/bench_phases.py            # the lecture's step
    python benchmarks/bench_phases.py --large    # block 8, E 24, H 512, batch 256
    python benchmarks/bench_phases.py --large --peers   # and the same products by BLAS

Needs a C++17 compiler (c++, or $CXX) with OpenMP; takes ~30 s to build, seconds to run.
--peers also times the step's six products, same shapes, one thread, with numpy's BLAS
(OpenBLAS in numpy's wheels) and PyTorch's torch.mm (when installed), against the FMA
peak that step_phases measured in the same run: what the best GEMM at hand reaches on
this core for these shapes. On a shared machine a round can land in a neighbour's busy
minute, so it runs --rounds (3) of them and keeps each product's best.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = {"avx512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma",
                    "-mprefer-vector-width=512"],
         "avx2": ["-mavx2", "-mfma"], "generic": []}  # as CMakeLists.txt builds them


def best_isa() -> str:
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    words = set(flags.split())
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= words:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= words else "generic"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--large", action="store_true", help="the large configuration instead of the lecture's")
    ap.add_argument("--peers", action="store_true", help="also time the same products with numpy's BLAS and torch.mm")
    ap.add_argument("--rounds", type=int, default=3, metavar="N",
                    help="with --peers: rounds of (step_phases, peers); each time the best of them (default 3)")
    ap.add_argument("--isa", choices=sorted(FLAGS), help="kernel build to time (default: the best this CPU runs)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        sys.exit("bench_phases: no C++ compiler found (set CXX)")
    isa = args.isa or best_isa()
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "step_phases"
        cmd = [cxx, "-O3", "-std=gnu++17", "-fopenmp", "-fno-math-errno", "-fno-tree-loop-distribute-patterns",
               *FLAGS[isa], f"-DFASTMLP_ISA={isa}", f"-I{ROOT / 'csrc'}", str(ROOT / "benchmarks" / "step_phases.cpp"),
               "-o", str(exe)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bench_phases: the build failed:\n{' '.join(cmd)}\n{r.stderr[-3000:]}")
        run = [str(exe)] + (["large"] if args.large else [])
        if not args.peers:
            return subprocess.run(run).returncode
        rounds = []  # (step_phases' output, its parse, the peers' times measured right after it)
        for _ in range(args.rounds):
            r = subprocess.run(run, capture_output=True, text=True)
            print(r.stderr, end="", file=sys.stderr)
            if r.returncode != 0:
                return r.returncode
            parsed = parse_phases(r.stdout)
            rounds.append((r.stdout, parsed, time_peers(parsed["dims"])))
    # the phase table as one run printed it (the one with the highest peak), then the products' best times
    print(max(rounds, key=lambda x: x[1]["peak"])[0])
    print(peers_table(rounds))
    return 0


# The step's six products: (step_phases' row, label, the dimensions of A and of B as they
# are stored (b batch, t block * E, h hidden, v vocabulary), whether the product reads A,
# B transposed). Ours include their epilogues (bias, tanh's gradient, the SGD update and
# the bias sums); the peers compute only A B, reading the transposed operands in place.
PRODUCTS = [("(the same without tanh)", "emb W1", "bt", "th", False, False),
            ("logits = h W2 + b2", "h W2", "bh", "hv", False, False),
            ("dpre = dlogits W2^T (1 - h^2)", "dlogits W2^T", "bv", "hv", False, True),
            ("demb = dpre W1^T", "dpre W1^T", "bh", "th", False, True),
            ("W2^T -= lr dlogits^T h, W2 = (W2^T)^T (+ b2)", "dlogits^T h", "bv", "bh", True, False),
            ("W1 -= lr emb^T dpre (+ b1)", "emb^T dpre", "bt", "bh", True, False)]


def parse_phases(text: str) -> dict:
    """The configuration, the peak and every row's µs of step_phases' output."""
    head = re.search(r"\(block (\d+), E (\d+), H (\d+), batch (\d+)\).*FMA peak measured here ([0-9.]+) GFLOP/s",
                     text)
    if head is None:
        sys.exit("bench_phases: step_phases printed no header with the configuration and the peak")
    block, n_embd, hidden, batch = (int(head.group(i)) for i in range(1, 5))
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].replace(".", "", 1).isdigit():
            rows[cells[0]] = float(cells[1])
    missing = [p[0] for p in PRODUCTS if p[0] not in rows]
    if missing:
        sys.exit(f"bench_phases: step_phases printed no row for {missing}")
    # v: step_phases.cpp's vocabulary, names.txt's 27 characters
    return {"dims": dict(b=batch, t=block * n_embd, h=hidden, v=27), "peak": float(head.group(5)) * 1e9,
            "rows": rows}


def best_us(f) -> float:
    """The best of 15 blocks of ~10 ms of calls to f, in µs a call."""
    f()
    t0 = time.perf_counter()
    f()
    n = max(1, int(0.01 / max(time.perf_counter() - t0, 1e-7)))
    best = float("inf")
    for _ in range(15):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def time_peers(dims: dict) -> dict:
    """µs of each product by numpy's BLAS and torch.mm (None without torch), one thread."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # before numpy's BLAS starts its threads
    import numpy as np
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    out = {}
    for _, label, a_dims, b_dims, ta, tb in PRODUCTS:
        a = rng.standard_normal([dims[c] for c in a_dims], dtype=np.float32)
        b = rng.standard_normal([dims[c] for c in b_dims], dtype=np.float32)
        a, b = (a.T if ta else a), (b.T if tb else b)  # views: the BLAS reads them transposed
        c = np.empty((a.shape[0], b.shape[1]), np.float32)
        t_np = best_us(lambda: np.matmul(a, b, out=c))
        t_torch = None
        if torch is not None:
            at, bt, ct = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)  # the same (strided) views
            t_torch = best_us(lambda: torch.mm(at, bt, out=ct))
        out[label] = (a.shape[0], a.shape[1], b.shape[1], t_np, t_torch)
    return out


def peers_table(rounds: list) -> str:
    """The six products: fastmlp's, numpy's and torch.mm's best µs over the rounds, and the % of the best peak."""
    import numpy as np
    peak = max(p["peak"] for _, p, _ in rounds)
    try:  # numpy >= 1.25 says which BLAS it was built with
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"numpy {np.__version__} ({cfg.get('name', '?')} {cfg.get('version', '')})".replace(" )", ")")
    except (TypeError, KeyError):
        blas = f"numpy {np.__version__}"
    has_torch = rounds[0][2][PRODUCTS[0][1]][4] is not None
    head, rule = f"| product (M x K x N) | fastmlp µs | % | {blas} µs | % |", "|---|---:|---:|---:|---:|"
    if has_torch:
        import torch
        head, rule = head + f" torch {torch.__version__} mm µs | % |", rule + "---:|---:|"
    lines = [head, rule]
    for phase, label, *_ in PRODUCTS:
        m, k, n = rounds[0][2][label][:3]
        pct = lambda us: f"{2 * m * k * n / peak / us * 1e8:.0f}%"  # noqa: E731
        times = [min(p["rows"][phase] for _, p, _ in rounds), min(t[label][3] for _, _, t in rounds)]
        if has_torch:
            times.append(min(t[label][4] for _, _, t in rounds))
        lines.append(f"| {label} ({m} x {k} x {n}) |" + "".join(f" {t:.2f} | {pct(t)} |" for t in times))
    return "\n".join(lines) + (
        f"\n\nOne thread each; every time the best of {len(rounds)} rounds (each step_phases, then the peers: best of "
        f"15 blocks of ~10 ms), as a % of the best peak step_phases measured ({peak / 1e9:.1f} GFLOP/s). fastmlp's "
        "times include their epilogues (the hidden forward's without tanh); the peers' are the bare products, "
        "called from Python (about a microsecond a call, which matters at the lecture's sizes).")


if __name__ == "__main__":
    raise SystemExit(main())
