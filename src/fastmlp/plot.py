"""Plots (matplotlib, the optional extra `pip install "fastmlp[plot]"`).

    python -m fastmlp.plot -o out     # loss.png and embedding.png from a work dir's checkpoint
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: works without a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('plots need matplotlib: pip install "fastmlp[plot]"') from None
    return plt


def _finish(fig, ax, path, xlabel: str, ylabel: str, title: str, legend: bool = True) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)
    return Path(path)


def plot_loss(losses, path, dev_curve=(), window: int = 1000) -> Path:
    """log10 of the minibatch loss against step, as the lecture plots it, with its running
    mean over `window` steps and the dev loss at each evaluation."""
    plt = _pyplot()
    losses = np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if len(losses):
        steps = np.arange(len(losses))
        stride = max(1, len(losses) // 20000)  # thin the raw curve, not its mean
        ax.plot(steps[::stride], np.log10(losses[::stride]), lw=0.3, alpha=0.4, color="C0",
                label="minibatch loss")
        if len(losses) >= window:
            k = len(losses) // window * window
            ax.plot(steps[:k].reshape(-1, window).mean(1), np.log10(losses[:k].reshape(-1, window).mean(1)),
                    color="C0", lw=1.5, label=f"mean of {window} steps")
    if len(dev_curve):
        s, d = zip(*dev_curve)
        ax.plot(s, np.log10(d), "o-", color="C3", ms=3, label="dev loss")
    return _finish(fig, ax, path, "step", "log10(loss)", "training loss")


def plot_lr_find(exponents, losses, path, suggested_lr=None) -> Path:
    """Loss against the exponent of the learning rate (the lecture's lr sweep)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(exponents, losses, lw=0.6, alpha=0.5, label="loss at each step")
    k = 25
    if len(losses) > 2 * k:
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(exponents[k // 2: k // 2 + len(smooth)], smooth, lw=1.8, label=f"running mean ({k})")
    if suggested_lr:
        ax.axvline(np.log10(suggested_lr), color="C3", ls="--", label=f"suggested lr {suggested_lr:.3g}")
    return _finish(fig, ax, path, "log10(learning rate)", "loss", "learning-rate sweep")


def embedding_2d(C: np.ndarray) -> np.ndarray:
    """C itself when n_embd == 2, else its first two principal components."""
    C = np.asarray(C, dtype=np.float64)
    if C.shape[1] == 2:
        return C
    if C.shape[1] == 1:
        return np.column_stack([C[:, 0], np.zeros(len(C))])
    centered = C - C.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return centered @ vt[:2].T


MAX_LABELS = 200  # a vocabulary of thousands of symbols gets a readable (and fast) plot


def plot_embedding(C, itos, path) -> Path:
    """The lecture's scatter of the character embeddings, each point labelled (the first
    MAX_LABELS symbols of a larger vocabulary; the rest are plain dots)."""
    plt = _pyplot()
    xy = embedding_2d(C)
    pca = np.asarray(C).shape[1] > 2
    fig, ax = plt.subplots(figsize=(7, 7), dpi=120)
    ax.scatter(xy[:, 0], xy[:, 1], s=200 if len(xy) <= MAX_LABELS else 4, c="C0", alpha=0.35)
    with warnings.catch_warnings():  # symbols the font lacks are drawn as boxes, without a warning each
        warnings.simplefilter("ignore", UserWarning)
        for (x, y), ch in zip(xy[:MAX_LABELS], itos[:MAX_LABELS]):
            ax.text(x, y, ch, ha="center", va="center", color="black", fontsize=11)
        title = "character embeddings" + (" (first two principal components)" if pca else "")
        if len(xy) > MAX_LABELS:
            title += f"; {MAX_LABELS} of {len(xy):,} labelled"
        return _finish(fig, ax, path, "PC 1" if pca else "C[:, 0]", "PC 2" if pca else "C[:, 1]", title,
                       legend=False)


def main(argv=None) -> int:
    from . import checkpoint as ckpt_io
    from ._cli import ArgumentParser, run_cli

    p = ArgumentParser(prog="python -m fastmlp.plot",
                                description="Draw loss.png and embedding.png from a trained work dir.")
    p.add_argument("-o", "--work-dir", default="out", help="folder with model.npz")
    p.add_argument("--checkpoint", help="a checkpoint file (default: WORK_DIR/model.npz)")
    args = p.parse_args(argv)

    def body():
        ck = ckpt_io.load(args.checkpoint or Path(args.work_dir) / ckpt_io.CHECKPOINT_NAME)
        out = Path(args.work_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = [plot_embedding(ck.model.params["C"], ck.vocab.itos, out / "embedding.png")]
        if ck.loss_history is not None and len(ck.loss_history):
            written.append(plot_loss(ck.loss_history, out / "loss.png", ck.metrics.get("dev_curve", ())))
        for w in written:
            print(w)
        return 0

    return run_cli(p, body)


if __name__ == "__main__":
    sys.exit(main())
