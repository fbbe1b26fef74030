"""Many experiments at once: a hyperparameter search on Optuna, one trial per core, many
machines through one database.

    python -m fastmlp.sweep -o sweep --n-trials 40 --jobs 2 --max-steps 20000
    python -m fastmlp.sweep --storage postgresql://user:pw@host/db --study names   # on each machine
    optuna-dashboard sweep/study.journal                                           # to watch it (or the URL)

Workers are processes, each training with one thread (TPE with constant liar keeps
them apart; a median pruner stops bad trials at an evaluation). Selection uses the dev
split only; the best trial's test loss is evaluated once, at the end. Needs the sweep
extra: pip install ".[sweep]".
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Optional

from .._cli import ArgumentParser, int_arg, run_cli
from .._files import to_json

DEFAULT_STUDY = "fastmlp"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m fastmlp.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--input-file", help="word file (default: $FASTMLP_DATA, else the bundled names.txt)")
    p.add_argument("-o", "--work-dir", default="sweep", help="trials, study journal, leaderboard, plots, best.json")
    p.add_argument("--study", default=DEFAULT_STUDY, help="the study's name; rerunning a command resumes it")
    p.add_argument("--storage", help="a database URL shared by machines (postgresql://user:pw@host:port/db); "
                                     "default: a journal file in the work dir, shared by this machine's workers")
    p.add_argument("--n-trials", type=int_arg("--n-trials", 1, 1 << 20), default=40,
                   help="the study's total of finished (complete or pruned) trials, across every worker and machine")
    p.add_argument("--jobs", type=int_arg("--jobs", 1, 1024), default=None,
                   help="worker processes on this machine, one core each (default: the cores this process may use)")
    p.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    p.add_argument("--space", help="a JSON or TOML search space (default: fastmlp.sweep.space.DEFAULT_SPACE)")
    p.add_argument("--max-steps", type=int_arg("--max-steps", 1, 1 << 40), help="cap on any trial's steps")
    p.add_argument("--seed", type=int_arg("--seed", 0, 2**31 - 1), default=0, help="sampler and training seed")
    p.add_argument("--heartbeat", type=int_arg("--heartbeat", 1, 3600), default=5,
                   help="seconds between a running trial's heartbeats; a trial silent for 4 of them (its worker "
                        "was killed) is failed and retried")
    p.add_argument("--json", action="store_true", help="one JSON object with the results on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="trial", file=sys.stderr, disable=None if enabled else True, dynamic_ncols=True)


def sweep(opts: dict, log=lambda s: print(s, file=sys.stderr, flush=True), progress: bool = True) -> dict:
    """Runs (or resumes) a study as opts say (the CLI's options as a dict) and returns the
    --json object."""
    from .report import best_test_loss, write_best, write_leaderboard, write_plots
    from .space import load_space
    from .storage import masked, open_storage, open_study
    from .worker import counts, worker_main

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    from ..run import prepare_work_dir

    work = Path(opts["work_dir"])
    load_space(opts.get("space"))  # a bad space stops here, before anything is written
    if opts.get("timeout") is not None and not opts["timeout"] > 0:
        raise ValueError(f"--timeout must be a number of seconds > 0, got {opts['timeout']}")
    prepare_work_dir(work)  # a file, or a folder we cannot write to: one line, before the study is opened
    storage = open_storage(opts.get("storage"), work, opts.get("heartbeat", 5))  # a bad URL stops here, one line
    study = open_study(storage, opts["study"], opts["seed"])
    jobs = opts.get("jobs") or usable_cores()
    before = counts(study)
    first_new = len(study.get_trials(deepcopy=False))  # this run's trials are numbered from here
    # the workers end with this process (parent_pid), and count only this run's failures
    opts = dict(opts, start=time.time(), parent_pid=os.getpid(), failed_before=before["failed"])
    where = masked(opts["storage"]) if opts.get("storage") else work / "study.journal"
    log(f"study {opts['study']!r} in {where}: {before['complete'] + before['pruned']} of {opts['n_trials']} "
        f"trials done; {jobs} worker{'s' if jobs != 1 else ''} here")
    ctx = multiprocessing.get_context("spawn")
    start = lambda i: ctx.Process(target=worker_main, args=(opts, i), name=f"fastmlp-sweep-{i}", daemon=False)
    procs = [start(i) for i in range(jobs)]
    restarts, bad = 0, []
    t0 = time.perf_counter()
    interrupted = False
    with _progress(opts["n_trials"], progress) as bar:
        for p in procs:
            p.start()
        try:
            while True:
                _update(bar, study, counts)
                for i, p in enumerate(procs):
                    if p.is_alive() or p.exitcode is None or p.exitcode == 0 or p in bad:
                        continue
                    bad.append(p)
                    if p.exitcode < 0 and restarts < 3 * jobs:  # killed (kill -9, OOM killer): replace it
                        log(f"worker {i} was killed (signal {-p.exitcode}); its trial will be retried; "
                            "starting another worker")
                        restarts += 1
                        procs[i] = start(i)
                        procs[i].start()
                if not any(p.is_alive() for p in procs):
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:  # the workers got it too: they end their trial as failed
            interrupted = True
            for p in procs:
                p.join(30)
        _update(bar, study, counts)
    seconds = time.perf_counter() - t0
    c = counts(study)
    failed_workers = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if failed_workers and not interrupted:
        log(f"warning: {len(failed_workers)} of {jobs} workers ended with an error (exit codes "
            f"{sorted(set(failed_workers))})")
    errors = [(t.number, t.user_attrs["error"]) for t in study.get_trials(deepcopy=False)
              if t.state == optuna.trial.TrialState.FAIL and "error" in t.user_attrs and t.number >= first_new]
    for number, error in errors[:3]:
        log(f"trial {number} failed: {error}")
    board = write_leaderboard(study, work)
    plots = write_plots(study, work)
    best = write_best(study, work)
    test = None if interrupted else best_test_loss(study, work, log)
    return {"study": opts["study"], "storage": str(where),
            "trials": {k: c[k] for k in ("complete", "pruned", "failed")},
            "errors": [{"trial": n, "error": e} for n, e in errors], "best": best, "test_loss": test,
            "seconds": round(seconds, 3), "work_dir": str(work), "jobs": jobs, "interrupted": interrupted,
            "worker_errors": len(failed_workers), "leaderboard": board, "plots": plots}


def _update(bar, study, counts) -> None:
    c = counts(study)
    done = c["complete"] + c["pruned"]
    bar.update(max(0, done - bar.n))
    try:
        best = f"{study.best_value:.4f}"
    except ValueError:
        best = "-"
    bar.set_postfix({"complete": c["complete"], "pruned": c["pruned"], "failed": c["failed"], "best": best},
                    refresh=False)


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body():
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ImportError('sweeps need Optuna: pip install "fastmlp[sweep]"') from None
        from .storage import StorageError
        from .space import SpaceError

        opts = {k: getattr(args, k) for k in ("input_file", "work_dir", "study", "storage", "n_trials", "jobs",
                                              "timeout", "space", "max_steps", "seed", "heartbeat")}
        try:
            r = sweep(opts, progress=not args.no_progress)
        except (StorageError, SpaceError) as e:
            raise ValueError(str(e)) from None
        out = sys.stderr if args.json else sys.stdout
        if args.json:
            print(to_json({k: v for k, v in r.items() if k not in ("leaderboard", "plots")}))
        t = r["trials"]
        print(f"{t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed in {r['seconds']:.0f} s "
              f"({r['jobs']} worker{'s' if r['jobs'] != 1 else ''})", file=out)
        if r["best"]:
            print(r["leaderboard"].rstrip(), file=out)
            work = Path(r["work_dir"])
            print(f"best: trial {r['best']['trial']}, dev loss {r['best']['dev_loss']:.4f}; retrain with "
                  f"python -m fastmlp.train --config {work / 'best.json'} -o {work / 'winner'}", file=out)
        if r["test_loss"] is not None:
            print(f"test loss of the best trial (evaluated once): {r['test_loss']:.4f}", file=out)
        written = ["leaderboard.md", "leaderboard.csv"] + (["best.json"] if r["best"] else []) + \
            [x for x in r["plots"] if not x.startswith("skipped")]
        print(f"wrote {', '.join(written)} in {r['work_dir']}", file=out)
        if r["interrupted"]:
            print("interrupted: rerun the same command to resume the study (its finished trials are kept)",
                  file=sys.stderr)
            return 130
        return 1 if r["worker_errors"] else 0

    return run_cli(parser, body)
