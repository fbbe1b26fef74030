"""Optimizers: the update rules of torch.optim.SGD (momentum, Nesterov, weight decay) and
torch.optim.AdamW, run by the C++ kernels.

An optimizer owns its state: one array per parameter for each of its slots, under
torch.optim's names (``momentum_buffer``; ``exp_avg`` and ``exp_avg_sq``), and the number
of steps taken. Hyperparameters are checked once, by the kernels' own bounds
(``_core.check_optimizer``), when the optimizer is made.

    opt = fastmlp.optim.AdamW(model.params, weight_decay=0.1)
    _core.train_steps(model.arrays(), X, Y, lrs, batch_size=32, rng_state=s, optimizer=opt)
    loss, grads = model.loss_and_grad(Xb, Yb); opt.update(model.params, grads, lr=1e-3)
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from . import _core
from .model import names_in_order

PARAM_NAMES = ("C", "W1", "b1", "W2", "b2")  # the lecture's model; a deeper one's are its params' keys


class Optimizer:
    """Base: hyperparameters, state slots shaped like the parameters, and a step count."""

    kind = ""
    slots: Tuple[str, ...] = ()

    def __init__(self, params: Optional[Mapping[str, np.ndarray]] = None, **hyper):
        self.hyper = dict(hyper)
        _core.check_optimizer(self.kind, **self.hyper)
        self.step = 0
        self.state: Dict[str, Dict[str, np.ndarray]] = {}
        # the parameters' names in the kernels' order, whatever order the dict has
        self.names: Tuple[str, ...] = names_in_order(params) if params is not None else PARAM_NAMES
        if params is not None:
            self.state = {slot: {k: np.zeros_like(params[k], dtype=np.float32) for k in self.names}
                          for slot in self.slots}

    def load_state(self, state: Mapping[str, Mapping[str, np.ndarray]], step: int) -> None:
        """Adopts saved state (a checkpoint's); the slots must be this optimizer's."""
        if sorted(state) != sorted(self.slots):
            raise ValueError(f"{type(self).__name__} keeps the state {list(self.slots)}, got {sorted(state)}")
        names = names_in_order(next(iter(state.values()))) if state else self.names
        for slot in self.slots:
            if set(state[slot]) != set(names):
                raise ValueError(f"{type(self).__name__} state {slot!r} holds {sorted(state[slot])}, not {names}")
        self.names = names
        self.state = {slot: {k: np.ascontiguousarray(state[slot][k], np.float32) for k in names}
                      for slot in self.slots}
        self.step = int(step)

    def _core_args(self) -> tuple:
        """What train_steps reads (csrc/bind_train.cpp): the hyperparameters, the step and
        the state arrays, slot by slot in parameter order."""
        h = self.hyper
        arrays = [self.state[slot][k] for slot in self.slots for k in self.names]
        return (self.kind, h.get("momentum", 0.0), h.get("nesterov", False), h.get("beta1", 0.9),
                h.get("beta2", 0.999), h.get("eps", 1e-8), h.get("weight_decay", 0.0), self.step, arrays)

    def update(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float,
               threads: Optional[int] = None) -> None:
        """One step on every parameter, in place (the per-call API; train_steps does the
        same inside its loop)."""
        if not self.slots:  # no state: the parameters given say which they are
            self.names = names_in_order(params)
        missing = [k for k in self.names if k not in grads]
        if missing:
            raise KeyError(f"grads is missing {missing}; it needs {self.names}")
        self._update(params, grads, lr, threads)
        self.step += 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.hyper.items())})"


class SGD(Optimizer):
    """torch.optim.SGD: g += weight_decay * p; buf = momentum * buf + g;
    p -= lr * (g + momentum * buf if nesterov else buf). With neither momentum nor weight
    decay it keeps no state and the update is fused into the gradient products."""

    kind = "sgd"

    def __init__(self, params=None, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        self.slots = ("momentum_buffer",) if momentum or weight_decay else ()
        super().__init__(params, momentum=float(momentum), nesterov=bool(nesterov), weight_decay=float(weight_decay))

    def _update(self, params, grads, lr, threads):
        h = self.hyper
        for k in self.names:
            if self.slots:
                _core.momentum_update(params[k], grads[k], self.state["momentum_buffer"][k], lr, h["momentum"],
                                      h["nesterov"], h["weight_decay"], threads=threads)
            else:
                _core.sgd_update(params[k], grads[k], lr, threads=threads)


class AdamW(Optimizer):
    """torch.optim.AdamW: decoupled weight decay p *= 1 - lr * weight_decay, then Adam."""

    kind = "adamw"
    slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, params=None, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, beta1=float(beta1), beta2=float(beta2), eps=float(eps),
                         weight_decay=float(weight_decay))

    def _update(self, params, grads, lr, threads):
        h = self.hyper
        for k in self.names:
            _core.adamw_update(params[k], grads[k], self.state["exp_avg"][k], self.state["exp_avg_sq"][k],
                               self.step + 1, lr, h["beta1"], h["beta2"], h["eps"], h["weight_decay"],
                               threads=threads)


def make(name: str, params=None, **hyper) -> Optimizer:
    """An optimizer by name ('sgd' or 'adamw') with the hyperparameters it takes."""
    classes = {"sgd": SGD, "adamw": AdamW}
    if name not in classes:
        raise ValueError(f"optimizer must be one of {sorted(classes)}, got {name!r}")
    return classes[name](params, **hyper)
