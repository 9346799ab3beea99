"""The model card: MODEL_CARD.md and model_card.html built from a run's evidence.

``card(run, ...)`` (``builder.py``) reads the run's files (``evidence.py``), adds the author's
fields (``fields.py``), builds the sections (``sections.py``, ``trust.py``) once and renders
them as Markdown with the Hugging Face header (``header.py``) and as a page (``render.py``).
The package is light: its contents load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.card.builder import ModelCard, card
    from imagewise.card.fields import CardFields


def __getattr__(name: str) -> Any:
    if name in ("card", "ModelCard"):
        from imagewise.card import builder

        return getattr(builder, name)
    if name == "CardFields":
        from imagewise.card import fields

        return fields.CardFields
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CardFields", "ModelCard", "card"]
