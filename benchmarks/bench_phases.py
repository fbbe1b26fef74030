"""Where one training step's time goes, phase by phase (one thread): compiles
benchmarks/step_phases.cpp, which includes the extension's own kernels, with the flags of
the best ISA build this CPU runs, and prints its markdown table.

    python benchmarks/bench_phases.py            # the lecture's step
    python benchmarks/bench_phases.py --large    # block 8, E 24, H 512, batch 256

Needs a C++17 compiler (c++, or $CXX) with OpenMP; takes ~30 s to build, seconds to run.
"""
from __future__ import annotations

import argparse
import os
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
        return subprocess.run([str(exe)] + (["large"] if args.large else [])).returncode


if __name__ == "__main__":
    raise SystemExit(main())
