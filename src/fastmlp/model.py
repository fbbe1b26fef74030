"""The model: an embedding table C, n_layers tanh hidden layers and a linear output layer.

    emb = C[X]                          (N, T*E)   the block_size embeddings, concatenated
    h1  = tanh(emb @ W1 + b1)           (N, H)     (the lecture's model: n_layers = 1)
    hl  = tanh(h{l-1} @ Wl + bl)        (N, H)     l = 2..L (makemore part 3's deeper net)
    logits = hL @ W{L+1} + b{L+1}       (N, V)
    loss = cross_entropy(logits, Y)

With batchnorm=True each hidden layer is part 3's Linear without bias -> BatchNorm1d ->
tanh: hl = tanh(gammal * (x Wl - mean) / sqrt(var + eps) + betal), the batch's mean and
variance in training, the running ones (``model.buffers``) in evaluation and sampling.

Parameters are plain numpy arrays in ``model.params``; every method hands them to
the C++ kernels as they are, so writing into them (from PyTorch, a checkpoint, ...)
changes the model.
"""
from __future__ import annotations

import math
import os
import re
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from . import _core

PARAM_NAMES = ("C", "W1", "b1", "W2", "b2")  # the lecture's model (n_layers 1, no BatchNorm)
INITS = ("lecture", "scaled", "kaiming")
INIT_HELP = ("lecture: every parameter standard normal (part 2); scaled: hidden W * (5/3)/sqrt(fan_in), hidden "
             "b * 0.01, output W * 0.01, output b 0 (part 3's fixes); kaiming: hidden W * (5/3)/sqrt(fan_in) "
             "(torch.nn.init.kaiming_normal_ with tanh's gain), output W * 0.1/sqrt(n_hidden) (a less confident "
             "output layer, as part 3), every bias 0; BatchNorm's gamma 1, beta 0")


MAX_SIZE = 1 << 24  # block_size, n_embd, n_hidden: far above any model that fits in memory
MAX_LAYERS = _core.MAX_LAYERS  # hidden layers at most


def param_names(n_layers: int = 1, batchnorm: bool = False) -> Tuple[str, ...]:
    """The parameters' names in the kernels' order: C, then per hidden layer Wl and bl (or,
    under BatchNorm, Wl, gammal, betal), then the output layer's W{L+1}, b{L+1}."""
    names = ["C"]
    for l in range(1, n_layers + 1):
        names += [f"W{l}", f"gamma{l}", f"beta{l}"] if batchnorm else [f"W{l}", f"b{l}"]
    return tuple(names + [f"W{n_layers + 1}", f"b{n_layers + 1}"])


def names_in_order(keys) -> Tuple[str, ...]:
    """The parameter names `keys` hold (any order), in the kernels' order; ValueError if they
    are not exactly some model's."""
    keys = set(keys)
    bn = "gamma1" in keys
    n = sum(1 for k in keys if k.startswith("W")) - 1
    names = param_names(max(n, 1), bn)
    if set(names) != keys:
        raise ValueError(f"{sorted(keys)} are not the parameters of a model (C, W1, b1, ..., W{{L+1}}, b{{L+1}}; "
                         f"under BatchNorm gamma and beta instead of the hidden b)")
    return names


def param_shapes(V: int, T: int, E: int, H: int, n_layers: int = 1, batchnorm: bool = False) -> Dict[str, tuple]:
    """Each parameter's shape, in the kernels' order (param_names)."""
    L = n_layers
    shapes = {"C": (V, E), f"W{L + 1}": (H, V), f"b{L + 1}": (V,)}
    for l in range(1, L + 1):
        shapes.update({f"W{l}": (T * E if l == 1 else H, H), f"b{l}": (H,), f"gamma{l}": (H,), f"beta{l}": (H,)})
    return {k: shapes[k] for k in param_names(L, batchnorm)}


def buffer_names(n_layers: int, batchnorm: bool) -> Tuple[str, ...]:
    """BatchNorm's running statistics (buffers, not parameters): running_mean1..L, running_var1..L."""
    if not batchnorm:
        return ()
    return tuple(f"running_mean{l}" for l in range(1, n_layers + 1)) + tuple(
        f"running_var{l}" for l in range(1, n_layers + 1))


def _float_array(a, name: str, copy: bool) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must hold floating-point numbers, got dtype {a.dtype}")
    a = np.array(a, dtype=np.float32, order="C", copy=True) if copy else np.ascontiguousarray(a, np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= value <= MAX_SIZE:
        raise ValueError(f"{name} must be an integer in [1, {MAX_SIZE}], got {value}")
    return int(value)


def check_sizes(block_size, n_embd, n_hidden) -> Tuple[int, int, int]:
    """The one check of a model's sizes (MLP, TrainConfig and lr_find all use it)."""
    return (_positive_int(block_size, "block_size"), _positive_int(n_embd, "n_embd"),
            _positive_int(n_hidden, "n_hidden"))


def check_depth(n_layers, batchnorm=False, bn_momentum=0.1) -> Tuple[int, bool, float]:
    """The one check of the depth and BatchNorm settings."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, (int, np.integer)):
        raise TypeError(f"n_layers must be an int, got {type(n_layers).__name__}")
    if not 1 <= n_layers <= MAX_LAYERS:
        raise ValueError(f"n_layers must be an integer in [1, {MAX_LAYERS}] (hidden layers), got {n_layers}")
    if not isinstance(batchnorm, (bool, np.bool_)):
        raise TypeError(f"batchnorm must be True or False, got {type(batchnorm).__name__}")
    if isinstance(bn_momentum, bool) or not isinstance(bn_momentum, (int, float, np.floating, np.integer)):
        raise TypeError(f"bn_momentum must be a number, got {type(bn_momentum).__name__}")
    if not (0.0 <= float(bn_momentum) <= 1.0):
        raise ValueError(f"bn_momentum must be a number in [0, 1] (torch's convention), got {bn_momentum}")
    return int(n_layers), bool(batchnorm), float(bn_momentum)


BN_EPS = 1e-5  # BatchNorm1d's eps, torch's default


def physical_memory() -> Optional[int]:
    """This machine's memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_needed(V: int, T: int, E: int, H: int, n_layers: int, batch_size: int, slots: int = 0) -> int:
    """Bytes a training run holds, about: the parameters (numpy's and the kernels' padded
    copy, a gradient copy and the optimizer's slots twice over when it has any) and the
    step's activations (a dozen (B, H) buffers a layer)."""
    params = V * E + T * E * H + (n_layers - 1) * H * H + H * V + 3 * n_layers * H + V
    copies = 2 + (1 + 2 * slots if slots else 0)
    return 4 * (params * copies + 12 * batch_size * (H + 16) * n_layers + 4 * batch_size * (T * E + V))


def require_memory(V: int, T: int, E: int, H: int, n_layers: int, batch_size: int, slots: int = 0) -> None:
    """Refuses, in one line and before anything is allocated, a training run that cannot fit in
    this machine's memory (a depth x width past it); see memory_needed."""
    need = memory_needed(V, T, E, H, n_layers, batch_size, slots)
    have = physical_memory()
    if have and need > have:
        raise MemoryError(f"n_layers {n_layers} x n_hidden {H:,} (batch {batch_size}) needs about "
                          f"{need / 2**30:,.1f} GiB to train, and this machine has {have / 2**30:,.1f} GiB")


class MLP:
    """Bengio et al. 2003 character MLP as built in the makemore lecture, optionally deeper
    with BatchNorm as in makemore part 3.

    Args:
        vocab_size: V, the number of symbols ('.' included).
        block_size: T, characters of context.
        n_embd: E, size of each character embedding.
        n_hidden: H, width of every tanh layer.
        seed: seed of the initialisation (numpy's default_rng).
        init: "lecture", "scaled" or "kaiming" (``INIT_HELP`` states each recipe).
        n_layers: L hidden layers (1 = the lecture's model).
        batchnorm: part 3's Linear (no bias) -> BatchNorm1d -> tanh in every hidden layer.
        bn_momentum: running = (1 - m) running + m batch, torch's convention (0.1).
    """

    def __init__(self, vocab_size: int, block_size: int = 3, n_embd: int = 10, n_hidden: int = 200,
                 seed: int = 2147483647, init: str = "lecture", n_layers: int = 1, batchnorm: bool = False,
                 bn_momentum: float = 0.1):
        V = _positive_int(vocab_size, "vocab_size")
        T, E, H = check_sizes(block_size, n_embd, n_hidden)
        L, bn, momentum = check_depth(n_layers, batchnorm, bn_momentum)
        if V < 2:
            raise ValueError(f"vocab_size must be >= 2 ('.' and at least one character), got {V}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        rng = np.random.default_rng(seed)
        f32 = np.float32
        params = {"C": rng.standard_normal((V, E), dtype=f32)}  # drawn in the parameters' order
        for l in range(1, L + 2):
            fan_in, fan_out = (T * E if l == 1 else H), (V if l == L + 1 else H)
            W = params[f"W{l}"] = rng.standard_normal((fan_in, fan_out), dtype=f32)
            if bn and l <= L:
                params[f"gamma{l}"] = np.ones(H, f32)
                params[f"beta{l}"] = np.zeros(H, f32)
                b = None
            else:
                b = params[f"b{l}"] = rng.standard_normal(fan_out, dtype=f32)
            out = l == L + 1
            if init == "scaled":
                W *= f32(0.01) if out else f32((5 / 3) / math.sqrt(fan_in))
                if b is not None:
                    b *= f32(0.01)
                    if out:
                        b[:] = 0
            elif init == "kaiming":
                W *= f32(0.1 / math.sqrt(fan_in)) if out else f32((5 / 3) / math.sqrt(fan_in))
                if b is not None:
                    b[:] = 0
        names = param_names(L, bn)
        self._set(V, T, E, H, {k: params[k] for k in names}, init, L, bn, momentum)

    def _set(self, V, T, E, H, params, init, n_layers=1, batchnorm=False, bn_momentum=0.1, buffers=None):
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = V, T, E, H
        self.n_layers, self.batchnorm, self.bn_momentum = n_layers, batchnorm, bn_momentum
        self.init = init  # how the parameters were first drawn (None: unknown, e.g. from PyTorch)
        self.params: Dict[str, np.ndarray] = params
        if buffers is None:  # torch's BatchNorm1d starts at mean 0, variance 1
            buffers = {k: (np.zeros if k.startswith("running_mean") else np.ones)(H, np.float32)
                       for k in buffer_names(n_layers, batchnorm)}
        self.buffers: Dict[str, np.ndarray] = buffers

    @property
    def param_names(self) -> Tuple[str, ...]:
        return param_names(self.n_layers, self.batchnorm)

    @classmethod
    def from_params(cls, params: Mapping[str, "np.typing.ArrayLike"], copy: bool = True,
                    init: Optional[str] = None, buffers: Optional[Mapping[str, "np.typing.ArrayLike"]] = None,
                    bn_momentum: float = 0.1) -> "MLP":
        """A model from its arrays (C, W1, b1, ..., any float dtype), with no random
        initialisation; the sizes and depth are read off the names and shapes (gamma1 present:
        BatchNorm, whose running statistics come in `buffers`, or start at 0 and 1). copy=False
        keeps float32 C-contiguous arrays as they are (the model then writes into them)."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of the arrays {PARAM_NAMES}, got {type(params).__name__}")
        bn = "gamma1" in params
        L = 1
        while f"W{L + 2}" in params and L < MAX_LAYERS:
            L += 1
        names = param_names(L, bn)
        missing = [k for k in names if k not in params]
        if missing:
            raise KeyError(f"params is missing {missing}; a model with {L} hidden layer{'s' * (L > 1)}"
                           f"{' and BatchNorm' if bn else ''} needs {names}")
        extra = [k for k in params if k not in names]
        if extra:  # a deeper or different model: dropping its arrays would give another model
            raise ValueError(f"params has {extra}, which this model does not have: it is exactly {names}")
        arrays = {k: _float_array(params[k], k, copy) for k in names}
        C, W1 = arrays["C"], arrays["W1"]
        if C.ndim != 2 or W1.ndim != 2:
            raise ValueError(f"params must be C (V, E), W1 (T*E, H), ...; got C {C.shape}, W1 {W1.shape}")
        V, E = C.shape
        TE, H = W1.shape
        if V < 2 or E < 1 or H < 1 or TE < E or TE % E:
            raise ValueError(f"C {C.shape} and W1 {W1.shape} do not fit: need V >= 2 and W1 with a multiple of "
                             f"E = {E} rows")
        want = param_shapes(V, TE // E, E, H, L, bn)
        for k in names:
            if arrays[k].shape != want[k]:
                raise ValueError(f"{k} must have shape {want[k]} to fit C {C.shape} and W1 {W1.shape}, "
                                 f"got {arrays[k].shape}")
        if init is not None and init not in INITS:
            raise ValueError(f"init must be one of {INITS} or None, got {init!r}")
        bufs = None
        if buffers is not None:
            bnames = buffer_names(L, bn)
            wrong = sorted(set(buffers) ^ set(bnames))
            if wrong:
                raise ValueError(f"buffers must be exactly {bnames}, got {sorted(buffers)}")
            bufs = {k: _float_array(buffers[k], k, copy) for k in bnames}
            for k, a in bufs.items():
                if a.shape != (H,):
                    raise ValueError(f"{k} must have shape ({H},), got {a.shape}")
                if k.startswith("running_var") and (a < 0).any():
                    raise ValueError(f"{k} must not be negative (a variance)")
        L, bn, momentum = check_depth(L, bn, bn_momentum)
        model = object.__new__(cls)
        model._set(V, TE // E, E, H, arrays, init, L, bn, momentum, bufs)
        return model

    # -- PyTorch in and out --------------------------------------------------
    def to_torch(self):
        """A torch.nn.Module (fastmlp.torch_module.TorchMLP) holding copies of the parameters
        (and BatchNorm's running statistics, as buffers) and computing the same logits:
        module(X) for X (N, block_size) int64 indices; module.eval() for evaluation."""
        from .torch_module import TorchMLP

        return TorchMLP.from_arrays(self.params, self.buffers, bn_momentum=self.bn_momentum)

    @classmethod
    def from_torch(cls, module_or_state_dict, bn_momentum: Optional[float] = None) -> "MLP":
        """The model back from a TorchMLP (or any module or state_dict with the tensors
        model.params and model.buffers name, of fitting shapes); values are copied bit for bit.
        bn_momentum: BatchNorm's, which a state_dict does not hold (default: the module's, else 0.1)."""
        obj = module_or_state_dict
        momentum = getattr(obj, "bn_momentum", 0.1) if bn_momentum is None else bn_momentum
        if callable(getattr(obj, "named_children", None)):  # a module: nothing else that computes may hide in it
            others = [n for n, _ in obj.named_children()] + [
                n for n, _ in obj.named_buffers() if not re.fullmatch(r"running_(mean|var)\d+", n)]
            if others:
                raise ValueError(f"the PyTorch module has {others}, which fastmlp's model does not: it is exactly "
                                 f"C, W1, b1, ... (fastmlp.torch_module.TorchMLP)")
        state = obj.state_dict() if callable(getattr(obj, "state_dict", None)) else obj
        if not isinstance(state, Mapping):
            raise TypeError(f"from_torch takes a torch.nn.Module or a state_dict, got {type(obj).__name__}")
        for k in state:
            if not callable(getattr(state[k], "detach", None)):
                raise TypeError(f"the PyTorch state's {k} is not a tensor but {type(state[k]).__name__}")
        arrays = {k: v.detach().cpu().numpy() for k, v in state.items()}
        buffers = {k: arrays.pop(k) for k in list(arrays) if k.startswith("running_")}
        if "gamma1" not in arrays and buffers:
            raise ValueError(f"the PyTorch state has {sorted(buffers)}, which a model without BatchNorm does not "
                             f"have")
        if "C" not in arrays or "W1" not in arrays:
            raise KeyError(f"the PyTorch state lacks {[k for k in ('C', 'W1') if k not in arrays]}; fastmlp needs "
                           f"{PARAM_NAMES} (or a deeper model's C, W1, b1, ...)")
        bn, L = "gamma1" in arrays, 1
        while f"W{L + 2}" in arrays and L < MAX_LAYERS:
            L += 1
        extra = [k for k in arrays if k not in param_names(L, bn)] + [k for k in buffers if k not in
                                                                       buffer_names(L, bn)]
        if extra:  # e.g. another nn.Linear: the fastmlp model would compute something else
            raise ValueError(f"the PyTorch state has {extra}, which fastmlp's model does not: it is exactly "
                             f"{param_names(L, bn) + buffer_names(L, bn)} (fastmlp.torch_module.TorchMLP)")
        return cls.from_params(arrays, buffers=buffers if bn else None, bn_momentum=momentum)

    # -- information ---------------------------------------------------------
    @property
    def config(self) -> dict:
        c = {"vocab_size": self.vocab_size, "block_size": self.block_size, "n_embd": self.n_embd,
             "n_hidden": self.n_hidden, "n_layers": self.n_layers, "batchnorm": self.batchnorm}
        if self.batchnorm:
            c["bn_momentum"] = self.bn_momentum
        return c

    @property
    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def __repr__(self) -> str:
        c = self.config
        deep = (f", n_layers={self.n_layers}" if self.n_layers > 1 else "") + (
            ", batchnorm=True" if self.batchnorm else "")
        return (f"MLP(vocab_size={c['vocab_size']}, block_size={c['block_size']}, n_embd={c['n_embd']}, "
                f"n_hidden={c['n_hidden']}{deep}; {self.num_params:,} parameters)")

    # -- input conversion ----------------------------------------------------
    def arrays(self) -> tuple:
        """The parameters in the kernels' order (C, W1, b1, ..., W{L+1}, b{L+1}; the lecture's
        C, W1, b1, W2, b2): the `params` argument of every whole-model kernel in fastmlp._core."""
        try:
            return tuple(self.params[k] for k in self.param_names)
        except KeyError as e:
            raise KeyError(f"model.params lost its entry {e.args[0]!r}; it needs {self.param_names}") from None

    def eval_bn_args(self):
        """bn_args() for evaluation, which folds each BatchNorm into its layer (W s, beta - mean
        s with s = gamma / sqrt(running_var + eps)); refused where that overflows float32."""
        bn = self.bn_args()
        if bn is not None:
            big = float(np.finfo(np.float32).max)
            for l in range(1, self.n_layers + 1):
                s = np.abs(self.params[f"gamma{l}"].astype(np.float64)) / np.sqrt(
                    self.buffers[f"running_var{l}"].astype(np.float64) + BN_EPS)
                with np.errstate(over="ignore", invalid="ignore"):
                    top = np.abs(self.params[f"W{l}"].astype(np.float64)).max(0, initial=0.0) * s  # per unit
                    shift = np.abs(self.buffers[f"running_mean{l}"].astype(np.float64)) * s
                if not ((s < big).all() and (top < big).all() and (shift < big).all()):
                    raise ValueError(f"BatchNorm layer {l} cannot be evaluated in float32: gamma{l} / "
                                     f"sqrt(running_var{l} + eps) reaches {float(s.max()):.3g}, which overflows its "
                                     f"weights (a corrupt or diverged model)")
        return bn

    def bn_args(self):
        """The `batchnorm` argument of the whole-model kernels: None, or (running means,
        running vars, eps, momentum); train_steps updates the arrays in place."""
        if not self.batchnorm:
            return None
        L = self.n_layers
        try:
            return (tuple(self.buffers[f"running_mean{l}"] for l in range(1, L + 1)),
                    tuple(self.buffers[f"running_var{l}"] for l in range(1, L + 1)), BN_EPS, self.bn_momentum)
        except KeyError as e:
            raise KeyError(f"model.buffers lost its entry {e.args[0]!r}") from None

    def _indices(self, a, name: str, ndim: int) -> np.ndarray:
        """Any integer array -> int32, C-contiguous (no copy when it already is)."""
        a = np.asarray(a)
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers (any integer dtype), got dtype {a.dtype}")
        if a.ndim != ndim:
            want = "(N, block_size)" if ndim == 2 else "(N,)"
            raise ValueError(f"{name} must be {ndim}-D with shape {want}, got shape {a.shape}")
        if a.dtype != np.int32 and a.size:
            # check before narrowing: int64 values past int32 would wrap into range
            lo, hi = a.min(), a.max()
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise IndexError(f"{name} contains {bad}, outside [0, {self.vocab_size}) "
                                 f"(indices must be in the vocabulary)")
        return np.ascontiguousarray(a, dtype=np.int32)

    # -- forward / backward (threads: for this call; None = fastmlp.get_num_threads()) --
    def forward(self, X, threads: Optional[int] = None) -> np.ndarray:
        """Logits (N, V) for contexts X (N, block_size), in evaluation mode (BatchNorm's running
        statistics)."""
        return _core.mlp_forward(self.arrays(), self._indices(X, "X", 2), batchnorm=self.eval_bn_args(),
                                 threads=threads)

    def loss(self, X, Y, threads: Optional[int] = None) -> float:
        """Mean cross-entropy over all of X, Y, evaluated in chunks (no (N, V) buffer)."""
        return float(_core.mlp_loss(self.arrays(), self._indices(X, "X", 2), self._indices(Y, "Y", 1),
                                    batchnorm=self.eval_bn_args(), threads=threads))

    def loss_and_grad(self, X, Y, dropout_mask=None, threads: Optional[int] = None
                      ) -> Tuple[float, Dict[str, np.ndarray]]:
        """Mean loss of one batch and its gradients, under the names and shapes of ``params``,
        in training mode (BatchNorm with the batch's statistics; the running ones untouched).
        dropout_mask: optional float32 multipliers of each hidden layer's output, (N, n_hidden) for
        one layer, (n_layers, N, n_hidden) for more."""
        loss, grads = _core.mlp_loss_and_grad(self.arrays(), self._indices(X, "X", 2), self._indices(Y, "Y", 1),
                                              dropout_mask, batchnorm=self.bn_args(), threads=threads)
        return float(loss), dict(zip(self.param_names, grads))

    def sgd_step(self, grads: Dict[str, np.ndarray], lr: float, threads: Optional[int] = None) -> None:
        """p -= lr * grads[name] for every parameter, in place."""
        names = self.param_names
        missing = [k for k in names if k not in grads]
        if missing:
            raise KeyError(f"grads is missing {missing}; it needs {names}")
        for k in names:
            _core.sgd_update(self.params[k], grads[k], lr, threads=threads)

    def copy(self) -> "MLP":
        other = object.__new__(MLP)
        other.__dict__.update(self.__dict__)
        other.params = {k: v.copy() for k, v in self.params.items()}
        other.buffers = {k: v.copy() for k, v in self.buffers.items()}
        return other
