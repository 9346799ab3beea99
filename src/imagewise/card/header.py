"""The Hugging Face model-card header: the YAML block between ``---`` lines at the top of
MODEL_CARD.md that the Hub reads (licence, library, tags, datasets and the ``model-index`` with
the measured test figures; https://huggingface.co/docs/hub/model-cards)."""

from __future__ import annotations

from typing import Any

from imagewise.card.evidence import Evidence
from imagewise.card.fields import CardFields

# Hugging Face dataset ids of the built-in datasets that have one on the Hub.
HUB_DATASETS = {"fashion-mnist": "zalando-datasets/fashion_mnist"}


def header_values(ev: Evidence, fields: CardFields, name: str) -> dict[str, Any]:
    """The header's keys; the metric values are metrics.json's numbers as stored."""
    m = ev.metrics
    datasets = list(fields.datasets) or (
        [HUB_DATASETS[ev.meta.data.source]] if ev.meta.data.source in HUB_DATASETS else []
    )
    tags = list(
        dict.fromkeys(["imagewise", "image-classification", ev.meta.model.name, *fields.tags])
    )
    result = {
        "task": {"type": "image-classification", "name": "Image Classification"},
        "dataset": {"name": m.data, "type": datasets[0] if datasets else m.data, "split": m.split},
        "metrics": [
            {"type": "accuracy", "value": m.accuracy, "name": "Accuracy"},
            {"type": "f1", "value": m.macro.f1, "name": "Macro F1", "args": {"average": "macro"}},
        ],
    }
    values: dict[str, Any] = {
        **({"license": fields.license} if fields.license else {}),
        "library_name": "imagewise",
        "pipeline_tag": "image-classification",
        "tags": tags,
        **({"datasets": datasets} if datasets else {}),
        "metrics": ["accuracy", "f1"],
        "model-index": [{"name": name, "results": [result]}],
    }
    return values


def render_header(values: dict[str, Any]) -> str:
    """The YAML text (without the ``---`` lines).

    ``huggingface_hub.ModelCardData`` renders it when installed (timm depends on it, so the full
    install has it): it checks the ``model-index`` as the Hub parses it. Without it, the same
    keys are written with ``yaml.safe_dump``.
    """
    try:
        from huggingface_hub import ModelCardData
    except ImportError:
        import yaml

        return yaml.safe_dump(values, sort_keys=False, allow_unicode=True).strip()
    return str(ModelCardData(**values).to_yaml()).strip()
