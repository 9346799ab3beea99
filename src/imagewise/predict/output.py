"""Predictions as a table, CSV or JSON (the torch-free ``imagewise.edge.results``)."""

from __future__ import annotations

from imagewise.edge.results import FORMATS, format_predictions

__all__ = ["FORMATS", "format_predictions"]
