"""``imagewise.train``: from a dataset to a run folder holding a trained, documented model."""

from __future__ import annotations

import logging
import random
import sys
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagewise.config import (
    RunConfig,
    apply_options,
    config_from_dict,
    load_config_file,
    read_yaml_file,
    save_config,
)
from imagewise.data.pipeline import make_loader, prepare
from imagewise.data.sources import ImageData, Split, resolve_source
from imagewise.data.transforms import BatchAugment, Preprocessing
from imagewise.errors import UserError
from imagewise.io import DiskFull, atomic_write_text, check_output_dir
from imagewise.runtime.checkpoint import load_checkpoint, save_checkpoint, save_weights
from imagewise.runtime.device import (
    keep_freed_memory,
    measure_bf16_speedup,
    resolve_device,
    resolve_precision,
)
from imagewise.runtime.runs import RunFolder, free_run_path
from imagewise.train.classical import (
    fit_classical,
    refuse_classical,
    refuse_classical_resume,
    write_classical_run,
)
from imagewise.train.compile import CompiledWithFallback, wants_compile
from imagewise.train.distributed import broadcast_from_main, cleanup, init_distributed
from imagewise.train.loop import TrainState, fit
from imagewise.train.optim import build_optimizer, build_scheduler
from imagewise.train.recipes import recipe_options
from imagewise.train.task import ClassificationTask

log = logging.getLogger("imagewise")

# What --resume may change: the plan's length and where / how it runs, not what it computes.
RESUMABLE = {"epochs", "device", "workers", "precision", "compile"}


@dataclass
class TrainResult:
    """What a finished run reports; the run folder holds the rest."""

    run: Path
    model: str
    epochs: int
    best_epoch: int
    best_val_accuracy: float  # NaN when there was no validation split
    train_seconds: float
    stop_reason: str
    temperature: float = 1.0  # fitted on the validation split after training


def choose_model(num_images: int, img_size: int) -> str:
    """``--model auto``: a fast residual CNN for small images, ResNet-18 for photos.

    On 2 CPU cores resnet9p_tiny trains Fashion-MNIST at about 29 s an epoch (BENCHMARKS.md).
    """
    if img_size <= 64:
        return "resnet9p_tiny" if num_images < 200_000 else "resnet9p_slim"
    return "resnet18"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _versions() -> dict[str, str]:
    import timm
    import torchvision

    from imagewise.version import __version__

    return {
        "imagewise": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
    }


def build_meta(
    config: RunConfig, data: ImageData, pre: Preprocessing, model: torch.nn.Module
) -> dict[str, Any]:
    """The metadata that travels with the weights: enough to rebuild and use the model."""
    from imagewise.models import count_parameters

    return {
        "format": "imagewise-run/1",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "classes": data.classes,
        "model": {
            "name": config.model.name,
            "kwargs": _model_kwargs(config),
            "num_classes": len(data.classes),
            "parameters": count_parameters(model),
        },
        "preprocessing": asdict(pre),
        "temperature": 1.0,
        "tta": tta_views_of(config, pre.img_size),
        "data": {
            "source": data.source,
            "kind": data.kind,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "test_images": len(data.test),
            "skipped_images": len(data.skipped),
        },
        "versions": _versions(),
        "training": {},
    }


def tta_views_of(config: RunConfig, img_size: int) -> dict[str, Any]:
    """The test-time views a run answers with: ``{}`` without ``tta``, else those its
    augmentation trained it for (``imagewise.runtime.tta.views_for_training``)."""
    from imagewise.data.transforms import resolve_augment
    from imagewise.runtime.tta import views_for_training

    if not config.train.tta:
        return {}
    parts = resolve_augment(config.data.augment)
    return views_for_training(bool(parts["hflip"]), float(parts["translate"]), img_size)


def _model_kwargs(config: RunConfig) -> dict[str, Any]:
    return {} if config.model.dropout is None else {"dropout": config.model.dropout}


def _tensorboard_without_tensorflow() -> None:
    """Keep TensorBoard's writer from importing TensorFlow when it is installed.

    The writer needs only TensorBoard's own stub to write event files, but where TensorFlow is
    installed it imports it: seconds of start-up and absl lines on stderr in every run.
    ``tensorboard.compat.notf`` is TensorBoard's own switch to the stub (its ``no_tensorflow``
    build target). A process that already imported TensorFlow keeps using it.
    """
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault(
            "tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf")
        )


class RunWriter:
    """Hook that keeps the run folder current: history, curves, best weights, last checkpoint."""

    def __init__(self, folder: RunFolder, meta: dict[str, Any], objects: dict[str, Any]) -> None:
        self.folder, self.meta, self.objects = folder, meta, objects
        self.writer: Any = None

    def on_train_start(self, state: TrainState) -> None:
        _tensorboard_without_tensorflow()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder.tensorboard))
        except ImportError:  # tensorboard is a dependency, but a broken install must not stop us
            log.warning("tensorboard is not installed; no TensorBoard logs")

    def on_epoch_end(self, state: TrainState) -> None:
        row = state.history[-1]
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key.replace("_", "/", 1), value, state.epoch)
            self.writer.flush()
        ema = self.objects.get("ema")
        if state.improved:
            best = ema.module if ema is not None else self.objects["model"]
            save_weights(best, self.folder.weights)
            self.meta["training"] = self._training_summary(state)
            self.folder.write_meta(self.meta)
        save_checkpoint(self._checkpoint(state), self.folder.last)
        self.folder.write_history(state.history)
        from imagewise.train.curves import plot_curves

        plot_curves(state.history, self.folder.curves)
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  %.1fs%s",
            state.epoch,
            state.epochs,
            row["train_loss"],
            row["train_accuracy"],
            row["val_loss"],
            row["val_accuracy"],
            row["epoch_seconds"],
            "  *best*" if state.improved else "",
        )

    def on_train_end(self, state: TrainState) -> None:
        self.meta["training"] = self._training_summary(state)
        self.folder.write_meta(self.meta)
        if self.writer is not None:
            self.writer.close()

    def _training_summary(self, state: TrainState) -> dict[str, Any]:
        return {
            "epochs_run": state.epoch,
            "epochs_planned": state.epochs,
            "best_epoch": state.best_epoch,
            "best_val_accuracy": state.best_metric if state.metric == "val_accuracy" else None,
            "selected_by": state.metric,
            "train_seconds": round(state.train_seconds, 3),
            "stop_reason": state.stop_reason,
        }

    def _checkpoint(self, state: TrainState) -> dict[str, Any]:
        o = self.objects
        return {
            "epoch": state.epoch,
            "model": o["model"].state_dict(),
            "optimizer": o["optimizer"].state_dict(),
            "scheduler": o["scheduler"].state_dict(),
            "ema": o["ema"].state_dict() if o.get("ema") is not None else None,
            "history": state.history,
            "best_metric": state.best_metric,
            "best_epoch": state.best_epoch,
            "train_seconds": state.train_seconds,
            "torch_rng": torch.get_rng_state(),
            "augment_rng": o["augment"].generator.get_state(),
            "config": self.objects["config"].to_dict(),
        }


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
        fixed = sorted(set(given) - RESUMABLE)
        if fixed or data is not None or config_file or recipe:
            names = ", ".join(f"--{k.replace('_', '-')}" for k in fixed) or "DATA/--config/--recipe"
            raise UserError(
                f"--resume continues the run as it was configured; only --epochs, --device, "
                f"--workers, --precision and --compile may change (got {names})"
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
    if not cfg.data.source:
        raise UserError("no dataset given; name a folder, a CSV manifest, digits or fashion-mnist")
    if out is None:
        stem = Path(cfg.data.source).name or "run"
        out = free_run_path(Path("runs") / f"{stem}-{cfg.model.name}")
    folder = RunFolder.of(check_output_dir(out))
    if folder.holds_run():
        raise UserError(
            f"'{out}' already holds a run; choose another --out, or add --resume to continue it"
        )
    return cfg, folder


def _build_model(
    cfg: RunConfig, data: ImageData, pre: Preprocessing, device: torch.device
) -> torch.nn.Module:
    from imagewise.models import create_model

    if cfg.model.name == "auto":
        cfg.model.name = choose_model(len(data.train), pre.img_size)
    model = create_model(
        cfg.model.name,
        num_classes=len(data.classes),
        in_chans=pre.channels,
        img_size=pre.img_size,
        pretrained=cfg.model.pretrained,
        **_model_kwargs(cfg),
    )
    return model.to(device)


def _restore(ckpt: dict[str, Any], objects: dict[str, Any], state: TrainState) -> None:
    """Put a ``last.ckpt`` back: weights, optimizer, schedule, EMA, random streams, history."""
    objects["model"].load_state_dict(ckpt["model"])
    objects["optimizer"].load_state_dict(ckpt["optimizer"])
    objects["scheduler"].load_state_dict(ckpt["scheduler"])
    if objects["ema"] is not None and ckpt.get("ema") is not None:
        objects["ema"].load_state_dict(ckpt["ema"])
    torch.set_rng_state(ckpt["torch_rng"])
    objects["augment"].generator.set_state(ckpt["augment_rng"])
    state.epoch, state.history = int(ckpt["epoch"]), list(ckpt["history"])
    state.best_metric, state.best_epoch = float(ckpt["best_metric"]), int(ckpt["best_epoch"])
    state.train_seconds = float(ckpt["train_seconds"])


def _start_run_folder(
    folder: RunFolder,
    cfg: RunConfig,
    meta: dict[str, Any],
    data: ImageData,
    objects: dict[str, Any],
    resume: bool,
) -> RunWriter:
    """Create the run folder (rank 0 only): config, creation time, skipped files; its writer."""
    folder.path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder.config)
    if resume and folder.meta.is_file():
        old = folder.read_meta()
        meta["created"] = old.get("created", meta["created"])
        # the views it was started with (runs from before views wrote `true`: the mirror alone)
        meta["tta"] = old.get("tta", meta["tta"])
    if data.skipped:
        lines = "".join(f"{p}\t{reason}\n" for p, reason in data.skipped)
        atomic_write_text(folder.path / "skipped.txt", lines)
    return RunWriter(folder, meta, objects)


def calibrate_run(
    folder: RunFolder, meta: dict[str, Any], val: Split, cfg: RunConfig, device: torch.device
) -> float:
    """Fit the temperature of the run's best weights on the validation split, into meta.json."""
    from imagewise.runtime.calibration import calibrate
    from imagewise.runtime.inference import predict_loader
    from imagewise.runtime.network import load_network

    network = load_network(folder, meta).to(device)
    pre = Preprocessing(**meta["preprocessing"])
    loader = make_loader(val, pre, 256, workers=cfg.data.workers)
    logits, labels = predict_loader(network, loader, pre, device, tta=meta["tta"])
    summary = calibrate(logits, labels)
    meta["temperature"], meta["calibration"] = summary["temperature"], summary
    folder.write_meta(meta)
    if summary.get("fitted_on"):
        log.info(
            "calibrated: temperature %.3f, validation ECE %.4f -> %.4f, NLL %.4f -> %.4f",
            summary["temperature"], summary["val_ece_before"], summary["val_ece_after"],
            summary["val_nll_before"], summary["val_nll_after"],
        )  # fmt: skip
    return float(summary["temperature"])


def _train_classical(
    cfg: RunConfig, folder: RunFolder, dataset: ImageData, pre: Preprocessing,
    model: torch.nn.Module, device: torch.device, world: int, resume: bool,
) -> TrainResult:  # fmt: skip
    """A classical model: one fit instead of the loop; the same run folder, minus last.ckpt."""
    if world > 1:
        cleanup()  # every rank refuses alike; leave the process group first
    refuse_classical(cfg.model.name, world, resume)
    meta = build_meta(cfg, dataset, pre, model)
    meta["processes"] = 1
    _start_run_folder(folder, cfg, meta, dataset, {}, resume=False)
    fit = fit_classical(
        model, dataset.train, dataset.val, pre, seed=cfg.train.seed, workers=cfg.data.workers
    )
    write_classical_run(folder, meta, model, fit)
    temperature = calibrate_run(folder, meta, dataset.val, cfg, device)
    return TrainResult(
        folder.path, cfg.model.name, epochs=1, best_epoch=1, best_val_accuracy=fit["val_accuracy"],
        train_seconds=fit["train_seconds"], stop_reason="classical fit", temperature=temperature,
    )  # fmt: skip


def _measured_cpu_precision(
    model: torch.nn.Module,
    pre: Preprocessing,
    batch_size: int,
    channels_last: bool,
    measure: bool = True,
) -> torch.dtype | None:
    """bf16 autocast if a timed step of this model is faster in it on this CPU, else float32.

    ``measure``: this is rank 0 and its CPU has native bf16 (else float32 without timing).
    Under torchrun every process takes rank 0's answer, so they agree, and every process
    calls the broadcast, so none waits on a collective another skipped. A failed timing
    means float32.
    """
    speedup = 0.0
    if measure:
        try:
            speedup = measure_bf16_speedup(
                model, batch_size, pre.channels, pre.img_size, channels_last
            )
        except RuntimeError as exc:  # an operator without a bf16 kernel, memory
            reason = str(exc).splitlines()[0]
            log.warning("precision auto: float32 (the bf16 timing failed: %s)", reason)
    speedup = broadcast_from_main(speedup)
    if speedup == 0.0:
        return None
    faster = speedup > 1.05  # a clear gain, not noise
    log.info(
        "precision auto: %s (a bf16 training step measured %.2fx %s than float32 on this CPU)",
        "bf16 autocast" if faster else "float32",
        speedup if speedup >= 1 else 1 / speedup,
        "faster" if speedup >= 1 else "slower",
    )
    return torch.bfloat16 if faster else None


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM; ``last.ckpt`` keeps the last finished epoch."""

    def __init__(self, folder: RunFolder, epoch: int, epochs: int) -> None:
        self.run, self.epochs = folder.path, epochs
        self.saved = int(load_checkpoint(folder.last)["epoch"]) if folder.last.is_file() else 0
        if self.saved:
            text = (
                f"stopped in epoch {epoch + 1} of {epochs}; {folder.last} keeps epoch "
                f"{self.saved}. Continue with: imagewise train --resume --out {folder.path}"
            )
        else:
            text = f"stopped in epoch 1 of {epochs}, before anything was saved to {folder.path}"
        super().__init__(text)


def _kept(folder: RunFolder) -> str:
    """What a run folder holds after a failure, in words: the last checkpoint's epoch."""
    if not folder.last.is_file():
        return "no epoch had finished, so the run folder holds no weights yet"
    epoch = int(load_checkpoint(folder.last)["epoch"])
    return (
        f"{folder.last} keeps epoch {epoch} whole; free some space, then continue with: "
        f"imagewise train --resume --out {folder.path}"
    )


def _drop_last(images: int, global_batch: int) -> bool:
    """Drop the last batch only when it is a small remainder (noisy steps, BatchNorm of 1)."""
    remainder = images % global_batch
    return images > global_batch and 0 < remainder < max(2, global_batch // 4)


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
        **options: flat settings over the file, e.g. ``model="resnet18", epochs=5, lr=1e-3``
            (see ``imagewise.config.OPTIONS``).

    Example:
        >>> import imagewise
        >>> result = imagewise.train("digits", "runs/digits", epochs=3)  # doctest: +SKIP
        >>> result.best_val_accuracy  # doctest: +SKIP
        0.97
    """
    cfg, folder = _resolve_config(
        data, Path(out) if out else None, config, config_file, recipe, options, resume
    )
    t = cfg.train
    # Joining the process group is a rendezvous: every rank has passed the checks above
    # before rank 0 writes anything.
    dist_info, device = init_distributed(resolve_device(t.device))
    rank, world = dist_info.rank, dist_info.world_size
    if not dist_info.is_main:
        show_progress = False
        log.setLevel(logging.WARNING)
    amp_dtype = resolve_precision(t.precision, device)
    compile_model = wants_compile(t.compile, device)  # checked before any data is read
    seed_everything(t.seed)

    raw = resolve_source(
        cfg.data.source, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed
    )
    if len(raw.classes) < 2:
        raise UserError(
            f"'{cfg.data.source}' holds one class ({', '.join(raw.classes) or 'none'}); a "
            "classifier needs at least two: one folder (or label) per class"
        )
    dataset, pre = prepare(raw, cfg.data)
    model = _build_model(cfg, dataset, pre, device)
    if getattr(model, "classical", False):  # fitted in one pass (hog_svm): no loop, no epochs
        return _train_classical(cfg, folder, dataset, pre, model, device, world, resume)
    if rank:  # dropout, RandAugment and MixUp draws differ per process
        seed_everything(t.seed + 7919 * rank)
    channels_last = t.channels_last and device.type in ("cpu", "cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        keep_freed_memory()
        if t.precision == "auto":
            amp_dtype = _measured_cpu_precision(
                model, pre, t.batch_size, channels_last, amp_dtype is not None and rank == 0
            )

    train_loader = make_loader(
        dataset.train, pre, t.batch_size, shuffle=True,
        drop_last=_drop_last(len(dataset.train), t.batch_size * world), seed=t.seed,
        workers=cfg.data.workers, rank=rank, world_size=world,
    )  # fmt: skip
    val_loader = make_loader(
        dataset.val, pre, max(256, t.batch_size), workers=cfg.data.workers, rank=rank,
        world_size=world,
    )  # fmt: skip
    optimizer = build_optimizer(model, t, world)
    scheduler = build_scheduler(optimizer, t, len(train_loader))
    # Each process draws its own augmentations.
    augment = BatchAugment(pre, cfg.data.augment, len(dataset.classes), seed=t.seed + 7919 * rank)
    ema = None
    if t.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=t.ema_decay)
    objects = {
        "model": model, "optimizer": optimizer, "scheduler": scheduler, "ema": ema,
        "augment": augment, "config": cfg,
    }  # fmt: skip
    state = TrainState(epochs=t.epochs)
    state.extra.update(model=model, ema=ema, preprocessing=pre, config=cfg)
    if resume:
        _restore(load_checkpoint(folder.last), objects, state)
        log.info("resuming %s at epoch %d of %d", folder.path, state.epoch, state.epochs)

    forward_model: torch.nn.Module = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device] if device.type == "cuda" else None
        forward_model = DistributedDataParallel(model, device_ids=ids)
    if compile_model:
        forward_model = CompiledWithFallback(forward_model)
    task = ClassificationTask(forward_model, t.loss, len(dataset.classes), t.label_smoothing)
    meta = build_meta(cfg, dataset, pre, model)
    meta["processes"] = world
    meta["precision"] = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    writers: list[object] = []
    if dist_info.is_main:
        writers.append(_start_run_folder(folder, cfg, meta, dataset, objects, resume))
    if t.tta and not meta["tta"] and dist_info.is_main:
        log.warning(
            "--tta: the augmentation (%s) has neither flips nor shifts, so there is no view the "
            "model learned to treat alike; it answers without test-time augmentation",
            cfg.data.augment.preset,
        )
    state.extra["tta"] = meta["tta"]  # the views it answers with (a resumed run keeps its own)
    log.info(
        "training %s on %s: %d train / %d val images, %d classes, %dx%dx%d, %d epoch%s, %s",
        cfg.model.name, cfg.data.source, len(dataset.train), len(dataset.val),
        len(dataset.classes), pre.channels, pre.img_size, pre.img_size, t.epochs,
        "" if t.epochs == 1 else "s",
        f"{world} processes on {device.type}" if world > 1 else device,
    )  # fmt: skip
    try:
        state = fit(
            task, train_loader, val_loader, optimizer, scheduler, augment, pre, device, state,
            amp_dtype=amp_dtype, channels_last=channels_last, ema=ema, grad_clip=t.grad_clip,
            patience=t.patience, hooks=[*writers, *hooks], show_progress=show_progress,
        )  # fmt: skip
        temperature = 1.0
        if dist_info.is_main and folder.weights.is_file():
            temperature = calibrate_run(folder, meta, dataset.val, cfg, device)
    except DiskFull as exc:
        raise DiskFull(exc.path, _kept(folder)) from exc
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM turned into it by the CLI
        raise TrainingInterrupted(folder, state.epoch, state.epochs) from exc
    finally:
        cleanup()
    return TrainResult(
        run=folder.path,
        model=cfg.model.name,
        epochs=state.epoch,
        best_epoch=state.best_epoch,
        best_val_accuracy=state.best_metric if state.metric == "val_accuracy" else float("nan"),
        train_seconds=state.train_seconds,
        stop_reason=state.stop_reason,
        temperature=temperature,
    )
