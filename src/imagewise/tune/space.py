"""The search space: which training options a study varies, and over what.

A space file is YAML; each key is a training option (a ``imagewise train`` flag without the
dashes and with ``_``, e.g. ``lr``, ``batch_size``, ``augment``, ``model``), and its value says
how it varies. Whether a range is of whole numbers follows the option's type:

    lr: {low: 1.0e-4, high: 0.1, log: true}   # a range (float: uniform, log: log-uniform)
    weight_decay: {low: 0.0, high: 0.05, step: 0.01}  # a range with a step: grid search can use it
    epochs: {low: 2, high: 6, step: 2}        # int option: 2, 4 or 6
    batch_size: [32, 64, 128]                 # a list: one of these values
    augment: {choices: [none, light, standard]}  # the same, spelled out
    optimizer: adamw                          # one value: fixed in every trial

Grid search needs every searched option to be a list or a range with a ``step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagewise.config import OPTIONS, RunConfig, apply_options, option_type, read_yaml_file
from imagewise.errors import UserError

RANGE_FIELDS = ("low", "high", "log", "step")
MAX_GRID_VALUES = 10_000  # per option: a step that small is a mistake


@dataclass(frozen=True)
class Param:
    """One searched option: a range (``low`` .. ``high``, ``log``, ``step``) or ``choices``."""

    name: str
    kind: str  # float | int | categorical
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """This option's value for an Optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list[Any]:
        """Every value grid search tries; refused for a range without a step."""
        if self.kind == "categorical":
            return list(self.choices)
        if not self.step:
            raise UserError(
                f"grid search needs a list of values or a step for '{self.name}' "
                f"(e.g. {self.name}: {{low: {self.low:g}, high: {self.high:g}, step: ...}})"
            )
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        values = [self.low + i * self.step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]


@dataclass(frozen=True)
class Space:
    """What a study searches (``params``) and what it fixes in every trial (``fixed``)."""

    params: tuple[Param, ...]
    fixed: dict[str, Any]

    def suggest(self, trial: Any, grid: bool = False) -> dict[str, Any]:
        """One trial's settings: the fixed ones plus a value for every searched option."""
        values = dict(self.fixed)
        for p in self.params:
            values[p.name] = (
                trial.suggest_categorical(p.name, p.grid()) if grid else p.suggest(trial)
            )
        return values

    def grid(self) -> dict[str, list[Any]]:
        """The grid: every searched option's values (for Optuna's ``GridSampler``)."""
        return {p.name: p.grid() for p in self.params}

    def validate(self, where: str = "the search space") -> None:
        """Refuse, in one line naming the option, a value that no trial could train with (a
        ``Space`` built in Python; a space file is checked as it is read).

        Raises:
            UserError: an unknown option, or a bound, choice or fixed value it refuses.
        """
        for p in self.params:
            if p.name not in OPTIONS:
                raise UserError(f"{where}: '{p.name}' is not a training option")
            values = p.choices if p.kind == "categorical" else (p.low, p.high)
            for value in values:
                _checked(p.name, int(value) if p.kind == "int" else value, where)
        for name, value in self.fixed.items():
            if name not in OPTIONS:
                raise UserError(f"{where}: '{name}' is not a training option")
            _checked(name, value, where)

    def describe(self) -> dict[str, Any]:
        """A plain description (stored with the study, shown in the report)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "categorical":
                out[p.name] = list(p.choices)
            else:
                out[p.name] = {"low": p.low, "high": p.high, "log": p.log, "step": p.step}
        return {**out, **{k: {"fixed": v} for k, v in self.fixed.items()}}


def default_space(cfg: RunConfig, given: dict[str, Any], grid: bool = False) -> Space:
    """The default search space for ``cfg``'s model: learning rate (log-uniform), weight decay,
    batch size, label smoothing, augmentation preset and optimizer; options the user set with a
    flag (``given``) stay as set. Grid search gets a small grid (12 trials).

    Args:
        cfg: the study's base configuration (its starting weights narrow the learning rate).
        given: the flat options set by the user, which are not searched.
        grid: the space for grid search.
    """
    transfer = bool(cfg.model.pretrained or cfg.model.weights or cfg.model.init_from)
    low, high = (1e-5, 1e-2) if transfer else (1e-4, 1e-1)  # pretrained weights: gentler
    if grid:
        lrs = (1e-4, 3e-4, 1e-3) if transfer else (1e-3, 3e-3, 1e-2)
        params = [
            Param("lr", "categorical", choices=lrs),
            Param("batch_size", "categorical", choices=(64, 128)),
            Param("augment", "categorical", choices=("none", "light")),
        ]
    else:
        params = [
            Param("lr", "float", low, high, log=True),
            Param("weight_decay", "float", 1e-6, 1e-1, log=True),
            Param("batch_size", "categorical", choices=(32, 64, 128)),
            Param("label_smoothing", "float", 0.0, 0.2),
            Param("augment", "categorical", choices=("none", "light", "standard", "strong")),
            Param("optimizer", "categorical", choices=("adamw", "sgd")),
        ]
    return Space(tuple(p for p in params if given.get(p.name) is None), {})


def read_space(path: str | Path, given: dict[str, Any]) -> Space:
    """Read a space file (syntax in this module's docstring); errors are one line naming the key.

    Args:
        path: the YAML file.
        given: the flat options set by the user; searching one of them is refused.
    """
    values = read_yaml_file(path, what="space file")
    where = f"space file '{path}'"
    if not isinstance(values, dict) or not values:
        raise UserError(f"{where} must map training options to values, e.g. lr: [0.01, 0.1]")
    params, fixed = [], {}
    for name, spec in values.items():
        if name not in OPTIONS:
            raise UserError(
                f"{where}: '{name}' is not a training option (see imagewise train --help; "
                "write flags with _ instead of -)"
            )
        if given.get(name) is not None:
            flag = "--" + str(name).replace("_", "-")
            raise UserError(f"{where}: '{name}' is also set by {flag}; keep one of the two")
        param = _param(str(name), spec, where)
        if param is None:
            fixed[name] = _checked(name, spec, where)
        else:
            params.append(param)
    if not params:
        raise UserError(f"{where} fixes every option; give at least one a list or a range")
    return Space(tuple(params), fixed)


def _param(name: str, spec: Any, where: str) -> Param | None:
    """The searched option ``name`` as written in a space file; None for a fixed value."""
    at = f"{where}: {name}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        return None
    unknown = sorted(set(spec) - {*RANGE_FIELDS, "choices"})
    if unknown:
        raise UserError(
            f"{at}: unknown field '{unknown[0]}'; a range has low, high, log and step, "
            "a list has choices"
        )
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise UserError(f"{at}: choices must be a non-empty list and stand alone")
        return Param(name, "categorical", choices=tuple(_checked(name, c, where) for c in choices))
    return _range(name, spec, where)


def _range(name: str, spec: dict[str, Any], where: str) -> Param:
    at = f"{where}: {name}"
    kind = option_type(name).split("|")[0].strip()
    if kind not in ("int", "float"):
        raise UserError(f"{at}: a {kind} option takes a list of values, not a range")
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{at}: a range needs low and high (or give a list of values)")
    low, high, step = (_number(spec.get(k), k, at) for k in ("low", "high", "step"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{at}: log must be true or false, not {log!r}")
    assert low is not None and high is not None
    if not low < high:
        raise UserError(f"{at}: low must be below high (got {low:g} and {high:g})")
    if log and low <= 0:
        raise UserError(f"{at}: a log range needs low above 0 (got {low:g})")
    if step is not None and (step <= 0 or log):
        raise UserError(f"{at}: step must be above 0 and cannot be combined with log")
    if step is not None and (high - low) / step > MAX_GRID_VALUES:
        raise UserError(f"{at}: step {step:g} gives more than {MAX_GRID_VALUES:,} values")
    if kind == "int" and any(v is not None and v != int(v) for v in (low, high, step)):
        raise UserError(f"{at}: {name} is a whole number; low, high and step must be too")
    for value in (low, high):
        _checked(name, int(value) if kind == "int" else value, where)
    return Param(name, kind, low, high, log, step)


def _number(value: Any, field: str, at: str) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)  # PyYAML reads 1e-3 (no dot) as text; float() takes it
    except (TypeError, ValueError):
        raise UserError(f"{at}: {field} must be a number, not {value!r}") from None


def _checked(name: str, value: Any, where: str) -> Any:
    """``value`` for option ``name``, converted and validated as a flag value would be."""
    try:
        cfg = apply_options(RunConfig(), {name: value})
    except UserError as exc:
        raise UserError(f"{where}: {name}: {exc}") from None
    section, attr = OPTIONS[name]
    obj: Any = cfg
    for part in section.split("."):
        obj = getattr(obj, part)
    return getattr(obj, attr)
