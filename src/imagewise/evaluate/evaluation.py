"""Evaluation: metrics, confusion matrix and the worst errors of a trained run on held-out data."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagewise.errors import UserError
from imagewise.evaluate.result import Evaluation
from imagewise.evaluate.scores import Metrics
from imagewise.evaluate.slices import slice_column


def _evaluation_split(
    run_dir: Path, data: str | None, split: str, classes: list[str], multilabel: bool = False
):
    """The images to evaluate on, with labels mapped onto the run's classes by name (a
    multi-label run's: 0/1 rows over its classes; single-label data gives one label each)."""
    from imagewise.config import load_config_file
    from imagewise.data.extra import resolve_data
    from imagewise.data.sources import labels_for, resolve_source

    cfg = load_config_file(run_dir / "config.yaml")
    same = data is None or data == cfg.data.source
    if same:
        raw = resolve_data(cfg.data, run_dir)  # the source plus the run's --add-labels rows
        chosen = raw.split(split)
    else:
        raw = resolve_source(data, 0.0, 0.0, label_separator=cfg.data.label_separator)
        chosen = raw.test if len(raw.test) else raw.train
    if not len(chosen):
        raise UserError(f"the {split} split of '{data or cfg.data.source}' is empty")
    unknown = sorted(set(raw.classes) - set(classes))
    if unknown:
        raise UserError(
            f"'{data}' has classes the model was not trained on: {', '.join(unknown[:5])}"
        )
    labels = labels_for(chosen.labels, raw.classes, classes, multilabel, data or cfg.data.source)
    return raw, replace(chosen, labels=labels), cfg  # extra CSV columns kept


def evaluate(
    run: str | Path,
    data: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    device: str = "cpu",
    write: bool = True,
    report: bool = True,
    gallery: int = 24,
    coverage: float | None = None,
    coverage_per_class: bool = False,
    non_empty_sets: bool = False,
    robustness: bool = False,
    robustness_images: int = 2000,
    slice_by: str | None = None,
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
        coverage: also build each image's conformal prediction set at this coverage (the
            run's fit on its validation split, ``RUN/conformal.json``) and measure it: the
            empirical and per-class coverage and the mean set size (``metrics.conformal``,
            ``Evaluation.prediction_sets``).
        coverage_per_class: class-conditional thresholds for ``coverage``.
        non_empty_sets: keep the top class in every set (the coverage is then at least the
            top-1 accuracy; without it a set may be empty, which keeps the coverage exact).
        robustness: also score a stratified sample of the images under common corruptions
            at three severities (``eval/robustness.json``, a report section).
        robustness_images: how many images that sample holds (seeded; all when fewer).
        slice_by: a column of the CSV manifest (``site``, ``camera``, ...): metrics per value
            of it (``eval/slices.json``, a report section).

    Example:
        >>> ev = imagewise.evaluate("runs/digits")  # doctest: +SKIP
        >>> ev.accuracy, ev.top_losses(3)  # doctest: +SKIP
    """
    from imagewise.edge.conformal import check_coverage_request
    from imagewise.predict.predictor import load_run

    check_coverage_request(coverage, coverage_per_class, non_empty_sets)  # before the model
    if robustness and robustness_images < 1:
        raise UserError(f"--robustness-images must be 1 or more, not {robustness_images}")
    clf = load_run(run, device=device)
    run_dir = Path(run)
    multilabel = clf.spec.multilabel
    if multilabel:
        _refuse_for_multilabel(coverage, robustness, slice_by)
    raw, chosen, cfg = _evaluation_split(run_dir, data, split, clf.classes, multilabel)
    if multilabel:
        return _evaluate_multilabel(clf, run_dir, data, split, raw, chosen, cfg, batch_size,
                                    write, report, gallery)  # fmt: skip
    if slice_by is not None:  # a wrong column is refused before the model runs
        slice_column(chosen, slice_by, raw.source, raw.kind)
    sets = None if coverage is None else (coverage, coverage_per_class, non_empty_sets)
    result = _evaluate_single(clf, run_dir, data, split, raw, chosen, cfg, batch_size, sets)
    _measure_more(
        result, clf, run_dir, slice_by, robustness_images if robustness else 0, batch_size
    )
    return _written(result, clf, run_dir, write, report, gallery)


def _provenance(run_dir: Path, data: str | None, split: str, cfg: Any) -> dict[str, str]:
    """What metrics.json says it measured: the split, the data and the weights' sha256."""
    from imagewise.predict.unknown import weights_sha256

    return {
        "split": split if data is None else "all",
        "data": data or cfg.data.source,
        "weights_sha256": weights_sha256(run_dir),
    }


def _written(
    result: Evaluation, clf: Any, run_dir: Path, write: bool, report: bool, gallery: int
) -> Evaluation:
    """``result`` with its files written into ``RUN/eval`` (the report too) when asked."""
    if write:
        result.files = write_evaluation(run_dir / "eval", result)
        if report:
            from imagewise.evaluate.report import write_report

            result.files["report"] = write_report(run_dir, result, clf, gallery=gallery)
    return result


def _refuse_for_multilabel(coverage: float | None, robustness: bool, slice_by: str | None) -> None:
    """One line for each measure a multi-label run does not have (they score one class per
    image)."""
    if coverage is not None:
        raise UserError(
            "--coverage builds prediction sets of one class per image; a multi-label run "
            "already answers a set of labels (its thresholds)"
        )
    if robustness:
        raise UserError("--robustness scores single-label runs only, not a multi-label run")
    if slice_by is not None:
        raise UserError("--slice-by scores single-label runs only, not a multi-label run")


def _evaluate_single(
    clf: Any, run_dir: Path, data: str | None, split: str, raw: Any, chosen: Any, cfg: Any,
    batch_size: int, sets: tuple[float, bool, bool] | None,
) -> Evaluation:  # fmt: skip
    """``evaluate`` of a single-label run, before the extra measurements and the writing:
    softmax probabilities over the temperature, the metrics, and the conformal sets when
    ``sets`` (coverage, per class, non-empty) asks for them."""
    chosen, logits, labels = _logits(clf, raw, chosen, batch_size, cfg.data.workers)
    probs = torch.softmax(logits / clf.temperature, dim=1).numpy()
    y = labels.numpy()
    values, calibration = _metric_values(clf, logits, labels, probs)
    values.update(_provenance(run_dir, data, split, cfg))
    prediction_sets = None
    if sets is not None:
        prediction_sets, values["conformal"] = _sets(clf, run_dir, chosen, probs, y, sets)
    metrics = Metrics.from_json(values, "the evaluation", "")
    return Evaluation(
        metrics, clf.classes, y, probs, chosen.paths or [], logits=logits.numpy(),
        calibration=calibration, images=chosen, prediction_sets=prediction_sets,
    )  # fmt: skip


def _evaluate_multilabel(
    clf: Any, run_dir: Path, data: str | None, split: str, raw: Any, chosen: Any, cfg: Any,
    batch_size: int, write: bool, report: bool, gallery: int,
) -> Evaluation:  # fmt: skip
    """``evaluate`` of a multi-label run: probabilities are each label's sigmoid over the
    temperature, a label is predicted at its fitted threshold; metrics.json gets "multilabel"."""
    from imagewise.evaluate.multilabel import multilabel_metric_values

    chosen, logits, labels = _logits(clf, raw, chosen, batch_size, cfg.data.workers)
    thresholds = clf.spec.label_thresholds()
    y = labels.numpy().astype(np.uint8)
    values = multilabel_metric_values(
        logits.numpy(), y, clf.temperature, thresholds, list(clf.classes)
    )
    values.update(_provenance(run_dir, data, split, cfg))
    metrics = Metrics.from_json(values, "the evaluation", "")
    probs = clf.spec.probabilities(logits.numpy())
    result = Evaluation(
        metrics, list(clf.classes), y, probs, chosen.paths or [], logits=logits.numpy(),
        images=chosen, thresholds=thresholds,
    )  # fmt: skip
    return _written(result, clf, run_dir, write, report, gallery)


def _logits(
    clf: Any, raw: Any, chosen: Any, batch_size: int, workers: int
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The split decoded at the model's size (kept for galleries and robustness), and the
    network's logits and the labels over it, TTA included."""
    from imagewise.config import DataConfig
    from imagewise.data.pipeline import make_loader, materialize
    from imagewise.data.sources import ImageData
    from imagewise.runtime.inference import predict_loader

    pre = clf.preprocessing
    empty = chosen.subset(np.array([], dtype=np.int64))
    holder = ImageData(clf.classes, chosen, empty, empty, raw.source, raw.kind)
    holder.task = clf.spec.task
    holder = materialize(holder, DataConfig(cache="auto"), pre.img_size, pre.channels)
    loader = make_loader(holder.train, pre, batch_size, workers=workers)
    logits, labels = predict_loader(clf.model, loader, pre, clf.device, tta=clf.tta)
    return holder.train, logits, labels


def _metric_values(
    clf: Any, logits: torch.Tensor, labels: torch.Tensor, probs: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json's classification and calibration values, and the calibration report."""
    from imagewise.evaluate.metrics import classification_metrics, most_confused
    from imagewise.runtime.calibration import calibration_report

    values = classification_metrics(labels.numpy(), probs, clf.classes)
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
    return values, calibration


def _sets(
    clf: Any,
    run_dir: Path,
    chosen: Any,
    probs: np.ndarray,
    y: np.ndarray,
    asked: tuple[float, bool, bool],
) -> tuple[np.ndarray, dict[str, Any]]:
    """The images' conformal sets and metrics.json's "conformal" section, for (coverage, per
    class, non-empty) as asked."""
    from imagewise.evaluate.conformal import measure_sets

    sets, figures = measure_sets(clf, run_dir, chosen, probs, y, *asked)
    return sets, figures.to_json()


def _measure_more(
    result: Evaluation,
    clf: Any,
    run_dir: Path,
    slice_by: str | None,
    robust_images: int,
    batch_size: int,
) -> None:
    """Per-slice metrics (``slice_by``) and robustness (on ``robust_images`` > 0 images)."""
    where = {"data": result.metrics.data, "split": result.metrics.split}
    if slice_by is not None:
        from imagewise.evaluate.slices import slice_metrics

        values = result.images.columns[slice_by]  # checked by slice_column before the model ran
        sets = getattr(result, "prediction_sets", None)  # conformal sets, when asked for
        result.slices = slice_metrics(slice_by, values, result.labels, result.probabilities, sets)
        result.slices.where = where
        result.slices.weights_sha256 = result.metrics.weights_sha256 or ""
    if robust_images:
        from imagewise.evaluate.robustness import robustness

        result.robustness = robustness(
            clf, result.images, result.probabilities, robust_images, batch_size=batch_size
        )
        result.robustness.where = where
        result.robustness.weights_sha256 = result.metrics.weights_sha256 or ""


def write_evaluation(out: Path, result: Evaluation) -> dict[str, Path]:
    """metrics.json, confusion_matrix.csv, the confusion matrix PNGs (counts, normalized), the
    reliability diagram, and robustness.json / slices.json when they were measured; for a
    multi-label run metrics.json and the precision-recall curves (pr_curves.png)."""
    from imagewise.evaluate.plots import plot_confusion, plot_reliability
    from imagewise.io import atomic_write_json, atomic_write_text

    files = {"metrics": atomic_write_json(out / "metrics.json", result.metrics.to_json())}
    if result.thresholds is not None:
        from imagewise.evaluate.multilabel import plot_pr_curves

        files["pr_curves_png"] = plot_pr_curves(
            result.probabilities, result.labels, result.classes, out / "pr_curves.png",
            thresholds=result.thresholds,
        )  # fmt: skip
        return files
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
    if result.robustness is not None:
        from imagewise.evaluate.robustness import write_robustness

        files["robustness"] = write_robustness(out / "robustness.json", result.robustness)
    if result.slices is not None:
        from imagewise.evaluate.slices import write_slices

        files["slices"] = write_slices(out / "slices.json", result.slices)
    return files


__all__ = ["Evaluation", "evaluate", "write_evaluation"]
