"""A hostile user's second hour (issue 18): two runs on one work dir, configuration types,
a checkpoint that asks for gigabytes, models that are not this model, words cut by
--max-len, and messages that say what to do next."""
import io
import os
import json
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest

import fastmlp
from fastmlp import MLP, checkpoint as ckpt_io
from fastmlp._files import WorkDirBusy
from fastmlp.train import TrainConfig, train
from test_reliability import SANITIZED, cli, one_line_error, started


def config(tmp_path, words_file, **kw):
    return TrainConfig(**{"input_file": str(words_file), "work_dir": str(tmp_path / "run"), "n_hidden": 32,
                          "max_steps": 300, "eval_interval": 100, "init": "scaled", **kw})


# -- one work dir, one run ---------------------------------------------------------------
def test_two_trainings_in_two_threads_on_one_work_dir_one_is_refused(tmp_path, words_file):
    first_started = threading.Event()
    results = {}

    def first():
        log = lambda s: first_started.set() if s.startswith("MLP(") else None
        results["first"] = train(config(tmp_path, words_file, max_steps=200_000, eval_interval=200_000),
                                 progress=False, log=log)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert first_started.wait(120)
        with pytest.raises(WorkDirBusy, match=r"is in use by another run \(pid \d+, this process\)"):
            train(config(tmp_path, words_file), progress=False, log=lambda s: None)
    finally:
        t.join(300)
    assert results["first"]["steps"] == 200_000  # the first run was not disturbed
    # once it ended, the work dir is free again: it continues with resume
    m = train(config(tmp_path, words_file, max_steps=200_100), resume=True, progress=False, log=lambda s: None)
    assert m["steps"] == 200_100


def test_a_second_process_is_refused_and_a_killed_holder_frees_the_work_dir(tmp_path, words_file):
    out = tmp_path / "run"
    cmd = ["fastmlp.train", "-i", words_file, "-o", out, "--n-hidden", 32, "--init", "scaled", "--no-progress"]
    holder = subprocess.Popen([sys.executable, "-m", *map(str, cmd + ["--max-steps", 10 ** 9, "--eval-interval", 10 ** 9])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started(holder)
        r = cli(*cmd, "--max-steps", 100)
        one_line_error(r, f"is in use by another run (pid {holder.pid})")
        r = cli(*cmd, "--max-steps", 100, "--overwrite")  # --overwrite does not take a run's folder either
        one_line_error(r, f"pid {holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    r = cli(*cmd, "--max-steps", 100, "--json")  # kill -9 left no lock behind
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["steps"] == 100


# -- --config types ------------------------------------------------------------------------
@pytest.mark.parametrize("values,msg", [
    ({"eval_test": "no"}, "eval_test must be true or false (a JSON boolean), got 'no'"),
    ({"nesterov": "no"}, "nesterov must be true or false (a JSON boolean), got 'no'"),
    ({"nesterov": 1}, "nesterov must be true or false"),
    ({"learning_rate": True}, "learning_rate must be a number, got True"),
    ({"dropout": "0.1"}, "dropout must be a number, got '0.1'"),
    ({"momentum": None}, "momentum must be a number, got None"),
    ({"optimizer": ["sgd"]}, "optimizer must be a string"),
    ({"block_size": "3"}, "block_size must be an int"),  # (integers were already strict)
    ({"learning_rate": 10 ** 400}, "learning_rate must be a finite number"),
    ({"dropout": 10 ** 400}, "dropout must be a finite number"),
    ({"beta2": float("inf")}, "beta2 must be a finite number, got inf"),  # (sgd ignores betas: still refused)
    ({"beta1": float("nan")}, "beta1 must be a finite number, got nan"),
])
def test_config_file_types_are_strict(tmp_path, words_file, values, msg):
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps(values))
    r = cli("fastmlp.train", "-i", words_file, "-o", tmp_path / "o", "--config", f, "--max-steps", 10)
    one_line_error(r, msg)
    assert not (tmp_path / "o" / "model.npz").exists()


def test_booleans_from_a_config_file_are_used_as_booleans(tmp_path, words_file):
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps({"eval_test": False, "n_hidden": 16, "init": "scaled"}))
    r = cli("fastmlp.train", "-i", words_file, "-o", tmp_path / "o", "--config", f, "--max-steps", 50, "--json",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.splitlines()[0])
    assert m["test_loss"] is None and m["config"]["eval_test"] is False
    with pytest.raises(TypeError, match="work_dir must be a path"):
        TrainConfig(work_dir=3).check()


# -- checkpoints that ask for gigabytes ------------------------------------------------
def write_bomb(path, n_hidden):
    """A checkpoint whose metadata claims a model of n_hidden units, with honest all-zero
    arrays: deflate shrinks them ~1000x (a 1.1 GB model in a ~1 MB file)."""
    V, T, E, H = 27, 3, 10, n_hidden
    shapes = {"C": (V, E), "W1": (T * E, H), "b1": (H,), "W2": (H, V), "b2": (V,)}
    meta = {"format": ckpt_io.FORMAT, "version": 2, "vocab": ".abcdefghijklmnopqrstuvwxyz", "step": 0,
            "model": {"vocab_size": V, "block_size": T, "n_embd": E, "n_hidden": H}, "optimizer_slots": []}
    zeros = bytes(1 << 24)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k, shape in shapes.items():
            with zf.open(k + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
                left = int(np.prod(shape)) * 4
                while left > 0:
                    f.write(zeros[:min(left, len(zeros))])
                    left -= len(zeros)
        buf = io.BytesIO()
        np.save(buf, np.array(json.dumps(meta)))
        zf.writestr("meta.npy", buf.getvalue())


LOW_MEMORY_SAMPLE = """
import resource, sys
import fastmlp.sample  # numpy, the kernels: what the command has loaded before it reads a file
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 400 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.exit(fastmlp.sample.main(["--checkpoint", sys.argv[1], "-n", "1"]))
"""


def test_a_small_checkpoint_cannot_make_the_loader_allocate_gigabytes(tmp_path):
    bomb = tmp_path / "bomb.npz"
    write_bomb(bomb, 5_000_000)  # 1.08 GB of parameters, declared honestly
    assert bomb.stat().st_size < 20 * 2**20
    # the command runs with 400 MB to spare: without the cap it would die of MemoryError
    args = ["-c", LOW_MEMORY_SAMPLE, bomb] if not SANITIZED else ["-m", "fastmlp.sample", "--checkpoint", bomb]
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=120)
    one_line_error(r, "a model of (V, T, E, H) = (27, 3, 10, 5000000) takes 1.08 GiB",
                   "checkpoint.load(path, max_bytes=None)")


def test_max_bytes_caps_every_array_and_can_be_raised(tmp_path, words_file):
    m = train(config(tmp_path, words_file, optimizer="adamw", learning_rate=0.01), progress=False, log=lambda s: None)
    path = tmp_path / "run" / "model.npz"
    params = 4 * m["params"]
    with pytest.raises(ckpt_io.CheckpointError, match="with 2 optimizer slots takes"):
        ckpt_io.load(path, max_bytes=3 * params - 1)  # the model and AdamW's two moments
    with pytest.raises(ckpt_io.CheckpointError, match="loss_history takes 1,200 bytes"):
        ckpt_io.load(path, max_bytes=3 * params + 32 + 4 * 300 - 1)  # the sampler's state, the loss history
    assert ckpt_io.load(path, max_bytes=3 * params + 32 + 4 * 300).step == 300
    assert ckpt_io.load(path, max_bytes=None).step == 300
    with pytest.raises(TypeError, match="max_bytes must be"):
        ckpt_io.load(path, max_bytes=-1)


# -- what is not the model --------------------------------------------------------------------
def test_from_params_and_from_torch_refuse_what_is_not_the_model():
    torch = pytest.importorskip("torch")
    m = MLP(27, 3, 10, 20, init="scaled")
    with pytest.raises(ValueError, match=r"params has \['extra'\], which this model does not have"):
        MLP.from_params(dict(m.params, extra=m.params["W2"]))
    with pytest.raises(KeyError, match=r"params is missing \['b3'\]; a model with 2 hidden layers"):
        MLP.from_params(dict(m.params, W3=m.params["W2"]))  # a deeper model's start, without its end
    with pytest.raises(TypeError, match="params must be a mapping"):
        MLP.from_params([m.params[k] for k in m.params])
    for extra, name in ((torch.nn.Linear(27, 27), "extra"), (torch.nn.Dropout(0.1), "extra")):
        module = m.to_torch()
        module.extra = extra  # (a Dropout has no parameters: only the module's children show it)
        with pytest.raises(ValueError, match=rf"module has \['{name}'\], which fastmlp's model does not"):
            MLP.from_torch(module)
    module = m.to_torch()
    module.register_buffer("scale", torch.ones(1), persistent=False)
    with pytest.raises(ValueError, match=r"module has \['scale'\]"):
        MLP.from_torch(module)
    state = dict(m.to_torch().state_dict(), extra=torch.zeros(1))  # a state_dict: its keys
    with pytest.raises(ValueError, match=r"state has \['extra'\]"):
        MLP.from_torch(state)
    with pytest.raises(TypeError, match="from_torch takes a torch.nn.Module or a state_dict, got int"):
        MLP.from_torch(42)
    with pytest.raises(TypeError, match="W1 is not a tensor but str"):
        MLP.from_torch(dict(m.to_torch().state_dict(), W1="x"))
    assert MLP.from_torch(m.to_torch()).num_params == m.num_params


# -- words cut by --max-len ---------------------------------------------------------------------
def test_words_cut_by_max_len_are_marked_and_not_counted(tmp_path, words_file):
    train(config(tmp_path, words_file), progress=False, log=lambda s: None)
    r = cli("fastmlp.sample", "-o", tmp_path / "run", "-n", 3, "--max-len", 1)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() and all(line.endswith(" (cut at --max-len 1)") for line in r.stdout.splitlines())
    assert "3 of 3 samples did not end within --max-len 1" in r.stderr and "are new names" not in r.stderr
    r = cli("fastmlp.sample", "-o", tmp_path / "run", "-n", 40)
    assert "cut" not in r.stdout + r.stderr and "of 40 samples" in r.stderr
    from fastmlp.sample import sample_with_ends, sample_words

    ck = ckpt_io.load(tmp_path / "run")
    pairs = sample_with_ends(ck.model, ck.vocab, 20, seed=1, max_len=4)
    assert [w for w, _ in pairs] == sample_words(ck.model, ck.vocab, 20, seed=1, max_len=4)
    # a word shorter than max_len ended; one of exactly max_len letters is whole if the model
    # chose '.' next (the sampler draws one character more to know): the same word either way
    assert all(ended for w, ended in pairs if len(w) < 4) and all(len(w) <= 4 for w, _ in pairs)
    longer = dict(enumerate(sample_with_ends(ck.model, ck.vocab, 20, seed=1, max_len=40)))
    for i, (w, ended) in enumerate(pairs):
        whole, whole_ended = longer[i]
        assert whole.startswith(w) and ended == (whole == w and whole_ended), (w, whole)
    with pytest.raises(ValueError, match=r"max_len must be an integer in \[1, "):
        sample_words(ck.model, ck.vocab, 2, max_len=0)


# -- messages that say what to do next --------------------------------------------------------
def test_the_python_api_names_its_keywords_for_a_used_work_dir(tmp_path, words_file):
    train(config(tmp_path, words_file), progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match=r"resume=True.*overwrite=True"):
        train(config(tmp_path, words_file), progress=False, log=lambda s: None)


def test_resume_after_the_data_moved_says_how_to_point_at_it(tmp_path, words_file):
    train(config(tmp_path, words_file, max_steps=100), progress=False, log=lambda s: None)
    moved = tmp_path / "moved.txt"
    words_file.rename(moved)
    r = cli("fastmlp.train", "-o", tmp_path / "run", "--resume", "--max-steps", 200)
    one_line_error(r, "does not exist", "if it moved, resume with -i NEWPATH")
    r = cli("fastmlp.train", "-o", tmp_path / "run", "--resume", "--max-steps", 200, "-i", moved, "--json",
            "--no-progress")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["steps"] == 200, r.stderr


# -- the lock file itself (a hostile user's third hour) ---------------------------------------
def test_a_refused_run_touches_nothing_of_the_holders(tmp_path, words_file):
    # the holder's save in progress is a temporary file beside model.npz: a refused run must
    # not clean it as a leftover of a killed save
    from fastmlp._files import WorkDirLock

    work = tmp_path / "run"
    work.mkdir()
    holder = WorkDirLock(work)
    saving = work / ".model.npz.abc123.tmp"
    saving.write_bytes(b"half a checkpoint")
    with pytest.raises(WorkDirBusy):
        train(config(tmp_path, words_file, max_steps=10), progress=False, log=lambda s: None, overwrite=True)
    assert saving.read_bytes() == b"half a checkpoint"
    holder.release()
    train(config(tmp_path, words_file, max_steps=10), progress=False, log=lambda s: None, overwrite=True)
    assert not saving.exists()  # the next holder cleans it


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "folder"])
def test_a_lock_file_that_is_not_a_file_is_refused(tmp_path, words_file, kind):


    work = tmp_path / "run"
    work.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = work / ".fastmlp.lock"
    {"symlink": lambda: lock.symlink_to(victim), "dangling": lambda: lock.symlink_to(tmp_path / "nothing"),
     "fifo": lambda: os.mkfifo(lock), "folder": lambda: lock.mkdir()}[kind]()
    r = cli("fastmlp.train", "-i", words_file, "-o", work, "--max-steps", 10)
    one_line_error(r, f"cannot use the lock file '{lock}'")
    assert victim.read_text() == "precious" and not (tmp_path / "nothing").exists()


FORKED_HOLDER = """
import multiprocessing as mp, sys, threading, time
from fastmlp.train import TrainConfig, train
cfg = TrainConfig(input_file=sys.argv[1], work_dir=sys.argv[2], n_hidden=32, init="scaled", max_steps=10**9,
                  eval_interval=10**9)
say = lambda s: print("holding", flush=True) if s.startswith("MLP(") else None  # (logged once the run holds it)
threading.Thread(target=train, args=(cfg,), kwargs=dict(progress=False, log=say), daemon=True).start()
sys.stdin.readline()  # the test says when to fork
child = mp.get_context("fork").Process(target=time.sleep, args=(120,))
child.start()
print(child.pid, flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="POSIX fork")
def test_a_forked_child_does_not_keep_a_killed_holders_lock(tmp_path, words_file):
    p = subprocess.Popen([sys.executable, "-c", FORKED_HOLDER, str(words_file), str(tmp_path / "run")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = None
    cmd = ("fastmlp.train", "-i", words_file, "-o", tmp_path / "run", "--max-steps", 10, "--overwrite")
    try:
        assert p.stdout.readline().strip() == "holding", p.stderr.read()  # the holder holds the work dir
        one_line_error(cli(*cmd), "in use by another run")
        p.stdin.write("fork\n")
        p.stdin.flush()
        child = int(p.stdout.readline())  # the child got the lock's descriptor, and closed it
        one_line_error(cli(*cmd), "in use by another run")  # the parent still holds it
        p.kill()
        p.wait(30)
        r = cli(*cmd)
        assert r.returncode == 0, r.stderr  # the child still runs, and holds nothing
    finally:
        if child:  # first: it holds the pipes open too
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass
        p.kill()
        p.communicate(timeout=30)


def test_a_failed_start_leaves_no_empty_work_dir(tmp_path):
    r = cli("fastmlp.train", "-i", tmp_path / "missing.txt", "-o", tmp_path / "new", "--max-steps", 10)
    one_line_error(r, "does not exist")
    assert not (tmp_path / "new").exists()


# -- checkpoints: every way around the cap ----------------------------------------------------
def hostile(path, **meta_changes):
    """A real small checkpoint whose metadata is rewritten."""
    m = MLP(27, 3, 10, 20, init="scaled")
    ckpt_io.save(path, ckpt_io.Checkpoint(model=m, vocab=fastmlp.data.Vocab(tuple(".abcdefghijklmnopqrstuvwxyz"))))
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(str(np.load(io.BytesIO(members["meta.npy"]))))
    meta.update(meta_changes)
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(meta)))
    members["meta.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, b in members.items():
            zf.writestr(n, b)


@pytest.mark.parametrize("changes,msg", [
    ({"step": 10 ** 30}, "step must be an integer in [0, 1099511627776]"),
    ({"version": 1, "opt_tensors": 10, "optimizer_slots": [], "model": {"vocab_size": 27, "block_size": 3,
      "n_embd": 10, "n_hidden": 2_000_000}}, "with 2 optimizer slots takes 1.30 GiB"),  # v1 counts opt_tensors
    ({"metrics": {"dev_curve": [[1, float("nan")]]}}, "dev_curve must be a list of [step, loss] pairs of finite"),
    ({"metrics": {"dev_curve": [[1, 10 ** 400]]}}, "dev_curve must be a list"),
])
def test_hostile_metadata_is_one_line(tmp_path, changes, msg):
    path = tmp_path / "h.npz"
    hostile(path, **changes)
    r = cli("fastmlp.sample", "--checkpoint", path, "-n", 1)
    one_line_error(r, msg)


def test_a_huge_metadata_text_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "h.npz"
    hostile(path, junk=[[]] * 5_000_000)  # 20 MB of JSON, ~100 KB deflated, gigabytes once parsed
    assert path.stat().st_size < 2 * 2 ** 20
    r = cli("fastmlp.sample", "--checkpoint", path, "-n", 1)
    one_line_error(r, "meta is larger than 16 MB")


@pytest.mark.parametrize("data,why", [
    ({"sha256": "x", "split_seed": float("inf")}, "record of its data is not valid"),
    ({"sha256": "x", "path": [1]}, "record of its data is not valid"),
])
def test_a_hostile_data_record_only_disables_the_marking(tmp_path, data, why):
    path = tmp_path / "h.npz"
    hostile(path, data=data)
    r = cli("fastmlp.sample", "--checkpoint", path, "-n", 2)
    assert r.returncode == 0 and "Traceback" not in r.stderr and why in r.stderr, r.stderr
