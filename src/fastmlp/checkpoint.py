"""Checkpoints: parameters, vocabulary, configuration and training state in one .npz.

* Loading never executes code: numpy.load(..., allow_pickle=False); metadata is JSON.
* Saving is atomic: a temporary file in the same folder, fsync, then os.replace, so a
  save that is interrupted (Ctrl-C, kill, full disk) leaves the previous checkpoint intact.
* A missing, truncated, corrupt or mismatched file raises CheckpointError naming the problem.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from .data import Vocab
from .model import INITS, MLP, PARAM_NAMES

FORMAT = "fastmlp-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "model.npz"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (missing, corrupt, truncated, or not matching)."""


@dataclass
class Checkpoint:
    model: MLP
    vocab: Vocab
    step: int = 0
    rng_state: Optional[np.ndarray] = None    # (4,) uint64: the minibatch sampler's state
    loss_history: Optional[np.ndarray] = None  # (step,) float32
    train_config: dict = field(default_factory=dict)
    train_words: List[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    optimizer_state: List[np.ndarray] = field(default_factory=list)  # momentum buffers, or AdamW m then v
    opt_step: int = 0                                                 # optimizer steps taken (AdamW)


def save(path, ckpt: Checkpoint) -> Path:
    """Writes ckpt to path atomically and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT, "version": VERSION, "model": dict(ckpt.model.config, init=ckpt.model.init),
        "vocab": "".join(ckpt.vocab.itos), "step": int(ckpt.step), "train_config": ckpt.train_config,
        "metrics": ckpt.metrics, "opt_step": int(ckpt.opt_step), "opt_tensors": len(ckpt.optimizer_state),
    }
    arrays = {k: ckpt.model.params[k] for k in PARAM_NAMES}
    arrays["meta"] = np.array(json.dumps(meta))
    arrays["rng_state"] = (np.zeros(4, np.uint64) if ckpt.rng_state is None
                           else np.asarray(ckpt.rng_state, np.uint64))
    arrays["loss_history"] = (np.zeros(0, np.float32) if ckpt.loss_history is None
                              else np.asarray(ckpt.loss_history, np.float32))
    arrays["train_words"] = np.array("\n".join(ckpt.train_words))
    for i, a in enumerate(ckpt.optimizer_state):
        arrays[f"opt_{i}"] = a
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def load(path) -> Checkpoint:
    """Reads and checks a checkpoint written by save()."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, NotImplementedError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable fastmlp checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from None
    where = f"checkpoint {str(path)!r}"
    missing = [k for k in PARAM_NAMES + ("meta",) if k not in data]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}: not a fastmlp checkpoint")
    try:
        meta = json.loads(str(data["meta"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where} has unreadable metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a fastmlp checkpoint (format tag missing)")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{where} has format version {meta.get('version')!r}; this fastmlp reads {VERSION}")
    try:
        vocab = Vocab(tuple(meta["vocab"]))
        cfg = meta["model"]
        model = MLP(int(cfg["vocab_size"]), int(cfg["block_size"]), int(cfg["n_embd"]), int(cfg["n_hidden"]),
                    seed=0, init=cfg.get("init", "lecture") if cfg.get("init") in INITS else "lecture")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where} has an invalid configuration: {e}") from None
    if vocab.size != model.vocab_size:
        raise CheckpointError(f"{where}: vocabulary of {vocab.size} symbols but the model has vocab_size "
                              f"{model.vocab_size}")
    for k in PARAM_NAMES:
        a = data[k]
        want = model.params[k]
        if a.dtype != np.float32 or a.shape != want.shape:
            raise CheckpointError(f"{where}: {k} is {a.dtype}{list(a.shape)}, expected float32{list(want.shape)}")
        if not np.isfinite(a).all():
            raise CheckpointError(f"{where}: {k} contains NaN or inf")
        model.params[k] = np.ascontiguousarray(a)
    rng_state = data.get("rng_state")
    if rng_state is not None and (rng_state.dtype != np.uint64 or rng_state.shape != (4,)):
        raise CheckpointError(f"{where}: rng_state must be uint64[4]")
    words = str(data["train_words"]) if "train_words" in data else ""
    opt_state = []
    for i in range(int(meta.get("opt_tensors", 0))):
        a = data.get(f"opt_{i}")
        want = model.params[PARAM_NAMES[i % len(PARAM_NAMES)]]
        if a is None or a.dtype != np.float32 or a.shape != want.shape:
            raise CheckpointError(f"{where}: optimizer state {i} is missing or does not match the parameters")
        opt_state.append(np.ascontiguousarray(a))
    return Checkpoint(model=model, vocab=vocab, step=int(meta.get("step", 0)), rng_state=rng_state,
                      loss_history=data.get("loss_history"), train_config=meta.get("train_config", {}),
                      train_words=words.split("\n") if words else [], metrics=meta.get("metrics", {}),
                      optimizer_state=opt_state, opt_step=int(meta.get("opt_step", 0)))
