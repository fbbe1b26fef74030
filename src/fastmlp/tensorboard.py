"""TensorBoard event files, the convention makemore.py uses: `--tensorboard DIR` writes
the losses, the learning rate and, with --diagnostics, the saturation, the grad:data and
update:data ratios as scalars and the tanh outputs' and their gradients' distributions
as histograms over steps (TensorBoard's histogram view is the lecture's plot across
time). Through tensorboardX, the optional extra: pip install "fastmlp[tensorboard]".

    tensorboard --logdir DIR
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def check_writer(logdir) -> None:
    """One line if the extra is missing or the folder cannot be written; nothing is made
    (train() calls it before it touches the work dir)."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ImportError('--tensorboard needs tensorboardX: pip install "fastmlp[tensorboard]"') from None
    path = Path(logdir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--tensorboard {str(path)!r} exists and is not a folder")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to --tensorboard {str(path)!r}: {str(parent)!r} is not writable")


def open_writer(logdir):
    """A tensorboardX SummaryWriter on logdir; one line if the extra is missing or the
    folder cannot be written (checked before any training)."""
    check_writer(logdir)
    from tensorboardX import SummaryWriter

    path = Path(logdir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--tensorboard {str(path)!r} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise ValueError(f"cannot write to --tensorboard {str(path)!r}: {e.strerror or e}") from None
    return TensorBoardLog(SummaryWriter(str(path), flush_secs=10))


class TensorBoardLog:
    def __init__(self, writer):
        self.w = writer

    def chunk(self, step: int, losses: np.ndarray, lr: float) -> None:
        """A chunk of steps ending at `step`: its mean minibatch loss and the learning rate."""
        if len(losses):
            self.w.add_scalar("loss/train", float(np.mean(losses)), step)
            self.w.add_scalar("lr", float(lr), step)

    def dev(self, step: int, loss: float) -> None:
        self.w.add_scalar("loss/dev", float(loss), step)

    def diagnostics(self, d) -> None:
        """One record of fastmlp.diagnostics."""
        for i, layer in enumerate(d.layers, 1):
            self.w.add_scalar(f"saturation/layer{i}", layer.saturation, d.step)
            self.w.add_scalar(f"dead_units/layer{i}", layer.dead, d.step)
            self.w.add_scalar(f"act_std/layer{i}", layer.std, d.step)
            n = float(layer.hist.counts.sum())
            self._hist(f"act/layer{i}", layer.hist, layer.mean, layer.std, n, d.step)
            self._hist(f"pre_act/layer{i}", layer.pre_hist, layer.pre_mean, layer.pre_std, n, d.step)
            self._hist(f"act_grad/layer{i}", layer.grad_hist, layer.grad_mean, layer.grad_std, n, d.step)
        for name, ratios in (("grad_data", d.grad_data), ("update_data", d.update_data or {})):
            for k, r in ratios.items():
                if r is not None and r > 0:
                    self.w.add_scalar(f"{name}/{k}", float(np.log10(r)), d.step)

    def _hist(self, tag, hist, mean, std, n, step) -> None:
        """A histogram from a record's counts (its bins; sum and sum of squares from the
        record's mean and std)."""
        if not n:
            return
        sum_sq = std ** 2 * (n - 1) + n * mean ** 2 if np.isfinite(std) else n * mean ** 2
        self.w.add_histogram_raw(tag, min=float(hist.edges[0]), max=float(hist.edges[-1]), num=n, sum=mean * n,
                                 sum_squares=float(sum_sq), bucket_limits=hist.edges[1:].tolist(),
                                 bucket_counts=hist.counts.tolist(), global_step=step)

    def close(self) -> None:
        self.w.close()
