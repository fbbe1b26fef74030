"""The model: an embedding table C, one tanh hidden layer and a linear output layer.

    emb = C[X]                  (N, T*E)   the block_size embeddings, concatenated
    h   = tanh(emb @ W1 + b1)   (N, H)
    logits = h @ W2 + b2        (N, V)
    loss = cross_entropy(logits, Y)

Parameters are plain numpy arrays in ``model.params``; every method hands them to
the C++ kernels as they are, so writing into them (from PyTorch, a checkpoint, ...)
changes the model.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from . import _core

PARAM_NAMES = ("C", "W1", "b1", "W2", "b2")
INITS = ("lecture", "scaled")


MAX_SIZE = 1 << 24  # block_size, n_embd, n_hidden: far above any model that fits in memory


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


class MLP:
    """Bengio et al. 2003 character MLP as built in the makemore lecture.

    Args:
        vocab_size: V, the number of symbols ('.' included).
        block_size: T, characters of context.
        n_embd: E, size of each character embedding.
        n_hidden: H, width of the tanh layer.
        seed: seed of the initialisation (numpy's default_rng).
        init: "lecture" (every parameter standard normal, as in the lecture) or
            "scaled" (W1 * (5/3)/sqrt(T*E), b1 * 0.01, W2 * 0.01, b2 = 0: the first
            loss is close to -log(1/V) instead of 17+).
    """

    def __init__(self, vocab_size: int, block_size: int = 3, n_embd: int = 10, n_hidden: int = 200,
                 seed: int = 2147483647, init: str = "lecture"):
        V = _positive_int(vocab_size, "vocab_size")
        T, E, H = check_sizes(block_size, n_embd, n_hidden)
        if V < 2:
            raise ValueError(f"vocab_size must be >= 2 ('.' and at least one character), got {V}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        rng = np.random.default_rng(seed)
        f32 = np.float32
        C = rng.standard_normal((V, E), dtype=f32)
        W1 = rng.standard_normal((T * E, H), dtype=f32)
        b1 = rng.standard_normal(H, dtype=f32)
        W2 = rng.standard_normal((H, V), dtype=f32)
        b2 = rng.standard_normal(V, dtype=f32)
        if init == "scaled":
            W1 *= f32((5 / 3) / math.sqrt(T * E))
            b1 *= f32(0.01)
            W2 *= f32(0.01)
            b2[:] = 0
        self._set(V, T, E, H, {"C": C, "W1": W1, "b1": b1, "W2": W2, "b2": b2}, init)

    def _set(self, V, T, E, H, params, init):
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = V, T, E, H
        self.init = init  # how the parameters were first drawn (None: unknown, e.g. from PyTorch)
        self.params: Dict[str, np.ndarray] = params

    @classmethod
    def from_params(cls, params: Mapping[str, "np.typing.ArrayLike"], copy: bool = True,
                    init: Optional[str] = None) -> "MLP":
        """A model from its five arrays (C, W1, b1, W2, b2, any float dtype), with no random
        initialisation; the sizes are read off the shapes. copy=False keeps float32
        C-contiguous arrays as they are (the model then writes into them)."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of the arrays {PARAM_NAMES}, got {type(params).__name__}")
        missing = [k for k in PARAM_NAMES if k not in params]
        if missing:
            raise KeyError(f"params is missing {missing}; a model needs {PARAM_NAMES}")
        extra = [k for k in params if k not in PARAM_NAMES]
        if extra:  # a deeper or different model: dropping its arrays would give another model
            raise ValueError(f"params has {extra}, which this model does not have: it is exactly {PARAM_NAMES}")
        arrays = {}
        for k in PARAM_NAMES:
            a = np.asarray(params[k])
            if a.dtype.kind != "f":
                raise TypeError(f"{k} must hold floating-point numbers, got dtype {a.dtype}")
            a = np.array(a, dtype=np.float32, order="C", copy=True) if copy else np.ascontiguousarray(a, np.float32)
            if not np.isfinite(a).all():
                raise ValueError(f"{k} contains NaN or inf")
            arrays[k] = a
        C, W1, b1, W2, b2 = (arrays[k] for k in PARAM_NAMES)
        if C.ndim != 2 or W1.ndim != 2 or W2.ndim != 2 or b1.ndim != 1 or b2.ndim != 1:
            raise ValueError("params must be C (V, E), W1 (T*E, H), b1 (H,), W2 (H, V), b2 (V,); got "
                             + ", ".join(f"{k} {arrays[k].shape}" for k in PARAM_NAMES))
        V, E = C.shape
        TE, H = W1.shape
        if V < 2 or E < 1 or H < 1 or TE < E or TE % E:
            raise ValueError(f"C {C.shape} and W1 {W1.shape} do not fit: need V >= 2 and W1 with a multiple of "
                             f"E = {E} rows")
        for k, want in (("b1", (H,)), ("W2", (H, V)), ("b2", (V,))):
            if arrays[k].shape != want:
                raise ValueError(f"{k} must have shape {want} to fit C {C.shape} and W1 {W1.shape}, "
                                 f"got {arrays[k].shape}")
        if init is not None and init not in INITS:
            raise ValueError(f"init must be one of {INITS} or None, got {init!r}")
        model = object.__new__(cls)
        model._set(V, TE // E, E, H, arrays, init)
        return model

    # -- PyTorch in and out --------------------------------------------------
    def to_torch(self):
        """A torch.nn.Module (fastmlp.torch_module.TorchMLP) holding copies of the parameters
        and computing the same logits: module(X) for X (N, block_size) int64 indices."""
        from .torch_module import TorchMLP

        return TorchMLP.from_arrays(self.params)

    @classmethod
    def from_torch(cls, module_or_state_dict) -> "MLP":
        """The model back from a TorchMLP (or any module or state_dict with tensors C, W1,
        b1, W2, b2 of the same shapes); values are copied bit for bit."""
        obj = module_or_state_dict
        if callable(getattr(obj, "named_children", None)):  # a module: nothing else that computes may hide in it
            others = [n for n, _ in obj.named_children()] + [n for n, _ in obj.named_buffers()]
            if others:
                raise ValueError(f"the PyTorch module has {others}, which fastmlp's model does not: it is exactly "
                                 f"{PARAM_NAMES} (fastmlp.torch_module.TorchMLP)")
        state = obj.state_dict() if callable(getattr(obj, "state_dict", None)) else obj
        if not isinstance(state, Mapping):
            raise TypeError(f"from_torch takes a torch.nn.Module or a state_dict, got {type(obj).__name__}")
        missing = [k for k in PARAM_NAMES if k not in state]
        if missing:
            raise KeyError(f"the PyTorch state lacks {missing}; fastmlp needs {PARAM_NAMES}")
        extra = [k for k in state if k not in PARAM_NAMES]
        if extra:  # e.g. another nn.Linear: the fastmlp model would compute something else
            raise ValueError(f"the PyTorch state has {extra}, which fastmlp's model does not: it is exactly "
                             f"{PARAM_NAMES} (fastmlp.torch_module.TorchMLP)")
        for k in PARAM_NAMES:
            if not callable(getattr(state[k], "detach", None)):
                raise TypeError(f"the PyTorch state's {k} is not a tensor but {type(state[k]).__name__}")
        return cls.from_params({k: state[k].detach().cpu().numpy() for k in PARAM_NAMES})

    # -- information ---------------------------------------------------------
    @property
    def config(self) -> dict:
        return {"vocab_size": self.vocab_size, "block_size": self.block_size, "n_embd": self.n_embd,
                "n_hidden": self.n_hidden}

    @property
    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def __repr__(self) -> str:
        c = self.config
        return (f"MLP(vocab_size={c['vocab_size']}, block_size={c['block_size']}, n_embd={c['n_embd']}, "
                f"n_hidden={c['n_hidden']}; {self.num_params:,} parameters)")

    # -- input conversion ----------------------------------------------------
    def arrays(self) -> tuple:
        """The parameters in the kernels' order (C, W1, b1, W2, b2): the `params` argument of
        every whole-model kernel in fastmlp._core."""
        try:
            return tuple(self.params[k] for k in PARAM_NAMES)
        except KeyError as e:
            raise KeyError(f"model.params lost its entry {e.args[0]!r}; it needs {PARAM_NAMES}") from None

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
        """Logits (N, V) for contexts X (N, block_size)."""
        return _core.mlp_forward(self.arrays(), self._indices(X, "X", 2), threads=threads)

    def loss(self, X, Y, threads: Optional[int] = None) -> float:
        """Mean cross-entropy over all of X, Y, evaluated in chunks (no (N, V) buffer)."""
        return float(_core.mlp_loss(self.arrays(), self._indices(X, "X", 2), self._indices(Y, "Y", 1),
                                    threads=threads))

    def loss_and_grad(self, X, Y, dropout_mask=None, threads: Optional[int] = None
                      ) -> Tuple[float, Dict[str, np.ndarray]]:
        """Mean loss of one batch and its gradients, under the names and shapes of ``params``.
        dropout_mask: optional (N, n_hidden) float32 multipliers for the hidden layer."""
        loss, grads = _core.mlp_loss_and_grad(self.arrays(), self._indices(X, "X", 2), self._indices(Y, "Y", 1),
                                              dropout_mask, threads=threads)
        return float(loss), dict(zip(PARAM_NAMES, grads))

    def sgd_step(self, grads: Dict[str, np.ndarray], lr: float, threads: Optional[int] = None) -> None:
        """p -= lr * grads[name] for every parameter, in place."""
        missing = [k for k in PARAM_NAMES if k not in grads]
        if missing:
            raise KeyError(f"grads is missing {missing}; it needs {PARAM_NAMES}")
        for k in PARAM_NAMES:
            _core.sgd_update(self.params[k], grads[k], lr, threads=threads)

    def copy(self) -> "MLP":
        other = object.__new__(MLP)
        other.__dict__.update(self.__dict__)
        other.params = {k: v.copy() for k, v in self.params.items()}
        return other
