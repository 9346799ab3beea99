"""One trial: an ordinary ``imagewise.train`` run on the prepared data, reporting its validation
score (accuracy; mAP for multi-label data) to the pruner after every epoch, and the line that
says how it went."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagewise.config import DataConfig, RunConfig
from imagewise.errors import UserError
from imagewise.train.prepared import PreparedData
from imagewise.tune.space import Space
from imagewise.tune.study import FIRST_JUDGED_EPOCH, HOST

log = logging.getLogger("imagewise")


# What a study maximizes (a history.csv column) and its name in the words the reports use.
METRICS = {"val_accuracy": "validation accuracy", "val_map": "validation mAP"}


def objective_metric(multilabel: bool) -> str:
    """The history column a study maximizes: ``val_map`` (mean average precision over the
    labels) for multi-label data, where accuracy at one threshold says little, else
    ``val_accuracy``."""
    return "val_map" if multilabel else "val_accuracy"


class ReportToPruner:
    """Hook: report each epoch's validation score (``metric``) to the trial and stop the run
    when the pruner says so; also times the trial's setup (its start to the first training step).

    The pruner is first asked after the epoch that ends the run's learning-rate warm-up
    (``warmup_epochs``), and never after the first epoch (``FIRST_JUDGED_EPOCH``): during the
    warm-up a trial's accuracy mostly says how far its ramp has gone.
    """

    def __init__(self, trial: Any, started: float, run: Path, metric: str = "val_accuracy") -> None:
        self.trial, self.started, self.run, self.metric = trial, started, run, metric
        self.setup_seconds = float("nan")
        self.pruned_at = 0
        self.first_judged = FIRST_JUDGED_EPOCH

    def on_train_start(self, state: Any) -> None:
        self.setup_seconds = time.perf_counter() - self.started
        steps = len(state.parts.train_loader) if state.parts is not None else 0
        warmup = warmup_epochs(self.run, steps)
        self.first_judged = max(FIRST_JUDGED_EPOCH, warmup + 1)
        self.trial.set_user_attr("first_judged_epoch", self.first_judged)

    def on_epoch_end(self, state: Any) -> None:
        self.trial.report(state.history[-1][self.metric], state.epoch)
        judged = self.first_judged <= state.epoch < state.epochs
        if judged and self.trial.should_prune():
            state.stop = True
            state.stop_reason = f"pruned by the study after epoch {state.epoch}"
            self.pruned_at = state.epoch


def warmup_epochs(run: Path, steps_per_epoch: int) -> int:
    """The epochs the run's learning-rate warm-up takes (a part epoch counts whole), read from
    the resolved config it wrote (``train.warmup_steps``, in optimizer steps)."""
    from imagewise.config import load_config_file
    from imagewise.runtime.runs import RunFolder

    path = RunFolder.of(run).config
    if steps_per_epoch < 1 or not path.is_file():
        return 0
    steps = load_config_file(path).train.warmup_steps or 0
    return math.ceil(steps / steps_per_epoch)


# the options that name a trial's starting weights, and where RunConfig keeps them
WEIGHTS_OPTIONS = {"model": "name", "pretrained": "pretrained", "weights": "weights",
                   "init_from": "init_from"}  # fmt: skip
# the decoding settings starting weights fill in where the user left them unset
WEIGHTS_DECODING = ("img_size", "interpolation", "crop_pct")


def trial_config(base: RunConfig, options: dict[str, Any], unset: Sequence[str]) -> RunConfig:
    """A copy of ``base`` for a run with ``options``. ``base`` holds the decoding its own
    starting weights filled in (``prepare_data``); when ``options`` change the weights, the
    decoding settings the user left unset (``unset``, from ``WEIGHTS_DECODING``) are unset
    again, so that the trial's weights decide them as in ``imagewise train``.

    Args:
        base: the study's configuration after ``prepare_data``.
        options: the trial's options.
        unset: the decoding settings the user left unset.
    """
    cfg = copy.deepcopy(base)
    m = cfg.model
    if any(k in options and options[k] != getattr(m, f) for k, f in WEIGHTS_OPTIONS.items()):
        defaults = DataConfig()
        for name in unset:
            setattr(cfg.data, name, getattr(defaults, name))
    return cfg


def claim_run_folder(runs: Path, name: str) -> Path:
    """A new, empty folder ``runs/name`` (``name-2``, ``name-3``... when taken), made here, so
    that no two trials ever train into one folder: not two workers, and not two studies of the
    same name in other storages sharing ``--out``."""
    runs.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        folder = runs / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise UserError(f"'{runs}' holds 10,000 folders named {name}-N; use another --out")


@dataclass
class Objective:
    """Optuna's objective: the best validation score (``metric``: accuracy, or mAP for
    multi-label data) of a run with the trial's settings.

    The data is the prepared one for every trial, read once; a trial that decodes it otherwise
    (a searched size or crop, or other starting weights) has it decoded again once. With
    ``precision`` left at auto on a CPU, the bf16-or-fp32 timing of the first trial of each
    model is reused by the later ones (it costs more than an epoch of a small model).
    """

    base: RunConfig
    space: Space
    prepared: PreparedData
    runs: Path  # trial run folders: runs / STUDY-NNNN (claim_run_folder)
    study_name: str
    grid: bool = False
    show_progress: bool = False
    precision: dict[str, str] = field(default_factory=dict)  # model -> measured choice
    unset: tuple[str, ...] = ()  # WEIGHTS_DECODING the user left unset (trial_config)
    metric: str = "val_accuracy"  # objective_metric

    def __call__(self, trial: Any) -> float:
        import optuna

        from imagewise.runtime.runs import RunFolder
        from imagewise.train.run import train

        started = time.perf_counter()
        params = self.space.suggest(trial, grid=self.grid)
        run = claim_run_folder(self.runs, f"{self.study_name}-{trial.number:04d}")
        for key, value in (("host", HOST), ("pid", os.getpid()), ("run", str(run.resolve()))):
            trial.set_user_attr(key, value)
        hook = ReportToPruner(trial, started, run, self.metric)
        options = dict(params)
        cfg = trial_config(self.base, options, self.unset)
        model = str(params.get("model", cfg.model.name))
        if cfg.train.precision == "auto" and model in self.precision:
            options.setdefault("precision", self.precision[model])
        try:
            result = train(
                config=cfg, out=run, prepared=self.prepared, hooks=[hook],
                show_progress=self.show_progress, **options,
            )  # fmt: skip
        except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM: failed now, queued on the rerun
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt(
                f"stopped in trial {trial.number}; run the same command again to continue the "
                "study (the trial's settings are tried again)"
            ) from exc
        except Exception as exc:  # its one line, for the trial's line and trials.csv
            trial.set_user_attr("error", (str(exc).splitlines() or [type(exc).__name__])[0])
            raise
        history = [row["epoch_seconds"] for row in _history(run)]
        trial.set_user_attr("epochs", result.epochs)
        trial.set_user_attr("planned_epochs", cfg.train.epochs or result.epochs)
        trial.set_user_attr("setup_seconds", hook.setup_seconds)
        if history:
            trial.set_user_attr("epoch_seconds", sum(history) / len(history))
        if cfg.train.precision == "auto" and model not in self.precision:
            measured = RunFolder.of(run).read_meta().precision
            if measured:
                self.precision[model] = measured
        if hook.pruned_at:
            raise optuna.TrialPruned(f"pruned after epoch {hook.pruned_at}")
        return run_value(run, self.metric, result.best_val_accuracy)


def run_value(run: Path, metric: str, accuracy: float) -> float:
    """A finished run's score by ``metric``: ``accuracy`` (its best validation accuracy), or
    for ``val_map`` the best epoch's validation mAP that its meta.json records (NaN without)."""
    if metric != "val_map":
        return accuracy
    from imagewise.runtime.runs import RunFolder

    value = RunFolder.of(run).read_meta().training.best_val_map
    return float("nan") if value is None else float(value)


def _history(run: Path) -> list[dict[str, float]]:
    """The run's history.csv rows (epoch_seconds) as numbers."""
    import csv

    path = run / "history.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [{"epoch_seconds": float(r["epoch_seconds"])} for r in rows if r.get("epoch_seconds")]


def progress_line(study: Any, trial: Any) -> str:
    """``trial 3  complete  0.9512  best 0.9612 (trial 1)  lr=0.0012 ...  14s``."""
    state = trial.state.name.lower()
    steps = trial.intermediate_values
    if state == "pruned" and steps:
        value = f"{steps[max(steps)]:.4f} at epoch {max(steps)}"
    elif trial.value is not None:
        value = f"{trial.value:.4f}"
    else:  # failed: the reason the objective recorded
        value = str(trial.user_attrs.get("error", ""))[:100]
    best = best_trial(study)
    best_text = f"best {best.value:.4f} (trial {best.number})" if best else "best -"
    params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    seconds = f"{trial.duration.total_seconds():.0f}s" if trial.duration else ""
    return f"trial {trial.number:>3}  {state:<8} {value}  {best_text}  {params}  {seconds}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def best_trial(study: Any) -> Any:
    """The best complete trial, or None before the first one."""
    try:
        return study.best_trial
    except ValueError:
        return None
