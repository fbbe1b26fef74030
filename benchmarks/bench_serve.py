"""What watching costs: the same training started through `python -m fastmlp.serve`
with no page open and with the page's live stream read (a client on /api/events, as
an open tab does), against the training command, taking turns. Medians of --repeats
of the training time the run itself measures (steps/s). Writes results/serve.md.

    python benchmarks/bench_serve.py --repeats 3
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"max_steps": 100_000, "lr_decay_step": 50_000}  # the lecture's model and schedule, half as long


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body=None):
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=60).read())


def via_server(watch: bool) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.Popen([sys.executable, "-m", "fastmlp.serve", "-o", d, "--port", str(port)],
                             stderr=subprocess.PIPE, text=True)
        try:
            p.stderr.readline()  # "fastmlp: http://..."
            base = f"http://127.0.0.1:{port}"
            stop = threading.Event()
            if watch:
                def read():
                    with urllib.request.urlopen(base + "/api/events", timeout=120) as r:
                        while not stop.is_set() and r.readline():
                            pass
                threading.Thread(target=read, daemon=True).start()
            post(base + "/api/train/start", SETTINGS)
            while True:
                s = json.loads(urllib.request.urlopen(base + "/api/state", timeout=60).read())
                if not s["running"]:
                    break
                time.sleep(0.5 if watch else 0.2)
            stop.set()
            return s["step"] / s["train_seconds"]
        finally:
            p.terminate()
            p.wait(60)


def via_cli() -> float:
    with tempfile.TemporaryDirectory() as d:
        args = ["--max-steps", str(SETTINGS["max_steps"]), "--lr-decay-step", str(SETTINGS["lr_decay_step"])]
        r = subprocess.run([sys.executable, "-m", "fastmlp.train", "-o", d, "--diagnostics", "--json",
                            "--no-progress", *args], capture_output=True, text=True, check=True)
        m = json.loads(r.stdout)
        return m["steps"] / m["seconds"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    runs = {"train command (--diagnostics)": [], "server, no page": [], "server, page streaming": []}
    for _ in range(args.repeats):
        runs["train command (--diagnostics)"].append(via_cli())
        runs["server, no page"].append(via_server(False))
        runs["server, page streaming"].append(via_server(True))
    med = {k: statistics.median(v) for k, v in runs.items()}
    base = med["train command (--diagnostics)"]
    lines = [f"The lecture's model, {SETTINGS['max_steps']:,} steps, medians of {args.repeats} (taking turns), "
             f"{time.strftime('%Y-%m-%d')}", "", "| how | steps/s | vs the command |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:,.0f} | {v / base:.2f}x |" for k, v in med.items()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
