"""Evaluation: metrics, confusion matrix and the worst errors of a trained run on held-out data."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagewise.errors import UserError
from imagewise.evaluate.scores import Metrics


@dataclass
class Evaluation:
    """The result of ``imagewise.evaluate``: metrics plus what error analysis needs."""

    metrics: Metrics
    classes: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    sources: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    logits: np.ndarray | None = field(default=None, repr=False)
    calibration: dict[str, Any] = field(default_factory=dict, repr=False)
    images: Any = field(default=None, repr=False)  # the evaluated Split, for galleries

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def ece(self) -> float:
        """Expected calibration error of the (temperature-scaled) probabilities."""
        assert self.metrics.calibration is not None
        return float(self.metrics.calibration.ece_after)

    @property
    def accuracy(self) -> float:
        return float(self.metrics.accuracy)

    @property
    def confusion_matrix(self) -> np.ndarray:
        return np.array(self.metrics.confusion_matrix)

    def summary(self) -> str:
        """The metrics' summary (``Metrics.summary``) and the files written."""
        lines = [self.metrics.summary(), f"wrote {', '.join(str(p) for p in self.files.values())}"]
        if "report" in self.files:
            lines.append(f"report: {self.files['report']}")
        return "\n".join(lines)

    def top_losses(self, n: int = 16) -> list[dict[str, Any]]:
        """The ``n`` images with the highest loss: source, true and predicted class, confidence."""
        p_true = self.probabilities[np.arange(len(self.labels)), self.labels]
        losses = -np.log(np.clip(p_true, 1e-12, 1))
        order = np.argsort(losses)[::-1][:n]
        pred = self.probabilities.argmax(1)
        return [
            {
                "index": int(i),
                "source": self.sources[i] if self.sources else str(i),
                "true": self.classes[self.labels[i]],
                "predicted": self.classes[pred[i]],
                "confidence": float(self.probabilities[i, pred[i]]),
                "loss": float(losses[i]),
            }
            for i in order
        ]


def _evaluation_split(run_dir: Path, data: str | None, split: str, classes: list[str]):
    """The images to evaluate on, with labels mapped onto the run's classes."""
    from imagewise.config import load_config_file
    from imagewise.data.sources import Split, resolve_source

    cfg = load_config_file(run_dir / "config.yaml")
    same = data is None or data == cfg.data.source
    if same:
        raw = resolve_source(
            cfg.data.source, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed
        )
        chosen = raw.split(split)
    else:
        raw = resolve_source(data, 0.0, 0.0)
        chosen = raw.test if len(raw.test) else raw.train
    if not len(chosen):
        raise UserError(f"the {split} split of '{data or cfg.data.source}' is empty")
    unknown = sorted(set(raw.classes) - set(classes))
    if unknown:
        raise UserError(
            f"'{data}' has classes the model was not trained on: {', '.join(unknown[:5])}"
        )
    mapping = np.array([classes.index(c) for c in raw.classes])
    raw_split = Split(mapping[chosen.labels], chosen.images, chosen.paths)
    return raw, raw_split, cfg


def evaluate(
    run: str | Path,
    data: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    device: str = "cpu",
    write: bool = True,
    report: bool = True,
    gallery: int = 24,
) -> Evaluation:
    """Measure a trained run on held-out images and write ``eval/`` in the run folder.

    Args:
        run: the run folder.
        data: another dataset to evaluate on (all its images, or its test split if it has one);
            default: the ``split`` of the training data, split exactly as in training.
        split: ``test`` (default), ``val`` or ``train`` when evaluating on the training data.
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda`` or ``auto``.
        write: write ``eval/metrics.json``, the confusion matrices (PNG, CSV) and the
            reliability diagram.
        report: also write the self-contained ``eval/report.html`` (needs ``write``).
        gallery: how many of the worst errors the report shows, with Grad-CAM overlays.

    Example:
        >>> ev = imagewise.evaluate("runs/digits")  # doctest: +SKIP
        >>> ev.accuracy, ev.top_losses(3)  # doctest: +SKIP
    """
    from imagewise.config import DataConfig
    from imagewise.data.pipeline import make_loader, materialize
    from imagewise.data.sources import ImageData
    from imagewise.evaluate.metrics import classification_metrics, most_confused
    from imagewise.predict.predictor import load_run
    from imagewise.runtime.calibration import calibration_report
    from imagewise.runtime.inference import predict_loader

    clf = load_run(run, device=device)
    run_dir = Path(run)
    raw, chosen, cfg = _evaluation_split(run_dir, data, split, clf.classes)
    pre = clf.preprocessing
    empty = chosen.subset(np.array([], dtype=np.int64))
    holder = ImageData(clf.classes, chosen, empty, empty, raw.source, raw.kind)
    holder = materialize(holder, DataConfig(cache="auto"), pre.img_size, pre.channels)
    chosen = holder.train
    loader = make_loader(chosen, pre, batch_size, workers=cfg.data.workers)
    logits, labels = predict_loader(clf.model, loader, pre, clf.device, tta=clf.tta)
    probs = torch.softmax(logits / clf.temperature, dim=1).numpy()
    y = labels.numpy()
    values = classification_metrics(y, probs, clf.classes)
    values["split"] = split if data is None else "all"
    values["data"] = data or cfg.data.source
    values["most_confused"] = most_confused(np.array(values["confusion_matrix"]), clf.classes)
    calibration = calibration_report(logits, labels, clf.temperature)
    values["calibration"] = {
        "temperature": clf.temperature,
        "ece_before": calibration["before"]["ece"],
        "ece_after": calibration["after"]["ece"],
        "nll_before": calibration["before"]["nll"],
        "nll_after": calibration["after"]["nll"],
        "bins": calibration["bins"],
    }
    metrics = Metrics.from_json(values, "the evaluation", "")
    result = Evaluation(
        metrics, clf.classes, y, probs, chosen.paths or [], logits=logits.numpy(),
        calibration=calibration, images=chosen,
    )  # fmt: skip
    if write:
        result.files = write_evaluation(run_dir / "eval", result)
        if report:
            from imagewise.evaluate.report import write_report

            result.files["report"] = write_report(run_dir, result, clf, gallery=gallery)
    return result


def write_evaluation(out: Path, result: Evaluation) -> dict[str, Path]:
    """metrics.json, confusion_matrix.csv, the confusion matrix PNGs (counts, normalized) and
    the reliability diagram."""
    from imagewise.evaluate.plots import plot_confusion, plot_reliability
    from imagewise.io import atomic_write_json, atomic_write_text

    files = {"metrics": atomic_write_json(out / "metrics.json", result.metrics.to_json())}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true \\ predicted", *result.classes])
    for name, row in zip(result.classes, result.confusion_matrix.tolist(), strict=True):
        writer.writerow([name, *row])
    files["confusion_csv"] = atomic_write_text(out / "confusion_matrix.csv", buf.getvalue())
    cm = result.confusion_matrix
    files["confusion_png"] = plot_confusion(cm, result.classes, out / "confusion_matrix.png")
    files["confusion_normalized_png"] = plot_confusion(
        cm, result.classes, out / "confusion_matrix_normalized.png", normalize=True
    )
    if result.calibration:
        files["reliability_png"] = plot_reliability(result.calibration, out / "reliability.png")
    return files


__all__ = ["Evaluation", "evaluate", "write_evaluation"]
