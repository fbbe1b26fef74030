"""The README's commands run, in order, as shown, in a new folder, as a new user would type
them: every `$ ` line of its console blocks, every line of its bash blocks, and its Python
blocks (twice: a snippet must survive being run again). What cannot run here is named in
SKIP with the reason; long commands get the flags in SHORTEN appended (argparse takes the
last value), which changes how long they train, not whether they run."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

SKIP = {  # a command's start -> why the test does not run it
    "pip install": "the environment is the README's own install",
    "python -m pytest": "this suite",
    "python -m fastmlp.serve": "a server that runs until stopped; tests/test_serve.py and test_browser.py start it",
    "python -m fastmlp.sweep --storage postgresql://user:password@dbhost":
        "a placeholder database host; test_sweep runs the same command against a real PostgreSQL server",
}
SHORTEN = {  # a command's start -> flags appended to it
    "python -m fastmlp.train --preset best": ["--max-steps", "400", "--eval-interval", "200"],
    "python -m fastmlp.train -o deep": ["--max-steps", "2000", "--eval-interval", "1000"],
    "python -m fastmlp.sweep": ["--n-trials", "2", "--max-steps", "300"],
}


def readme_blocks():
    """(line, language, text) of every fenced block."""
    text = README.read_text(encoding="utf-8")
    return [(text[:m.start()].count("\n") + 1, m.group(1), m.group(2))
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def steps():
    """What to run, in the README's order: ("shell", line, command) or ("python", line, code)."""
    out = []
    for line, lang, body in readme_blocks():
        if lang == "python":
            out.append(("python", line, body))
        elif lang in ("console", "bash"):
            for i, row in enumerate(body.splitlines(), line + 1):
                if lang == "console":
                    if not row.startswith("$ "):
                        continue  # output
                    row = row[2:]
                cmd = row.split(" #")[0].strip()
                if cmd and not cmd.startswith("#"):
                    out.append(("shell", i, cmd))
    return out


def test_the_readme_has_what_this_test_runs():
    kinds = [k for k, _, _ in steps()]
    assert kinds.count("python") >= 1 and kinds.count("shell") >= 10


def test_every_readme_command_runs_in_order_as_shown(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTMLP_")}  # a new user's environment
    ran = []
    for kind, line, what in steps():
        if kind == "python":
            for attempt in (1, 2):
                r = subprocess.run([sys.executable, "-c", what], cwd=tmp_path, env=env, capture_output=True,
                                   text=True, timeout=600)
                assert r.returncode == 0, f"README.md:{line}: the Python block fails (run {attempt}):\n{r.stderr[-3000:]}"
            ran.append(line)
            continue
        if any(what.startswith(k) for k in SKIP):
            continue
        argv = shlex.split(what)
        if argv[0] == "python":
            argv[0] = sys.executable
        for start, extra in SHORTEN.items():
            if what.startswith(start):
                argv += extra
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"README.md:{line}: `{what}` exits {r.returncode}:\n{r.stderr[-3000:]}"
        ran.append(line)
    assert len(ran) >= 10
