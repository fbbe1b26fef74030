"""Search spaces: which TrainConfig fields a sweep varies, and how.

A space is a JSON (or TOML) object whose keys name parameters:

    {"n_hidden": {"low": 64, "high": 1024, "log": true},        # an int range (ints give ints)
     "dropout": {"low": 0.0, "high": 0.3},                       # a float range
     "optimizer": {"choices": ["sgd", "adamw"]},                 # a choice
     "lr_adamw": {"field": "learning_rate", "low": 3e-4, "high": 1e-2, "log": true,
                  "when": {"optimizer": "adamw"}},               # only when optimizer is adamw
     "init": "scaled"}                                           # fixed

Depth is a parameter like any other: {"n_layers": {"low": 1, "high": 5}, "batchnorm":
{"choices": [false, true]}, "init": {"choices": ["scaled", "kaiming"]}}.

A parameter sets the TrainConfig field of its name, or of "field". "when" makes it
conditional on values suggested earlier in the file. Ranges take "step" too.

"flop_budget": F (a number, or a range) gives every trial the same compute instead of
the same step count: max_steps = F / (6 * batch * (T*E*H + (L-1)*H*H + H*V)), the
multiply-adds of the forward, backward and update (two flops each), L = n_layers. TPE then trades size for steps.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Dict, List

from ..config import MAX_STEPS, TrainConfig

FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} | {"flop_budget"}
NOT_SWEPT = {"input_file", "work_dir", "num_threads", "eval_test", "diagnostics", "diag_interval",
             "tensorboard"}  # the sweep sets these (or they watch rather than train)

# Around what worked (README, "Beating 2.17"): context, width, AdamW or SGD, decay, dropout.
DEFAULT_SPACE: Dict[str, Any] = {
    "block_size": {"low": 3, "high": 12},
    "n_embd": {"low": 8, "high": 48, "log": True},
    "n_hidden": {"low": 64, "high": 1024, "log": True},
    "optimizer": {"choices": ["sgd", "adamw"]},
    "lr_sgd": {"field": "learning_rate", "low": 0.02, "high": 0.5, "log": True, "when": {"optimizer": "sgd"}},
    "lr_adamw": {"field": "learning_rate", "low": 3e-4, "high": 1e-2, "log": True, "when": {"optimizer": "adamw"}},
    "momentum": {"choices": [0.0, 0.9], "when": {"optimizer": "sgd"}},
    "wd_sgd": {"field": "weight_decay", "low": 1e-6, "high": 1e-2, "log": True, "when": {"optimizer": "sgd"}},
    "wd_adamw": {"field": "weight_decay", "low": 1e-3, "high": 0.5, "log": True, "when": {"optimizer": "adamw"}},
    "dropout": {"low": 0.0, "high": 0.3},
    "batch_size": {"choices": [32, 64, 128, 256]},
    "max_steps": {"low": 5000, "high": 30000, "step": 5000},
    "init": "scaled",
    "lr_schedule": "cosine",
    "eval_interval": 1000,
}


class SpaceError(ValueError):
    pass


@dataclasses.dataclass
class Param:
    name: str
    field: str
    kind: str                 # "int", "float", "choice" or "fixed"
    spec: Any
    when: Dict[str, Any]


def load_space(path=None) -> List[Param]:
    """The space in a file (JSON, or TOML by its .toml suffix), or the default one."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "the default space")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"cannot read --space {str(p)!r}: {getattr(e, 'strerror', None) or e}") from None
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                import tomli as tomllib  # type: ignore[no-redef]
            raw = tomllib.loads(text)
        else:
            raw = json.loads(text)
    except ImportError:
        raise SpaceError("a TOML space needs Python 3.11+ (or `pip install tomli`); JSON works everywhere") from None
    except ValueError as e:
        raise SpaceError(f"--space {str(p)!r} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {e}") from None
    return parse_space(raw, f"--space {str(p)!r}")


def parse_space(raw, where: str) -> List[Param]:
    if not isinstance(raw, dict):
        raise SpaceError(f"{where} must be an object of parameters, got {type(raw).__name__}")
    params, seen = [], set()
    for name, spec in raw.items():
        field = spec.get("field", name) if isinstance(spec, dict) else name
        if not isinstance(field, str) or field not in FIELDS or field in NOT_SWEPT:
            raise SpaceError(f"{where}: {name!r} is not a TrainConfig field a sweep can set "
                             f"(fields: {', '.join(sorted(FIELDS - NOT_SWEPT))})")
        when = spec.get("when", {}) if isinstance(spec, dict) else {}
        if not isinstance(when, dict) or not set(when) <= seen:
            raise SpaceError(f"{where}: {name!r} has a 'when' on parameters not defined before it: {when!r}")
        if not isinstance(spec, dict):
            params.append(Param(name, field, "fixed", spec, {}))
        elif "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise SpaceError(f"{where}: {name!r} needs a non-empty list of choices")
            params.append(Param(name, field, "choice", spec["choices"], when))
        elif "low" in spec and "high" in spec:
            lo, hi, step = spec["low"], spec["high"], spec.get("step")
            if not all(_number(v) for v in (lo, hi)) or lo > hi:
                raise SpaceError(f"{where}: {name!r} needs finite numbers low <= high, got {lo!r} and {hi!r}")
            if not isinstance(spec.get("log", False), bool):
                raise SpaceError(f"{where}: {name!r}: log must be true or false, got {spec['log']!r}")
            if spec.get("log") and lo <= 0:
                raise SpaceError(f"{where}: {name!r} is on a log scale, so low must be > 0")
            if step is not None and (not _number(step) or step <= 0):
                raise SpaceError(f"{where}: {name!r}: step must be a number > 0, got {step!r}")
            if step is not None and spec.get("log"):
                raise SpaceError(f"{where}: {name!r}: a range takes step or log, not both")
            kind = "int" if isinstance(lo, int) and isinstance(hi, int) and isinstance(spec.get("step", 1), int) \
                else "float"
            params.append(Param(name, field, kind, spec, when))
        else:
            raise SpaceError(f"{where}: {name!r} must be a value, {{'low', 'high'}} or {{'choices'}}, got {spec!r}")
        seen.add(name)
    if not any(p.kind != "fixed" for p in params):
        raise SpaceError(f"{where} has nothing to search: give at least one range or choice")
    fixed = {}
    for p in sorted(params, key=lambda q: q.kind != "fixed"):  # the fixed values first, alone; then the others
        _check_values(p, params, fixed, where)
        if p.kind == "fixed" and p.field != "flop_budget":
            fixed[p.field] = p.spec
    _check_together(params, where)
    return params


def _check_together(params: List[Param], where: str) -> None:
    """What no single value shows: two parameters setting one field under the same
    condition, SGD's momentum where AdamW may be chosen, a budget beyond any run's length."""
    seen = {}
    for p in params:
        key = (p.field, repr(sorted(p.when.items(), key=str)))
        if key in seen:
            raise SpaceError(f"{where}: {seen[key]!r} and {p.name!r} both set {p.field!r}"
                             + (f" when {dict(p.when)}" if p.when else "") + ": give them different 'when's")
        seen[key] = p.name
    opt = next((p for p in params if p.field == "optimizer"), None)
    adamw_possible = opt is not None and ("adamw" in (opt.spec if opt.kind == "choice" else [opt.spec]))
    for p in params:
        if p.field in ("momentum", "nesterov") and adamw_possible and p.when.get(opt.name) != "sgd":
            values = [p.spec] if p.kind == "fixed" else list(p.spec) if p.kind == "choice" else [p.spec["high"]]
            if any(values):
                raise SpaceError(f"{where}: {p.name!r} belongs to SGD, but {opt.name!r} may be adamw: add "
                                 f'"when": {{"{opt.name}": "sgd"}}')
    budget = next((p for p in params if p.field == "flop_budget"), None)
    if budget is not None:  # the most steps it can give: the largest budget on the smallest model
        hi = budget.spec if budget.kind == "fixed" else max(budget.spec) if budget.kind == "choice" \
            else budget.spec["high"]
        small = {p.field: (p.spec if p.kind == "fixed" else min(p.spec) if p.kind == "choice" else p.spec["low"])
                 for p in params if p.field in ("block_size", "n_embd", "n_hidden", "batch_size", "n_layers")}
        steps = hi / flops_per_step(small, 2)
        if not steps <= MAX_STEPS:
            raise SpaceError(f"{where}: {budget.name!r} = {hi:g} gives up to {steps:.3g} steps, more than a run "
                             f"takes ({MAX_STEPS:,})")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# the other fields under which a field takes effect (its value is checked there)
WHERE_MEANINGFUL = {"beta1": {"optimizer": "adamw"}, "beta2": {"optimizer": "adamw"}, "nesterov": {"momentum": 0.9},
                    "bn_momentum": {"batchnorm": True}}


def _check_values(p: Param, params: List[Param], fixed: Dict[str, Any], where: str) -> None:
    """Every value p can give (the fixed one, each choice, both ends of a range) must make
    a valid TrainConfig with the space's fixed values and what its `when` asks: a bad
    value is one line here, before the study is opened, not a failure in every trial."""
    values = [p.spec] if p.kind == "fixed" else list(p.spec) if p.kind == "choice" else [p.spec["low"], p.spec["high"]]
    if p.kind == "float":  # what Optuna will suggest: floats, even between integer ends
        values = [float(v) for v in values]
    fields = {q.name: q.field for q in params}
    context = {**WHERE_MEANINGFUL.get(p.field, {}), **fixed, **{fields[k]: v for k, v in p.when.items()}}
    for v in values:
        if p.field == "flop_budget":
            if not _number(v) or v <= 0:
                raise SpaceError(f"{where}: {p.name!r}: flop_budget must be a number > 0, got {v!r}")
            continue
        try:
            TrainConfig(**{**context, p.field: v}).check()
        except (ValueError, TypeError) as e:
            raise SpaceError(f"{where}: {p.name!r} = {v!r} is not a valid value: {e}") from None


def flops_per_step(values: Dict[str, Any], vocab_size: int) -> float:
    d = TrainConfig()
    T, E, H, B, L = (values.get(k, getattr(d, k)) for k in ("block_size", "n_embd", "n_hidden", "batch_size",
                                                             "n_layers"))
    return 6.0 * B * (T * E * H + (L - 1) * H * H + H * vocab_size)


def apply_budget(values: Dict[str, Any], vocab_size: int) -> Dict[str, Any]:
    """values with max_steps set by their flop_budget (if any), in whole evaluation intervals."""
    values = dict(values)
    budget = values.pop("flop_budget", None)
    if budget is not None:
        interval = values.get("eval_interval", TrainConfig().eval_interval)
        steps = int(budget / flops_per_step(values, vocab_size))
        values["max_steps"] = max(interval, steps // interval * interval)
    return values


def suggest(trial, params: List[Param]) -> Dict[str, Any]:
    """TrainConfig fields for this trial (define-by-run: Optuna's trial.suggest_*)."""
    chosen: Dict[str, Any] = {}
    values: Dict[str, Any] = {}
    for p in params:
        if any(chosen.get(k) != v for k, v in p.when.items()):
            continue
        if p.kind == "fixed":
            v = p.spec
        elif p.kind == "choice":
            v = trial.suggest_categorical(p.name, p.spec)
        elif p.kind == "int":
            v = trial.suggest_int(p.name, p.spec["low"], p.spec["high"], step=p.spec.get("step", 1),
                                  log=bool(p.spec.get("log", False)))
        else:
            v = trial.suggest_float(p.name, float(p.spec["low"]), float(p.spec["high"]), step=p.spec.get("step"),
                                    log=bool(p.spec.get("log", False)))
        chosen[p.name] = v
        values[p.field] = v
    return values
