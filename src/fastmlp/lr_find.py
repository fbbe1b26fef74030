"""The lecture's learning-rate sweep.

From a fresh model, one minibatch step at each learning rate in turn, the rate rising
exponentially: lr = 10 ** linspace(-3, 0, 1000). The loss against the exponent shows
where training is fastest before it becomes unstable. The sweep is repeated with a few
seeds and averaged, so the suggestion does not hang on one noisy minibatch.

    python -m fastmlp.lr_find -o out        # writes out/lr_find.png and prints a rate
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np

from . import _core
from ._cli import ArgumentParser, add_common_args, int_arg, run_cli
from ._files import to_json
from .config import LECTURE_SEED
from .data import Dataset, load_dataset
from .model import MLP, check_depth, check_sizes, require_memory


def lr_sweep(ds: Dataset, block_size=3, n_embd=10, n_hidden=200, init="lecture", batch_size=32,
             lr_min_exp=-3.0, lr_max_exp=0.0, steps=1000, repeats=5, seed=LECTURE_SEED, threads=None,
             n_layers=1, batchnorm=False, bn_momentum=0.1) -> dict:
    """Runs the sweep `repeats` times (fresh model and batches each time) and averages."""
    check_sizes(block_size, n_embd, n_hidden)
    check_depth(n_layers, batchnorm, bn_momentum)
    if batchnorm and batch_size < 2:
        raise ValueError("batchnorm needs batch_size >= 2 (a batch's variance)")
    if steps < 10:
        raise ValueError(f"steps must be >= 10, got {steps}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not (np.isfinite(lr_min_exp) and np.isfinite(lr_max_exp)) or not -30 <= lr_min_exp < lr_max_exp <= 30:
        raise ValueError(f"the sweep needs -30 <= lr_min_exp < lr_max_exp <= 30, got {lr_min_exp} and {lr_max_exp}")
    exps = np.linspace(lr_min_exp, lr_max_exp, steps)
    lrs = (10.0 ** exps).astype(np.float32)
    X, Y = ds.train
    require_memory(ds.vocab.size, block_size, n_embd, n_hidden, n_layers, batch_size)
    if batch_size > len(Y):
        raise ValueError(f"batch_size {batch_size} is larger than the training split ({len(Y)} examples)")
    runs = []
    for r in range(repeats):
        m = MLP(ds.vocab.size, block_size, n_embd, n_hidden, seed=seed + r, init=init, n_layers=n_layers,
                batchnorm=batchnorm, bn_momentum=bn_momentum)
        losses = _core.train_steps(m.arrays(), X, Y, lrs, batch_size=batch_size, rng_state=_core.rng_state(seed + r),
                                   threads=threads, batchnorm=m.bn_args())
        full = np.full(steps, np.nan, np.float32)
        full[:len(losses)] = losses  # a diverged run stops early: the rest stays NaN
        runs.append(full)
    mean = np.nanmean(np.stack(runs), 0) if repeats > 1 else runs[0]
    # Suggest a rate a little below the valley of the smoothed loss (10^-0.2 ~ 1/1.6 of it):
    # the minimum sits close to the edge of instability. On names.txt this gives ~0.1, the
    # lecture's choice from the same plot.
    k = max(steps // 40, 1)
    valid = np.isfinite(mean)
    smooth = np.convolve(np.where(valid, mean, np.nanmax(mean[valid])), np.ones(k) / k, mode="same")
    smooth[:k // 2] = np.inf  # the convolution's edges are biased
    smooth[len(smooth) - k // 2:] = np.inf
    best = int(np.argmin(smooth))
    return {"exponents": exps, "lrs": lrs, "losses": mean, "best_exponent": float(exps[best]),
            "suggested_lr": float(10 ** (exps[best] - 0.2))}


def main(argv: Optional[list] = None) -> int:
    p = ArgumentParser(prog="python -m fastmlp.lr_find", description=__doc__.split("\n\n")[1])
    add_common_args(p)
    p.add_argument("-b", "--batch-size", type=int_arg("--batch-size", 1, 1 << 30), default=32)
    p.add_argument("--steps", type=int_arg("--steps", 10, 1 << 24), default=1000,
                   help="learning rates tried (one step each)")
    p.add_argument("--lr-min-exp", type=float, default=-3.0, help="lowest rate: 10**this")
    p.add_argument("--lr-max-exp", type=float, default=0.0, help="highest rate: 10**this")
    p.add_argument("--repeats", type=int_arg("--repeats", 1, 1000), default=5, help="sweeps averaged (fresh model each)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)

    def body():
        given = lambda v, default: default if v is None else v  # 0 is a value, not "not given"
        block, embd, hidden = check_sizes(given(args.block_size, 3), given(args.n_embd, 10),
                                          given(args.n_hidden, 200))
        ds = load_dataset(args.input_file, block)
        res = lr_sweep(ds, block, embd, hidden, given(args.init, "lecture"), args.batch_size, args.lr_min_exp,
                       args.lr_max_exp, args.steps, args.repeats, given(args.seed, LECTURE_SEED), args.num_threads,
                       given(args.n_layers, 1), bool(args.batchnorm), given(args.bn_momentum, 0.1))
        out = Path(args.work_dir or "out")
        out.mkdir(parents=True, exist_ok=True)
        png = None
        try:
            from .plot import plot_lr_find

            plot_lr_find(res["exponents"], res["losses"], out / "lr_find.png", res["suggested_lr"])
            png = str(out / "lr_find.png")
        except ImportError as e:
            print(f"note: {e}; skipped lr_find.png", file=sys.stderr)
        if args.json:
            print(to_json({"suggested_lr": res["suggested_lr"], "best_exponent": res["best_exponent"],
                              "plot": png}))
        else:
            print(f"lowest smoothed loss at lr = 10^{res['best_exponent']:.2f} = {10 ** res['best_exponent']:.3g}")
            print(f"suggested learning rate: {res['suggested_lr']:.3g}  (-l {res['suggested_lr']:.2g})")
            if png:
                print(f"wrote {png}")
        return 0

    return run_cli(p, body)


if __name__ == "__main__":
    sys.exit(main())
