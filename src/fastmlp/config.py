"""A training run's configuration: every knob, the named presets, and the learning-rate
schedule. Each field is checked in one place, TrainConfig.check(), with the bounds of
the code that uses it (model sizes: fastmlp.model; optimizer and dropout: the kernels'
own checks, fastmlp._core.check_optimizer / check_dropout)."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _core
from . import optim
from .model import INITS, check_depth, check_sizes

LECTURE_SEED = 2147483647  # the lecture's torch.Generator().manual_seed(2147483647)
SCHEDULES = ("step", "cosine", "constant")
OPTIMIZERS = ("sgd", "adamw")
MAX_STEPS = 1 << 40
FLOAT32_MAX = float(np.finfo(np.float32).max)
DIAG_MAX_RECORDS = 10_000  # fastmlp.diagnostics.MAX_RECORDS (1.4 KB each, kept in the checkpoint)
BOOL_FIELDS = ("nesterov", "eval_test", "diagnostics", "batchnorm")
FLOAT_FIELDS = ("momentum", "beta1", "beta2", "weight_decay", "dropout", "learning_rate", "lr_decay_factor", "min_lr",
                "bn_momentum")


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:20] + f"...({len(text)} characters)"


@dataclass
class TrainConfig:
    """Every knob of a run. The defaults are the lecture's final recipe."""

    input_file: Optional[str] = None
    work_dir: str = "out"
    block_size: int = 3
    n_embd: int = 10
    n_hidden: int = 200
    n_layers: int = 1               # hidden layers (makemore part 3: 5)
    batchnorm: bool = False         # Linear (no bias) -> BatchNorm1d -> tanh in every hidden layer
    bn_momentum: float = 0.1        # BatchNorm's running statistics: (1 - m) running + m batch
    init: str = "lecture"           # lecture, scaled or kaiming (fastmlp.model.INIT_HELP)
    optimizer: str = "sgd"          # sgd (with --momentum: torch.optim.SGD's momentum) or adamw
    momentum: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9              # AdamW
    beta2: float = 0.999
    weight_decay: float = 0.0       # SGD: g += wd * p; AdamW: decoupled, p *= 1 - lr * wd
    dropout: float = 0.0            # inverted dropout on every hidden layer's output while training
    batch_size: int = 32
    max_steps: int = 200_000
    learning_rate: float = 0.1
    lr_schedule: str = "step"       # step: lr * factor at every lr_decay_step; cosine; constant
    lr_decay_step: int = 100_000
    lr_decay_factor: float = 0.1
    warmup_steps: int = 0           # linear warm-up from 0 (cosine and step)
    min_lr: float = 0.0             # the cosine schedule's floor
    seed: int = LECTURE_SEED        # model init and minibatch sampling
    eval_interval: int = 10_000
    eval_test: bool = False
    num_threads: Optional[int] = None
    diagnostics: bool = False       # record the step's insides every diag_interval steps (fastmlp.diagnostics)
    diag_interval: Optional[int] = None  # None: about 250 records a run, at least 50 steps apart
    tensorboard: Optional[str] = None    # a folder for TensorBoard's event files (the tensorboard extra)

    def check(self) -> None:
        """Raises ValueError (TypeError for a wrong type) naming the first bad field."""
        self._check_types()
        check_sizes(self.block_size, self.n_embd, self.n_hidden)
        check_depth(self.n_layers, self.batchnorm, self.bn_momentum)
        if self.batchnorm and self.batch_size == 1:
            raise ValueError("batchnorm needs batch_size >= 2: a batch of one row has no variance to normalise by "
                             "(torch refuses it too)")
        if not self.batchnorm and self.bn_momentum != 0.1:
            raise ValueError(f"bn_momentum {self.bn_momentum} belongs to BatchNorm: add --batchnorm (batchnorm=True)")
        for name, lo, hi in (("batch_size", 1, 1 << 30), ("eval_interval", 1, MAX_STEPS),
                             ("lr_decay_step", 1, MAX_STEPS), ("max_steps", 0, MAX_STEPS),
                             ("warmup_steps", 0, MAX_STEPS), ("seed", 0, (1 << 64) - 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        for name in ("learning_rate", "lr_decay_factor", "min_lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= FLOAT32_MAX:
                raise ValueError(f"{name} must be a finite number >= 0 that float32 can hold, got {v!r}")
        if self.diag_interval is not None:
            v = self.diag_interval
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= max(1, self.max_steps):
                raise ValueError(f"diag_interval must be an integer in [1, max_steps = {self.max_steps:,}], got {v!r}")
            least = -(-self.max_steps // DIAG_MAX_RECORDS)
            if self.diagnostics and v < least:  # every record stays in the checkpoint
                raise ValueError(f"diag_interval {v} would record {self.max_steps // v:,} steps; a run keeps at most "
                                 f"{DIAG_MAX_RECORDS:,} records: use at least {least:,}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        self.make_optimizer()  # the kernels' bounds for momentum, nesterov, betas, weight decay
        _core.check_dropout(self.dropout)
        if self.num_threads is not None:
            if isinstance(self.num_threads, bool) or not isinstance(self.num_threads, (int, np.integer)) \
                    or not 1 <= self.num_threads <= _core.max_threads():
                raise ValueError(f"num_threads must be an integer in [1, {_core.max_threads()}] "
                                 f"(this machine has {_core.build_info()['cpus']} CPUs), got {self.num_threads!r}")

    def _check_types(self) -> None:
        """A --config file is JSON: "no" is not false, and true is not 1.0. Booleans must
        be booleans, numbers numbers (not booleans), names strings."""
        for name in BOOL_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must be true or false (a JSON boolean), got {v!r}")
        for name in FLOAT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TypeError(f"{name} must be a number, got {v!r}")
            try:
                finite = math.isfinite(float(v))
            except OverflowError:  # an integer of hundreds of digits
                finite = False
            if not finite:  # (NaN or inf in a field its optimizer ignores would still break the JSON)
                raise ValueError(f"{name} must be a finite number, got {_short(v)}")
        for name in ("init", "optimizer", "lr_schedule"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in ("work_dir", "input_file", "tensorboard"):
            v = getattr(self, name)
            if not isinstance(v, (str, os.PathLike)) and not (v is None and name != "work_dir"):
                raise TypeError(f"{name} must be a path (a string), got {v!r}")

    def make_optimizer(self, params=None) -> optim.Optimizer:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.optimizer == "adamw":
            if self.momentum or self.nesterov:
                raise ValueError("momentum and nesterov belong to --optimizer sgd; adamw has --beta1/--beta2")
            return optim.AdamW(params, beta1=self.beta1, beta2=self.beta2, weight_decay=self.weight_decay)
        return optim.SGD(params, momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay)

    def asdict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    # the lecture's final recipe: dev loss ~2.17 in 200,000 steps
    "lecture": {},
    # the lecture's model, trained for speed: scaled init, cosine decay; dev ~2.13 in 30,000 steps
    "fast": dict(init="scaled", batch_size=32, max_steps=30_000, learning_rate=0.2, lr_schedule="cosine",
                 min_lr=0.001, eval_interval=1_000),
    # two tanh layers of 339 (makemore part 3's depth, no BatchNorm), dropout 0.15 on both,
    # found by the depth study (benchmarks/studies/README.md): dev 1.945 (mean of two seeds:
    # 1.9440, 1.9465; test 1.9433) in 88,000 AdamW steps, ~80 s of training on 2 cores
    "best": dict(block_size=7, n_embd=21, n_hidden=339, n_layers=2, init="kaiming", optimizer="adamw",
                 learning_rate=0.0015, lr_schedule="cosine", min_lr=1e-4, batch_size=128, max_steps=88_000,
                 weight_decay=0.036, dropout=0.15, eval_interval=2_000),
    # the best with one hidden layer (the lecture's family), 6 characters of context, AdamW
    # with decoupled weight decay, dropout 0.22, found by a sweep (benchmarks/studies/README.md):
    # dev 1.948 (mean of two seeds) in 74,000 steps, ~2.5 minutes of training on 2 cores
    "best_one_layer": dict(block_size=6, n_embd=34, n_hidden=914, init="scaled", optimizer="adamw",
                           learning_rate=0.001, lr_schedule="cosine", min_lr=1e-4, batch_size=128, max_steps=74_000,
                           weight_decay=0.04, dropout=0.22, eval_interval=2_000),
}


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
    with np.errstate(over="ignore"):
        return lr.astype(np.float32)


# What --resume may change: how long and how the run goes on, not what it trains.
RESUME_MAY_CHANGE = ("max_steps", "eval_interval", "num_threads", "eval_test", "work_dir", "input_file",
                     "diagnostics", "diag_interval", "tensorboard")


def resume_config(saved: dict, overrides: dict) -> TrainConfig:
    """The saved configuration with the allowed overrides applied. Any other field asked
    to change is refused, naming it: a resumed run trains the same model the same way."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {k: v for k, v in saved.items() if k in fields}
    try:
        cfg = TrainConfig(**base)
    except TypeError as e:
        raise ValueError(f"the checkpoint's configuration is not readable: {e}") from None
    refused = []
    for k, v in overrides.items():
        if k not in fields:
            raise ValueError(f"unknown configuration field {k!r}")
        if k in RESUME_MAY_CHANGE:
            setattr(cfg, k, v)
        elif v != getattr(cfg, k):
            refused.append(f"{k} (saved {getattr(cfg, k)!r}, asked {v!r})")
    if refused:
        raise ValueError("--resume continues the saved configuration and cannot change " + "; ".join(refused)
                         + ". Start a new run instead (another --work-dir, or --overwrite). --resume may change: "
                         + ", ".join(RESUME_MAY_CHANGE))
    return cfg
