"""The card of a multi-label run (several labels per image, a sigmoid and a threshold per
label): its task, the labels' thresholds, and the evaluation by mAP and F1 that
``imagewise evaluate`` writes under metrics.json's ``multilabel`` key. Read defensively: an
evaluation written before multi-label scoring existed has no such key, and the card says what to
run rather than failing."""

from __future__ import annotations

from typing import Any

from imagewise.card.content import Section, Table, count, num, pct
from imagewise.card.evidence import CONFIG, META, METRICS, Evidence

TASK = "multi-label: any number of labels per image (one sigmoid and one threshold per label)"
# What the single-label-only measurements say on a multi-label card instead of a command that
# would refuse the run.
SINGLE_ONLY = (
    "Not available for multi-label runs: imagewise evaluate measures it for one label per image."
)


def scores(ev: Evidence) -> dict[str, Any]:
    """metrics.json's ``multilabel`` section ({} when absent or not an object)."""
    section = ev.metrics_json.get("multilabel")
    return section if isinstance(section, dict) else {}


def _micro_f1(s: dict[str, Any]) -> Any:
    micro = s.get("micro")
    return micro.get("f1") if isinstance(micro, dict) else None


def _macro_f1(s: dict[str, Any]) -> Any:
    macro = s.get("macro")
    return macro.get("f1") if isinstance(macro, dict) else None


def _fmt(value: Any, style: Any = num) -> str:
    return "-" if not isinstance(value, int | float) else style(value)


def summary_cards(ev: Evidence) -> list[tuple[str, str]]:
    """The page's headline figures of a multi-label run: mAP and micro F1 first."""
    s, m = scores(ev), ev.metrics
    cards = [("mAP", _fmt(s.get("map"))), ("micro F1", _fmt(_micro_f1(s)))]
    if m.calibration is not None:
        cards.append(("ECE (mean per label)", num(m.calibration.ece_after)))
    cards.append((f"{m.split} images", f"{m.images:,}"))
    return cards


def header_metrics(ev: Evidence) -> list[dict[str, Any]]:
    """The model-index metrics of a multi-label run: mAP, micro and macro F1 as stored."""
    s = scores(ev)
    out = []
    if isinstance(s.get("map"), int | float):
        out.append({"type": "map", "value": s["map"], "name": "mAP"})
    for average, value in (("micro", _micro_f1(s)), ("macro", _macro_f1(s))):
        if isinstance(value, int | float):
            name = f"{average.capitalize()} F1"
            out.append({"type": "f1", "value": value, "name": name, "args": {"average": average}})
    return out


def thresholds_section(ev: Evidence) -> Section:
    """Each label's threshold from the run's spec (meta.json), and how it was fitted."""
    section = Section("thresholds", "Label thresholds", [META])
    thresholds = ev.meta.spec.thresholds
    if not thresholds:
        section.missing = "meta.json holds no thresholds: train the run again with imagewise."
        return section
    section.tables.append(
        Table(
            "threshold-table",
            ["label", "threshold"],
            [[name, f"{t:.4f}"] for name, t in zip(ev.meta.classes, thresholds, strict=True)],
        )
    )
    target = ev.config.train.target_precision if ev.config is not None else None
    if ev.config is not None:
        section.sources.append(CONFIG)
    how = (
        f"the lowest probability reaching precision {target:g}"
        if target
        else "the probability with the best F1 of that label"
    )
    section.notes.append(
        "An image carries every label whose probability reaches that label's threshold; each "
        f"was fitted on the validation split as {how}."
    )
    return section


def evaluation_section(ev: Evidence) -> Section:
    """The evaluation of a multi-label run: mAP, F1 (micro, macro, and at a flat 0.5), subset
    accuracy, Hamming loss and the per-label table."""
    m, s = ev.metrics, scores(ev)
    section = Section("evaluation", "Evaluation", [METRICS])
    section.facts = [("evaluated on", f"the {m.split} split of {m.data}: {count(m.images)} images")]
    if not s:
        section.missing = (
            f"{METRICS} has no multi-label scores (mAP, F1 per label): run imagewise evaluate "
            "RUN again."
        )
        return section
    half = s.get("f1_at_half") if isinstance(s.get("f1_at_half"), dict) else {}
    section.facts += [
        ("mAP", _fmt(s.get("map"))),
        ("micro F1", _fmt(_micro_f1(s))),
        ("macro F1", _fmt(_macro_f1(s))),
        ("F1 at threshold 0.5 (micro / macro)",
         f"{_fmt(half.get('micro'))} / {_fmt(half.get('macro'))}"),
        ("subset accuracy (every label right)", _fmt(s.get("subset_accuracy"), pct)),
        ("Hamming loss", _fmt(s.get("hamming_loss"))),
        ("images with no true label", _fmt(s.get("no_true_label"), count)),
        ("images given no label", _fmt(s.get("no_predicted_label"), count)),
    ]  # fmt: skip
    per_label = s.get("per_label") if isinstance(s.get("per_label"), dict) else {}
    rows = [
        [
            str(name),
            _fmt(r.get("threshold"), lambda v: f"{v:.4f}"),
            _fmt(r.get("precision")),
            _fmt(r.get("recall")),
            _fmt(r.get("f1")),
            _fmt(r.get("ap")),
            _fmt(r.get("support"), count),
        ]
        for name, r in per_label.items()
        if isinstance(r, dict)
    ]
    if rows:
        headers = ["label", "threshold", "precision", "recall", "F1", "AP", "images"]
        section.tables.append(Table("per-label", headers, rows))
    return section


def audit_facts(audit: dict[str, Any]) -> list[tuple[str, str]]:
    """The label-set facts of a multi-label data check (``imagewise data check``'s
    ``label_sets``), or none."""
    sets = audit.get("label_sets")
    if not isinstance(sets, dict):
        return []
    pairs = ", ".join(
        f"{' + '.join(p['labels'])} ({count(p['count'])})" for p in sets.get("top_pairs", [])[:5]
    )
    return [
        ("labels per image", f"{sets.get('labels_per_image', 0):g}"),
        ("images with no label", count(sets.get("no_label", 0))),
        ("labels most often together", pairs or "none"),
    ]
