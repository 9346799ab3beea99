"""``imagewise label auto RUN POOL --target-precision 0.98``: the model labels what it is sure of.

The threshold is ``predict --min-confidence auto``'s: the lowest top probability at which the
run's answers on its validation split reach the target precision
(``imagewise.predict.unknown.run_min_confidence``, kept in ``RUN/unknown.json``), raised where
the pool's own calibrated probabilities say the images kept would fall short: the mean top
probability of the images kept is their expected precision, so the threshold goes up until that
mean reaches the target too. A validation split the run answers perfectly fits a threshold of 0
(every answer may be kept); without the second check a pool image the model gives 38% would
then be labelled, and a pool unlike the validation images (another camera, another season)
would be labelled at the validation split's precision. The check needs calibrated probabilities:
a run whose temperature was not fitted (its validation split answered without a mistake, so
there was nothing to fit) keeps the fitted threshold, and the summary says so. Pool images at or
above the threshold are written to a manifest as machine labels (``labelled_by=machine`` with the
probability, ``imagewise.data.manifest``), which ``train --add-labels`` reads; the rest can be
written as a queue (least sure first) for ``label serve``. The user's files are only read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagewise.edge.unknown import ThresholdFit
from imagewise.errors import UserError

log = logging.getLogger("imagewise")

DEFAULT_TARGET = 0.98
AUTO_COLUMNS = ("path", "label", "labelled_by", "probability")


@dataclass
class AutoLabels:
    """What ``label auto`` labelled, what it left, and the threshold it used."""

    fit: ThresholdFit
    threshold: float  # the fitted one, or higher where the pool's probabilities ask for it
    calibrated: bool  # whether the run's temperature was fitted (the raise needs it)
    paths: list[str]  # every readable pool image
    labels: list[str]  # the model's top class for each
    probabilities: np.ndarray  # its calibrated top probability
    margins: np.ndarray  # top minus second probability
    skipped: list[str] = field(default_factory=list)
    out: Path | None = None
    rest: Path | None = None

    @property
    def kept(self) -> np.ndarray:
        """Which pool images the model labels (top probability at or above the threshold)."""
        return self.probabilities >= self.threshold

    @property
    def coverage(self) -> float:
        return float(self.kept.mean()) if len(self.paths) else 0.0

    def summary(self) -> str:
        """Lines: the threshold and where it came from, how many were labelled, per class."""
        kept = self.kept
        lines = [
            f"threshold fitted on validation: {self.fit.describe()}",
            *(
                [
                    f"raised to {self.threshold:.4g}: the pool images kept then have a mean "
                    f"calibrated probability of at least {self.fit.target_precision:g}"
                ]
                if self.threshold > self.fit.min_confidence
                else []
            ),
            *(
                []
                if self.calibrated
                else [
                    "the run's probabilities are not calibrated (no validation mistake to fit "
                    "a temperature on), so the pool's probabilities did not raise the threshold"
                ]
            ),
            f"labelled {int(kept.sum())} of {len(self.paths)} pool images ({self.coverage:.1%}) "
            f"as machine labels; {len(self.paths) - int(kept.sum())} left for people",
        ]
        names, counts = np.unique(np.array(self.labels, dtype=object)[kept], return_counts=True)
        if len(names):
            lines.append("  " + ", ".join(f"{n} {c}" for n, c in zip(names, counts, strict=True)))
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable file(s), e.g. {self.skipped[0]}")
        if self.out is not None:
            lines.append(f"machine labels: {self.out} (train --add-labels {self.out})")
        if self.rest is not None:
            lines.append(f"the rest, least sure first: {self.rest} (label serve --queue)")
        return "\n".join(lines)


def label_auto(
    run: str | Path,
    pool: str | Path,
    *,
    target_precision: float = DEFAULT_TARGET,
    out: str | Path | None = None,
    rest: str | Path | None = None,
    batch_size: int = 64,
) -> AutoLabels:
    """Label the pool images the run is sure enough about for ``target_precision``.

    Args:
        run: a single-label run folder with a validation split.
        pool: a folder of unlabelled images (searched recursively), or a glob.
        target_precision: the precision the machine labels should reach, fitted on the run's
            validation split.
        out: write the machine labels here (``path,label,labelled_by,probability``).
        rest: write the images left unlabelled here as a queue, least sure first.
        batch_size: images per forward pass.

    Raises:
        UserError: a multi-label run, an empty pool, or no threshold reaching the target.

    Example:
        >>> auto = imagewise.label_auto("runs/fm", "pool/", out="auto.csv")  # doctest: +SKIP
        >>> auto.coverage  # doctest: +SKIP
        0.71
    """
    from imagewise.edge.unknown import check_target_precision
    from imagewise.io import check_output_file
    from imagewise.label.queue import read_pool
    from imagewise.predict.predictor import load_run
    from imagewise.predict.unknown import run_min_confidence

    check_target_precision(target_precision)
    for path, flag in ((out, "--out"), (rest, "--rest")):
        if path is not None:
            check_output_file(path, flag)
    clf = load_run(run, device="cpu")
    if clf.spec.multilabel:
        raise UserError(f"'{run}' is a multi-label run; label auto labels single-label pools")
    fit = run_min_confidence(clf, run, target_precision)
    paths, images, skipped = read_pool(clf, pool)
    probs = np.concatenate(
        [
            clf.scores(images[i : i + batch_size].numpy())[1]
            for i in range(0, len(images), batch_size)
        ]
    )
    top2 = -np.sort(-probs, axis=1)[:, :2]
    calibration = clf.run_meta.calibration
    calibrated = calibration is not None and bool(calibration.fitted_on)
    threshold = (
        expected_precision_threshold(top2[:, 0], fit.min_confidence, fit.target_precision)
        if calibrated
        else fit.min_confidence
    )
    result = AutoLabels(
        fit=fit,
        threshold=threshold,
        calibrated=calibrated,
        paths=paths,
        labels=[clf.classes[i] for i in probs.argmax(axis=1)],
        probabilities=top2[:, 0],
        margins=top2[:, 0] - top2[:, 1],
        skipped=skipped,
    )
    if out is not None:
        result.out = _write_labels(result, Path(out))
    if rest is not None:
        result.rest = _write_rest(result, Path(rest))
    return result


def expected_precision_threshold(top: np.ndarray, fitted: float, target: float) -> float:
    """The lowest threshold, at or above ``fitted``, whose kept images (top probability at or
    above it) have a mean top probability of at least ``target``; above every probability
    (nothing kept) when none has.

    Example:
        >>> expected_precision_threshold(np.array([0.99, 0.97, 0.6, 0.4]), 0.0, 0.95)
        0.97
    """
    order = np.sort(np.asarray(top, dtype=np.float64))[::-1]
    # the kept images are a prefix of ``order``; its running mean only falls as it grows
    means = np.cumsum(order) / np.arange(1, len(order) + 1)
    fitted_keeps, sure_keeps = int((order >= fitted).sum()), int((means >= target).sum())
    if sure_keeps >= fitted_keeps:
        return fitted
    if not sure_keeps:
        return float(np.nextafter(order[0], np.inf))
    return float(order[sure_keeps - 1])


def _write_labels(auto: AutoLabels, out: Path) -> Path:
    # here, not at the top: the command line reads DEFAULT_TARGET without importing torch
    # (the data package does)
    from imagewise.data.manifest import MACHINE, manifest_path, write_manifest

    rows = [
        {
            "path": manifest_path(auto.paths[i], out),
            "label": auto.labels[i],
            "labelled_by": MACHINE,
            "probability": float(auto.probabilities[i]),
        }
        for i in np.flatnonzero(auto.kept)
    ]
    return write_manifest(out, rows, AUTO_COLUMNS)


def _write_rest(auto: AutoLabels, out: Path) -> Path:
    """The unlabelled images as a ``label next`` queue (its columns), smallest margin first."""
    import io

    from imagewise.io import atomic_write_text
    from imagewise.label.queue import COLUMNS
    from imagewise.names import CsvWriter

    left = np.flatnonzero(~auto.kept)
    order = left[np.argsort(auto.margins[left], kind="stable")]
    buf = io.StringIO()
    writer = CsvWriter(buf)
    writer.writerow(COLUMNS)
    for rank, i in enumerate(order, 1):
        reason = f"below the machine-label threshold {auto.threshold:.4g}"
        writer.writerow(
            [auto.paths[i], rank, reason, auto.labels[i], f"{auto.probabilities[i]:.6f}",
             f"{auto.margins[i]:.6f}", "", ""]
        )  # fmt: skip
    return atomic_write_text(out, buf.getvalue())
