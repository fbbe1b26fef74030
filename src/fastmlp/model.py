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
from typing import Dict, Tuple

import numpy as np

from . import _core

PARAM_NAMES = ("C", "W1", "b1", "W2", "b2")
INITS = ("lecture", "scaled")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


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
        T = _positive_int(block_size, "block_size")
        E = _positive_int(n_embd, "n_embd")
        H = _positive_int(n_hidden, "n_hidden")
        if V < 2:
            raise ValueError(f"vocab_size must be >= 2 ('.' and at least one character), got {V}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = V, T, E, H
        self.init = init
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
        self.params: Dict[str, np.ndarray] = {"C": C, "W1": W1, "b1": b1, "W2": W2, "b2": b2}

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
    def _arrays(self):
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

    # -- forward / backward --------------------------------------------------
    def forward(self, X) -> np.ndarray:
        """Logits (N, V) for contexts X (N, block_size)."""
        return _core.mlp_forward(*self._arrays(), self._indices(X, "X", 2))

    def loss(self, X, Y) -> float:
        """Mean cross-entropy over all of X, Y, evaluated in chunks (no (N, V) buffer)."""
        return float(_core.mlp_loss(*self._arrays(), self._indices(X, "X", 2), self._indices(Y, "Y", 1)))

    def loss_and_grad(self, X, Y, dropout_mask=None) -> Tuple[float, Dict[str, np.ndarray]]:
        """Mean loss of one batch and its gradients, under the names and shapes of ``params``.
        dropout_mask: optional (N, n_hidden) float32 multipliers for the hidden layer."""
        out = _core.mlp_loss_and_grad(*self._arrays(), self._indices(X, "X", 2), self._indices(Y, "Y", 1),
                                      dropout_mask)
        return float(out[0]), dict(zip(PARAM_NAMES, out[1:]))

    def sgd_step(self, grads: Dict[str, np.ndarray], lr: float) -> None:
        """p -= lr * grads[name] for every parameter, in place."""
        missing = [k for k in PARAM_NAMES if k not in grads]
        if missing:
            raise KeyError(f"grads is missing {missing}; it needs {PARAM_NAMES}")
        for k in PARAM_NAMES:
            _core.sgd_update(self.params[k], grads[k], lr)

    def copy(self) -> "MLP":
        other = object.__new__(MLP)
        other.__dict__.update(self.__dict__)
        other.params = {k: v.copy() for k, v in self.params.items()}
        return other
