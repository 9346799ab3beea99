"""The run folder as training writes it: metadata (``RunMeta``), the writer hook that keeps
history, best weights and ``last.ckpt`` current after every epoch (the curves at most every
``CURVES_EVERY_S`` and at the end), and the calibration of the best weights when training ends.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from imagewise.config import RunConfig, save_config
from imagewise.data.pipeline import make_loader
from imagewise.data.sources import ImageData, Split
from imagewise.edge.spec import InputContract, ModelSpec
from imagewise.io import atomic_write_text
from imagewise.models.registry import model_capabilities
from imagewise.runtime.checkpoint import load_checkpoint, save_checkpoint, save_weights
from imagewise.runtime.meta import DataSummary, NetworkSpec, RunMeta
from imagewise.runtime.records import Calibration, TrainingSummary
from imagewise.runtime.runs import RunFolder
from imagewise.train.build import model_kwargs
from imagewise.train.distillation import teacher_record
from imagewise.train.events import ScalarEvents
from imagewise.train.loop import Components, TrainState

log = logging.getLogger("imagewise")

# curves.png is redrawn at most this often (and after the last epoch): drawing it took 1.2 s
# of a 1.8 s epoch for a small run on two busy cores, which a labelling loop pays every retrain.
CURVES_EVERY_S = 30.0


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
    config: RunConfig,
    data: ImageData,
    pre: InputContract,
    model: torch.nn.Module,
    processes: int = 1,
    precision: str | None = None,
) -> RunMeta:
    """The metadata that travels with the weights: enough to rebuild and use the model.

    ``precision``: what the loop trained in (``PRECISION_NAMES``); None for a one-pass fit."""
    from imagewise.models import count_parameters

    return RunMeta(
        spec=ModelSpec(
            classes=tuple(data.classes),
            input=pre,
            tta=tta_views_of(config, pre.img_size),
            capabilities=model_capabilities(config.model.name),
            model=config.model.name,
            task=data.task,
        ),
        model=NetworkSpec(
            name=config.model.name,
            kwargs=model_kwargs(config),
            num_classes=len(data.classes),
            parameters=count_parameters(model),
        ),
        data=DataSummary(
            source=data.source,
            kind=data.kind,
            train_images=len(data.train),
            val_images=len(data.val),
            test_images=len(data.test),
            skipped_images=len(data.skipped),
        ),
        versions=_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        processes=processes,
        precision=precision,
        teacher=teacher_record(config, data),  # None unless distilled
    )


# Training precision in meta.json, by autocast dtype (None: float32).
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def tta_views_of(config: RunConfig, img_size: int) -> dict[str, Any]:
    """The test-time views a run answers with: ``{}`` without ``tta``, else those its
    augmentation trained it for (``imagewise.runtime.tta.views_for_training``)."""
    from imagewise.data.transforms import resolve_augment
    from imagewise.runtime.tta import views_for_training

    if not config.train.tta:
        return {}
    parts = resolve_augment(config.data.augment)
    return views_for_training(bool(parts["hflip"]), float(parts["translate"]), img_size)


class RunWriter:
    """Hook that keeps the run folder current: history, curves, best weights, last checkpoint."""

    def __init__(
        self, folder: RunFolder, meta: RunMeta, parts: Components, config: RunConfig
    ) -> None:
        self.folder, self.meta, self.parts, self.config = folder, meta, parts, config
        self.writer: ScalarEvents | None = None
        self.drawn_at = -math.inf  # when curves.png was last drawn (time.monotonic)

    def on_train_start(self, state: TrainState) -> None:
        try:
            self.writer = ScalarEvents(self.folder.tensorboard)
        except ImportError:  # tensorboard is a dependency, but a broken install must not stop us
            log.warning("tensorboard is not installed; no TensorBoard logs")

    def on_epoch_end(self, state: TrainState) -> None:
        row = state.history[-1]
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key.replace("_", "/", 1), value, state.epoch)
            self.writer.flush()
        if state.improved:
            save_weights(self.parts.evaluated, self.folder.weights)
            self.meta.training = self._training_summary(state)
            self.folder.write_meta(self.meta)
        save_checkpoint(self._checkpoint(state), self.folder.last)
        self.folder.write_history(state.history)
        if time.monotonic() - self.drawn_at >= CURVES_EVERY_S or state.epoch >= state.epochs:
            self._draw(state)
        f1 = f" f1 {row['val_macro_f1']:.4f}" if state.select_by == "val_macro_f1" else ""
        f1 += f" mAP {row['val_map']:.4f}" if "val_map" in row else ""
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f%s  %.1fs%s",
            state.epoch,
            state.epochs,
            row["train_loss"],
            row["train_accuracy"],
            row["val_loss"],
            row["val_accuracy"],
            f1,
            row["epoch_seconds"],
            "  *best*" if state.improved else "",
        )

    def on_train_end(self, state: TrainState) -> None:
        self.meta.training = self._training_summary(state)
        self.folder.write_meta(self.meta)
        if state.history:
            self._draw(state)  # early stopping ends before the planned last epoch
        self.close()

    def _draw(self, state: TrainState) -> None:
        from imagewise.train.curves import plot_curves

        plot_curves(state.history, self.folder.curves)
        self.drawn_at = time.monotonic()

    def close(self) -> None:
        """Close the TensorBoard event file, also when training failed."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _training_summary(self, state: TrainState) -> TrainingSummary:
        return TrainingSummary(
            epochs_run=state.epoch,
            epochs_planned=state.epochs,
            best_epoch=state.best_epoch,
            best_val_accuracy=_best(state, "val_accuracy"),
            best_val_macro_f1=_best(state, "val_macro_f1"),
            best_val_map=_best(state, "val_map"),
            selected_by=state.metric,
            train_seconds=round(state.train_seconds, 3),
            stop_reason=state.stop_reason,
        )

    def _checkpoint(self, state: TrainState) -> dict[str, Any]:
        p = self.parts
        return {
            "epoch": state.epoch,
            "model": p.model.state_dict(),
            "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict(),
            "ema": p.ema.state_dict() if p.ema is not None else None,
            "history": state.history,
            "best_metric": state.best_metric,
            "best_epoch": state.best_epoch,
            "metric": state.metric,
            "stop_reason": state.stop_reason,
            "train_seconds": state.train_seconds,
            "torch_rng": torch.get_rng_state(),
            "augment_rng": p.augment.generator.get_state(),
            "config": self.config.to_dict(),
        }


def start_run_folder(
    folder: RunFolder,
    cfg: RunConfig,
    meta: RunMeta,
    data: ImageData,
    parts: Components | None,
    resume: bool,
) -> RunWriter | None:
    """Create the run folder (rank 0 only): config, creation time, skipped files; the writer
    hook of a run trained by the loop (``parts``; a one-pass fit has none)."""
    folder.path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder.config)
    if resume and folder.meta.is_file():
        old = folder.read_meta()
        meta.created = old.created or meta.created
        # the views it was started with (runs from before views wrote `true`: the mirror alone)
        meta.with_tta(old.tta)
        meta.choice = meta.choice or old.choice  # --model auto chose when the run started
        meta.pseudo_labels = meta.pseudo_labels or old.pseudo_labels  # train --unlabelled
    if data.skipped:
        lines = "".join(f"{p}\t{reason}\n" for p, reason in data.skipped)
        atomic_write_text(folder.path / "skipped.txt", lines)
    return RunWriter(folder, meta, parts, cfg) if parts is not None else None


def calibrate_run(
    folder: RunFolder, meta: RunMeta, val: Split, cfg: RunConfig, device: torch.device
) -> float:
    """Fit the temperature of the run's best weights on the validation split, into meta.json;
    for a multi-label run also each label's threshold (``fit_run_thresholds``)."""
    from imagewise.runtime.calibration import calibrate
    from imagewise.runtime.inference import predict_loader
    from imagewise.runtime.network import load_network

    network = load_network(folder, meta).to(device)
    pre = meta.spec.input
    loader = make_loader(val, pre, 256, workers=cfg.data.workers)
    logits, labels = predict_loader(network, loader, pre, device, tta=meta.tta)
    summary = calibrate(logits, labels)
    meta.with_temperature(summary["temperature"])
    meta.calibration = Calibration(**summary)
    if summary.get("fitted_on"):
        log.info(
            "calibrated: temperature %.3f, validation ECE %.4f -> %.4f, NLL %.4f -> %.4f",
            summary["temperature"], summary["val_ece_before"], summary["val_ece_after"],
            summary["val_nll_before"], summary["val_nll_after"],
        )  # fmt: skip
    if meta.spec.multilabel:
        fit_run_thresholds(meta, logits, labels, cfg.train.target_precision)
    folder.write_meta(meta)
    return float(summary["temperature"])


def fit_run_thresholds(
    meta: RunMeta, logits: torch.Tensor, labels: torch.Tensor, target_precision: float = 0.0
) -> None:
    """Each label's threshold on the calibrated validation probabilities, into the run's spec:
    its best F1, or with ``target_precision`` the most recall at that precision
    (``imagewise.edge.multilabel``). Without validation images every label keeps 0.5."""
    from dataclasses import replace

    from imagewise.edge.multilabel import DEFAULT_THRESHOLD, fit_thresholds, predicted_labels

    truth = labels.numpy() > 0.5
    if not len(truth):
        meta.spec = replace(meta.spec, thresholds=(DEFAULT_THRESHOLD,) * len(meta.classes))
        return
    probs = meta.spec.probabilities(logits.numpy())
    thresholds = fit_thresholds(probs, truth, target_precision or None)
    # unrounded: a threshold rounded up past the probability it was fitted on loses that image
    meta.spec = replace(meta.spec, thresholds=tuple(float(t) for t in thresholds))

    def micro_f1(chosen: object) -> float:
        pred = predicted_labels(probs, chosen) > 0
        tp = float((pred & truth).sum())
        return 2 * tp / max(float(pred.sum() + truth.sum()), 1.0)

    half = micro_f1(np.full(len(thresholds), DEFAULT_THRESHOLD))
    log.info(
        "label thresholds fitted on %d validation images (%s): micro F1 %.4f (%.4f at 0.5)",
        len(truth),
        f"precision {target_precision:g} per label" if target_precision else "best F1 per label",
        micro_f1(thresholds),
        half,
    )


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM; ``last.ckpt`` keeps the last finished epoch."""

    def __init__(self, folder: RunFolder, epoch: int, epochs: int) -> None:
        self.run, self.epochs = folder.path, epochs
        self.saved = saved_epoch(folder)
        if self.saved:
            text = (
                f"stopped in epoch {epoch + 1} of {epochs}; {folder.last} keeps epoch "
                f"{self.saved}. Continue with: imagewise train --resume --out {folder.path}"
            )
        else:
            text = f"stopped in epoch 1 of {epochs}, before anything was saved to {folder.path}"
        super().__init__(text)


def saved_epoch(folder: RunFolder) -> int:
    """The epoch ``last.ckpt`` holds whole (0: none finished yet)."""
    return int(load_checkpoint(folder.last)["epoch"]) if folder.last.is_file() else 0


def kept_in(folder: RunFolder) -> str:
    """What a run folder holds after a failure, in words: the last checkpoint's epoch."""
    if not (epoch := saved_epoch(folder)):
        return "no epoch had finished, so the run folder holds no weights yet"
    return (
        f"{folder.last} keeps epoch {epoch} whole; free some space, then continue with: "
        f"imagewise train --resume --out {folder.path}"
    )


def _best(state: TrainState, column: str) -> float | None:
    """``column`` of the best epoch's history row; None without validation."""
    if state.metric == "train_loss":
        return None
    row = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
    value = row.get(column)
    return None if value is None or value != value else float(value)
