"""The Optuna study: where it is stored, how it samples and prunes, and how it survives a
killed worker.

Storage is SQLite in the output folder by default, or any SQLAlchemy URL
(``postgresql://user:password@host/db``) that several workers on several machines open with the
same ``--study`` name. Every trial records its host and process id and beats a heartbeat into
the storage. A trial left RUNNING by a worker that died is failed and its settings queued
again, once: at once when the dead worker was on this machine (its process id no longer
exists), otherwise when its heartbeat is ``GRACE_SECONDS`` old. A trial stopped by Ctrl-C is
failed on the spot and queued again when the study is next run.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagewise.errors import UserError

log = logging.getLogger("imagewise")

HEARTBEAT_SECONDS, GRACE_SECONDS = 20, 120
SAMPLERS, PRUNERS = ("tpe", "random", "grid"), ("median", "hyperband", "none")
HOST = socket.gethostname()


def storage_url(storage: str | None, out: Path) -> str:
    """The study's storage: ``storage`` as given, else a SQLite file in ``out``."""
    if storage:
        return storage if "://" in storage else f"sqlite:///{Path(storage).resolve()}"
    return f"sqlite:///{(out / 'study.db').resolve()}"


def shown_url(url: str) -> str:
    """``url`` with its password hidden, for messages and files."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: say it as given
        return url


def open_storage(url: str, tries: int = 5) -> Any:
    """An Optuna ``RDBStorage`` with heartbeats; one line when it cannot be opened.

    Workers started together on an empty database race to create its tables; the loser's
    error (a duplicate key or table) is answered by opening again once the winner is done.
    """
    import optuna
    import sqlalchemy.exc

    # SQLite: several local workers take turns writing; wait for the lock instead of failing.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=requeue,
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == tries - 1:
                raise
            time.sleep(0.5 + attempt)
        except sqlalchemy.exc.OperationalError as exc:
            # SQLite says the same race as "table ... already exists"
            if "already exists" not in str(exc) or attempt == tries - 1:
                raise UserError(
                    f"cannot open the study storage {shown_url(url)}: "
                    + (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                ) from None
            time.sleep(0.5 + attempt)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else type(exc).__name__
            raise UserError(f"cannot open the study storage {shown_url(url)}: {reason}") from None
    raise AssertionError("unreachable")


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``'s draws in a study seeded with ``seed``."""
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**63, number]).generate_state(1)[0])


class TrialSeeded:
    """An Optuna sampler made again for every trial, seeded by the study's seed and the trial's
    number (``trial_seed``).

    A sampler seeded once draws the same sequence in every process that makes it: a study run
    again with more trials, or continued after a killed worker, drew exactly the settings of its
    first trials again, and workers started with one seed drew each other's. The storage gives
    every trial of a study its own number, so seeding each trial by its number gives every new
    trial new draws, in whichever process it runs; and a new study run by one process draws
    the same settings for the same seed each time (trial 0, 1, 2... get the same seeds). TPE
    also conditions on the finished trials, as before.

    Args:
        make: a seed -> the sampler (``optuna.samplers.TPESampler(seed=...)``).
        seed: the study's seed (``--seed``).
    """

    def __init__(self, make: Callable[[int], Any], seed: int) -> None:
        self.make, self.seed = make, seed
        self.current = make(trial_seed(seed, 0))

    def before_trial(self, study: Any, trial: Any) -> None:
        self.current = self.make(trial_seed(self.seed, trial.number))
        self.current.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return self.current.sample_independent(study, trial, name, distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.current.reseed_rng()


def make_sampler(name: str, seed: int, grid: dict[str, list[Any]] | None) -> Any:
    """Optuna's sampler for ``tpe`` (Bayesian), ``random`` or ``grid``, seeded.

    TPE and random draw each trial's settings from a seed of the study's seed and the trial's
    number (``TrialSeeded``). Grid search keeps one seed: it shuffles the grid once with it and
    gives trial N the N-th point, so every trial number, in any worker, gets its own point.
    """
    import optuna

    if name == "grid":
        assert grid is not None
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return _trial_seeded(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    if name == "tpe":
        return _trial_seeded(lambda s: optuna.samplers.TPESampler(seed=s), seed)
    raise UserError(f"--sampler must be {', '.join(SAMPLERS[:-1])} or {SAMPLERS[-1]}, not {name!r}")


def _trial_seeded(make: Callable[[int], Any], seed: int) -> Any:
    """A ``TrialSeeded`` that is an Optuna ``BaseSampler`` (Optuna imported only here)."""
    import optuna

    class Sampler(TrialSeeded, optuna.samplers.BaseSampler):
        pass

    return Sampler(make, seed)


FIRST_JUDGED_EPOCH = 2  # no trial is judged on its first epoch, whatever its warm-up


def make_pruner(name: str, trials: int, epochs: int | None) -> Any:
    """Optuna's pruner: ``median`` (stop a trial below the median of earlier trials at the
    same epoch, once a fifth of the trials, 1 to 5, have finished), ``hyperband`` or ``none``.

    Neither judges a trial before ``FIRST_JUDGED_EPOCH``; each trial is also not judged before
    the first epoch after its own learning-rate warm-up (``imagewise.tune.trial``): before it
    a trial's accuracy says more about its warm-up than about its settings.
    """
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=median_startup(trials), n_warmup_steps=FIRST_JUDGED_EPOCH
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs or "auto")
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"--pruner must be {', '.join(PRUNERS[:-1])} or {PRUNERS[-1]}, not {name!r}")


def median_startup(trials: int) -> int:
    """Completed trials the median pruner waits for: a fifth of the study, 1 to 5."""
    return max(1, min(5, trials // 5))


def search_rules(
    sampler: str, seed: int, pruner: str, trials: int, score: str = "validation accuracy"
) -> list[str]:
    """How the study samples and prunes, in the words ``imagewise tune`` prints at its start."""
    if sampler == "grid":
        draws = f"sampler: grid, in an order shuffled by seed {seed}"
    else:
        draws = (
            f"sampler: {sampler}, each trial's draws seeded by seed {seed} and the trial's "
            "number (a rerun or another worker draws new settings)"
        )
    after = (
        "judged from the first epoch after the trial's learning-rate warm-up "
        f"(epoch {FIRST_JUDGED_EPOCH} at the earliest)"
    )
    startup = median_startup(trials)
    completed = "1 trial has" if startup == 1 else f"{startup} trials have"
    rule = {
        "median": (
            f"pruner: median: a trial stops when its {score} is below the median "
            f"of earlier trials at the same epoch, {after}, once {completed} completed"
        ),
        "hyperband": f"pruner: hyperband (successive halving over the epochs), {after}",
        "none": "pruner: none: every trial trains all its epochs",
    }[pruner]
    return [f"objective: the best epoch's {score}", draws, rule]


def open_study(storage: Any, name: str, sampler: Any, pruner: Any) -> Any:
    """The study ``name`` in ``storage``, created (maximizing) or joined."""
    import optuna

    study = optuna.create_study(
        storage=storage, study_name=name, sampler=sampler, pruner=pruner,
        direction="maximize", load_if_exists=True,
    )  # fmt: skip
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UserError(f"study '{name}' minimizes; imagewise tune maximizes accuracy: new --study")
    return study


def claim_metric(study: Any, metric: str) -> None:
    """Record what ``study`` maximizes (a history column) on its first trial's worker; a
    worker whose data asks for another (multi-label mAP vs accuracy) is refused, since the
    study's values would not compare."""
    held = study.user_attrs.get("metric")
    if held is None:
        study.set_user_attr("metric", metric)
    elif held != metric:
        raise UserError(
            f"study '{study.study_name}' maximizes {held} and this data asks for {metric} "
            "(multi-label data is tuned by mAP); name a new --study"
        )


def requeue(study: Any, trial: Any) -> None:
    """Queue the settings of a failed (killed or interrupted) trial again, once."""
    if trial.user_attrs.get("retry_of") is not None:
        return  # already a retry: a setting that kills its worker twice is left failed
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    if trial.number in retried:
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    log.info("trial %d did not finish; its settings are queued again", trial.number)


def recover(study: Any) -> list[int]:
    """Fail the trials a dead worker on this machine left RUNNING, and queue again the settings
    of those (and of trials stopped by Ctrl-C) not queued yet; returns their numbers."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage, found = study._storage, []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        dead = (
            trial.state == TrialState.RUNNING
            and attrs.get("host") == HOST
            and not _alive(int(attrs.get("pid", 0)))
        )
        if dead:
            try:
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except UpdateFinishedTrialError:  # another worker got there first
                continue
        if dead or (trial.state == TrialState.FAIL and attrs.get("interrupted")):
            requeue(study, trial)
            found.append(trial.number)
    return found


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
