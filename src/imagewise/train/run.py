"""``imagewise.train``: from a dataset to a run folder holding a trained, documented model."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from imagewise.config import (
    RunConfig,
    apply_options,
    config_from_dict,
    load_config_file,
    read_yaml_file,
    resumable_options,
)
from imagewise.data.extra import absolute_manifests, resolve_data
from imagewise.data.pipeline import prepare
from imagewise.data.sources import ImageData, describe_labels
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError
from imagewise.io import DiskFull, check_output_dir
from imagewise.models.registry import model_capabilities
from imagewise.runtime.checkpoint import load_checkpoint
from imagewise.runtime.device import resolve_device, resolve_precision
from imagewise.runtime.logs import RankFilter
from imagewise.runtime.meta import RunMeta
from imagewise.runtime.runs import RunFolder, free_run_path
from imagewise.runtime.seeding import kept_random_state, seed_everything
from imagewise.runtime.threads import kept_threads
from imagewise.runtime.world import DistInfo
from imagewise.train.auto import adapt_defaults, choose_auto_model
from imagewise.train.build import (
    build_components,
    build_model,
    measured_cpu_precision,
    restore,
    selection_metric,
    wants_cached_features,
)
from imagewise.train.classical import (
    fit_one_pass,
    refuse_classical,
    refuse_classical_resume,
    write_classical_run,
)
from imagewise.train.compile import wants_compile
from imagewise.train.distributed import cleanup, init_distributed
from imagewise.train.loop import EarlyStopping, FitSettings, TrainState, fit
from imagewise.train.prepared import PreparedData, data_key
from imagewise.train.pseudo import (
    DEFAULT_PSEUDO_PRECISION,
    PSEUDO_FILE,
    TEACHER_FOLDER,
    check_pseudo_precision,
    pool_images,
    pseudo_label,
)
from imagewise.train.recipes import recipe_options
from imagewise.train.result import TrainResult
from imagewise.train.transfer import start_transfer, weights_before_data
from imagewise.train.writer import (
    PRECISION_NAMES,
    TrainingInterrupted,
    build_meta,
    calibrate_run,
    kept_in,
    start_run_folder,
)

log = logging.getLogger("imagewise")


def _resolve_config(
    data: str | None,
    out: Path | None,
    config: RunConfig | None,
    config_file: str | None,
    recipe: str | None,
    options: dict[str, Any],
    resume: bool,
) -> tuple[RunConfig, RunFolder]:
    if resume:
        if out is None:
            raise UserError("--resume needs the run folder: imagewise train --resume --out DIR")
        folder = RunFolder.of(check_output_dir(out))
        if not folder.last.is_file():
            refuse_classical_resume(folder)
            raise UserError(f"nothing to resume in '{out}' (no last.ckpt); start a new run instead")
        state = load_checkpoint(folder.last)
        cfg = config_from_dict(state["config"])
        given = {k: v for k, v in options.items() if v is not None}
        resumable = resumable_options()
        fixed = sorted(set(given) - set(resumable))
        if fixed or data is not None or config_file or recipe:
            names = ", ".join(_flag(k) for k in fixed) or "DATA/--config/--recipe"
            flags = [_flag(k) for k in resumable]
            allowed = ", ".join(flags[:-1]) + f" and {flags[-1]}"
            raise UserError(
                f"--resume continues the run as it was configured; only {allowed} may change "
                f"(got {names})"
            )
        return apply_options(cfg, given), folder
    cfg = config if config is not None else RunConfig()
    # defaults < recipe < config file < flags; a file may name the recipe itself.
    recipe = recipe or (_file_recipe(config_file) if config_file else None)
    if recipe:
        cfg = apply_options(cfg, recipe_options(recipe))
        cfg.recipe = recipe
    if config_file:
        cfg = load_config_file(config_file, cfg)
    if data is not None:
        # A folder is stored as an absolute path so evaluate / --resume work from anywhere.
        path = Path(data).expanduser()
        cfg.data.source = str(path.resolve()) if path.exists() else str(data)
    cfg = apply_options(cfg, options)
    cfg.data.add_labels = absolute_manifests(cfg.data.add_labels)
    if not cfg.data.source:
        raise UserError(
            "no dataset given; name a folder, a CSV manifest, digits, fashion-mnist or photos"
        )
    if out is None:
        stem = Path(cfg.data.source).name or "run"
        out = free_run_path(Path("runs") / f"{stem}-{cfg.model.name}")
    folder = RunFolder.of(check_output_dir(out))
    if folder.holds_run():
        raise UserError(
            f"'{out}' already holds a run; choose another --out, or add --resume to continue it"
        )
    return cfg, folder


def _train_classical(
    cfg: RunConfig, folder: RunFolder, dataset: ImageData, pre: InputContract,
    model: torch.nn.Module, device: torch.device, world: int, resume: bool,
) -> TrainResult:  # fmt: skip
    """A classical model: one fit instead of the loop; the same run folder, minus last.ckpt."""
    if world > 1:
        cleanup()  # every rank refuses alike; leave the process group first
    refuse_classical(cfg.model.name, world, resume)
    meta = build_meta(cfg, dataset, pre, model)
    start_run_folder(folder, cfg, meta, dataset, None, resume=False)
    fit = fit_one_pass(
        cfg.model.name, model, dataset.train, dataset.val, pre,
        seed=cfg.train.seed, workers=cfg.data.workers,
    )  # fmt: skip
    write_classical_run(folder, meta, model, fit)
    temperature = calibrate_run(folder, meta, dataset.val, cfg, device)
    return TrainResult(
        folder.path, cfg.model.name, epochs=1, best_epoch=1, best_val_accuracy=fit["val_accuracy"],
        train_seconds=fit["train_seconds"], stop_reason="classical fit", temperature=temperature,
        best_val_map=fit.get("val_map"), selected_by=meta.training.selected_by or "val_accuracy",
    )  # fmt: skip


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _file_recipe(path: str) -> str | None:
    values = read_yaml_file(path)
    return values.get("recipe") if isinstance(values, dict) else None


def train(
    data: str | None = None,
    out: str | Path | None = None,
    *,
    config: RunConfig | None = None,
    config_file: str | None = None,
    recipe: str | None = None,
    resume: bool = False,
    hooks: Sequence[object] = (),
    show_progress: bool = True,
    prepared: PreparedData | None = None,
    unlabelled: str | Path | None = None,
    pseudo_precision: float = DEFAULT_PSEUDO_PRECISION,
    **options: Any,
) -> TrainResult:
    """Train a classifier and write a run folder.

    Args:
        data: a folder of class folders, a CSV manifest, an IDX folder, or ``digits`` /
            ``fashion-mnist``. Not needed with ``resume``.
        out: the run folder (default ``runs/DATA-MODEL``); must not hold a run unless resuming.
        config: a starting configuration (defaults otherwise).
        config_file: a YAML file with sections ``data`` / ``model`` / ``train``, over ``config``.
        recipe: named settings (``default``, ``fast``, ``accurate``) over the defaults,
            under the file.
        resume: continue the run in ``out`` from its ``last.ckpt`` to the planned epochs.
        hooks: objects with ``on_train_start`` / ``on_epoch_end`` / ``on_train_end(state)``.
        show_progress: show a progress bar per epoch.
        prepared: data made once by ``prepare_data`` for many runs (``imagewise tune``);
            the run's images and split must match it; a run that decodes them otherwise
            (size, channels, interpolation, crop) has them decoded again, kept in ``prepared``.
        unlabelled: a folder of unlabelled images: self-training. A teacher is trained as
            configured into ``out/teacher``; the pool images whose calibrated top probability
            reaches the threshold fitted on its validation split for ``pseudo_precision`` are
            written with its answer to ``out/pseudo_labels.csv``; the student is trained into
            ``out`` from the same starting weights on the data plus those (``add_labels``).
            ``meta.json``'s ``pseudo_labels`` records the threshold, its validation precision,
            the pool's size and the share labelled.
        pseudo_precision: the precision the teacher's kept answers reach on its validation
            images (0..1, default 0.95); higher keeps fewer, surer pool images.
        **options: flat settings over the file, e.g. ``model="resnet18", epochs=5, lr=1e-3``
            (see ``imagewise.config.OPTIONS``).

    Example:
        >>> import imagewise
        >>> result = imagewise.train("digits", "runs/digits", epochs=3)  # doctest: +SKIP
        >>> result.best_val_accuracy  # doctest: +SKIP
        0.97
        >>> imagewise.train("data", "runs/st", unlabelled="pool/")  # doctest: +SKIP
    """
    if unlabelled is not None:  # refused before anything is read
        _check_self_training(resume, prepared, pseudo_precision)
    cfg, folder = _resolve_config(
        data, Path(out) if out else None, config, config_file, recipe, options, resume
    )
    if unlabelled is not None:
        return _self_train(cfg, folder, unlabelled, pseudo_precision, hooks, show_progress)
    return _run(cfg, folder, resume, hooks, show_progress, prepared)


def _run(
    cfg: RunConfig, folder: RunFolder, resume: bool, hooks: Sequence[object],
    show_progress: bool, prepared: PreparedData | None,
) -> TrainResult:  # fmt: skip
    """One run into ``folder``, the process's state kept as the caller had it."""
    # the run seeds the global generators; the caller's streams go on as they were afterwards
    with kept_random_state(), kept_threads(), RankFilter.installed(log):
        # Joining the process group is a rendezvous: every rank has passed the checks above
        # before rank 0 writes anything.
        dist, device = init_distributed(resolve_device(cfg.train.device))
        try:
            return _train(cfg, folder, dist, device, resume, hooks, show_progress, prepared)
        finally:
            cleanup()


def _check_self_training(resume: bool, prepared: PreparedData | None, precision: float) -> None:
    """``--unlabelled`` trains two runs in one process: not with ``--resume``, prepared data
    or torchrun; ``--pseudo-precision`` in (0, 1)."""
    from imagewise.runtime.world import from_env

    if resume or prepared is not None or from_env().world_size > 1:
        what = "--resume" if resume else "prepared data" if prepared else "torchrun"
        raise UserError(
            f"--unlabelled trains a teacher and then a student in one process; it does not "
            f"take {what} (resume a self-trained run with imagewise train --resume --out RUN)"
        )
    check_pseudo_precision(precision)


def _self_train(
    cfg: RunConfig, folder: RunFolder, unlabelled: str | Path, precision: float,
    hooks: Sequence[object], show_progress: bool,
) -> TrainResult:  # fmt: skip
    """``train(unlabelled=POOL)``: the teacher into ``folder/teacher``, its sure answers on the
    pool into ``folder/pseudo_labels.csv``, the student into ``folder`` (``train/pseudo.py``)."""
    data = resolve_data(cfg.data)
    if data.multilabel:
        raise UserError("--unlabelled pseudo-labels one class per image; multi-label data cannot")
    labelled = {
        str(Path(p).resolve()) for s in (data.train, data.val, data.test) for p in s.paths or []
    }
    pool = [p for p in pool_images(unlabelled) if p not in labelled]
    if not pool:
        raise UserError(f"every image in --unlabelled '{unlabelled}' is already labelled")
    student = copy.deepcopy(cfg)  # the teacher's run resolves what was left unset in its own
    teacher = _run(cfg, RunFolder.of(folder.path / TEACHER_FOLDER), False, (), show_progress, None)
    manifest = folder.path / PSEUDO_FILE
    record = pseudo_label(
        teacher.run, unlabelled, pool, precision, manifest, resolve_device(cfg.train.device)
    )
    if record.labelled:
        # relative: the run folder's own file (resolve_data), so the run folder may move
        student.data.add_labels = [*student.data.add_labels, PSEUDO_FILE]
    else:
        log.warning(
            "no pool image reached the teacher's threshold %.4g; the student trains on the "
            "labelled data alone (a lower --pseudo-precision keeps more)", record.threshold,
        )  # fmt: skip
    result = _run(student, folder, False, hooks, show_progress, None)
    meta = folder.read_meta()
    meta.pseudo_labels = record
    folder.write_meta(meta)
    return replace(result, pseudo_labels=record.describe())


def _train(
    cfg: RunConfig, folder: RunFolder, dist: DistInfo, device: torch.device, resume: bool,
    hooks: Sequence[object], show_progress: bool, prepared: PreparedData | None = None,
) -> TrainResult:  # fmt: skip
    """The steps of a run: data, model, parts, the run folder, fit, calibration."""
    t, rank, world = cfg.train, dist.rank, dist.world_size
    amp_dtype = resolve_precision(t.precision, device)
    compile_model = wants_compile(t.compile, device)  # checked before any data is read
    seed_everything(t.seed)
    source = weights_before_data(cfg)  # their input size decides the decoding
    data, pre, choice = (
        prepared.take(cfg, _decode_again) if prepared else _prepare_data(cfg, world, folder.path)
    )
    model = build_model(cfg, data, pre, device)
    # what the user left unset, from the data's size and the network's
    adapt_defaults(cfg, data, world, sum(p.numel() for p in model.parameters()))
    if model_capabilities(cfg.model.name).fit == "one_pass":  # its own fitter: no loop, no epochs
        return _train_classical(cfg, folder, data, pre, model, device, world, resume)
    start = start_transfer(cfg, model, list(data.classes), pre, source, show=dist.is_main)
    pre, cached = start.preprocessing, wants_cached_features(cfg, start.freezer, world)
    if rank:  # dropout, RandAugment and MixUp draws differ per process
        seed_everything(t.seed + 7919 * rank)
    channels_last = t.channels_last and device.type in ("cpu", "cuda") and not cached
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cached:  # one linear layer a step: nothing for bf16 to win
        amp_dtype = None
    elif device.type == "cpu" and t.precision == "auto":  # measured: bf16 only where faster
        amp_dtype = measured_cpu_precision(
            model, pre, t.batch_size, channels_last, amp_dtype is not None and rank == 0
        )
    settings = FitSettings(t, amp_dtype, channels_last, dist.is_main and show_progress)
    parts = build_components(
        cfg, data, pre, model, device, rank, world, compile_model, start.freezer, cached,
        settings.show_progress,
    )  # fmt: skip
    precision = PRECISION_NAMES[settings.amp_dtype]
    meta = build_meta(cfg, data, pre, model, processes=world, precision=precision)
    meta.choice = choice  # --model auto: what was picked and why
    meta.transfer = start.record
    writer = start_run_folder(folder, cfg, meta, data, parts, resume) if dist.is_main else None
    state = TrainState(epochs=t.epochs, tta=meta.tta)  # a resumed run keeps its own views
    state.select_by = selection_metric(cfg, data)
    if resume:
        restore(load_checkpoint(folder.last), parts, state)
        log.info("resuming %s at epoch %d of %d", folder.path, state.epoch, state.epochs)
    _announce(cfg, data, pre, device, world, meta)
    hooks = [EarlyStopping(t.patience), *([writer] if writer else []), start.freezer, *hooks]
    try:
        state = fit(parts, state, settings=settings, hooks=hooks)
        temperature = 1.0
        if dist.is_main and folder.weights.is_file():
            temperature = calibrate_run(folder, meta, data.val, cfg, device)
    except DiskFull as exc:
        raise DiskFull(exc.path, kept_in(folder)) from exc
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM turned into it by the CLI
        raise TrainingInterrupted(folder, state.epoch, state.epochs) from exc
    finally:
        if writer is not None:
            writer.close()
    result = TrainResult.of(folder, cfg, state, temperature)
    if dist.is_main:
        _warn_if_guessing(result, data.val.labels)
    return result


def _warn_if_guessing(result: TrainResult, val_labels: Any) -> None:
    """One warning when the best epoch is no better than always answering the validation
    split's most common class: a run that ends there exits 0, and would otherwise look done."""
    import numpy as np

    labels = np.asarray(val_labels)
    if labels.ndim == 2 or not len(labels) or result.best_val_accuracy != result.best_val_accuracy:
        return  # multi-label runs: mAP, not a majority class, says whether it learned
    majority = float(np.bincount(labels).max() / len(labels))
    if result.best_val_accuracy <= majority + 1e-6:  # accuracies are float32 sums
        log.warning(
            "the best validation accuracy, %.2f%%, is no better than guessing (always answering "
            "the most common class scores %.2f%%); the model learned nothing: try a lower --lr, "
            "more epochs or check the labels",
            100 * result.best_val_accuracy, 100 * majority,
        )  # fmt: skip


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Read, split, decode and measure the data of ``cfg`` once, for several
    ``train(prepared=...)`` calls; fills ``cfg`` as a run would (``--model auto``'s pick, the
    starting weights' input size).

    Args:
        cfg: a resolved configuration with ``data.source`` set.
    """
    weights_before_data(cfg)
    cfg.data.add_labels = absolute_manifests(cfg.data.add_labels)  # as each run stores them
    data, pre, choice = _prepare_data(cfg)
    return PreparedData(data, pre, data_key(cfg), choice)


def _decode_again(cfg: RunConfig) -> PreparedData:
    """The prepared data's images decoded as ``cfg`` says (its model already chosen)."""
    d = cfg.data
    return PreparedData(*prepare(resolve_data(d), d), data_key(cfg))


def _prepare_data(
    cfg: RunConfig, world: int = 1, run: Path | None = None
) -> tuple[ImageData, InputContract, dict[str, Any] | None]:
    """The dataset, split and decoded, the preprocessing it implies, and what ``--model auto``
    chose from it (None when the model was named)."""
    d = cfg.data
    raw = resolve_data(d, run)  # the source, plus the rows of --add-labels
    if raw.multilabel:  # said once: the other processes' logs are filtered (RankFilter)
        log.info("%s", describe_labels(raw))
    elif len(raw.classes) < 2:
        raise UserError(
            f"'{d.source}' holds one class ({', '.join(raw.classes) or 'none'}); a "
            "classifier needs at least two: one folder (or label) per class"
        )
    choice = choose_auto_model(cfg, raw, world)  # before decoding: it may pick the size
    return (*prepare(raw, d), choice)


def _announce(
    cfg: RunConfig, data: ImageData, pre: InputContract, device: torch.device, world: int,
    meta: RunMeta,
) -> None:  # fmt: skip
    if cfg.train.tta and not meta.tta:
        log.warning(
            "--tta: the augmentation (%s) has neither flips nor shifts, so there is no view the "
            "model learned to treat alike; it answers without test-time augmentation",
            cfg.data.augment.preset,
        )
    epochs = cfg.train.epochs
    log.info(
        "training %s on %s: %d train / %d val images, %d classes, %dx%dx%d, %d epoch%s, %s",
        cfg.model.name, cfg.data.source, len(data.train), len(data.val), len(data.classes),
        pre.channels, pre.img_size, pre.img_size, epochs, "" if epochs == 1 else "s",
        f"{world} processes on {device.type}" if world > 1 else device,
    )  # fmt: skip
