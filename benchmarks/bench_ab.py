"""Two builds of fastmlp against each other, in one run, alternating: µs/step of
`python -m fastmlp.train` (training time only) on the lecture and large configs, 1 and
2 threads, medians of --repeats. For "did this change make it slower?".

    pip install . --target /tmp/before --no-deps      # at the old commit
    pip install . --target /tmp/after --no-deps       # at the new one
    python benchmarks/bench_ab.py /tmp/before /tmp/after
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "names.txt"  # old builds may not bundle it
CASES = {"lecture": ["--max-steps", "20000", "--eval-interval", "20000"],
         "large": ["--block-size", "8", "--n-embd", "24", "--n-hidden", "512", "-b", "256", "--init", "scaled",
                   "--max-steps", "1000", "--eval-interval", "1000"]}


def check_build(build: str) -> None:
    """The build a folder names is the one that runs (an editable install's import hook
    would win over PYTHONPATH and time the same code twice)."""
    r = subprocess.run([sys.executable, "-c", "import fastmlp; print(fastmlp.__file__)"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": build}, check=True)
    if not Path(r.stdout.strip()).resolve().is_relative_to(Path(build).resolve()):
        sys.exit(f"bench_ab: {build} does not provide the fastmlp that imports ({r.stdout.strip()})")


def us_per_step(build: str, flags: list, threads: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, "-m", "fastmlp.train", *flags, "--num-threads", str(threads), "-o", d,
                            "-i", str(DATA), "--json", "--no-progress"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": build}, check=True)
        return json.loads(r.stdout)["us_per_step"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", help="a folder holding an installed fastmlp (pip install --target)")
    ap.add_argument("after")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for build in (args.before, args.after):
        check_build(build)
    res: dict = {}
    for _ in range(args.repeats):
        for case, flags in CASES.items():
            for threads in (1, 2):
                for build in (args.before, args.after):
                    res.setdefault((case, threads, build), []).append(us_per_step(build, flags, threads))
    print("| config | threads | before µs/step | after µs/step | after / before |")
    print("|---|---:|---:|---:|---:|")
    for case in CASES:
        for threads in (1, 2):
            a = statistics.median(res[(case, threads, args.before)])
            b = statistics.median(res[(case, threads, args.after)])
            print(f"| {case} | {threads} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
