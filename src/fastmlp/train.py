"""Training: data -> model -> SGD in the C++ loop -> evaluation -> checkpoint, metrics, plot.

    python -m fastmlp.train                      # the lecture's recipe on names.txt
    python -m fastmlp.train -i words.txt -o out --max-steps 20000 --json

The C++ loop (fastmlp._core.train_steps) runs the steps in chunks with the GIL released;
between chunks this module updates the progress bar, evaluates the dev split and saves
checkpoints. The minibatch sampler's state is part of the checkpoint, so --resume
continues exactly where a run stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import _core
from . import checkpoint as ckpt_io
from ._cli import add_common_args, fail, run_cli
from ._files import atomic_write, atomic_write_json, to_json
from .data import Dataset, load_dataset
from .model import MLP, PARAM_NAMES

SCHEDULES = ("step", "cosine", "constant")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """Every knob of a run. The defaults are the lecture's final recipe."""

    input_file: Optional[str] = None
    work_dir: str = "out"
    block_size: int = 3
    n_embd: int = 10
    n_hidden: int = 200
    init: str = "lecture"
    optimizer: str = "sgd"          # sgd (with --momentum: torch.optim.SGD's momentum) or adamw
    momentum: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9              # AdamW
    beta2: float = 0.999
    weight_decay: float = 0.0       # SGD: g += wd * p; AdamW: decoupled, p *= 1 - lr * wd
    dropout: float = 0.0            # inverted dropout on the hidden layer while training
    batch_size: int = 32
    max_steps: int = 200_000
    learning_rate: float = 0.1
    lr_schedule: str = "step"       # step: lr * factor at every lr_decay_step; cosine; constant
    lr_decay_step: int = 100_000
    lr_decay_factor: float = 0.1
    warmup_steps: int = 0           # linear warm-up from 0 (cosine and step)
    min_lr: float = 0.0             # the cosine schedule's floor
    seed: int = 2147483647          # model init and minibatch sampling
    eval_interval: int = 10_000
    eval_test: bool = False
    num_threads: Optional[int] = None

    def check(self) -> None:
        for name in ("block_size", "n_embd", "n_hidden", "batch_size", "eval_interval", "lr_decay_step"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise ValueError(f"max_steps must be an integer >= 0, got {self.max_steps!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("learning_rate", "lr_decay_factor", "min_lr"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs --optimizer sgd and --momentum > 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")


PRESETS = {
    # the lecture's final recipe: dev loss ~2.17 in 200,000 steps
    "lecture": {},
    # the lecture's model, trained for speed: scaled init, cosine decay; dev ~2.13 in 30,000 steps
    "fast": dict(init="scaled", batch_size=32, max_steps=30_000, learning_rate=0.2, lr_schedule="cosine",
                 min_lr=0.001, eval_interval=1_000),
    # one hidden layer, 8 characters of context, AdamW with decoupled weight decay:
    # dev ~1.957 (two seeds: 1.9585, 1.9558) in 30,000 steps, ~40 s on 2 cores (README table)
    "best": dict(block_size=8, n_embd=32, n_hidden=1024, init="scaled", optimizer="adamw", learning_rate=0.002,
                 lr_schedule="cosine", min_lr=1e-4, batch_size=256, max_steps=30_000, weight_decay=0.1,
                 eval_interval=5_000),
}


class TrainingDiverged(RuntimeError):
    pass


def learning_rates(cfg: TrainConfig, start: int, stop: int) -> np.ndarray:
    """The learning rate of each step in [start, stop), as float32."""
    s = np.arange(start, stop, dtype=np.float64)
    lr0 = cfg.learning_rate
    if cfg.lr_schedule == "step":
        lr = lr0 * cfg.lr_decay_factor ** np.floor(s / cfg.lr_decay_step)
    elif cfg.lr_schedule == "cosine":
        span = max(cfg.max_steps - cfg.warmup_steps, 1)
        progress = np.clip((s - cfg.warmup_steps) / span, 0.0, 1.0)
        lr = cfg.min_lr + 0.5 * (lr0 - cfg.min_lr) * (1 + np.cos(np.pi * progress))
    else:
        lr = np.full_like(s, lr0)
    if cfg.warmup_steps:
        lr = lr * np.minimum(1.0, (s + 1) / cfg.warmup_steps)
    return lr.astype(np.float32)


def optimizer_arguments(cfg: TrainConfig) -> dict:
    """train_steps' optimizer keywords; empty for plain SGD (fused into the products)."""
    if cfg.optimizer == "sgd" and cfg.momentum == 0 and cfg.weight_decay == 0:
        return {}
    if cfg.optimizer == "sgd":
        return {"optimizer": "sgd", "momentum": cfg.momentum, "nesterov": cfg.nesterov,
                "weight_decay": cfg.weight_decay}
    return {"optimizer": "adamw", "beta1": cfg.beta1, "beta2": cfg.beta2, "weight_decay": cfg.weight_decay}


SLOT_ORDER = ["momentum_buffer", "exp_avg", "exp_avg_sq"]  # torch.optim's names for the state


def named_slots(opt_state: list, cfg: TrainConfig) -> dict:
    """train_steps' list of state arrays (5 momentum buffers, or AdamW's 5 m then 5 v) by name."""
    if not opt_state:
        return {}
    slots = ["exp_avg", "exp_avg_sq"] if cfg.optimizer == "adamw" else ["momentum_buffer"]
    return {slot: dict(zip(PARAM_NAMES, opt_state[5 * i:5 * i + 5])) for i, slot in enumerate(slots)}


def data_info(ds: Dataset) -> dict:
    """What a checkpoint records of its data: enough to recognise it and rebuild the split."""
    from .data import SPLIT_RULE, bundled_names

    bundled = ds.path is not None and Path(ds.path).resolve() == bundled_names().resolve()
    return {"sha256": ds.sha256, "path": None if bundled or ds.path is None else str(Path(ds.path).resolve()),
            "bundled": bundled, "words": len(ds.words), "split_seed": ds.split_seed, "split_rule": SPLIT_RULE,
            "split_words": [len(ds.train_words), len(ds.dev_words), len(ds.test_words)]}


def evaluate(model: MLP, ds: Dataset, splits=("train", "dev")) -> dict:
    """Mean loss of whole splits (C++, in chunks, all threads)."""
    return {name: model.loss(*getattr(ds, name)) for name in splits}


class _StopFlag:
    """Turns Ctrl-C into a flag checked between chunks, so an interrupt never lands in
    the middle of bookkeeping; the run then saves and returns."""

    def __init__(self):
        self.stop = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class ThreadChooser:
    """Runs the C++ loop on one thread or on all of them, whichever is measured faster.

    On a quiet machine a team of threads wins even at the lecture's size, but on shared
    cores a busy neighbour makes every barrier wait, and one thread wins. Results do not
    depend on the thread count (every output element has one owner), so switching is
    free; every `probe_every`-th chunk tries the other choice again."""

    def __init__(self, max_threads: int, probe_every: int = 10, fixed: bool = False):
        self.options = [max_threads, 1] if max_threads > 1 and not fixed else [max_threads]
        self.cost: dict = {}  # threads -> seconds per step, smoothed
        self.chunks = 0
        self.probe_every = probe_every

    def pick(self) -> int:
        self.chunks += 1
        for t in self.options:
            if t not in self.cost:
                return t
        best = min(self.options, key=self.cost.__getitem__)
        if len(self.options) > 1 and self.chunks % self.probe_every == 0:
            return next(t for t in self.options if t != best)
        return best

    def record(self, threads: int, seconds_per_step: float) -> None:
        old = self.cost.get(threads)
        self.cost[threads] = seconds_per_step if old is None else 0.5 * (old + seconds_per_step)

    @property
    def best(self) -> int:
        return min(self.options, key=lambda t: self.cost.get(t, float("inf")))


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal
    return tqdm(total=total, initial=initial, unit="step", unit_scale=True, file=sys.stderr,
                disable=None if enabled else True, dynamic_ncols=True, smoothing=0.1)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr), dataset: Optional[Dataset] = None) -> dict:
    """Runs a training as configured and returns its metrics (the --json object)."""
    cfg.check()
    if cfg.num_threads:
        _core.set_num_threads(cfg.num_threads)
    t_start = time.perf_counter()
    ds = dataset if dataset is not None else load_dataset(cfg.input_file, cfg.block_size)
    X, Y = ds.train
    if len(Y) == 0:
        raise ValueError("the training split is empty: the input file needs at least 2 words")
    if cfg.batch_size > len(Y):
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training split ({len(Y)} examples)")
    work = Path(cfg.work_dir)
    ckpt_path = work / ckpt_io.CHECKPOINT_NAME

    if resume:
        ck = ckpt_io.load(ckpt_path)
        if ck.vocab != ds.vocab:
            raise ckpt_io.CheckpointError(f"checkpoint {str(ckpt_path)!r} was trained on another vocabulary "
                                          f"({''.join(ck.vocab.itos)!r} vs {''.join(ds.vocab.itos)!r})")
        want = (cfg.block_size, cfg.n_embd, cfg.n_hidden)
        have = (ck.model.block_size, ck.model.n_embd, ck.model.n_hidden)
        if want != have:
            raise ckpt_io.CheckpointError(f"checkpoint {str(ckpt_path)!r} has (block_size, n_embd, n_hidden) = "
                                          f"{have}, but this run asks for {want}")
        model, step = ck.model, ck.step
        rng_state = np.array(ck.rng_state, dtype=np.uint64)
        opt_state = [ck.optimizer_state[slot][k] for slot in sorted(ck.optimizer_state, key=SLOT_ORDER.index)
                     for k in PARAM_NAMES]
        opt_step = ck.opt_step
        history = [np.asarray(ck.loss_history, np.float32)]
        log(f"resuming from {ckpt_path} at step {step:,}")
    else:
        model = MLP(ds.vocab.size, cfg.block_size, cfg.n_embd, cfg.n_hidden, seed=cfg.seed, init=cfg.init)
        step = 0
        rng_state = _core.rng_state(cfg.seed)
        history = []
        opt_state, opt_step = [], 0
    opt_kw = optimizer_arguments(cfg)
    if opt_kw:
        n_state = 10 if cfg.optimizer == "adamw" else 5
        if len(opt_state) != n_state:  # a fresh run, or a resume that changes optimizer: start from zeros
            opt_state = [np.zeros_like(model.params[k]) for _ in range(n_state // 5) for k in PARAM_NAMES]
            opt_step = 0
    else:
        opt_state, opt_step = [], 0
    first_step = step
    log(f"{model} | train/dev/test examples {ds.sizes['train']:,}/{ds.sizes['dev']:,}/{ds.sizes['test']:,} | "
        f"kernels {_core.get_isa()}, {_core.get_num_threads()} threads"
        + ("" if cfg.num_threads else " (training: 1 or all, whichever is measured faster)"))

    def checkpoint(metrics: Optional[dict] = None) -> Path:
        return ckpt_io.save(ckpt_path, ckpt_io.Checkpoint(
            model=model, vocab=ds.vocab, step=step, rng_state=rng_state,
            loss_history=np.concatenate(history) if history else None,
            train_config=dataclasses.asdict(cfg), data=data_info(ds), metrics=metrics or {},
            optimizer_state=named_slots(opt_state, cfg), opt_step=opt_step))

    P = [model.params[k] for k in PARAM_NAMES]
    # the loss before any update (or a uniform guess's, if larger): twice it means divergence
    baseline = max(float(history[0][0]), math.log(ds.vocab.size)) if history and len(history[0]) else None

    def diverged(at: int, loss: float, lr: float, exploded: bool = False):
        what = f"rose to {loss:.4g} (over twice its start, averaged over 100 steps)" if exploded else f"became {loss}"
        kept = (f"The last good checkpoint ({str(ckpt_path)!r}) was kept." if ckpt_path.exists()
                else "No checkpoint was written.")
        raise TrainingDiverged(f"the loss {what} at step {at:,} (learning rate {lr:.4g}): training stopped. "
                               f"Try a smaller --learning-rate. {kept}")

    dev_curve = []  # (step, dev loss)
    train_seconds = 0.0
    interrupted = False
    chunk = 1000
    all_threads = _core.get_num_threads()
    chooser = ThreadChooser(all_threads, fixed=cfg.num_threads is not None)  # --num-threads fixes it
    with _StopFlag() as flag, _progress_bar(cfg.max_steps, step, progress) as bar:
        while step < cfg.max_steps and not flag.stop:
            next_eval = (step // cfg.eval_interval + 1) * cfg.eval_interval
            n = min(chunk, next_eval - step, cfg.max_steps - step)
            lrs = learning_rates(cfg, step, step + n)
            threads = chooser.pick()
            _core.set_num_threads(threads)
            t0 = time.perf_counter()
            losses = _core.train_steps(*P, X, Y, cfg.batch_size, lrs, rng_state, **opt_kw,
                                       **({"state": opt_state, "opt_step": opt_step} if opt_kw else {}),
                                       dropout=cfg.dropout, dropout_seed=cfg.seed, step0=step)
            dt = time.perf_counter() - t0
            _core.set_num_threads(all_threads)  # evaluation always uses every thread
            chooser.record(threads, dt / max(len(losses), 1))
            train_seconds += dt
            if len(losses) < n or not np.isfinite(losses[-1]):  # the C++ loop stops at NaN/inf
                diverged(step + len(losses) - 1, losses[-1], lrs[len(losses) - 1])
            if baseline is None:
                baseline = max(float(losses[0]), math.log(ds.vocab.size))
            recent = float(np.mean(losses[-100:]))
            if recent > 2 * baseline:  # finite but exploding (tanh + softmax keep it finite for long)
                diverged(step + n - 1, recent, lrs[-1], exploded=True)
            history.append(losses)
            step += n
            opt_step += n
            chunk = int(min(max(0.25 * n / max(dt, 1e-9), 100), 50_000))  # ~0.25 s per chunk
            bar.update(n)
            postfix = {"loss": f"{recent:.4f}", "lr": f"{lrs[-1]:.3g}"}
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                dev = model.loss(*ds.dev)
                dev_curve.append((step, dev))
                postfix["dev"] = f"{dev:.4f}"
                checkpoint()
                if bar.disable and step < cfg.max_steps:  # no bar (not a terminal): one line per eval
                    log(f"step {step:>9,} | loss {postfix['loss']} | dev {dev:.4f} | "
                        f"{(step - first_step) / max(train_seconds, 1e-9):,.0f} steps/s")
            bar.set_postfix(postfix, refresh=False)
        interrupted = flag.stop

    splits = ("train", "dev", "test") if cfg.eval_test else ("train", "dev")
    final = evaluate(model, ds, splits)
    metrics = {
        "train_loss": final["train"], "dev_loss": final["dev"], "test_loss": final.get("test"),
        "steps": step, "seconds": round(train_seconds, 3),
        "total_seconds": round(time.perf_counter() - t_start, 3),
        "us_per_step": round(1e6 * train_seconds / (step - first_step), 3) if step > first_step else None,
        "examples": ds.sizes, "params": model.num_params, "interrupted": interrupted,
        "checkpoint": str(ckpt_path), "work_dir": str(work),
        "config": dataclasses.asdict(cfg), "dev_curve": dev_curve,
        "isa": _core.get_isa(), "threads": chooser.best,
    }
    checkpoint(metrics)
    all_losses = np.concatenate(history) if history else np.zeros(0, np.float32)
    atomic_write(work / "loss_history.npy", lambda f: np.save(f, all_losses))
    atomic_write_json(work / "metrics.json", metrics)
    written = [ckpt_io.CHECKPOINT_NAME, "metrics.json", "loss_history.npy"]
    try:
        from .plots import plot_embedding, plot_loss

        plot_loss(all_losses, work / "loss.png", dev_curve=dev_curve)
        plot_embedding(model.params["C"], ds.vocab.itos, work / "embedding.png")
        written += ["loss.png", "embedding.png"]
    except ImportError as e:
        log(f"note: {e}; skipped loss.png and embedding.png")
    metrics["files"] = written
    return metrics


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastmlp.train",
        description="Train the makemore MLP (Bengio et al. 2003) on a file of words, one per line. "
                    "Defaults reproduce the lecture's final recipe (dev loss ~2.17).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p)
    p.add_argument("--preset", choices=sorted(PRESETS), default="lecture",
                   help="a named recipe; flags given explicitly override its values")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd (lecture) or adamw")
    g.add_argument("--momentum", type=float, help="sgd: momentum (0: plain SGD, the lecture)")
    g.add_argument("--nesterov", action="store_true", help="sgd: Nesterov momentum")
    g.add_argument("--weight-decay", type=float, help="sgd: L2 added to the gradient; adamw: decoupled decay")
    g.add_argument("--beta1", type=float, help="adamw: first-moment decay (0.9)")
    g.add_argument("--beta2", type=float, help="adamw: second-moment decay (0.999)")
    g.add_argument("--dropout", type=float, help="dropout probability on the hidden layer (0: none)")
    g.add_argument("-b", "--batch-size", type=int, help="minibatch size (lecture: 32)")
    g.add_argument("--max-steps", type=int, help="SGD steps in total (lecture: 200000)")
    g.add_argument("-l", "--learning-rate", type=float, help="initial learning rate (lecture: 0.1)")
    g.add_argument("--lr-schedule", choices=SCHEDULES, help="step decay (lecture), cosine, or constant")
    g.add_argument("--lr-decay-step", type=int, help="step schedule: multiply the rate every this many steps")
    g.add_argument("--lr-decay-factor", type=float, help="step schedule: by this factor (lecture: 0.1)")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps")
    g.add_argument("--min-lr", type=float, help="cosine schedule: final learning rate")
    g = p.add_argument_group("run")
    g.add_argument("--eval-interval", type=int, help="evaluate dev and save a checkpoint every this many steps")
    g.add_argument("--eval-test", action="store_true",
                   help="also report the test loss (the lecture's rule: touch the test split rarely)")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    g.add_argument("--json", action="store_true",
                   help="print one JSON object with the results on stdout (progress and notes go to stderr)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = dict(PRESETS[args.preset])
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None and v is not False:
            values[f.name] = v
    return TrainConfig(**values)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body():
        cfg = config_from_args(args)
        out = sys.stderr if args.json else sys.stdout
        say = lambda s: print(s, file=out, flush=True)
        try:
            m = train(cfg, resume=args.resume, progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr))
        except TrainingDiverged as e:
            fail(str(e), code=3)
        if args.json:
            print(to_json(m))
        say(f"train loss {m['train_loss']:.4f} | dev loss {m['dev_loss']:.4f}"
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
