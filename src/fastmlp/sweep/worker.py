"""A sweep worker: one process, one OpenMP thread, trials one after another until the
study holds its total of finished (complete or pruned) trials.

How the total stays exact with any number of workers on any number of machines: a
worker starts a trial only while complete + pruned + running trials are fewer than the
total, and a trial that finds, once created, that as many trials numbered before it
are already running, waiting (a retry) or finished is surplus: it ends at once, marked failed with the
attribute "surplus", and counts nowhere. A worker whose study holds running trials
that could still fail waits for them, so the trial of a killed worker is retried."""
from __future__ import annotations

import os
import signal
import threading
import warnings
import time
import zlib
import socket
import sys
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from .. import set_num_threads
from ..config import TrainConfig
from ..run import TrainingDiverged
from ..train import train
from .space import apply_budget, load_space, suggest
from .storage import open_storage, open_study

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
# what fails one trial (a configuration too big for memory, a file error) without ending the worker
FAILS = (ValueError, TypeError, MemoryError, OSError)


class Surplus(Exception):
    """This trial would take the study past its total."""


def counts(study) -> dict:
    c = {"complete": 0, "pruned": 0, "running": 0, "failed": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL and t.user_attrs.get("surplus"):
            continue
        c[{TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
           TrialState.FAIL: "failed", TrialState.WAITING: "waiting"}[t.state]] += 1
    return c


def is_surplus(study, trial, total: int) -> bool:
    # waiting trials count too: a retry of a killed worker's trial is created WAITING and run
    # later; a trial numbered after it that ran as well would take the study past its total
    before = [t for t in study.get_trials(deepcopy=False, states=COUNTED + (TrialState.RUNNING, TrialState.WAITING))
              if t.number < trial.number]
    return len(before) >= total


def trial_config(opts: dict, values: dict, number: int, vocab_size: int = 27) -> TrainConfig:
    values = apply_budget(values, vocab_size)
    if opts.get("max_steps") is not None:
        values["max_steps"] = min(int(values.get("max_steps", opts["max_steps"])), opts["max_steps"])
    cfg = TrainConfig(**{**values, "input_file": opts.get("input_file"), "seed": opts["seed"], "num_threads": 1,
                         "work_dir": str(Path(opts["work_dir"]) / "trials" / f"{number:05d}")})
    cfg.check()
    return cfg


def objective_for(opts: dict, study, params):
    from ..data import Vocab, load_words

    vocab_size = Vocab.from_words(load_words(opts.get("input_file"))).size

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except FAILS as e:  # the trial fails, the study goes on; the reason stays with the trial
            try:
                trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
            except Exception:  # the storage failing too must not hide the first error
                pass
            raise

    def run_trial(trial: optuna.Trial) -> float:
        if is_surplus(study, trial, opts["n_trials"]):
            trial.set_user_attr("surplus", True)
            raise Surplus()
        cfg = trial_config(opts, suggest(trial, params), trial.number, vocab_size)
        trial.set_user_attr("config", {k: v for k, v in cfg.asdict().items() if k not in ("work_dir", "num_threads")})
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("work_dir", cfg.work_dir)

        def report(step: int, dev: float) -> None:
            # at the fraction of the run done (per mille): trials of different lengths compare
            # at the same stage of their schedules
            trial.report(dev, round(1000 * step / cfg.max_steps))
            if trial.should_prune():
                raise optuna.TrialPruned()

        t0 = time.perf_counter()
        try:
            # no PNGs per trial (~1 s each); python -m fastmlp.plot draws them from a trial's checkpoint
            m = train(cfg, progress=False, log=lambda s: None, overwrite=True, on_eval=report, plots=False)
        except TrainingDiverged as e:
            trial.set_user_attr("diverged", str(e))
            raise optuna.TrialPruned() from None
        finally:
            trial.set_user_attr("wall_seconds", round(time.perf_counter() - t0, 3))
        if m["interrupted"]:
            raise KeyboardInterrupt
        for k in ("train_loss", "seconds", "params", "steps"):
            trial.set_user_attr(k, m[k])
        return m["dev_loss"]

    return objective


def run_worker(opts: dict, index: int) -> None:
    """The body of a worker process (fastmlp.sweep starts `jobs` of them)."""
    set_num_threads(1)  # fastmlp's own setting, before any kernel runs: one core per worker
    from tqdm.auto import tqdm

    tqdm.set_lock(threading.RLock())  # not a multiprocessing lock: a killed worker leaks no semaphore
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    storage = open_storage(opts.get("storage"), Path(opts["work_dir"]), opts.get("heartbeat", 5))
    # every worker draws its own startup points: seed, machine and worker index
    seed = (opts["seed"] * 1_000_003 + zlib.crc32(socket.gethostname().encode()) + 7919 * index
            + os.getpid()) % 2**31 if opts.get("distinct_seeds", True) else opts["seed"]
    study = open_study(storage, opts["study"], seed, prune=opts.get("prune", True))
    params = load_space(opts.get("space"))
    objective = objective_for(opts, study, params)
    deadline = None if opts.get("timeout") is None else opts["start"] + opts["timeout"]
    total = opts["n_trials"]
    while deadline is None or time.time() < deadline:
        optuna.storages.fail_stale_trials(study)  # a killed worker's trial: failed, and queued again
        c = counts(study)
        if c["complete"] + c["pruned"] >= total:
            return
        failed = c["failed"] - opts.get("failed_before", 0)  # this run's: a fixed cause may be rerun
        if failed > max(10, 2 * total):
            raise RuntimeError(f"{failed} trials failed in this run (the sweep prints their reasons; the study keeps "
                               "them): fix the cause and rerun the same command, or start another study with --study")
        if c["complete"] + c["pruned"] + c["running"] >= total and not c["waiting"]:
            time.sleep(1.0)  # running trials may still fail and need a retry
            continue
        study.optimize(objective, n_trials=1, catch=(Surplus,) + FAILS)


def end_with_parent(parent_pid: Optional[int]) -> None:
    """A worker must not outlive the sweep that started it (kill -9 of the sweep would
    leave it training as an orphan): on Linux the kernel kills it when its parent dies
    (PR_SET_PDEATHSIG); elsewhere a thread watches the parent's pid. Its running trial
    then stops beating and is failed and retried like a killed worker's."""
    if parent_pid is None:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError
    except (OSError, AttributeError):  # not Linux
        def watch():
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(137)

        threading.Thread(target=watch, name="fastmlp-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(137)


def worker_main(opts: dict, index: int) -> None:
    """multiprocessing target: Ctrl-C (sent to the whole process group) ends the current
    trial as failed and the worker with it; the main process reports."""
    end_with_parent(opts.get("parent_pid"))
    try:
        run_worker(opts, index)
    except KeyboardInterrupt:
        os._exit(130)
    except Exception as e:  # one line for the main process to show
        print(f"fastmlp.sweep worker {index}: error: {e}", file=sys.stderr, flush=True)
        os._exit(1)


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
