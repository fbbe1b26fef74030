"""A training run in a work dir: start it (or resume it), run chunks of steps in the C++
loop, evaluate, checkpoint, finish. fastmlp.train.train() drives it; so can you:

    with Run.start(TrainConfig(work_dir="out", max_steps=5000)) as run:
        while not run.done:
            run.step_chunk(run.next_chunk(1000))
        metrics = run.finish()

A run holds its work dir (fastmlp._files.WorkDirLock) from start() or resume() until
close() (or the end of the with block): a second run on the same folder, in this
process or another, is refused, naming the holder's pid.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from . import _core
from . import checkpoint as ckpt_io
from ._files import WorkDirLock, atomic_write, atomic_write_json, remove_stale_temp_files
from .config import TrainConfig, learning_rates, resume_config
from .data import SPLIT_RULE, DataError, Dataset, bundled_names, load_dataset
from .diagnostics import default_interval, diag_arg, parse_record, record_length, steps_to_record, summary
from .model import MLP, require_memory

OUTPUT_FILES = (ckpt_io.CHECKPOINT_NAME, "metrics.json", "loss_history.npy", "loss.png", "embedding.png",
                "diagnostics.png", "saturation.png")


class TrainingDiverged(RuntimeError):
    pass


def data_info(ds: Dataset) -> dict:
    """What a checkpoint records of its data: enough to recognise it and rebuild the split."""
    bundled = ds.path is not None and Path(ds.path).resolve() == bundled_names().resolve()
    return {"sha256": ds.sha256, "path": None if bundled or ds.path is None else str(Path(ds.path).resolve()),
            "bundled": bundled, "words": len(ds.words), "split_seed": ds.split_seed, "split_rule": SPLIT_RULE,
            "split_words": [len(ds.train_words), len(ds.dev_words), len(ds.test_words)]}


def prepare_work_dir(work: Path) -> None:
    """Makes sure the work dir can take a checkpoint before any training is done: it is
    (or can be made) a folder we can write to."""
    if work.exists() and not work.is_dir():
        raise ValueError(f"work dir {str(work)!r} exists and is not a folder")
    try:
        work.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=work, prefix=".fastmlp-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write to work dir {str(work)!r}: {e.strerror or e}") from None


def hold_work_dir(work: Path) -> WorkDirLock:
    """The work dir's lock; then, as its holder, the leftovers of a killed save are removed
    (before it, they could be another run's save in progress)."""
    lock = WorkDirLock(work)
    for name in OUTPUT_FILES:
        remove_stale_temp_files(work, name)
    return lock


def check_dataset(ds: Dataset, batch_size: int) -> None:
    n = ds.sizes
    words = [len(ds.train_words), len(ds.dev_words), len(ds.test_words)]
    if n["train"] == 0 or n["dev"] == 0:
        raise ValueError(f"the {'training' if n['train'] == 0 else 'dev'} split is empty: {len(ds.words)} words "
                         f"split 80/10/10 give {words[0]}/{words[1]}/{words[2]} words; the lecture's split needs "
                         "at least 6 words")
    if batch_size > n["train"]:
        raise ValueError(f"batch_size {batch_size} is larger than the training split ({n['train']} examples)")


def check_memory(cfg: TrainConfig, vocab_size: int) -> None:
    """Refuses, in one line and before anything is allocated, a model that cannot fit in
    this machine's memory (a depth x width past it)."""
    slots = 2 if cfg.optimizer == "adamw" else 1 if (cfg.momentum or cfg.weight_decay) else 0
    require_memory(vocab_size, cfg.block_size, cfg.n_embd, cfg.n_hidden, cfg.n_layers, cfg.batch_size, slots)


class Run:
    """The state of one training run; see the module docstring."""

    def __init__(self, cfg: TrainConfig, ds: Dataset, model: MLP, step: int, rng_state: np.ndarray,
                 opt, history: List[np.ndarray], dev_curve: list, log: Callable[[str], None],
                 lock: Optional[WorkDirLock] = None):
        self.cfg, self.ds, self.model, self.step = cfg, ds, model, step
        self.lock = lock
        self.rng_state, self.opt, self.history, self.dev_curve, self.log = rng_state, opt, history, dev_curve, log
        self.work = Path(cfg.work_dir)
        self.ckpt_path = self.work / ckpt_io.CHECKPOINT_NAME
        self.first_step = step
        self.train_seconds = 0.0
        self.t_start = time.perf_counter()
        self.diag_steps: List[int] = []           # --diagnostics: the steps recorded, and their records
        self.diag_records: List[np.ndarray] = []
        past = np.concatenate(history) if history else np.zeros(0, np.float32)
        # the loss before any update (or a uniform guess's, if larger): twice it means divergence
        self.baseline = max(float(past[0]), math.log(ds.vocab.size)) if len(past) else None

    # -- starting --------------------------------------------------------------------
    @classmethod
    def start(cls, cfg: TrainConfig, dataset: Optional[Dataset] = None, overwrite: bool = False,
              log: Callable[[str], None] = print) -> "Run":
        """A fresh run. Refuses a work dir that holds a checkpoint unless overwrite."""
        cfg.check()
        work = Path(cfg.work_dir)
        created = not work.exists()
        prepare_work_dir(work)
        lock = hold_work_dir(work)  # before the look for a checkpoint: two runs started together cannot both pass
        try:
            if (work / ckpt_io.CHECKPOINT_NAME).exists() and not overwrite:
                raise ValueError(f"work dir {str(work)!r} already holds a checkpoint ({ckpt_io.CHECKPOINT_NAME}): "
                                 "continue it with --resume (Python: resume=True), or replace it with --overwrite "
                                 "(overwrite=True)")
            ds = dataset if dataset is not None else load_dataset(cfg.input_file, cfg.block_size)
            check_dataset(ds, cfg.batch_size)
            check_memory(cfg, ds.vocab.size)
            model = MLP(ds.vocab.size, cfg.block_size, cfg.n_embd, cfg.n_hidden, seed=cfg.seed, init=cfg.init,
                        n_layers=cfg.n_layers, batchnorm=cfg.batchnorm, bn_momentum=cfg.bn_momentum)
            return cls(cfg, ds, model, 0, _core.rng_state(cfg.seed), cfg.make_optimizer(model.params), [], [], log,
                       lock)
        except BaseException:
            lock.release(unlink=created)
            if created:  # a run that never started leaves no empty folder behind
                try:
                    work.rmdir()
                except OSError:
                    pass
            raise

    @classmethod
    def resume(cls, work_dir, overrides: Optional[dict] = None, dataset: Optional[Dataset] = None,
               log: Callable[[str], None] = print) -> "Run":
        """Continues the checkpoint in work_dir with its saved configuration; overrides may
        change only what config.RESUME_MAY_CHANGE lists."""
        work = Path(work_dir)
        lock = hold_work_dir(work) if work.is_dir() else None  # (no folder: load() says there is no checkpoint)
        try:
            return cls._resume(work, overrides, dataset, log, lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    @classmethod
    def _resume(cls, work: Path, overrides: Optional[dict], dataset: Optional[Dataset], log, lock) -> "Run":
        ck = ckpt_io.load(work / ckpt_io.CHECKPOINT_NAME)
        saved = dict(ck.train_config)
        if not saved:  # saved by hand (checkpoint.save with a model only): the model gives the sizes
            m = ck.model
            saved = dict(block_size=m.block_size, n_embd=m.n_embd, n_hidden=m.n_hidden, n_layers=m.n_layers,
                         batchnorm=m.batchnorm, bn_momentum=m.bn_momentum)
            if m.init is not None:
                saved["init"] = m.init
        cfg = resume_config(saved, dict(overrides or {}, work_dir=str(work)))
        cfg.check()
        prepare_work_dir(work)
        where = f"checkpoint {str(work / ckpt_io.CHECKPOINT_NAME)!r}"
        try:
            ds = dataset if dataset is not None else load_dataset(cfg.input_file, cfg.block_size)
        except DataError as e:
            if "input_file" in (overrides or {}):
                raise
            raise DataError(f"{e}: it is the file {where} was trained on; if it moved, resume with "
                            "-i NEWPATH (Python: input_file=...)") from None
        if ck.vocab != ds.vocab:
            raise ckpt_io.CheckpointError(f"{where} was trained on another vocabulary "
                                          f"({''.join(ck.vocab.itos)!r} vs {''.join(ds.vocab.itos)!r})")
        saved = ck.data.get("sha256")
        if saved is not None and saved != ds.sha256:
            raise ckpt_io.CheckpointError(f"{where} was trained on other data (its words differ from "
                                          f"{ds.path or 'this word list'}): resuming would mix the splits")
        m = ck.model
        have = (m.block_size, m.n_embd, m.n_hidden, m.n_layers, m.batchnorm, m.bn_momentum)
        said = (cfg.block_size, cfg.n_embd, cfg.n_hidden, cfg.n_layers, cfg.batchnorm, cfg.bn_momentum)
        if have != said:
            raise ckpt_io.CheckpointError(f"{where} holds a model with (block_size, n_embd, n_hidden, n_layers, "
                                          f"batchnorm, bn_momentum) = {have}, but its configuration says {said}")
        if m.init is not None and m.init != cfg.init:
            raise ckpt_io.CheckpointError(f"{where} holds a model initialised with {m.init!r}, but its "
                                          f"configuration says {cfg.init!r}")
        check_dataset(ds, cfg.batch_size)
        opt = cfg.make_optimizer(ck.model.params)
        if opt.slots:
            try:
                opt.load_state(ck.optimizer_state, ck.opt_step)
            except ValueError as e:
                raise ckpt_io.CheckpointError(f"{where}: {e}") from None
        rng = ck.rng_state
        if rng is None:  # saved by hand without a sampler state: draw from the seed
            log(f"note: {where} has no sampler state; minibatches are drawn afresh from seed {cfg.seed}")
            rng = _core.rng_state(cfg.seed)
        history = [np.asarray(ck.loss_history, np.float32)] if ck.loss_history is not None else []
        dev_curve = [tuple(p) for p in ck.metrics.get("dev_curve", [])]
        log(f"resuming from {work / ckpt_io.CHECKPOINT_NAME} at step {ck.step:,}")
        run = cls(cfg, ds, ck.model, ck.step, np.array(rng, dtype=np.uint64), opt, history, dev_curve, log, lock)
        if ck.diag_steps is not None:  # the records so far go on
            run.diag_steps, run.diag_records = [int(s) for s in ck.diag_steps], list(ck.diag_records)
        return run

    # -- holding the work dir --------------------------------------------------------
    def close(self) -> None:
        """Frees the work dir for another run (the files stay)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.step >= self.cfg.max_steps

    @property
    def diag_interval(self) -> int:
        return self.cfg.diag_interval or default_interval(self.cfg.max_steps)

    def next_chunk(self, n: int) -> int:
        """At most n steps, ending at the next evaluation or the last step."""
        next_eval = (self.step // self.cfg.eval_interval + 1) * self.cfg.eval_interval
        return max(0, min(n, next_eval - self.step, self.cfg.max_steps - self.step))

    def step_chunk(self, n: int, threads: Optional[int] = None, stop: Optional[np.ndarray] = None) -> np.ndarray:
        """Runs n steps in C++ (GIL released; stop: an int32 array (1,), nonzero stops it
        between steps). Returns their losses; raises TrainingDiverged if the loss blew up."""
        lrs = learning_rates(self.cfg, self.step, self.step + n)
        # --diagnostics: the loop records its steps that are multiples of the interval
        wanted = steps_to_record(self.step, n, self.diag_interval) if self.cfg.diagnostics else range(0)
        records = np.empty((len(wanted), record_length(names=self.model.param_names))) if len(wanted) else None
        diag = None if records is None else diag_arg(records, every=self.diag_interval)
        t0 = time.perf_counter()
        losses = _core.train_steps(self.model.arrays(), *self.ds.train, lrs, batch_size=self.cfg.batch_size,
                                   rng_state=self.rng_state, optimizer=self.opt if self.opt.slots else None,
                                   dropout=self.cfg.dropout, dropout_seed=self.cfg.seed, step0=self.step,
                                   threads=threads, stop=stop, diag=diag, batchnorm=self.model.bn_args())
        self.train_seconds += time.perf_counter() - t0
        if len(losses) and not np.isfinite(losses[-1]):  # the C++ loop stops at NaN/inf
            self._diverged(self.step + len(losses) - 1, losses[-1], lrs[len(losses) - 1])
        if len(losses):
            if self.baseline is None:
                self.baseline = max(float(losses[0]), math.log(self.ds.vocab.size))
            recent = float(np.mean(np.concatenate(self.history[-1:] + [losses])[-100:]))
            if recent > 2 * self.baseline:  # finite but exploding (tanh + softmax keep it finite for long)
                self._diverged(self.step + len(losses) - 1, recent, lrs[len(losses) - 1], exploded=True)
        for step, rec in zip(wanted, records if records is not None else ()):
            if step < self.step + len(losses) and np.isfinite(rec[0]):  # (a step not reached stays NaN)
                self.diag_records.append(rec)  # (first: a reader in another thread pairs steps with records)
                self.diag_steps.append(step)
        self.history.append(losses)
        self.step += len(losses)
        return losses

    def _diverged(self, at: int, loss: float, lr: float, exploded: bool = False):
        what = f"rose to {loss:.4g} (over twice its start, averaged over 100 steps)" if exploded else f"became {loss}"
        kept = (f"The last good checkpoint ({str(self.ckpt_path)!r}) was kept." if self.ckpt_path.exists()
                else "No checkpoint was written.")
        raise TrainingDiverged(f"the loss {what} at step {at:,} (learning rate {lr:.4g}): training stopped. "
                               f"Try a smaller --learning-rate. {kept}")

    @property
    def at_eval(self) -> bool:
        return self.step % self.cfg.eval_interval == 0 or self.done

    def evaluate(self, splits=("dev",), threads: Optional[int] = None) -> dict:
        """Mean loss of whole splits (C++, in chunks)."""
        return {name: self.model.loss(*getattr(self.ds, name), threads=threads) for name in splits}

    def eval_dev(self, threads: Optional[int] = None) -> float:
        """Evaluates dev, records it on the dev curve and saves a checkpoint."""
        dev = self.evaluate(("dev",), threads)["dev"]
        self.dev_curve.append((self.step, dev))
        self.save()
        return dev

    # -- saving ------------------------------------------------------------------------
    def losses(self) -> np.ndarray:
        return np.concatenate(self.history) if self.history else np.zeros(0, np.float32)

    def save(self, metrics: Optional[dict] = None) -> Path:
        metrics = dict(metrics or {}, dev_curve=[list(p) for p in self.dev_curve])
        return ckpt_io.save(self.ckpt_path, ckpt_io.Checkpoint(
            model=self.model, vocab=self.ds.vocab, step=self.step, rng_state=self.rng_state,
            loss_history=self.losses(), train_config=self.cfg.asdict(), data=data_info(self.ds), metrics=metrics,
            optimizer_state=self.opt.state, opt_step=self.opt.step,
            diag_steps=np.array(self.diag_steps, np.int64) if self.diag_steps else None,
            diag_records=np.array(self.diag_records) if self.diag_records else None))

    def plot_diagnostics(self) -> list:
        """diagnostics.png and saturation.png (fastmlp.plot.draw_diagnostics), the pictures of
        --diagnostics; returns their names."""
        from .diagnostics import SATURATION_BATCH
        from .plot import draw_diagnostics

        X, Y = (a[:SATURATION_BATCH] for a in self.ds.train)
        return [p.name for p in draw_diagnostics(self.diagnostics(), self.model, X, Y, self.work, self.step)]

    def diagnostics(self, since: int = 0) -> list:
        """The records of --diagnostics so far (of steps >= since), as fastmlp.diagnostics.Diagnostics."""
        names = self.model.param_names
        return [parse_record(r, step=s, names=names) for s, r in zip(self.diag_steps, self.diag_records) if s >= since]

    def finish(self, interrupted: bool = False, threads: Optional[int] = None,
               extra: Optional[dict] = None, plots: bool = True) -> dict:
        """Final evaluation, checkpoint, metrics.json, loss_history.npy and (with matplotlib,
        unless plots is False) the plots; returns the metrics, with the list of files written.
        An interrupted run (Ctrl-C) is wrapped up quickly: dev only, no plots
        (python -m fastmlp.plot draws them later from the checkpoint)."""
        cfg = self.cfg
        splits = ("dev",) if interrupted else ("train", "dev", "test") if cfg.eval_test else ("train", "dev")
        final = self.evaluate(splits, threads)
        steps_run = self.step - self.first_step
        metrics = {
            "train_loss": final.get("train"), "dev_loss": final["dev"], "test_loss": final.get("test"),
            "steps": self.step, "seconds": round(self.train_seconds, 3),
            "total_seconds": round(time.perf_counter() - self.t_start, 3),
            "us_per_step": round(1e6 * self.train_seconds / steps_run, 3) if steps_run else None,
            "examples": self.ds.sizes, "params": self.model.num_params, "interrupted": interrupted,
            "checkpoint": str(self.ckpt_path), "work_dir": str(self.work), "config": cfg.asdict(),
            "dev_curve": [list(p) for p in self.dev_curve], "isa": _core.get_isa(),
            "initial_loss": float(self.losses()[0]) if len(self.losses()) else None,
            "uniform_loss": math.log(self.ds.vocab.size),
            "diagnostics": summary(self.diagnostics()) if self.diag_records else None, **(extra or {}),
        }
        self.save({k: v for k, v in metrics.items() if k != "diagnostics"})  # (the records are in it whole)
        losses = self.losses()
        atomic_write(self.work / "loss_history.npy", lambda f: np.save(f, losses))
        atomic_write_json(self.work / "metrics.json", metrics)
        written = [ckpt_io.CHECKPOINT_NAME, "metrics.json", "loss_history.npy"]
        if interrupted or not plots:
            metrics["files"] = written
            return metrics
        try:
            from .plot import plot_embedding, plot_loss

            plot_loss(losses, self.work / "loss.png", dev_curve=self.dev_curve)
            plot_embedding(self.model.params["C"], self.ds.vocab.itos, self.work / "embedding.png")
            written += ["loss.png", "embedding.png"]
            if self.diag_records:
                written += self.plot_diagnostics()
        except ImportError as e:
            self.log(f"note: {e}; skipped loss.png and embedding.png")
        metrics["files"] = written
        return metrics
