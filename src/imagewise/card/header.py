"""The Hugging Face model-card header: the YAML block between ``---`` lines at the top of
MODEL_CARD.md that the Hub reads (licence, library, tags, datasets and the ``model-index`` with
the measured test figures; https://huggingface.co/docs/hub/model-cards)."""

from __future__ import annotations

from typing import Any

from imagewise.card import multilabel
from imagewise.card.evidence import Evidence
from imagewise.card.fields import CardFields

# The licence identifiers the Hugging Face Hub accepts in a card's header: the table of
# https://huggingface.co/docs/hub/repositories-licenses (huggingface/hub-docs,
# docs/hub/repositories-licenses.md), "other" included.
HUB_LICENSES = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0",
    "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0",
    "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0",
    "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "agpl-3.0", "gfdl", "gpl", "gpl-2.0",
    "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0", "odc-by",
    "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib",
    "pddl", "lgpl-lr", "deepfloyd-if-license", "llama2", "gemma", "unknown", "other",
)  # fmt: skip

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
    if ev.multilabel:  # mAP and F1 rather than accuracy, which needs one label per image
        tags.append("multi-label-classification")
        metrics = multilabel.header_metrics(ev)
    else:
        metrics = [
            {"type": "accuracy", "value": m.accuracy, "name": "Accuracy"},
            {"type": "f1", "value": m.macro.f1, "name": "Macro F1", "args": {"average": "macro"}},
        ]
    result = {
        "task": {"type": "image-classification", "name": "Image Classification"},
        "dataset": {"name": m.data, "type": datasets[0] if datasets else m.data, "split": m.split},
        "metrics": metrics,
    }
    values: dict[str, Any] = {
        **({"license": fields.license} if fields.license else {}),
        "library_name": "imagewise",
        "pipeline_tag": "image-classification",
        "tags": tags,
        **({"datasets": datasets} if datasets else {}),
        "metrics": ["map", "f1"] if ev.multilabel else ["accuracy", "f1"],
        "model-index": [{"name": name, "results": [result]}],
    }
    return values


def license_warning(value: str | None) -> str | None:
    """The one-line warning for a licence the Hub does not accept (None when it does)."""
    if value is None or value in HUB_LICENSES:
        return None
    hint = (
        f"did you mean '{value.lower()}'?"
        if value.lower() in HUB_LICENSES
        else "use one of its ids (apache-2.0, mit, cc-by-4.0, ...) or 'other'"
    )
    return (
        f"licence '{value}' is not one the Hugging Face Hub accepts "
        f"(https://huggingface.co/docs/hub/repositories-licenses); {hint}"
    )


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
