"""python -m fastmlp.sweep: real parts, no mocks — worker processes, Optuna's journal file,
and a real PostgreSQL server started by the test."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna", reason="the sweep extra (pip install '.[sweep]') is not installed")

from fastmlp import checkpoint as ckpt_io  # noqa: E402
from conftest import make_words  # noqa: E402

TINY_SPACE = {
    "n_hidden": {"low": 8, "high": 48, "log": True},
    "lr_adamw": {"field": "learning_rate", "low": 1e-3, "high": 3e-2, "log": True},
    "weight_decay": {"low": 1e-3, "high": 0.3, "log": True},
    "optimizer": "adamw", "init": "scaled", "batch_size": 16, "max_steps": 400, "eval_interval": 100,
    "lr_schedule": "cosine",
}


def sweep_cli(*args, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", "fastmlp.sweep", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture
def words_and_space(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("\n".join(make_words(600, seed=5)) + "\n")
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_SPACE))
    return words, space


def finished(study):
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def test_a_local_sweep_with_two_workers(tmp_path, words_and_space):
    words, space = words_and_space
    out = tmp_path / "s"
    r = sweep_cli("-i", words, "-o", out, "--space", space, "--n-trials", 6, "--jobs", 2, "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["trials"]["complete"] + res["trials"]["pruned"] == 6 and res["jobs"] == 2
    assert res["test_loss"] is not None and res["best"]["dev_loss"] < 3.0
    for f in ("leaderboard.md", "leaderboard.csv", "best.json", "study.journal", "history.png"):
        assert (out / f).is_file(), f
    study = optuna.load_study(study_name="fastmlp", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    assert len(finished(study)) == 6  # the study's total, not 6 per worker
    # each complete trial keeps its checkpoint and metrics, and no trial draws PNGs (a second each)
    complete = [t for t in finished(study) if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all((Path(t.user_attrs["work_dir"]) / f).is_file() for t in complete
                            for f in ("model.npz", "metrics.json"))
    assert not list((out / "trials").glob("*/*.png"))
    # best.json trains again to the same dev loss
    t = subprocess.run([sys.executable, "-m", "fastmlp.train", "--config", out / "best.json", "-o", tmp_path / "again",
                        "--json", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert t.returncode == 0, t.stderr
    assert json.loads(t.stdout)["dev_loss"] == res["best"]["dev_loss"]
    # rerunning resumes the same study: raising the total adds trials to it
    r2 = sweep_cli("-i", words, "-o", out, "--space", space, "--n-trials", 8, "--jobs", 2, "--json", "--no-progress")
    assert r2.returncode == 0, r2.stderr
    assert len(finished(study)) == 8
    lines = (out / "leaderboard.csv").read_text().splitlines()
    assert lines[0].startswith("rank,trial,dev_loss,train_loss,params,steps,seconds") and len(lines) >= 2


@pytest.mark.parametrize("args,msg", [
    (["--space", "/nonexistent/space.json"], "cannot read --space"),
    (["--space", "EMPTY"], "has nothing to search"),
    (["--jobs", "0"], "argument --jobs: must be an integer in [1, "),
    (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open the storage postgresql://nobody@127.0.0.1:1"),
    (["--storage", "nosuchdb://x"], "cannot open the storage nosuchdb://x"),
])
def test_bad_input_is_one_line_and_leaves_the_study_alone(tmp_path, words_and_space, args, msg):
    words, space = words_and_space
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    out = tmp_path / "s"
    out.mkdir()
    (out / "study.journal").write_text("")  # an existing (empty) study journal must stay as it is
    r = sweep_cli("-i", words, "-o", out, "--n-trials", 2, *args, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr
    assert (out / "study.journal").read_text() == "" and not (out / "trials").exists()


# -- a real PostgreSQL server ----------------------------------------------------------
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own, in a temporary folder, on a free port; stopped after."""
    if not (PG_BIN / "initdb").exists() and not shutil.which("initdb"):
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/15/bin)")
    bin_dir = PG_BIN if (PG_BIN / "initdb").exists() else Path(shutil.which("initdb")).parent
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root: use the postgres account
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="fastmlp-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    # the server is not ours to sanitize: without the sanitizer runtimes .ci/sanitize preloads
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    run = lambda *a: subprocess.run(as_user + [str(bin_dir / a[0]), *a[1:]], capture_output=True, text=True,
                                    timeout=120, check=True, env=env)
    try:
        run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run("pg_ctl", "-D", str(data), "-l", str(root / "log"), "-w", "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start")
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "fastmlp")
        yield f"postgresql://postgres@127.0.0.1:{port}/fastmlp"
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, env=env)
        shutil.rmtree(root, ignore_errors=True)


def test_three_workers_share_a_postgresql_study_and_a_killed_one_is_retried(tmp_path, words_and_space, postgres):
    words, _ = words_and_space
    space = tmp_path / "slow.json"  # trials of a few seconds: long enough to be killed in the middle
    space.write_text(json.dumps(dict(TINY_SPACE, max_steps=30000, eval_interval=3000, n_hidden={"low": 64,
                                                                                                 "high": 128})))
    n = 7
    cmd = [sys.executable, "-m", "fastmlp.sweep", "-i", str(words), "--space", str(space), "--storage", postgres,
           "--study", "shared", "--n-trials", str(n), "--jobs", "1", "--heartbeat", "1", "--json", "--no-progress"]
    # three commands at the same moment against an empty database: they race to create the schema
    procs = [subprocess.Popen(cmd + ["-o", str(tmp_path / f"m{i}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(3)]
    from fastmlp.sweep.storage import open_storage

    storage = open_storage(postgres, tmp_path)  # retries while the workers create the schema
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline:
        try:
            study = optuna.load_study(study_name="shared", storage=storage)
            # a trial past its first evaluation (a tenth of its steps): in the middle of training
            running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                       if "pid" in t.user_attrs and t.intermediate_values]
            if running:
                victim = running[0]
                os.kill(victim.user_attrs["pid"], signal.SIGKILL)
        except (KeyError, ValueError):  # the study is not created yet
            pass
        time.sleep(0.2)
    assert victim is not None, "no trial started"
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]  # the killed worker was replaced
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials(deepcopy=False)
    done = finished(study)
    assert len(done) == n  # the study's total across the three
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == optuna.trial.TrialState.FAIL  # marked failed by a heartbeat check
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retried and retried[0].params == victim.params, [  # and run again with its parameters
        (t.number, t.state, t.params, t.system_attrs, t.user_attrs.get("pid"), t.user_attrs.get("surplus"))
        for t in trials]
    keys = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(keys)) == len(keys)  # no two finished trials share parameters
    reports = [json.loads(o[0]) for o in outs]
    assert max(r["trials"]["complete"] + r["trials"]["pruned"] for r in reports) == n
    assert any("was killed" in o[1] for o in outs)


def test_a_failing_trial_says_why(tmp_path, words_and_space):
    # every trial fails inside train() (a batch larger than the training split): each failed
    # trial keeps its reason, the sweep prints it, and the workers give up instead of looping
    words, _ = words_and_space
    space = tmp_path / "big_batch.json"
    space.write_text(json.dumps({**TINY_SPACE, "batch_size": 100_000}))
    r = sweep_cli("-i", words, "-o", tmp_path / "s", "--space", space, "--n-trials", 2, "--jobs", 1, "--json",
                  "--no-progress", timeout=300)
    res = json.loads(r.stdout)
    assert res["trials"]["complete"] == 0 and res["trials"]["failed"] > 0 and res["best"] is None
    assert res["errors"] and "batch_size 100000 is larger than the training split" in res["errors"][0]["error"]
    assert "trial 0 failed: ValueError: batch_size 100000" in r.stderr and "Traceback" not in r.stderr
    assert r.returncode != 0


def test_a_flop_budget_sets_the_steps():
    from fastmlp.sweep.space import apply_budget, parse_space

    parse_space({"n_hidden": {"low": 8, "high": 16}, "flop_budget": 1e9}, "test")
    v = apply_budget({"block_size": 8, "n_embd": 32, "n_hidden": 1024, "batch_size": 256, "eval_interval": 1000,
                      "flop_budget": 5e12}, 27)
    # 6 * 256 * (256 * 1024 + 1024 * 27) = 445 MFLOP a step: 11,233 steps, in whole evaluation intervals
    assert v["max_steps"] == 11000 and "flop_budget" not in v
    small = apply_budget({"n_hidden": 10, "eval_interval": 500, "flop_budget": 1.0}, 27)
    assert small["max_steps"] == 500  # at least one interval
