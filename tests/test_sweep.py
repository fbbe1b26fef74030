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
    assert len(done) == n, "\n".join(str((t.number, t.state.name, t.user_attrs.get("pid"), t.user_attrs.get("surplus"),
                             t.system_attrs.get("failed_trial"), str(t.datetime_start), str(t.datetime_complete)))
                            for t in trials) + f"\nvictim {victim.number}"  # the study's total across the three
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


# -- a hostile user's second hour (issue 18) ----------------------------------------------------
@pytest.mark.parametrize("spec,msg", [
    ({"dropout": {"low": float("nan"), "high": 0.3}}, "'dropout' needs finite numbers low <= high, got nan"),
    ({"n_hidden": {"low": 8, "high": 48, "step": 0}}, "'n_hidden': step must be a number > 0, got 0"),
    ({"n_hidden": {"low": 8, "high": 48, "step": 8, "log": True}}, "'n_hidden': a range takes step or log"),
    ({"block_size": "abc"}, "'block_size' = 'abc' is not a valid value: block_size must be an int"),
    ({"dropout": {"choices": [0.1, 1.5]}}, "'dropout' = 1.5 is not a valid value"),
    ({"lr_adamw": {"field": "learning_rate", "low": -1.0, "high": 0.1}}, "'lr_adamw' = -1.0 is not a valid value"),
    ({"nesterov": {"choices": [True, False]}}, "'nesterov' = True is not a valid value: momentum and nesterov "
                                               "belong to --optimizer sgd"),  # (TINY_SPACE fixes adamw)
    ({"flop_budget": 0}, "flop_budget must be a number > 0"),
])
def test_bad_spaces_are_one_line_before_the_study_is_written(tmp_path, words_and_space, spec, msg):
    words, _ = words_and_space
    space = tmp_path / "bad.json"
    space.write_text(json.dumps({**TINY_SPACE, **spec}))  # (json writes NaN, and reads it back)
    out = tmp_path / "s"
    r = sweep_cli("-i", words, "-o", out, "--space", space, "--n-trials", 2, "--jobs", 1, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr
    assert not (out / "study.journal").exists()


def test_a_work_dir_that_is_a_file_is_named_as_such(tmp_path, words_and_space):
    words, space = words_and_space
    (tmp_path / "afile").write_text("x")
    r = sweep_cli("-i", words, "-o", tmp_path / "afile", "--space", space, "--n-trials", 2, timeout=120)
    assert r.returncode == 2 and "work dir" in r.stderr and "exists and is not a folder" in r.stderr, r.stderr


def test_a_study_that_failed_often_resumes_once_the_cause_is_fixed(tmp_path, words_and_space):
    words, space = words_and_space
    out = tmp_path / "s"
    bad = tmp_path / "big_batch.json"
    bad.write_text(json.dumps({**TINY_SPACE, "batch_size": 100_000}))  # every trial fails in train()
    r = sweep_cli("-i", words, "-o", out, "--space", bad, "--n-trials", 2, "--jobs", 1, "--no-progress", timeout=300)
    assert r.returncode != 0 and "11 trials failed in this run" in r.stderr and "rerun the same command" in r.stderr
    # fixed: the same study goes on (only this run's failures count), and the leaderboard shows
    # the steps each trial ran (--max-steps caps the sampled value)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({**TINY_SPACE, "max_steps": {"low": 300, "high": 400, "step": 100}}))
    r = sweep_cli("-i", words, "-o", out, "--space", good, "--n-trials", 2, "--jobs", 1, "--max-steps", 200,
                  "--json", "--no-progress", timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["trials"]["complete"] + res["trials"]["pruned"] == 2 and res["trials"]["failed"] >= 11
    import csv

    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert rows and all(row["max_steps"] == row["steps"] == "200" for row in rows), rows
    assert f"--config {out / 'best.json'} -o {out / 'winner'}" in r.stderr  # the hint runs as printed
    assert "batch_size 100000" not in r.stderr  # the first run's failures are not reported as this run's


def running(work) -> int:
    """Trials running in the study journal of a sweep's work dir."""
    if not (work / "study.journal").exists():
        return 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(work / "study.journal")))
    try:
        study = optuna.load_study(study_name="fastmlp", storage=storage)
    except KeyError:  # not created yet
        return 0
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended (reaped or not)


def children(pid: int) -> list:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_the_sweep_is_killed_and_a_rerun_retries_their_trials(tmp_path, words_and_space):
    words, _ = words_and_space
    space = tmp_path / "slow.json"  # trials of minutes: they outlast the test unless their workers end
    space.write_text(json.dumps(dict(TINY_SPACE, max_steps=20_000_000, eval_interval=1_000_000)))
    cmd = [sys.executable, "-m", "fastmlp.sweep", "-i", str(words), "-o", str(tmp_path / "s"), "--space", str(space),
           "--n-trials", "2", "--jobs", "2", "--heartbeat", "1", "--no-progress"]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and running(tmp_path / "s") < 2:
        time.sleep(0.2)  # (both workers are training)
    workers = [c for c in children(parent.pid) if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) >= 2, workers
    parent.send_signal(signal.SIGKILL)
    parent.wait(30)
    deadline = time.time() + 10
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    orphans = [w for w in workers if alive(w)]
    for w in orphans:
        os.kill(w, signal.SIGKILL)
    assert not orphans, "workers outlived the sweep that started them"
    # the same command again (trials capped short): the killed trials fail by heartbeat and are retried
    r = subprocess.run(cmd[:-1] + ["--max-steps", "300", "--json", "--no-progress"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["trials"]["complete"] + res["trials"]["pruned"] == 2 and res["trials"]["failed"] >= 2  # retried


def test_ctrl_c_of_a_sweep_says_how_to_go_on(tmp_path, words_and_space):
    words, _ = words_and_space
    space = tmp_path / "slow.json"
    space.write_text(json.dumps(dict(TINY_SPACE, max_steps=200_000, eval_interval=20_000)))
    p = subprocess.Popen([sys.executable, "-m", "fastmlp.sweep", "-i", str(words), "-o", str(tmp_path / "s"),
                          "--space", str(space), "--n-trials", "2", "--jobs", "1", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and running(tmp_path / "s") < 1:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "rerun the same command to resume the study" in err and "Traceback" not in err, err


@pytest.mark.parametrize("spec,msg", [
    ({"n_hidden": {"low": 8, "high": 48, "step": 0.5}}, "'n_hidden' = 8.0 is not a valid value: n_hidden must be an int"),
    ({"flop_budget": 1e30}, "gives up to"),
    ({"optimizer": {"choices": ["sgd", "adamw"]}, "momentum": {"choices": [0.9]}},
     "'momentum' belongs to SGD, but 'optimizer' may be adamw: add \"when\""),
    ({"x": {"field": ["x"], "low": 1, "high": 2}}, "'x' is not a TrainConfig field a sweep can set"),
    ({"h2": {"field": "n_hidden", "low": 8, "high": 16}}, "'n_hidden' and 'h2' both set 'n_hidden'"),
])
def test_spaces_wrong_in_combination_are_one_line(tmp_path, words_and_space, spec, msg):
    test_bad_spaces_are_one_line_before_the_study_is_written(tmp_path, words_and_space, spec, msg)


def test_depth_batchnorm_and_init_are_parameters_and_the_budget_counts_depth(tmp_path, words_and_space):
    from fastmlp.sweep.space import SpaceError, apply_budget, flops_per_step, parse_space
    words, _ = words_and_space
    # an H x H layer is (L - 1) H^2 more multiply-adds a row
    one = flops_per_step({"block_size": 3, "n_embd": 10, "n_hidden": 100, "batch_size": 32}, 27)
    five = flops_per_step({"block_size": 3, "n_embd": 10, "n_hidden": 100, "batch_size": 32, "n_layers": 5}, 27)
    assert five - one == 6.0 * 32 * 4 * 100 * 100
    assert apply_budget({"flop_budget": 100 * five, "n_layers": 5, "n_hidden": 100, "eval_interval": 10},
                        27)["max_steps"] == 100
    parse_space({"n_layers": {"low": 1, "high": 4}, "batchnorm": {"choices": [False, True]},
                 "init": {"choices": ["scaled", "kaiming"]}}, "space")
    with pytest.raises(SpaceError, match=r"'n_layers' = 17 is not a valid value: n_layers must be an integer in "
                                         r"\[1, 16\]"):
        parse_space({"n_layers": {"low": 1, "high": 17}}, "space")
    # BatchNorm's momentum is checked where it means something
    parse_space({"batchnorm": True, "bn_momentum": {"low": 0.01, "high": 0.3}}, "space")
    space = tmp_path / "deep.json"
    space.write_text(json.dumps(dict(TINY_SPACE, n_layers={"low": 1, "high": 3}, batchnorm={"choices": [False, True]},
                                     init={"choices": ["scaled", "kaiming"]}, n_hidden=16)))
    out = tmp_path / "s"
    r = sweep_cli("-i", words, "-o", out, "--space", space, "--n-trials", 4, "--jobs", 2, "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    best = json.loads((out / "best.json").read_text())["config"]
    assert best["n_layers"] in (1, 2, 3) and isinstance(best["batchnorm"], bool)
