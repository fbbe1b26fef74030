"""Plots (matplotlib, the optional extra `pip install "fastmlp[plot]"`).

    python -m fastmlp.plot -o out     # loss.png and embedding.png from a work dir's checkpoint
                                      # (+ diagnostics.png, saturation.png after --diagnostics)
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np


def _figure(*subplots, figsize=(8, 4.5)):
    """A matplotlib Figure and its axes, outside pyplot's registry: nothing to close, and a
    notebook shows the returned figure as it shows any."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError('plots need matplotlib: pip install "fastmlp[plot]"') from None
    fig = Figure(figsize=figsize, dpi=120)
    return fig, fig.subplots(*subplots)


def _finish(fig, ax, path, xlabel: str, ylabel: str, title: str, legend: bool = True):
    _label(ax, xlabel, ylabel, title, legend)
    return _save(fig, path)


def _label(ax, xlabel: str, ylabel: str, title: str, legend: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)


def _save(fig, path):
    """Writes the figure to path (if given) and returns it."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def plot_loss(losses, path=None, dev_curve=(), window: int = 1000):
    """log10 of the minibatch loss against step, as the lecture plots it, with its running
    mean over `window` steps and the dev loss at each evaluation. Every plot function
    writes a PNG to path (if given) and returns the matplotlib Figure."""
    losses = np.asarray(losses, dtype=np.float64)
    fig, ax = _figure()
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


def plot_lr_find(exponents, losses, path=None, suggested_lr=None):
    """Loss against the exponent of the learning rate (the lecture's lr sweep)."""
    fig, ax = _figure()
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


def plot_embedding(C, itos, path=None):
    """The lecture's scatter of the character embeddings, each point labelled (the first
    MAX_LABELS symbols of a larger vocabulary; the rest are plain dots)."""
    xy = embedding_2d(C)
    pca = np.asarray(C).shape[1] > 2
    fig, ax = _figure(figsize=(7, 7))
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


# ---------------------------------------------------------------------------
# Looking inside (fastmlp.diagnostics): the lecture's part 3 plots
# ---------------------------------------------------------------------------
def _pick(records, n: int = 4) -> list:
    """Up to n records spread over the run, the first and last included."""
    idx = sorted(set(np.linspace(0, len(records) - 1, min(n, len(records))).round().astype(int)))
    return [records[i] for i in idx]


def _hist_line(ax, hist, label: str, **kw) -> None:
    centers = (hist.edges[:-1] + hist.edges[1:]) / 2
    total = hist.counts.sum()
    ax.plot(centers, hist.counts / total if total else hist.counts, label=label, **kw)


def plot_diagnostics(records, path=None, final=None):
    """diagnostics.png: the tanh outputs' and their gradients' distributions at a few
    recorded steps (saturation in the legend), the weight gradients' distribution with
    grad:data (from `final`, a diagnose() result), and update:data of the weight matrices
    over the steps on log10 with the lecture's guide at -3."""
    from .diagnostics import SATURATED, Histogram

    fig, axes = _figure(2, 2, figsize=(13, 8.5))
    (a_act, a_grad), (a_w, a_upd) = axes
    deep = len(records[0].layers) > 1
    chosen = records[-1:] if deep else _pick(records)  # a deep net: every layer at the last step (part 3's picture)
    for i, r in enumerate(chosen):
        for j, layer in enumerate(r.layers):
            tag = f"layer {j + 1} (step {r.step:,})" if deep else f"step {r.step:,}"
            _hist_line(a_act, layer.hist, f"{tag}: mean {layer.mean:+.2f}, std {layer.std:.2f}, "
                                          f"saturated {100 * layer.saturation:.1f}%", color=f"C{j if deep else i}")
            _hist_line(a_grad, layer.grad_hist, f"{tag}: mean {layer.grad_mean:+.1e}, std {layer.grad_std:.1e}",
                       color=f"C{j if deep else i}")
    a_act.axvspan(-1, -SATURATED, color="0.85")
    a_act.axvspan(SATURATED, 1, color="0.85")
    _label(a_act, "tanh output (grey: saturated)", "fraction", "activation distribution")
    _label(a_grad, "d loss / d tanh output", "fraction", "gradient distribution")
    if final is not None and final.grads:
        for i, (k, g) in enumerate((k, g) for k, g in final.grads.items() if np.ndim(g) == 2):
            counts, edges = np.histogram(g, bins=50)
            ratio = final.grad_data[k]
            _hist_line(a_w, Histogram(counts.astype(float), edges),
                       f"{k} {tuple(np.shape(g))}: std {np.std(g):.1e}, grad:data "
                       + (f"{ratio:.1e}" if ratio is not None else "-"), color=f"C{i}")
        when = f"step {final.step:,}" if final.step is not None else "this batch"
        _label(a_w, "gradient", "fraction", f"weight gradient distribution ({when})")
    else:
        _label(a_w, "gradient", "fraction", "weight gradients: no batch given", legend=False)
    steps = [r.step for r in records]
    weights = [k for k in records[0].param_std if k == "C" or k.startswith("W")]
    for i, k in enumerate(k for k in weights if records[0].update_std is not None):
        ratios = np.array([np.nan if r.update_data[k] is None else r.update_data[k] for r in records])
        with np.errstate(divide="ignore", invalid="ignore"):
            a_upd.plot(steps, np.log10(ratios), label=k, color=f"C{i}")
    a_upd.axhline(-3, color="k", ls="--", lw=1, label="guide: 1e-3")
    _label(a_upd, "step", "log10(std(update) / std(param))", "update:data ratio")
    return _save(fig, path)


def plot_saturation(act, path=None, step=None):
    """saturation.png: rows = examples, columns = hidden units, white where |tanh| > 0.97
    (the lecture's picture); a column white all the way down is a dead unit."""
    from .diagnostics import SATURATED

    sat = np.abs(np.asarray(act)) > SATURATED
    fig, ax = _figure(figsize=(min(14, 2 + sat.shape[1] / 16), 1.8 + sat.shape[0] / 10))
    ax.imshow(sat, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    dead = int(sat.all(0).sum())
    when = f" at step {step:,}" if step is not None else ""
    ax.set_title(f"|tanh| > {SATURATED}{when}: {100 * sat.mean():.1f}% saturated (white), "
                 f"{dead} dead unit{'' if dead == 1 else 's'}")
    ax.set_xlabel("hidden unit")
    ax.set_ylabel("example")
    return _save(fig, path)


def draw_diagnostics(records, model, X, Y, out: Path, step: int) -> list:
    """diagnostics.png and saturation.png of a run: its records, and diagnose() of the
    model on (X, Y), the first examples of its training split (the weight gradients and
    the saturation map); without X, the records alone. Returns the files written."""
    from .diagnostics import diagnose

    final = None
    if X is not None:
        final = diagnose(model, X, Y)
        final.step = step
    plot_diagnostics(records, out / "diagnostics.png", final)
    if final is None:
        return [out / "diagnostics.png"]
    plot_saturation(final.act, out / "saturation.png", step)
    return [out / "diagnostics.png", out / "saturation.png"]


def plot_run_diagnostics(ck, out: Path, input_file=None) -> list:
    """draw_diagnostics for a checkpoint, its training split rebuilt from its data file."""
    from .data import build_dataset
    from .diagnostics import SATURATION_BATCH, parse_record
    from .sample import training_split

    records = [parse_record(r, step=int(s), names=ck.model.param_names) for s, r in zip(ck.diag_steps, ck.diag_records)]
    words, why = training_split(ck, input_file)
    X = Y = None
    if words is not None:
        X, Y = (a[:SATURATION_BATCH] for a in build_dataset(words[:SATURATION_BATCH], ck.vocab, ck.model.block_size))
    else:
        print(f"note: skipped saturation.png and the weight gradients: {why}", file=sys.stderr)
    return draw_diagnostics(records, ck.model, X, Y, out, ck.step)


def main(argv=None) -> int:
    from . import checkpoint as ckpt_io
    from ._cli import ArgumentParser, run_cli

    p = ArgumentParser(prog="python -m fastmlp.plot",
                                description="Draw loss.png and embedding.png (and, for a run with --diagnostics, "
                                            "diagnostics.png and saturation.png) from a trained work dir.")
    p.add_argument("-o", "--work-dir", default="out", help="folder with model.npz")
    p.add_argument("--checkpoint", help="a checkpoint file (default: WORK_DIR/model.npz)")
    p.add_argument("-i", "--input-file", help="the word file the model was trained on, if it has moved "
                                              "(saturation.png and the weight gradients need a batch of it)")
    args = p.parse_args(argv)

    def body():
        ck = ckpt_io.load(args.checkpoint or Path(args.work_dir) / ckpt_io.CHECKPOINT_NAME)
        out = Path(args.work_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot_embedding(ck.model.params["C"], ck.vocab.itos, out / "embedding.png")
        written = [out / "embedding.png"]
        if ck.loss_history is not None and len(ck.loss_history):
            plot_loss(ck.loss_history, out / "loss.png", ck.metrics.get("dev_curve", ()))
            written.append(out / "loss.png")
        if ck.diag_steps is not None:
            written += plot_run_diagnostics(ck, out, args.input_file)
        for w in written:
            print(w)
        return 0

    return run_cli(p, body)


if __name__ == "__main__":
    sys.exit(main())
