"""What a sweep leaves: a leaderboard (markdown and CSV), Optuna's plots, best.json, and
the best trial's test loss, evaluated once."""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import List, Optional

from optuna.trial import TrialState

from .. import checkpoint as ckpt_io
from .._files import atomic_write_json, atomic_write_text
from ..config import TrainConfig
from ..data import load_dataset

COLUMNS = ["rank", "trial", "dev_loss", "train_loss", "params", "steps", "seconds"]


def complete_trials(study) -> list:
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value)


def leaderboard_rows(study) -> List[dict]:
    rows = []
    for rank, t in enumerate(complete_trials(study), 1):
        row = {"rank": rank, "trial": t.number, "dev_loss": round(t.value, 4),
               "train_loss": round(t.user_attrs.get("train_loss") or float("nan"), 4),
               "params": t.user_attrs.get("params"), "steps": t.user_attrs.get("steps"),
               "seconds": t.user_attrs.get("seconds")}
        row.update(t.params)
        ran = t.user_attrs.get("config", {})  # what the trial ran (e.g. max_steps capped by --max-steps)
        row.update({k: ran[k] for k in t.params if k in ran})
        rows.append(row)
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def write_leaderboard(study, work: Path, top: int = 20) -> str:
    """leaderboard.csv (every complete trial) and leaderboard.md (the top ones); returns the markdown."""
    rows = leaderboard_rows(study)
    params = sorted({k for r in rows for k in r} - set(COLUMNS))
    header = COLUMNS + params
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, restval="")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(work / "leaderboard.csv", buf.getvalue())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows[:top]:
        lines.append("| " + " | ".join(_fmt(r.get(k, "")) for k in header) + " |")
    md = "\n".join(lines) + "\n"
    atomic_write_text(work / "leaderboard.md", md)
    return md


def write_plots(study, work: Path) -> List[str]:
    """Optuna's matplotlib plots: optimisation history, parameter importances, parallel
    coordinates. Skipped (with the reason) when matplotlib is missing or too few trials."""
    if not complete_trials(study):
        return ["skipped plots: no complete trial"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm
    except ImportError as e:
        return [f"skipped plots: {e}"]
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, fn in (("history.png", ovm.plot_optimization_history), ("importances.png", ovm.plot_param_importances),
                         ("parallel.png", ovm.plot_parallel_coordinate)):
            try:
                ax = fn(study)
                fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
                fig.set_size_inches(10, 6)
                fig.tight_layout()
                fig.savefig(work / name, dpi=110)
                plt.close(fig)
                written.append(name)
            except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. fewer than 2 complete trials
                written.append(f"skipped {name}: {e}")
    return written


def best_config(study) -> Optional[dict]:
    trials = complete_trials(study)
    if not trials:
        return None
    t = trials[0]
    return {"trial": t.number, "dev_loss": t.value, "config": t.user_attrs["config"]}


def write_best(study, work: Path) -> Optional[dict]:
    """best.json: `python -m fastmlp.train --config best.json` trains it again (same result)."""
    best = best_config(study)
    if best is not None:
        atomic_write_json(work / "best.json", best)
    return best


def best_test_loss(study, work: Path, log) -> Optional[float]:
    """The test split, evaluated once, for the best trial only: its checkpoint if this
    machine has it, else the best config trained again here (training is deterministic)."""
    best = best_config(study)
    if best is None:
        return None
    t = complete_trials(study)[0]
    cfg = TrainConfig(**best["config"])
    path = Path(t.user_attrs.get("work_dir", "")) / ckpt_io.CHECKPOINT_NAME
    if path.is_file():
        ck = ckpt_io.load(path)
        model = ck.model
    else:
        from ..train import train

        log(f"the best trial's checkpoint is on another machine: training trial {t.number} again here")
        cfg.work_dir = str(work / "best")
        train(cfg, progress=False, log=lambda s: None, overwrite=True)
        model = ckpt_io.load(cfg.work_dir).model
    ds = load_dataset(cfg.input_file, cfg.block_size)
    return model.loss(*ds.test)
