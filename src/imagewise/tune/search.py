"""``imagewise.tune``: search training settings with Optuna (grid, random or TPE), pruning poor
trials, in a study that several workers can share."""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imagewise.config import RunConfig, apply_options, load_config_file, parse_time_budget
from imagewise.errors import UserError
from imagewise.io import check_output_dir
from imagewise.tune import report
from imagewise.tune.space import Space, default_space, read_space
from imagewise.tune.study import (
    HOST,
    claim_metric,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    recover,
    search_rules,
    shown_url,
    storage_url,
)
from imagewise.tune.trial import (
    METRICS,
    WEIGHTS_DECODING,
    Objective,
    best_trial,
    objective_metric,
    progress_line,
    run_value,
    trial_config,
)

log = logging.getLogger("imagewise")


@dataclass
class TuneResult:
    """What a study holds after this worker's trials; ``out`` holds the files."""

    study: str
    storage: str  # the URL, password hidden
    out: Path
    complete: int
    pruned: int
    failed: int
    best_trial: int | None  # None: no trial completed
    best_value: float  # best validation score by ``metric`` (NaN without a complete trial)
    best_params: dict[str, Any]
    best_run: Path | None  # the best trial's run folder, when this machine ran it
    final_run: Path | None = None  # retrain_best: the best settings on all training images
    final_value: float = float("nan")
    epochs_run: int = 0  # over finished trials: what pruning left of the planned epochs
    epochs_planned: int = 0
    files: dict[str, Path] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    metric: str = "val_accuracy"  # what the study maximizes: val_map for multi-label data

    @property
    def score(self) -> str:
        """The maximized score in words (``validation mAP``)."""
        return METRICS[self.metric]


def tune(
    data: str,
    out: str | Path | None = None,
    *,
    trials: int = 20,
    space: str | Path | Space | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    timeout: str | float | None = None,
    storage: str | None = None,
    study: str = "imagewise",
    subset: int | None = None,
    retrain_best: bool = False,
    keep_runs: bool = False,
    config_file: str | None = None,
    show_progress: bool = False,
    **options: Any,
) -> TuneResult:
    """Search training settings; every trial is an ordinary ``imagewise.train`` run, judged by
    its best validation accuracy, or for multi-label data its best validation mAP.

    Args:
        data: as for ``imagewise.train``; read and decoded once for all trials.
        out: the output folder (default ``runs/tune-DATA``): ``study.db``, ``trials.csv``,
            ``best.yaml``, the plots, ``report.html`` and ``trials/`` (run folders).
        trials: finished (complete or pruned) trials the study should hold; a rerun or another
            worker adds only what is missing.
        space: a space file (syntax in ``imagewise.tune.space``) or a ``Space``; default:
            learning rate, weight decay, batch size, label smoothing, augmentation, optimizer.
        sampler: ``tpe`` (Bayesian), ``random`` or ``grid``.
        pruner: ``median``, ``hyperband`` or ``none``.
        timeout: start no trial after this long (seconds, or text such as ``30m``).
        storage: a SQLAlchemy URL (``postgresql://...``) or a SQLite file; default
            ``OUT/study.db``.
        study: the study's name; workers with the same storage and name share it.
        subset: search on a stratified sample of this many training images.
        retrain_best: at the end, train the best settings on all training images (``OUT/final``).
        keep_runs: keep every trial's run folder (default: only the best trial's).
        config_file: a YAML config (sections data / model / train) under the options.
        show_progress: progress bars inside each trial (the per-trial lines are logged anyway).
        **options: fixed training settings (``model="lenet5", epochs=5``); not searched.

    Example:
        >>> result = imagewise.tune("digits", "runs/tune", trials=10, model="lenet5",
        ...                         epochs=3)  # doctest: +SKIP
        >>> result.best_params  # doctest: +SKIP
        {'lr': 0.0042, 'batch_size': 64, ...}
    """
    from imagewise.runtime.seeding import kept_random_state

    if trials < 1:
        raise UserError(f"--trials must be at least 1, not {trials}")
    if subset is not None and subset < 1:
        raise UserError(f"--subset must be at least 1 image, not {subset}")
    seconds = _timeout(timeout)
    base, given = _base_config(data, config_file, options)
    out = check_output_dir(out or Path("runs") / f"tune-{Path(base.data.source).name or 'data'}")
    grid = sampler == "grid"
    space = _space(space, base, given, grid, _multilabel(base))
    sampler_obj = make_sampler(sampler, base.train.seed, space.grid() if grid else None)
    pruner_obj = make_pruner(pruner, trials, base.train.epochs)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, out)
    with kept_random_state(), _quiet_trials(), _optuna_quiet():
        study_obj = open_study(open_storage(url), study, sampler_obj, pruner_obj)  # fails fast
        unset = tuple(n for n in WEIGHTS_DECODING if not getattr(base.data, n))
        prepared, metric = _start(study_obj, base)  # fills in base's weights' or auto's choices
        for line in search_rules(sampler, base.train.seed, pruner, trials, METRICS[metric]):
            _say(line)
        searched = prepared.subset(subset, base.train.seed) if subset else prepared
        objective = Objective(
            base, space, searched, out / "trials", study, grid, show_progress, unset=unset,
            metric=metric,
        )  # fmt: skip
        _optimize(study_obj, objective, trials, seconds, keep_runs, out)
        fixed_base = apply_options(copy.deepcopy(base), space.fixed)  # the space's fixed values
        result = _results(study_obj, fixed_base, out, url, keep_runs, metric)
        if retrain_best and result.best_trial is not None:
            options = {**space.fixed, **result.best_params}
            _retrain(result, trial_config(base, options, unset), options, prepared, show_progress)
    return result


def _start(study: Any, base: RunConfig) -> tuple[Any, str]:
    """The study's unfinished trials queued again, the data prepared once for every trial, and
    the score the study maximizes (claimed in the study, so workers agree on it)."""
    from imagewise.train.run import prepare_data

    retried = recover(study)
    if retried:
        _say(f"trials {', '.join(map(str, retried))} did not finish; queued again")
    prepared = prepare_data(base)  # fills in what base's weights or model auto decide
    if not len(prepared.data.val):
        raise UserError("tuning needs validation images; set --val-fraction above 0")
    metric = objective_metric(prepared.data.multilabel)
    claim_metric(study, metric)
    return prepared, metric


def _timeout(timeout: str | float | None) -> float | None:
    if timeout is None or isinstance(timeout, int | float):
        return float(timeout) if timeout is not None else None
    try:
        return parse_time_budget(timeout)
    except UserError:
        raise UserError(
            f"--timeout must be a duration such as 90s, 30m or 2h, not {timeout!r}"
        ) from None


def _base_config(
    data: str, config_file: str | None, options: dict[str, Any]
) -> tuple[RunConfig, dict[str, Any]]:
    """defaults < config file < options: what every trial starts from, and the options given."""
    cfg = load_config_file(config_file) if config_file else RunConfig()
    path = Path(data).expanduser()
    cfg.data.source = str(path.resolve()) if path.exists() else str(data)
    given = {k: v for k, v in options.items() if v is not None}
    return apply_options(cfg, given), given


def _space(space: str | Path | Space | None, base: RunConfig, given: dict[str, Any],
           grid: bool, multilabel: bool = False) -> Space:  # fmt: skip
    """The space asked for, or the default one (without label smoothing for multi-label data:
    its sigmoid losses take none, so searching it would only repeat trials)."""
    if isinstance(space, Space):
        space.validate()  # as a space file's values are: one line, before any work
        return space
    if space is not None:
        return read_space(space, given)
    found = default_space(base, given, grid)
    if not multilabel:
        return found
    kept = tuple(p for p in found.params if p.name != "label_smoothing")
    return replace(found, params=kept)


def _multilabel(base: RunConfig) -> bool:
    """Whether the data is multi-label, from its manifest alone (nothing decoded), before the
    space is built; only a CSV manifest can be."""
    from imagewise.data.sources import resolve_source

    d = base.data
    if not d.source.lower().endswith(".csv") or not Path(d.source).is_file():
        return False
    return resolve_source(
        d.source, d.val_fraction, d.test_fraction, d.split_seed, d.task, d.label_separator
    ).multilabel


def _optimize(
    study: Any, objective: Objective, trials: int, seconds: float | None, keep_runs: bool,
    out: Path,
) -> None:  # fmt: skip
    """Run trials until the study holds ``trials`` finished ones (counting other workers'),
    the grid is done or the time is up; a diverged trial fails alone."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from imagewise.train.loop import TrainingDiverged

    missing = trials - len(report.finished(study))
    if missing <= 0:
        _say(f"study '{study.study_name}' already holds {trials} finished trials")
        return

    def after(study: Any, trial: Any) -> None:
        _say(progress_line(study, trial))
        if not keep_runs:
            _tidy(study, out)

    stop = MaxTrialsCallback(trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    study.optimize(
        objective, n_trials=missing, timeout=seconds, catch=(TrainingDiverged,),
        callbacks=[stop, after],
    )  # fmt: skip


def _tidy(study: Any, out: Path) -> None:
    """Delete the run folders of this study's finished trials that are not the best: those its
    trials recorded as made on this machine in ``out/trials`` (a running trial's, perhaps
    another worker's, is left alone, and so is every folder the study did not make: another
    study's of a similar name or in another storage, sharing ``out``)."""
    from optuna.trial import TrialState

    best = best_trial(study)
    trials = (out / "trials").resolve()
    for t in study.get_trials(deepcopy=False):
        run = t.user_attrs.get("run")
        if not run or t.user_attrs.get("host") != HOST or t.state == TrialState.RUNNING:
            continue
        if (best and best.number == t.number) or Path(run).parent != trials:
            continue
        shutil.rmtree(run, ignore_errors=True)


def _results(
    study: Any, base: RunConfig, out: Path, url: str, keep_runs: bool,
    metric: str = "val_accuracy",
) -> TuneResult:  # fmt: skip
    """Write trials.csv, best.yaml, the plots and report.html; the summary lines."""
    if not keep_runs:
        _tidy(study, out)
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    done = report.finished(study)
    best = best_trial(study)
    best_run = Path(best.user_attrs.get("run", "")) if best else None
    if best_run is not None and (best.user_attrs.get("host") != HOST or not best_run.is_dir()):
        best_run = None
    result = TuneResult(
        study.study_name, shown_url(url), out, count["COMPLETE"], count["PRUNED"], count["FAIL"],
        best.number if best else None, best.value if best else float("nan"),
        dict(best.params) if best else {}, best_run,
        epochs_run=sum(int(t.user_attrs.get("epochs", 0)) for t in done),
        epochs_planned=sum(int(t.user_attrs.get("planned_epochs", 0)) for t in done),
        metric=metric,
    )  # fmt: skip
    files = result.files
    files["trials"] = report.write_trials_csv(study, out / "trials.csv")
    if best:
        header = f"study '{study.study_name}', trial {best.number}: {result.score} {best.value:.4f}"
        files["best"] = report.write_best_yaml(base, best, out / "best.yaml", header)
    files["history"] = report.plot_history(study, out / "optimization_history.png", result.score)
    weights = report.importances(study)
    files["importances"] = report.plot_importances(weights, out / "param_importances.png")
    files["parallel"] = report.plot_parallel(study, out / "parallel_coordinates.png", result.score)
    result.summary = _summary(result, best, base)
    images = [files[k] for k in ("history", "importances", "parallel")]
    files["report"] = report.write_html(
        out / "report.html", f"imagewise tune: study {study.study_name}", result.summary,
        result.best_params, images, files["trials"],
    )  # fmt: skip
    return result


def _summary(result: TuneResult, best: Any, base: RunConfig) -> list[str]:
    r = result
    lines = [
        f"study '{r.study}' in {r.storage}: {r.complete + r.pruned} finished trials "
        f"({r.complete} complete, {r.pruned} pruned), {r.failed} failed",
    ]
    if r.epochs_planned:
        saved = 1 - r.epochs_run / r.epochs_planned
        lines.append(f"epochs trained: {r.epochs_run} of {r.epochs_planned} planned "
                     f"(pruning saved {saved:.0%})")  # fmt: skip
    if best is None:
        lines.append("no trial completed: nothing to recommend yet")
        return lines
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in r.best_params.items())  # fmt: skip
    lines.append(f"best: trial {r.best_trial}, {r.score} {r.best_value:.4f}: {params}")
    where = best.user_attrs.get("run", "?")
    if r.best_run is None:
        lines.append(f"its run folder is on {best.user_attrs.get('host', '?')}: {where}")
    else:
        lines.append(f"its run folder: {r.best_run}")
    return lines


def _retrain(
    result: TuneResult, cfg: RunConfig, options: dict[str, Any], prepared: Any,
    show_progress: bool,
) -> None:  # fmt: skip
    """Train the best settings on every training image into ``OUT/final``."""
    from imagewise.runtime.runs import free_run_path
    from imagewise.train.run import train

    final = free_run_path(result.out / "final")
    _say(f"training the best settings on all {len(prepared.data.train):,} training images")
    run = train(
        config=cfg, out=final, prepared=prepared, show_progress=show_progress, **options,
    )  # fmt: skip
    result.final_run = run.run
    result.final_value = run_value(run.run, result.metric, run.best_val_accuracy)
    result.summary.append(
        f"final run (all training images): {run.run}, {result.score} {result.final_value:.4f}"
    )


def _say(text: str) -> None:
    log.info(text, extra={"tune": True})


class _OnlyTuneLines(logging.Filter):
    """Each trial's training logs its own lines; a study shows one line per trial instead
    (warnings still pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or bool(getattr(record, "tune", False))


@contextlib.contextmanager
def _quiet_trials() -> Iterator[None]:
    quiet = _OnlyTuneLines()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


class _NoFailedTrialLines(logging.Filter):
    """Optuna logs a failed trial as two warnings, the first with the exception's traceback;
    the study says it in the trial's own line instead, and an error that stops the study is
    the command's one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Trial ") and " failed with" in message)


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's own per-trial lines, failed-trial tracebacks and experimental-feature warnings
    off, then as they were."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    failures, quiet = logging.getLogger("optuna.study._optimize"), _NoFailedTrialLines()
    failures.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        failures.removeFilter(quiet)
        optuna.logging.set_verbosity(level)
