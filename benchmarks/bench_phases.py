"""Where one training step's time goes, phase by phase (one thread): compiles
benchmarks/step_phases.cpp, which includes the extension's own kernels, with the flags of
the best ISA build this CPU runs, and prints its markdown table.

    python benchmarks/bench_phases.py            # the lecture's step
    python benchmarks/bench_phases.py --large    # block 8, E 24, H 512, batch 256
    python benchmarks/bench_phases.py --large --peers   # and the same products by BLAS

Needs a C++17 compiler (c++, or $CXX) with OpenMP; takes ~30 s to build, seconds to run.
--peers also times the step's six products, same shapes, one thread, with numpy's BLAS
(OpenBLAS in numpy's wheels) and PyTorch's torch.mm (when installed), against the FMA
peak that step_phases measured in the same run: what the best GEMM at hand reaches on
this core for these shapes.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
    ap.add_argument("--isa", choices=sorted(FLAGS), help="kernel build to time (default: the best this CPU runs)")
    args = ap.parse_args()
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
        r = subprocess.run([str(exe)] + (["large"] if args.large else []), capture_output=True, text=True)
        print(r.stdout, end="", flush=True)
        if r.returncode != 0 or not args.peers:
            print(r.stderr, end="", file=sys.stderr)
            return r.returncode
    print()
    print(peers_table(r.stdout, args.large))
    return 0


# The step's six products: (step_phases' row, label, the dimensions of A and of B as they
# are stored (B batch, T block * E, H hidden, V vocabulary), whether the product reads A,
# B transposed). Ours include their epilogues (bias, tanh's gradient, the SGD update and
# the bias sums); the peers compute only A B, reading the transposed operands in place.
PRODUCTS = [("(the same without tanh)", "emb W1", "BT", "TH", False, False),
            ("logits = h W2 + b2", "h W2", "BH", "HV", False, False),
            ("dpre = dlogits W2^T (1 - h^2)", "dlogits W2^T", "BV", "HV", False, True),
            ("demb = dpre W1^T", "dpre W1^T", "BH", "TH", False, True),
            ("W2 -= lr h^T dlogits (+ b2)", "h^T dlogits", "BH", "BV", True, False),
            ("W1 -= lr emb^T dpre (+ b1)", "emb^T dpre", "BT", "BH", True, False)]


def peers_table(phases: str, large: bool) -> str:
    """The products' rows of step_phases' table beside numpy's and torch.mm's times."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # before numpy's BLAS starts its threads
    import time

    import numpy as np
    peak = float(re.search(r"FMA peak measured here ([0-9.]+) GFLOP/s", phases).group(1)) * 1e9
    ours = {}
    for line in phases.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].replace(".", "", 1).isdigit():
            ours[cells[0]] = float(cells[1])
    dims = dict(B=256, T=8 * 24, H=512, V=27) if large else dict(B=32, T=3 * 10, H=200, V=27)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None

    def best_us(f) -> float:
        f()
        t0 = time.perf_counter()
        f()
        n = max(1, int(0.01 / max(time.perf_counter() - t0, 1e-7)))  # blocks of ~10 ms
        best = float("inf")
        for _ in range(15):
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            best = min(best, (time.perf_counter() - t0) / n)
        return best * 1e6

    rng = np.random.default_rng(0)
    cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    blas = f"numpy {np.__version__} ({cfg.get('name', '?')} {cfg.get('version', '')})".replace(" )", ")")
    head = f"| product (M x K x N) | fastmlp µs | % | {blas} µs | % |"
    rule = "|---|---:|---:|---:|---:|"
    if torch is not None:
        head += f" torch {torch.__version__} mm µs | % |"
        rule += "---:|---:|"
    rows = [head, rule]
    for phase, label, a_dims, b_dims, ta, tb in PRODUCTS:
        a = rng.standard_normal([dims[c] for c in a_dims], dtype=np.float32)
        b = rng.standard_normal([dims[c] for c in b_dims], dtype=np.float32)
        a, b = (a.T if ta else a), (b.T if tb else b)  # views: the BLAS reads them transposed
        m, k, n = a.shape[0], a.shape[1], b.shape[1]
        c = np.empty((m, n), np.float32)
        pct = lambda us: f"{2 * m * k * n / peak / us * 1e8:.0f}%"  # noqa: E731
        t_np = best_us(lambda: np.matmul(a, b, out=c))
        t_us = ours.get(phase, float("nan"))
        row = f"| {label} ({m} x {k} x {n}) | {t_us:.2f} | {pct(t_us)} | {t_np:.2f} | {pct(t_np)} |"
        if torch is not None:
            at, bt, ct = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)  # the same (strided) views
            t_t = best_us(lambda: torch.mm(at, bt, out=ct))
            row += f" {t_t:.2f} | {pct(t_t)} |"
        rows.append(row)
    return "\n".join(rows) + (
        f"\n\nOne thread each, best of 15 blocks of ~10 ms; % of the FMA peak above ({peak / 1e9:.0f} GFLOP/s). "
        "fastmlp's times include their epilogues (the hidden forward's without tanh); the peers' are the bare "
        "products, called from Python (about a microsecond a call, which matters at the lecture's sizes).")


if __name__ == "__main__":
    raise SystemExit(main())
