"""The one training a server runs: a fastmlp.run.Run stepped in a background thread (the
C++ loop releases the GIL), with what the page shows kept ready: the loss curve, the dev
points, the diagnostics, and a copy of the parameters taken between chunks (the page's
forward passes read the copy, never the arrays the loop is writing)."""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .. import checkpoint as ckpt_io
from ..config import PRESETS, TrainConfig
from ..model import MLP
from ..run import Run, TrainingDiverged

CHUNK_SECONDS = 0.1  # a chunk of steps between two looks at pause and the page's copy
CURVE_POINTS = 2000  # the loss curve is kept as means of buckets of steps


class Busy(Exception):
    """A second Start while a training runs."""


class Session:
    def __init__(self, work_dir: Path, input_file: Optional[str] = None, num_threads: Optional[int] = None):
        self.work = Path(work_dir)
        self.input_file = input_file
        self.num_threads = num_threads
        self.lock = threading.Lock()      # guards the fields below against the worker thread
        self.run: Optional[Run] = None
        self.thread: Optional[threading.Thread] = None
        self.stop = np.zeros(1, np.int32)
        self.error: Optional[str] = None
        self.model: Optional[MLP] = None  # the page's copy
        self.vocab = None
        self.train_words: set = set()
        self.steps_per_s = 0.0
        self.version = 0                  # bumped at every change the page should see
        self.cached = (-1, None)          # (version, the page's event): made once for every tab
        self._open_existing()

    # -- state -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _open_existing(self) -> None:
        """A work dir that holds a checkpoint opens paused: its curves, its model to sample."""
        if not (self.work / ckpt_io.CHECKPOINT_NAME).is_file():
            return
        run = Run.resume(self.work, {"input_file": self.input_file} if self.input_file else {},
                         log=lambda s: None)
        self._adopt(run)

    def _adopt(self, run: Run) -> None:
        self.run = run
        self.vocab = run.ds.vocab
        self.train_words = set(run.ds.train_words)
        self._copy_model()

    def _copy_model(self) -> None:
        self.model = self.run.model.copy() if self.run is not None else None
        self.version += 1

    def config(self) -> Optional[dict]:
        if self.run is None:
            return None
        return {k: v for k, v in self.run.cfg.asdict().items() if k not in ("work_dir", "input_file", "tensorboard")}

    def event(self) -> dict:
        """What /api/events sends: the state and the insides, made once a version."""
        version, payload = self.cached
        if version != self.version:
            from .inside import inside

            version = self.version
            payload = {"state": self.state(), "inside": inside(self.run, self.model)}
            self.cached = (version, payload)
        return payload

    def state(self) -> dict:
        run = self.run
        if run is None:
            return {"step": 0, "max_steps": 0, "running": False, "config": None, "loss": {"steps": [], "values": []},
                    "dev": [], "steps_per_s": 0.0, "error": self.error, "vocab": None}
        losses = run.losses()
        steps, values = curve(losses)
        return {"step": run.step, "max_steps": run.cfg.max_steps, "running": self.running, "config": self.config(),
                "loss": {"steps": steps, "values": values}, "dev": [list(p) for p in run.dev_curve],
                "steps_per_s": round(self.steps_per_s, 1), "train_seconds": round(run.train_seconds, 3),
                "error": self.error,
                "vocab": list(self.vocab.itos), "initial_loss": float(losses[0]) if len(losses) else None,
                "uniform_loss": math.log(self.vocab.size)}

    # -- control -----------------------------------------------------------------------
    def start(self, settings: dict) -> None:
        """Starts a new run with these TrainConfig fields (or continues the paused one,
        which may change only what --resume may). Raises Busy or ValueError."""
        with self.lock:
            if self.running:
                raise Busy("a training is already running: pause it first (one training at a time)")
            self.error = None
            self.stop[0] = 0
            overwrite = settings.pop("overwrite", False)
            if not isinstance(overwrite, bool):
                raise ValueError(f"overwrite must be true or false, got {overwrite!r}")
            if self.run is None:
                preset = settings.pop("preset", None)
                if preset is not None and preset not in PRESETS:
                    raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
                if (self.work / ckpt_io.CHECKPOINT_NAME).exists() and not overwrite:
                    raise Busy(f"{str(self.work / ckpt_io.CHECKPOINT_NAME)!r} holds a run: a new one replaces it "
                               "only when asked (overwrite: true)")
                values = {**PRESETS[preset or "lecture"], **settings}
                cfg = TrainConfig(**{**values, "work_dir": str(self.work), "input_file": self.input_file,
                                     "diagnostics": True, "num_threads": self.num_threads})
                self._adopt(Run.start(cfg, overwrite=True, log=lambda s: None))
            else:
                settings.pop("preset", None)
                self._continue(settings)
            self.thread = threading.Thread(target=self._train, name="fastmlp-serve-train", daemon=True)
            self.thread.start()

    def _continue(self, settings: dict) -> None:
        from ..config import RESUME_MAY_CHANGE

        cfg = self.run.cfg
        refused = [k for k, v in settings.items() if k not in RESUME_MAY_CHANGE and getattr(cfg, k, v) != v]
        if refused:
            raise ValueError(f"a paused run continues with its settings and cannot change {', '.join(refused)}: "
                             "press Reset to start a new one")
        # (the page's Inside panel needs the records: a run opened from the command goes on recording)
        new = dataclasses.replace(cfg, **{"diagnostics": True,
                                          **{k: v for k, v in settings.items() if k in RESUME_MAY_CHANGE}})
        new.check()
        self.run.cfg = new

    def pause(self) -> None:
        with self.lock:  # (a Start waits: it cannot slip in between the stop and the join)
            self._stop_thread()

    def _stop_thread(self) -> None:
        self.stop[0] = 1
        t = self.thread
        if t is not None:
            t.join()

    def reset(self) -> None:
        with self.lock:
            self._stop_thread()
            if self.run is not None:
                self.run.close()
            self.run, self.model, self.error = None, None, None
            self.steps_per_s = 0.0
            self.version += 1

    def close(self) -> None:
        """Server shutdown: the run stops between two steps and saves its checkpoint."""
        with self.lock:
            self._stop_thread()
            if self.run is not None:
                self.run.close()

    # -- the worker thread -------------------------------------------------------------------
    def _train(self) -> None:
        from .. import _core
        from .._threads import ThreadChooser

        run = self.run
        per_step = None
        # as the training command does: 1 thread or all, whichever is measured faster (the page's
        # own work takes a core now and then)
        chooser = ThreadChooser(self.num_threads or _core.get_num_threads(), fixed=self.num_threads is not None)
        try:
            while not run.done and not self.stop[0]:
                threads = chooser.pick()
                n = run.next_chunk(64 if per_step is None else int(min(max(CHUNK_SECONDS / per_step, 16), 50_000)))
                t0 = time.perf_counter()
                losses = run.step_chunk(n, threads=threads, stop=self.stop)
                dt = time.perf_counter() - t0
                if len(losses):
                    per_step = dt / len(losses)
                    chooser.record(threads, per_step)
                    self.steps_per_s = (run.step - run.first_step) / max(run.train_seconds, 1e-9)
                if run.at_eval and not self.stop[0]:
                    run.eval_dev()
                self._copy_model()
            if run.done:  # the end of a run, as the training command ends it: metrics.json, the pictures
                run.finish(threads=chooser.top)
            else:
                run.save()
        except TrainingDiverged as e:
            self.error = str(e)
        except Exception as e:  # the page shows it; the server goes on
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self._copy_model()


def curve(losses: np.ndarray, points: int = CURVE_POINTS):
    """(steps, log10 of the mean loss) in at most `points` buckets of whole steps."""
    n = len(losses)
    if n == 0:
        return [], []
    size = max(1, -(-n // points))
    k = n // size * size
    means = losses[:k].reshape(-1, size).mean(1) if k else np.zeros(0)
    steps = (np.arange(len(means)) * size + size // 2).tolist()
    if k < n:
        means = np.append(means, losses[k:].mean())
        steps.append(k + (n - k) // 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = np.log10(means)
    return steps, [None if not np.isfinite(v) else round(float(v), 5) for v in vals]
