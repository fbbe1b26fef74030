"""Checkpoints: parameters, vocabulary, configuration and training state in one .npz.

* Loading never executes code and never trusts the file: arrays are read with
  allow_pickle=False, and every array's header (dtype, shape) is checked against the
  stored configuration *before* the array is read, and the bytes the arrays declare
  are counted against a cap (``max_bytes``, 1 GiB unless raised) before the first one
  is read, so a hand-edited or hostile file (zeros compress ~1000x) cannot make the
  loader allocate gigabytes. Metadata is JSON, checked field by field.
* Saving is atomic (fastmlp._files): an interrupted save leaves the previous
  checkpoint intact.
* A checkpoint is proportional to the model: the training words are not stored, only
  a fingerprint of the data and the split rule (``data``), from which the sample
  command rebuilds the training split to mark samples that are not new.
* A missing, truncated, corrupt or mismatched file raises CheckpointError naming the problem.
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ._files import atomic_write
from .data import Vocab
from .model import INITS, MAX_LAYERS, MLP, PARAM_NAMES, buffer_names, param_names, param_shapes

FORMAT = "fastmlp-checkpoint"
VERSION = 3  # 3: depth and BatchNorm (n_layers, batchnorm, bn_momentum; bn.* buffers); 2: one hidden
#              layer; 1: training words stored in full, optimizer state as a list
CHECKPOINT_NAME = "model.npz"
MAX_ELEMENTS = 1 << 31  # no parameter array of a loadable model is larger
MAX_TEXT_BYTES = 1 << 28  # version 1's word list (a string; counted against max_bytes too)
MAX_META_BYTES = 1 << 24  # the JSON metadata (parsed: a hostile one could grow ~5x in memory)
# What load() reads at most, every array together, unless told otherwise: 268M float32
# numbers; --preset best_one_layer with AdamW's state is 3.4 MB.
MAX_BYTES = 1 << 30
MAX_STEPS = 1 << 40  # config.MAX_STEPS: no run is longer


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (missing, corrupt, truncated, or not matching)."""


@dataclass
class Checkpoint:
    model: MLP
    vocab: Vocab
    step: int = 0
    rng_state: Optional[np.ndarray] = None    # (4,) uint64, the minibatch sampler's state; None: not saved
    loss_history: Optional[np.ndarray] = None  # (step,) float32
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    # the data and split it was trained on: {"sha256", "path", "split_seed", "words"} (fastmlp.data)
    data: dict = field(default_factory=dict)
    # optimizer state by slot (torch.optim's names: momentum_buffer, exp_avg, exp_avg_sq),
    # each slot shaped like the parameters: {slot: {"C": ..., "W1": ..., ...}}
    optimizer_state: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    opt_step: int = 0                          # optimizer steps taken (AdamW's bias correction)
    train_words: List[str] = field(default_factory=list)  # only from version-1 files
    # --diagnostics: the steps recorded and their records (fastmlp.diagnostics), (n,) and (n, L)
    diag_steps: Optional[np.ndarray] = None
    diag_records: Optional[np.ndarray] = None


def save(path, ckpt: Checkpoint) -> Path:
    """Writes ckpt to path atomically and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = None if ckpt.rng_state is None else np.asarray(ckpt.rng_state, np.uint64)
    if rng is not None and (rng.shape != (4,) or not rng.any()):
        raise ValueError("rng_state must be 4 uint64 words, not all zero (use fastmlp._core.rng_state(seed))")
    model_cfg = dict(ckpt.model.config)
    if ckpt.model.init is not None:
        model_cfg["init"] = ckpt.model.init
    meta = {
        "format": FORMAT, "version": VERSION, "model": model_cfg, "vocab": "".join(ckpt.vocab.itos),
        "step": int(ckpt.step), "train_config": ckpt.train_config, "metrics": ckpt.metrics, "data": ckpt.data,
        "opt_step": int(ckpt.opt_step), "optimizer_slots": sorted(ckpt.optimizer_state),
    }
    arrays = {k: ckpt.model.params[k] for k in ckpt.model.param_names}
    arrays.update({f"bn.{k}": v for k, v in ckpt.model.buffers.items()})
    arrays["meta"] = np.array(json.dumps(meta, allow_nan=False))
    if rng is not None:
        arrays["rng_state"] = rng
    if ckpt.loss_history is not None:
        arrays["loss_history"] = np.asarray(ckpt.loss_history, np.float32)
    for slot, tensors in ckpt.optimizer_state.items():
        for k in ckpt.model.param_names:
            arrays[f"opt.{slot}.{k}"] = np.asarray(tensors[k], np.float32)
    if ckpt.diag_steps is not None and len(ckpt.diag_steps):
        arrays["diag_steps"] = np.asarray(ckpt.diag_steps, np.int64)
        arrays["diag_records"] = np.asarray(ckpt.diag_records, np.float64)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------
class _Reader:
    """Reads members of an .npz one at a time, checking each header first."""

    def __init__(self, zf: zipfile.ZipFile, where: str, max_bytes: Optional[int]):
        self.zf, self.where = zf, where
        self.names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        self.cap = self.left = max_bytes  # bytes the arrays still to be read may take (None: no cap)
        self.claimed = set(PARAM_NAMES)  # the model's arrays, counted up front (the loader sets them)

    def claim(self, nbytes: int, what: str) -> None:
        """Counts nbytes against the cap before they are allocated."""
        if self.left is None:
            return
        if nbytes > self.left:
            raise CheckpointError(f"{self.where}: {what} takes {_size(nbytes)}, more than checkpoint.load() reads "
                                  f"unless told ({_size(self.cap)} in all); a real model this "
                                  "large loads with checkpoint.load(path, max_bytes=None)")
        self.left -= nbytes

    def read(self, key: str, dtype, shape=None, max_len: Optional[int] = None) -> np.ndarray:
        """The array `key`, which must have this dtype and shape (or, with max_len, be
        1-D of at most max_len elements)."""
        if key not in self.names:
            raise CheckpointError(f"{self.where} lacks {key!r}")
        with self.zf.open(key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            got_shape, fortran, got_dtype = read_header(f)
            ok = got_dtype == np.dtype(dtype) and not fortran
            if max_len is not None:
                ok = ok and len(got_shape) == 1 and got_shape[0] <= max_len
            elif shape is not None:
                ok = ok and tuple(got_shape) == tuple(shape)
            if not ok:
                want = f"{np.dtype(dtype)}[<= {max_len}]" if max_len is not None else f"{np.dtype(dtype)}{list(shape)}"
                raise CheckpointError(f"{self.where}: {key} is {got_dtype}{list(got_shape)}, expected {want}")
            nbytes = int(np.prod(got_shape, dtype=np.int64)) * got_dtype.itemsize
            if self.zf.getinfo(key + ".npy").file_size < nbytes:  # never allocate what the file cannot hold
                raise CheckpointError(f"{self.where}: {key} claims {nbytes:,} bytes but the file holds fewer "
                                      "(truncated or hand-edited)")
            if key not in self.claimed and not key.startswith("opt"):  # (the model's arrays: claimed up front)
                self.claim(nbytes, key)
        with self.zf.open(key + ".npy") as f:  # read_array reads the header again
            a = np.lib.format.read_array(f, allow_pickle=False)
        return np.ascontiguousarray(a)

    def read_text(self, key: str, limit: int = MAX_TEXT_BYTES) -> str:
        """A 0-d string array (the JSON metadata, v1's word list), refused above limit."""
        if key not in self.names:
            raise CheckpointError(f"{self.where} lacks {key!r}")
        size = self.zf.getinfo(key + ".npy").file_size
        if size > limit:
            raise CheckpointError(f"{self.where}: {key} is larger than {limit >> 20} MB")
        if key != "meta":
            self.claim(size, key)
        with self.zf.open(key + ".npy") as f:
            a = np.lib.format.read_array(f, allow_pickle=False)
        if a.dtype.kind != "U" or a.shape != ():
            raise CheckpointError(f"{self.where}: {key} is not a string")
        return str(a)


def _int(meta: dict, key: str, where: str, lo: int = 0, default=None, hi: Optional[int] = None) -> int:
    v = meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise CheckpointError(f"{where}: {key} must be an integer {bounds}, got {str(v)[:40]}")
    return v


def _dict(meta: dict, key: str, where: str) -> dict:
    v = meta.get(key, {})
    if not isinstance(v, dict):
        raise CheckpointError(f"{where}: {key} must be a JSON object, got {type(v).__name__}")
    return v


def _finite(x) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer too large for a float
        return False


def _check_metrics(metrics: dict, where: str) -> None:
    curve = metrics.get("dev_curve", [])
    ok = isinstance(curve, list) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                             and _finite(x)
                                                             for x in p) for p in curve)
    if not ok:
        raise CheckpointError(f"{where}: metrics.dev_curve must be a list of [step, loss] pairs of finite numbers")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 \
        else f"{nbytes:,} bytes"


def load(path, max_bytes: Optional[int] = MAX_BYTES) -> Checkpoint:
    """Reads and checks a checkpoint written by save() (this version or version 1).
    max_bytes: the most its arrays together may take in memory (None: no cap)."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
        raise TypeError(f"max_bytes must be an integer >= 0 or None, got {max_bytes!r}")
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    where = f"checkpoint {str(path)!r}"
    try:
        with zipfile.ZipFile(path) as zf:
            return _load(_Reader(zf, where, max_bytes), where)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, NotImplementedError, RuntimeError,
            UnicodeDecodeError, zipfile.LargeZipFile) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable fastmlp checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from None


def _load(r: _Reader, where: str) -> Checkpoint:
    missing = [k for k in ("C", "W1", "meta") if k not in r.names]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}: not a fastmlp checkpoint")
    meta_arr = r.read_text("meta", MAX_META_BYTES)
    try:
        meta = json.loads(meta_arr)
    except ValueError as e:
        raise CheckpointError(f"{where} has unreadable metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a fastmlp checkpoint (format tag missing)")
    version = meta.get("version")
    if version not in (1, 2, VERSION):
        raise CheckpointError(f"{where} has format version {version!r}; this fastmlp reads 1 to {VERSION}")

    # the configuration first: it fixes every array's shape
    cfg = _dict(meta, "model", where)
    V, T, E, H = (_int(cfg, k, where, lo=1) for k in ("vocab_size", "block_size", "n_embd", "n_hidden"))
    L, bn, bn_momentum = 1, False, 0.1  # versions 1 and 2: the lecture's one hidden layer
    if version >= 3:
        L = _int(cfg, "n_layers", where, lo=1, hi=MAX_LAYERS)
        bn, bn_momentum = cfg.get("batchnorm"), cfg.get("bn_momentum", 0.1)
        if not isinstance(bn, bool):
            raise CheckpointError(f"{where}: batchnorm must be true or false, got {str(bn)[:40]}")
        if isinstance(bn_momentum, bool) or not isinstance(bn_momentum, (int, float)) or not 0 <= bn_momentum <= 1:
            raise CheckpointError(f"{where}: bn_momentum must be a number in [0, 1], got {str(bn_momentum)[:40]}")
    names = param_names(L, bn)
    shapes = param_shapes(V, T, E, H, L, bn)
    buffers = buffer_names(L, bn)
    r.claimed = set(names) | {f"bn.{k}" for k in buffers}
    missing = [k for k in names + tuple(f"bn.{k}" for k in buffers) if k not in r.names]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}, which its model ({L} hidden layer{'s' * (L > 1)}"
                              f"{', BatchNorm' if bn else ''}) needs")
    if max(int(np.prod(s)) for s in shapes.values()) > MAX_ELEMENTS:
        raise CheckpointError(f"{where}: a model of (V, T, E, H) = {(V, T, E, H)} is larger than fastmlp loads")
    itos = meta.get("vocab")
    if not isinstance(itos, str):
        raise CheckpointError(f"{where}: vocab must be a string of symbols")
    try:
        vocab = Vocab(tuple(itos))
    except ValueError as e:
        raise CheckpointError(f"{where} has an invalid vocabulary: {e}") from None
    if vocab.size != V:
        raise CheckpointError(f"{where}: vocabulary of {vocab.size} symbols but the model has vocab_size {V}")
    # the model and its optimizer state, counted before any array is read
    if version == 1:  # (each version reads its own key: the other one counts for nothing)
        n_slots = {5: 1, 10: 2}.get(meta["opt_tensors"], 0) if isinstance(meta.get("opt_tensors"), int) else 0
    else:
        n_slots = len(meta["optimizer_slots"]) if isinstance(meta.get("optimizer_slots"), list) else 0
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    r.claim(4 * (n_params * (1 + n_slots) + H * len(buffers)), f"a model of (V, T, E, H) = {(V, T, E, H)}"
            + (f", {L} hidden layers" if L > 1 else "")
            + (f" with {n_slots} optimizer slot{'s' if n_slots > 1 else ''}" if n_slots else ""))
    init = cfg.get("init")
    step = _int(meta, "step", where, default=0, hi=MAX_STEPS)
    opt_step = _int(meta, "opt_step", where, default=0, hi=MAX_STEPS)
    train_config, metrics, data = _dict(meta, "train_config", where), _dict(meta, "metrics", where), \
        _dict(meta, "data", where)
    _check_metrics(metrics, where)

    params = {k: r.read(k, np.float32, shapes[k]) for k in names}
    bufs = {k: r.read(f"bn.{k}", np.float32, (H,)) for k in buffers}
    for k, a in list(params.items()) + list(bufs.items()):
        if not np.isfinite(a).all():
            raise CheckpointError(f"{where}: {k} contains NaN or inf")
    for k, a in bufs.items():
        if k.startswith("running_var") and (a < 0).any():
            raise CheckpointError(f"{where}: {k} has a negative variance")
    model = MLP.from_params(params, copy=False, init=init if init in INITS else None,
                            buffers=bufs if bn else None, bn_momentum=float(bn_momentum))

    rng_state = None
    if "rng_state" in r.names:
        rng_state = r.read("rng_state", np.uint64, (4,))
        if not rng_state.any():
            raise CheckpointError(f"{where}: rng_state is all zero, which is not a state of the sampler")
    history = r.read("loss_history", np.float32, max_len=step) if "loss_history" in r.names else None
    diag_steps = diag_records = None
    if "diag_steps" in r.names:
        from .diagnostics import record_length

        diag_steps = r.read("diag_steps", np.int64, max_len=step + 1)
        diag_records = r.read("diag_records", np.float64, (len(diag_steps), record_length(names=names)))
        if len(diag_steps) and (diag_steps.min() < 0 or diag_steps.max() > step or (np.diff(diag_steps) <= 0).any()):
            raise CheckpointError(f"{where}: diag_steps must be increasing steps in [0, {step}]")

    opt_state: Dict[str, Dict[str, np.ndarray]] = {}
    train_words: List[str] = []
    if version == 1:  # opt_0..opt_{n-1}: momentum buffers, or AdamW's m then v; words in full
        n = _int(meta, "opt_tensors", where, default=0)
        if n not in (0, 5, 10):
            raise CheckpointError(f"{where}: opt_tensors must be 0, 5 or 10, got {n}")
        slots = {5: ["momentum_buffer"], 10: ["exp_avg", "exp_avg_sq"]}.get(n, [])
        for s, slot in enumerate(slots):
            opt_state[slot] = {k: r.read(f"opt_{5 * s + i}", np.float32, shapes[k]) for i, k in enumerate(PARAM_NAMES)}
        if "train_words" in r.names:
            words = r.read_text("train_words")
            train_words = words.split("\n") if words else []
    else:
        slots = meta.get("optimizer_slots", [])
        if not isinstance(slots, list) or not all(isinstance(s, str) and s.isidentifier() for s in slots):
            raise CheckpointError(f"{where}: optimizer_slots must be a list of names")
        for slot in slots:
            opt_state[slot] = {k: r.read(f"opt.{slot}.{k}", np.float32, shapes[k]) for k in names}
        known = set(r.claimed) | {"meta", "rng_state", "loss_history", "diag_steps", "diag_records"} | {
            f"opt.{slot}.{k}" for slot in slots for k in names}
        unknown = sorted(r.names - known)
        if unknown:  # e.g. a deeper model's arrays under a shallower one's metadata: not silently dropped
            raise CheckpointError(f"{where} holds arrays its model ({L} hidden layer{'s' * (L > 1)}"
                                  f"{', BatchNorm' if bn else ''}) does not have: {unknown[:5]}")
    return Checkpoint(model=model, vocab=vocab, step=step, rng_state=rng_state, loss_history=history,
                      train_config=train_config, metrics=metrics, data=data, optimizer_state=opt_state,
                      opt_step=opt_step, train_words=train_words, diag_steps=diag_steps, diag_records=diag_records)
