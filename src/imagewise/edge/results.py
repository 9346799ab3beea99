"""What prediction answers, and how it is written: a table for people, CSV and JSON for programs.

Torch-free (edge layer): PyTorch classifiers and ONNX Runtime sessions answer with the same
``Prediction``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imagewise.errors import UserError
from imagewise.names import CsvWriter, json_dumps, shown

FORMATS = ("table", "csv", "json")
UNKNOWN = "unknown"  # the answer below --min-confidence
# A multi-label answer joins its labels with this (as a CSV manifest's labels column does); an
# image with no label answers the empty string (a manifest's empty cell), shown as NO_LABELS.
LABEL_SEPARATOR = "|"
NO_LABELS = "no labels"


@dataclass
class Prediction:
    """The top-k classes of one image, best first.

    Attributes:
        source: the file (or ``<image N>``, or ``clip.mp4#frame=120`` for a video frame).
        classes: the top-k class names, best first.
        probabilities: their calibrated probabilities.
        unknown: True when the top probability is below the confidence asked for (the answer is
            then ``unknown``); None when no threshold was asked for.
        ood_score: how unlike the training data the image is (higher: more unusual); None when
            not computed.
        prediction_set: with ``--coverage``: the classes that hold the true class with that
            probability (conformal, ``imagewise.edge.conformal``), best first; may be empty
            when the coverage asked is below what the top class alone reaches. None otherwise.
        set_probabilities: the calibrated probabilities of ``prediction_set``'s classes.
        labels: a multi-label model's answer: every class whose probability reaches its
            threshold (``imagewise.edge.multilabel.label_sets``), most probable first; empty
            for an image with no label. None for a single-label model. ``classes`` still
            lists the top-k classes by probability.
        label_probabilities: the probabilities of ``labels``.
    """

    source: str
    classes: list[str]
    probabilities: list[float]
    unknown: bool | None = None
    ood_score: float | None = None
    prediction_set: list[str] | None = None
    set_probabilities: list[float] | None = None
    labels: list[str] | None = None
    label_probabilities: list[float] | None = None

    @property
    def label(self) -> str:
        return self.classes[0]

    @property
    def confidence(self) -> float:
        return self.probabilities[0]

    @property
    def answer(self) -> str:
        """The label, or ``unknown`` when the model is not confident enough. A multi-label
        model's answer is its labels joined with ``|`` (``dog|cat``; ``""`` for no label)."""
        if self.unknown:
            return UNKNOWN
        if self.labels is not None:
            return LABEL_SEPARATOR.join(self.labels)
        return self.label

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.unknown is not None:
            out["answer"] = self.answer
        if self.labels is not None:
            out["labels"] = list(self.labels)
            out["label_probabilities"] = [round(p, 6) for p in self.label_probabilities or []]
        if self.ood_score is not None:
            out["ood_score"] = round(self.ood_score, 6)
        if self.prediction_set is not None:
            out["prediction_set"] = list(self.prediction_set)
            out["set_probabilities"] = [round(p, 6) for p in self.set_probabilities or []]
        out["top_k"] = [
            {"class": c, "probability": round(p, 6)}
            for c, p in zip(self.classes, self.probabilities, strict=True)
        ]
        return out


def csv_header(predictions: Sequence[Prediction]) -> list[str]:
    """The CSV columns: ``labels`` (multi-label models), ``answer``, ``ood_score`` and
    ``prediction_set`` only when the predictions carry them."""
    extra = []
    if any(p.labels is not None for p in predictions):
        extra.append("labels")
    if any(p.unknown is not None for p in predictions):
        extra.append("answer")
    if any(p.ood_score is not None for p in predictions):
        extra.append("ood_score")
    if any(p.prediction_set is not None for p in predictions):
        extra.append("prediction_set")
    return ["source", "rank", "class", "probability", *extra]


def csv_rows(predictions: Sequence[Prediction], header: Sequence[str]) -> list[list[str]]:
    """One row per (image, rank), in the columns of ``header``."""
    rows = []
    for p in predictions:
        for rank, (c, prob) in enumerate(zip(p.classes, p.probabilities, strict=True), 1):
            row = [p.source, str(rank), c, f"{prob:.6f}"]
            if "labels" in header:  # the image's labels, |-joined (empty: none), on each row
                row.append(LABEL_SEPARATOR.join(p.labels or []))
            if "answer" in header:
                row.append(p.answer)
            if "ood_score" in header:
                row.append("" if p.ood_score is None else f"{p.ood_score:.6f}")
            if "prediction_set" in header:  # the image's set, |-joined, on each of its rows
                row.append("|".join(p.prediction_set or []))
            rows.append(row)
    return rows


def format_predictions(predictions: Sequence[Prediction], fmt: str = "table") -> str:
    """Render predictions: ``table`` for people, ``csv`` and ``json`` for programs.

    CSV and JSON keep each source as its file's name reads back (``imagewise.names``; write the
    CSV text with ``errors="surrogateescape"``); the table shows names that are not UTF-8 or
    hold control characters escaped (``caf\\xe9.png``)."""
    if fmt == "json":
        return json_dumps([p.to_dict() for p in predictions])
    if fmt == "csv":
        buf = io.StringIO()
        writer = CsvWriter(buf)
        header = csv_header(predictions)
        writer.writerow(header)
        writer.writerows(csv_rows(predictions, header))
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise UserError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    names = [shown(p.source) for p in predictions]
    width = max([len("image")] + [len(name) for name in names])
    lines = [f"{'image':<{width}}  top classes (probability)"]
    for name, p in zip(names, predictions, strict=True):
        tops = "  ".join(
            f"{c} ({prob:.1%})" for c, prob in zip(p.classes, p.probabilities, strict=True)
        )
        answer = f"{UNKNOWN}   " if p.unknown else ""
        ood = f"   ood {p.ood_score:.3g}" if p.ood_score is not None else ""
        found = "" if p.prediction_set is None else f"   set {{{', '.join(p.prediction_set)}}}"
        lines.append(f"{name:<{width}}  {answer}{_label_set(p)}{tops}{ood}{found}")
    return "\n".join(lines)


def _label_set(p: Prediction) -> str:
    """A multi-label answer in the table: ``labels {dog, cat}   `` (or ``no labels``)."""
    if p.labels is None:
        return ""
    return f"labels {{{', '.join(p.labels)}}}   " if p.labels else f"{NO_LABELS}   "
