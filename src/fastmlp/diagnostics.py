"""Looking inside while it learns (makemore part 3, "Activations & Gradients").

    from fastmlp.diagnostics import diagnose
    d = diagnose(model, X[:32], Y[:32], lr=0.1)      # one batch: what the lecture plots
    d.layers[0].saturation                            # fraction of tanh outputs with |t| > 0.97 (one per layer)
    d.grad_data["W1"], d.update_data["W1"]            # std(grad)/std(W1), std(update)/std(W1)
    d.to_dict()                                       # plain JSON

Every number comes from the training step's own C++ code (csrc/diag-inl.h): the step
fills its buffers as it trains and one pass over them makes a record; diagnose() runs
that step once on copies (the model and the optimizer are not changed), and training
with --diagnostics records every diag_interval-th step inside the fused loop (fastmlp.run). The update
ratio is measured from the step's real update (after - before), AdamW's included.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import _core
from .config import DIAG_MAX_RECORDS as MAX_RECORDS  # noqa: F401 (a run's records at most; TrainConfig checks)
from .model import PARAM_NAMES, MLP
from .optim import Optimizer, make as make_optimizer

SATURATED = 0.97   # the lecture's threshold: |tanh| above it passes almost no gradient
BINS = 50          # bins of every histogram
PRE_RANGE = 10.0   # pre-activation histograms cover [-PRE_RANGE, PRE_RANGE]
FIXED = _core.DIAG_FIXED  # the lecture's model's record: FIXED + 3 * bins (25: kernels.h, DiagArgs)
SATURATION_BATCH = 32  # saturation.png: the first examples of the training split (the lecture's batch)
LAYER_SCALARS = ("pre_mean", "pre_std", "mean", "std", "saturation", "dead", "grad_mean", "grad_std", "grad_absmax")


def record_length(bins: int = BINS, names: Sequence[str] = PARAM_NAMES) -> int:
    """A record's length for the model whose parameters are `names` (kernels.h): the loss,
    3 * bins + 9 numbers per hidden layer, 3 per parameter tensor."""
    return 1 + n_layers_of(names) * (3 * bins + 9) + 3 * len(names)


def n_layers_of(names: Sequence[str]) -> int:
    return sum(1 for k in names if k.startswith("W")) - 1


MIN_INTERVAL = 50  # a record costs about 1.5 steps: under 5% of a run (benchmarks/bench_diagnostics.py)


def default_interval(max_steps: int) -> int:
    """About 250 records a run (fewer in runs under 12,500 steps: at least MIN_INTERVAL apart)."""
    return max(MIN_INTERVAL, math.ceil(max_steps / 250))


@dataclass
class Histogram:
    counts: np.ndarray  # (bins,) float64
    edges: np.ndarray   # (bins + 1,)

    def to_dict(self) -> dict:
        return {"counts": self.counts.tolist(), "edges": self.edges.tolist()}


@dataclass
class LayerStats:
    """A hidden layer's tanh: its input (pre-activation), output and output gradient."""
    mean: float
    std: float
    saturation: float          # fraction of outputs with |t| > SATURATED, in [0, 1]
    dead: int                  # units saturated on every row of the batch
    pre_mean: float
    pre_std: float
    grad_mean: float           # of d loss / d(layer output), after dropout if any
    grad_std: float
    hist: Histogram            # tanh output over [-1, 1]
    pre_hist: Histogram        # pre-activation over [-PRE_RANGE, PRE_RANGE]
    grad_hist: Histogram       # output gradient over [-max|g|, max|g|]

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.endswith("hist")}
        d.update(hist=self.hist.to_dict(), pre_hist=self.pre_hist.to_dict(), grad_hist=self.grad_hist.to_dict())
        return d


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else None


@dataclass
class Diagnostics:
    loss: float
    layers: List[LayerStats]
    param_std: Dict[str, float]
    grad_std: Dict[str, float]
    update_std: Optional[Dict[str, float]]       # None when no learning rate was given
    step: Optional[int] = None
    act: Optional[np.ndarray] = None             # (N, H) the first layer's tanh outputs (diagnose only)
    acts: Optional[np.ndarray] = None            # (n_layers, N, H) every layer's (diagnose only)
    grads: Dict[str, np.ndarray] = field(default_factory=dict)  # diagnose only: for the histograms

    @property
    def grad_data(self) -> Dict[str, Optional[float]]:
        """std(grad) / std(param), the lecture's grad:data ratio (None where std(param) is 0)."""
        return {k: _ratio(self.grad_std[k], self.param_std[k]) for k in self.param_std}

    @property
    def update_data(self) -> Optional[Dict[str, Optional[float]]]:
        """std(update) / std(param): about 1e-3 when the learning rate is right."""
        if self.update_std is None:
            return None
        return {k: _ratio(self.update_std[k], self.param_std[k]) for k in self.param_std}

    @property
    def saturation_map(self) -> Optional[np.ndarray]:
        """(N, H) bool: |tanh| > SATURATED (the lecture's white pixels)."""
        return None if self.act is None else np.abs(self.act) > SATURATED

    def to_dict(self) -> dict:
        return {"step": self.step, "loss": self.loss, "layers": [layer.to_dict() for layer in self.layers],
                "param_std": self.param_std, "grad_std": self.grad_std, "update_std": self.update_std,
                "grad_data": self.grad_data, "update_data": self.update_data}


def parse_record(rec: np.ndarray, step: Optional[int] = None, has_update: bool = True,
                 bins: int = BINS, names: Sequence[str] = PARAM_NAMES) -> Diagnostics:
    """A C++ record (kernels.h, DiagArgs) of the model whose parameters are `names`."""
    rec = np.asarray(rec, np.float64)
    L = n_layers_of(names)
    if rec.shape != (record_length(bins, names),):
        raise ValueError(f"a record of {L} layer(s) and {len(names)} parameters has {record_length(bins, names)} "
                         f"numbers, got shape {rec.shape}")
    edges = lambda lo, hi: np.linspace(lo, hi, bins + 1)
    layers = []
    for l in range(L):
        at = 1 + l * (3 * bins + 9)
        h = rec[at:at + 3 * bins].reshape(3, bins)
        s = dict(zip(LAYER_SCALARS, rec[at + 3 * bins:at + 3 * bins + 9].tolist()))
        layers.append(LayerStats(mean=s["mean"], std=s["std"], saturation=s["saturation"], dead=int(s["dead"]),
                                 pre_mean=s["pre_mean"], pre_std=s["pre_std"], grad_mean=s["grad_mean"],
                                 grad_std=s["grad_std"], hist=Histogram(h[1], edges(-1.0, 1.0)),
                                 pre_hist=Histogram(h[0], edges(-PRE_RANGE, PRE_RANGE)),
                                 grad_hist=Histogram(h[2], edges(-(s["grad_absmax"] or 1.0), s["grad_absmax"] or 1.0))))
    ps = rec[1 + L * (3 * bins + 9):].reshape(len(names), 3)
    col = lambda j: {k: float(ps[i, j]) for i, k in enumerate(names)}
    return Diagnostics(loss=float(rec[0]), layers=layers, param_std=col(0), grad_std=col(1),
                       update_std=col(2) if has_update else None, step=step)


def diag_arg(out: np.ndarray, act: Optional[np.ndarray] = None, every: int = 1) -> tuple:
    """The `diag` argument of _core.train_steps: record every `every`-th global step in the
    rows of out ((n, record_length(names)), or one record (record_length(names),))."""
    return (out, BINS, PRE_RANGE, SATURATED, act, every)


def steps_to_record(start: int, n: int, every: int) -> range:
    """The global steps in [start, start + n) that a run with diag_interval `every` records."""
    return range(-(-start // every) * every, start + n, every)


def diagnose(model: MLP, X, Y, *, lr: Optional[float] = None, optimizer=None,
             threads: Optional[int] = None) -> Diagnostics:
    """The diagnostics of one training step on the batch (X, Y), run on copies: neither
    the model nor the optimizer changes. lr: the step's learning rate (needed for
    update_data); optimizer: a fastmlp.optim optimizer (its state is used, not advanced)
    or a name ('sgd', 'adamw'); None is plain SGD."""
    Xi, Yi = model._indices(X, "X", 2), model._indices(Y, "Y", 1)
    if len(Yi) != len(Xi) or len(Xi) == 0:
        raise ValueError(f"X and Y must hold the same number (> 0) of examples, got {len(Xi)} and {len(Yi)}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                           or lr < 0):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    params = tuple(a.copy() for a in model.arrays())
    names = model.param_names
    bn = model.bn_args()
    if bn is not None:  # the running statistics move in a training step: copies move
        bn = (tuple(a.copy() for a in bn[0]), tuple(a.copy() for a in bn[1])) + bn[2:]
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, dict(zip(names, params)))
    elif optimizer is not None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastmlp.optim optimizer or a name, got {type(optimizer).__name__}")
        optimizer = copy.deepcopy(optimizer)  # its state moves one step: a copy's does
    out = np.empty(record_length(names=names))
    acts = np.empty((model.n_layers, len(Xi), model.n_hidden), np.float32)
    losses = _core.train_steps(params, Xi, Yi, np.array([lr or 0.0], np.float32), batches=np.arange(len(Xi))[None],
                               optimizer=optimizer if optimizer is not None and optimizer.slots else None,
                               threads=threads, diag=diag_arg(out, acts), batchnorm=bn)
    if not np.isfinite(losses[-1]):
        raise ValueError(f"the loss on this batch is {losses[-1]}: no diagnostics")
    d = parse_record(out, has_update=lr is not None, names=names)
    d.act, d.acts = acts[0], acts
    _, d.grads = model.loss_and_grad(Xi, Yi, threads=threads)
    return d


def summary(records: List[Diagnostics]) -> dict:
    """Records over a run as series (the --json `diagnostics` object; the last one whole)."""
    if not records:
        return {}
    layer = lambda k: [[getattr(r.layers[i], k) for r in records] for i in range(len(records[0].layers))]
    per_param = lambda get: {k: [(get(r) or {}).get(k) for r in records] for k in records[0].param_std}
    return {"steps": [r.step for r in records], "saturation": layer("saturation"), "dead": layer("dead"),
            "act_std": layer("std"), "grad_std": layer("grad_std"),
            "grad_data": per_param(lambda r: r.grad_data), "update_data": per_param(lambda r: r.update_data),
            "last": records[-1].to_dict()}
