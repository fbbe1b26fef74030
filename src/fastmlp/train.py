"""Training: data -> model -> steps in the C++ loop -> evaluation -> checkpoint, metrics, plots.

    python -m fastmlp.train                      # the lecture's recipe on names.txt
    python -m fastmlp.train -i words.txt -o out --max-steps 20000 --json
    python -m fastmlp.train -o out --resume      # continue a run with its saved configuration

The steps run in chunks in a worker thread with the GIL released, so the main thread
stays free for the progress bar and Ctrl-C: the first Ctrl-C stops the C++ loop between
two steps, saves and exits with status 130; a second one exits at once (the last
checkpoint stays). The minibatch sampler's and the optimizer's state are part of the
checkpoint, so --resume continues exactly where a run stopped.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import signal
import sys
import threading
from typing import Callable, Optional

import numpy as np

from . import _core
from ._cli import ArgumentParser, add_common_args, fail, int_arg, run_cli
from ._files import to_json
from ._threads import ThreadChooser
from .config import OPTIMIZERS, PRESETS, SCHEDULES, TrainConfig, learning_rates  # noqa: F401 (re-exported)
from .data import Dataset
from .run import Run, TrainingDiverged  # noqa: F401 (re-exported)

CHUNK_SECONDS = 0.25  # a chunk of steps between two looks at the clock, the bar and Ctrl-C
PROBE_SECONDS = 0.03  # a chunk measuring the other thread count
FIRST_CHUNK = 16      # steps: small, so that a huge model's first chunk is short too


class _StopFlag:
    """Ctrl-C sets stop[0], which the C++ loop polls between steps; the run then saves and
    returns. A second Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self, log: Callable[[str], None]):
        self.stop = np.zeros(1, np.int32)
        self._old = None
        self._log = log

    @property
    def requested(self) -> bool:
        return bool(self.stop[0])

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop[0]:
            raise KeyboardInterrupt
        self.stop[0] = 1
        self._log("stopping after this step and saving (Ctrl-C again to quit at once)")

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal
    return tqdm(total=total, initial=initial, unit="step", unit_scale=True, file=sys.stderr,
                disable=None if enabled else True, dynamic_ncols=True, smoothing=0.1)


def _wait(future: concurrent.futures.Future):
    """The result of a chunk; waiting in short slices keeps Ctrl-C deliverable."""
    while True:
        try:
            return future.result(timeout=0.2)
        except concurrent.futures.TimeoutError:
            continue


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr), dataset: Optional[Dataset] = None,
          overwrite: bool = False, overrides: Optional[dict] = None, on_eval: Optional[Callable] = None,
          plots: bool = True) -> dict:
    """Runs a training as configured and returns its metrics (the --json object).

    resume: continue the checkpoint in cfg.work_dir with its saved configuration; the
    fields of `overrides` (default: those of cfg that differ from the saved ones) may
    change only what config.RESUME_MAY_CHANGE lists (max_steps, eval_interval, num_threads,
    eval_test, input_file, diagnostics, diag_interval, tensorboard).
    overwrite: start afresh even if cfg.work_dir holds a checkpoint.
    on_eval(step, dev_loss): called after each evaluation (a sweep's pruner); may raise
    to end the run.
    plots: draw loss.png and embedding.png at the end (a sweep's trials skip them: ~1 s each)."""
    tensorboard = (overrides or {}).get("tensorboard", cfg.tensorboard)
    if tensorboard:  # a missing extra or an unusable folder: before the work dir is touched
        from .tensorboard import check_writer

        check_writer(tensorboard)
    if resume:
        if overrides is None:
            from . import checkpoint as ckpt_io
            from .config import resume_config

            saved = ckpt_io.load(cfg.work_dir).train_config
            base = resume_config(saved, {}).asdict() if saved else cfg.asdict()
            overrides = {k: v for k, v in cfg.asdict().items() if k not in base or base[k] != v}
        run = Run.resume(cfg.work_dir, overrides, dataset=dataset, log=log)
    else:
        run = Run.start(cfg, dataset=dataset, overwrite=overwrite, log=log)
    with run:  # holds the work dir until the run's files are written
        tb = None
        if run.cfg.tensorboard:
            from .tensorboard import open_writer

            tb = open_writer(run.cfg.tensorboard)  # a missing extra or a bad folder: before any training
        try:
            return _train(run, progress, log, on_eval, plots, tb)
        finally:
            if tb is not None:
                tb.close()


INIT_WARN = 1.5  # a first loss this many times a uniform guess's: the output layer is too confident


def initial_loss_note(loss: float, vocab_size: int) -> str:
    """Part 3's first lesson: the loss before any update, next to a uniform guess's."""
    uniform = math.log(vocab_size)
    line = f"loss at step 0: {loss:.4f}; a uniform guess gives -log(1/{vocab_size}) = {uniform:.4f}"
    if loss > INIT_WARN * uniform:
        line += (f" -- {loss / uniform:.1f}x that: the output layer's initialisation is too confident (confidently "
                 "wrong at the start); --init scaled starts near the uniform guess")
    return line


def _train(run: Run, progress: bool, log, on_eval, plots: bool, tb=None) -> dict:
    cfg = run.cfg
    all_threads = cfg.num_threads or _core.get_num_threads()
    chooser = ThreadChooser(all_threads, fixed=cfg.num_threads is not None)  # --num-threads fixes it
    log(f"{run.model} | train/dev/test examples {run.ds.sizes['train']:,}/{run.ds.sizes['dev']:,}/"
        f"{run.ds.sizes['test']:,} | kernels {_core.get_isa()}, {all_threads} thread{'s' if all_threads != 1 else ''}"
        + ("" if cfg.num_threads else " (training: 1 or all, whichever is measured faster)"))
    per_step = None  # seconds, from the last chunk
    with _StopFlag(log) as flag, _progress_bar(cfg.max_steps, run.step, progress) as bar, \
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fastmlp-train") as worker:
        while not run.done and not flag.requested:
            threads = chooser.pick()
            # a probe of the other thread count is short: a few dozen milliseconds
            want = FIRST_CHUNK if per_step is None else \
                (PROBE_SECONDS if chooser.probing else CHUNK_SECONDS) / max(per_step, 1e-9)
            n = run.next_chunk(int(min(max(want, FIRST_CHUNK), 50_000)))
            seconds = run.train_seconds
            losses = _wait(worker.submit(run.step_chunk, n, threads, flag.stop))
            dt = run.train_seconds - seconds
            if len(losses):
                chooser.record(threads, dt / len(losses))
                bar.update(len(losses))
                per_step = dt / len(losses)
                if run.step == run.first_step + len(losses) and run.first_step == 0:
                    bar.clear()
                    log(initial_loss_note(float(losses[0]), run.ds.vocab.size))
                    bar.refresh()
                if tb is not None:
                    tb.chunk(run.step, losses, learning_rates(cfg, run.step - 1, run.step)[0])
                    for d in run.diagnostics(since=run.step - len(losses)):  # recorded in this chunk
                        tb.diagnostics(d)
            postfix = {"loss": f"{float(np.mean(run.history[-1][-100:])):.4f}" if len(losses) else "-",
                       "lr": f"{learning_rates(cfg, run.step - 1, run.step)[0]:.3g}"}
            if run.at_eval and not flag.requested:
                dev = run.eval_dev(chooser.top)
                postfix["dev"] = f"{dev:.4f}"
                if tb is not None:
                    tb.dev(run.step, dev)
                if bar.disable and not run.done:  # no bar (not a terminal): one line per eval
                    log(f"step {run.step:>9,} | loss {postfix['loss']} | dev {dev:.4f} | "
                        f"{(run.step - run.first_step) / max(run.train_seconds, 1e-9):,.0f} steps/s")
                if on_eval is not None:
                    on_eval(run.step, dev)
            bar.set_postfix(postfix, refresh=False)
        interrupted = flag.requested
    return run.finish(interrupted, chooser.top, extra={"threads": chooser.best}, plots=plots)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m fastmlp.train",
        description="Train the makemore MLP (Bengio et al. 2003) on a file of words, one per line. "
                    "Defaults reproduce the lecture's final recipe (dev loss ~2.17).")
    add_common_args(p)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="a named recipe (default: lecture); flags given explicitly override its values")
    p.add_argument("--config", help="a JSON file of TrainConfig fields (e.g. a sweep's best.json); "
                                    "flags given explicitly override it")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd (lecture) or adamw")
    g.add_argument("--momentum", type=float, help="sgd: momentum (0: plain SGD, the lecture)")
    g.add_argument("--nesterov", action="store_true", default=None, help="sgd: Nesterov momentum")
    g.add_argument("--weight-decay", type=float, help="sgd: L2 added to the gradient; adamw: decoupled decay")
    g.add_argument("--beta1", type=float, help="adamw: first-moment decay (0.9)")
    g.add_argument("--beta2", type=float, help="adamw: second-moment decay (0.999)")
    g.add_argument("--dropout", type=float, help="dropout probability on every hidden layer's output (0: none)")
    g.add_argument("-b", "--batch-size", type=int_arg("--batch-size", 1, 1 << 30), help="minibatch size (lecture: 32)")
    g.add_argument("--max-steps", type=int_arg("--max-steps", 0, 1 << 40), help="steps in total (lecture: 200000)")
    g.add_argument("-l", "--learning-rate", type=float, help="initial learning rate (lecture: 0.1)")
    g.add_argument("--lr-schedule", choices=SCHEDULES, help="step decay (lecture), cosine, or constant")
    g.add_argument("--lr-decay-step", type=int_arg("--lr-decay-step", 1, 1 << 40),
                   help="step schedule: multiply the rate every this many steps")
    g.add_argument("--lr-decay-factor", type=float, help="step schedule: by this factor (lecture: 0.1)")
    g.add_argument("--warmup-steps", type=int_arg("--warmup-steps", 0, 1 << 40), help="linear warm-up steps")
    g.add_argument("--min-lr", type=float, help="cosine schedule: final learning rate")
    g = p.add_argument_group("run")
    g.add_argument("--eval-interval", type=int_arg("--eval-interval", 1, 1 << 40),
                   help="evaluate dev and save a checkpoint every this many steps")
    g.add_argument("--eval-test", action="store_true", default=None,
                   help="also report the test loss (the lecture's rule: touch the test split rarely)")
    g.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --work-dir with its saved configuration (may change only "
                        "--max-steps, --eval-interval, --num-threads, --eval-test, -i, and what it watches: "
                        "--diagnostics, --diag-interval, --tensorboard)")
    g.add_argument("--overwrite", action="store_true", help="start afresh even if --work-dir holds a checkpoint")
    g.add_argument("--json", action="store_true",
                   help="print one JSON object with the results on stdout (progress and notes go to stderr)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("looking inside (makemore part 3)")
    g.add_argument("--diagnostics", action="store_true", default=None,
                   help="record the hidden layer's activations and gradients and every parameter's grad:data and "
                        "update:data ratios inside the training loop; draws diagnostics.png and saturation.png")
    g.add_argument("--diag-interval", type=int_arg("--diag-interval", 1, 1 << 40),
                   help="record every this many steps (implies --diagnostics; default: about 250 records a run, "
                        "at least 50 steps apart)")
    g.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard event files to DIR: losses, learning rate, and with --diagnostics the "
                        "saturation, ratios and histograms over steps (pip install \"fastmlp[tensorboard]\")")
    return p


def explicit_fields(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given on the command line (every flag defaults to None)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    if "diag_interval" in given:  # --diag-interval implies --diagnostics
        given.setdefault("diagnostics", True)
    return given


def load_config_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read --config {path!r}: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"--config {path!r} is not JSON: {e}") from None
    values = values.get("config", values) if isinstance(values, dict) else values  # best.json nests it
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(values, dict) or not set(values) <= fields:
        bad = sorted(set(values) - fields) if isinstance(values, dict) else type(values).__name__
        raise ValueError(f"--config {path!r} must be a JSON object of TrainConfig fields; unknown: {bad}")
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset (default lecture), then --config, then the flags given explicitly."""
    values = dict(PRESETS[args.preset or "lecture"])
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    values.update(explicit_fields(args))
    return TrainConfig(**values)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body():
        out = sys.stderr if args.json else sys.stdout
        say = lambda s: print(s, file=out, flush=True)
        log = lambda s: print(s, file=sys.stderr, flush=True)
        if args.resume and args.overwrite:
            fail("--resume and --overwrite contradict each other: choose one")
        try:
            if args.resume:
                overrides = explicit_fields(args)
                if args.preset:
                    overrides = dict(PRESETS[args.preset], **overrides)
                if args.config:
                    overrides = dict(load_config_file(args.config), **overrides)
                cfg = TrainConfig(work_dir=args.work_dir or "out")
                m = train(cfg, resume=True, progress=not args.no_progress, log=log, overrides=overrides)
            else:
                m = train(config_from_args(args), progress=not args.no_progress, log=log, overwrite=args.overwrite)
        except TrainingDiverged as e:
            fail(str(e), code=3)
        if args.json:
            print(to_json(m))
        say((f"train loss {m['train_loss']:.4f} | " if m["train_loss"] is not None else "")
            + f"dev loss {m['dev_loss']:.4f}"
            + (f" | test loss {m['test_loss']:.4f}" if m["test_loss"] is not None else "")
            + f" | {m['steps']:,} steps in {m['seconds']:.1f} s"
            + (f" ({m['us_per_step']:.1f} us/step)" if m["us_per_step"] else ""))
        say(f"wrote {', '.join(m['files'])} in {m['work_dir']}")
        if m["interrupted"]:
            say(f"interrupted at step {m['steps']:,}: continue with --resume -o {m['work_dir']}")
            return 130
        return 0

    return run_cli(parser, body)


if __name__ == "__main__":
    sys.exit(main())
