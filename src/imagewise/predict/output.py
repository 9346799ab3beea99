"""Predictions as a table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from imagewise.errors import UserError
from imagewise.predict.base import Prediction

FORMATS = ("table", "csv", "json")


def format_predictions(predictions: Sequence[Prediction], fmt: str = "table") -> str:
    """Render predictions: ``table`` for people, ``csv`` and ``json`` for programs."""
    if fmt == "json":
        return json.dumps([p.to_dict() for p in predictions], indent=2, ensure_ascii=False)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["source", "rank", "class", "probability"])
        for p in predictions:
            for rank, (c, prob) in enumerate(zip(p.classes, p.probabilities, strict=True), 1):
                writer.writerow([p.source, rank, c, f"{prob:.6f}"])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise UserError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    width = max([len("image")] + [len(p.source) for p in predictions])
    lines = [f"{'image':<{width}}  top classes (probability)"]
    for p in predictions:
        tops = "  ".join(
            f"{c} ({prob:.1%})" for c, prob in zip(p.classes, p.probabilities, strict=True)
        )
        lines.append(f"{p.source:<{width}}  {tops}")
    return "\n".join(lines)
