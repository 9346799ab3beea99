"""The card's sections on how far to trust an answer: the coverage of the conformal prediction
sets, the "unknown" threshold, the out-of-distribution and drift references, robustness to
corruptions, slices, and the exported files' agreement with PyTorch. Each is shown only when its
file is in the run (and, for fitted files, fitted with the current weights); otherwise one line
says what to run."""

from __future__ import annotations

from typing import Any

from imagewise.card.content import Section, Table, count, num, pct
from imagewise.card.evidence import (
    CONFORMAL,
    DRIFT,
    KNN,
    METRICS,
    OTHER_IMAGES,
    PARITY,
    ROBUSTNESS,
    SLICES,
    UNKNOWN,
    Evidence,
)
from imagewise.card.multilabel import SINGLE_ONLY

NOT_RUN = "not run here"


def _stale(ev: Evidence, name: str) -> list[str]:
    """The note on a file left out, saying why (``Evidence.stale``)."""
    if name not in ev.stale:
        return []
    if ev.stale[name] == OTHER_IMAGES:
        return [
            f"{name} was measured on other images than {METRICS} (other data or another "
            "split); it is left out."
        ]
    return [f"{name} was made with other weights than the run's current ones; it is left out."]


def conformal_section(ev: Evidence) -> Section:
    section = Section("conformal", "Prediction sets (conformal coverage)")
    section.notes = _stale(ev, CONFORMAL)
    c = ev.conformal_metrics
    if c is None:
        section.missing = (
            SINGLE_ONLY
            if ev.multilabel
            else (
                "Not measured: imagewise evaluate RUN --coverage 0.9 (split conformal sets whose "
                "coverage is then measured on the test split)."
            )
        )
        return section
    section.sources = [METRICS, *([CONFORMAL] if ev.conformal is not None else [])]
    section.facts = [
        ("target coverage", pct(c["coverage_target"])),
        ("measured coverage", pct(c["coverage"])),
        ("mean set size", num(c["mean_set_size"], 3)),
        ("score", str(c["score"])),
        ("class-conditional", "yes" if c.get("per_class") else "no"),
        ("calibration images", count(c["calibration_images"])),
        ("evaluated on", f"the {ev.metrics.split} split: {count(ev.metrics.images)} images"),
    ]
    if c.get("empty_sets") is not None:
        section.facts.append(("empty sets", pct(c["empty_sets"])))
    section.notes.append(
        f"The thresholds were fitted on {count(c['calibration_images'])} images of the "
        "validation split, the split that also chose the epoch and the temperature."
    )
    if ev.metrics.split == "val":
        section.notes.append(
            "The coverage was measured on the calibration images themselves, so it is not a "
            "test of the guarantee; evaluate on the test split for one."
        )
    per_class = c.get("per_class_coverage") or {}
    if per_class:
        rows = [[name, pct(v)] for name, v in per_class.items()]
        section.tables.append(Table("class-coverage", ["class", "coverage"], rows))
        worst = min(per_class, key=per_class.__getitem__)
        section.notes.append(f"Smallest class coverage: {worst}, {pct(per_class[worst])}.")
    return section


def unknown_section(ev: Evidence) -> Section:
    section = Section("unknown", "Unknown answers and out-of-distribution inputs")
    section.notes = _stale(ev, UNKNOWN) + _stale(ev, KNN) + _stale(ev, DRIFT)
    if (u := ev.unknown) is not None:
        section.sources.append(UNKNOWN)
        section.facts += [
            ("min confidence (auto)", num(u["min_confidence"])),
            ("target precision", pct(u["target_precision"])),
            ("precision of the answers kept", pct(u["precision"])),
            ("answers kept (coverage)", pct(u["coverage"])),
            ("fitted on", f"{count(u['validation_images'])} validation images"),
        ]
    else:
        section.notes.append(
            "No fitted unknown threshold: imagewise predict RUN IMAGES --min-confidence auto "
            "fits one on the validation split."
        )
    if (k := ev.knn) is not None:
        section.sources.append(KNN)
        section.facts.append(
            (
                "kNN OOD reference",
                f"{count(len(k.embeddings))} embeddings of {count(k.images)} training images, "
                f"distance to the {k.k}th nearest",
            )
        )
    else:
        section.notes.append(
            "No kNN out-of-distribution reference: imagewise predict RUN IMAGES --ood knn "
            "makes one."
        )
    _drift_facts(ev, section)
    if ev.unknown is None and ev.knn is None and ev.drift is None:
        section.missing = " ".join(section.notes)
        section.notes = []
    return section


def _drift_facts(ev: Evidence, section: Section) -> None:
    """What ``imagewise serve``'s drift alarms compare the latest answers with."""
    if (d := ev.drift) is None:
        section.notes.append(
            "No drift reference: imagewise serve RUN fits one on the validation split at first "
            f"start ({DRIFT})."
        )
        return
    section.sources.append(DRIFT)
    section.facts += [
        (
            "energy OOD threshold",
            f"{num(d.ood_threshold)} (the validation split's 95th percentile: "
            f"{count(d.ood_above)} of {count(d.images)} images above it)",
        ),
        (
            "validation mean top probability",
            f"{num(d.mean_confidence)} (std {num(d.confidence_std)})",
        ),
        ("drift reference fitted on", f"{count(d.images)} validation images"),
    ]
    section.notes.append(
        "imagewise serve raises a drift alarm when its latest answers move away from these "
        "(the share above the OOD threshold, the mean top probability, the predicted classes; "
        "GET /v1/drift)."
    )


def robustness_section(ev: Evidence) -> Section:
    section = Section("robustness", "Robustness to corruptions")
    section.notes = _stale(ev, ROBUSTNESS)
    r = ev.robustness
    if r is None:
        section.missing = (
            SINGLE_ONLY
            if ev.multilabel
            else (
                "Not measured: imagewise evaluate RUN --robustness (noise, blur, JPEG, brightness, "
                "contrast, pixelation at three severities)."
            )
        )
        return section
    section.sources = [ROBUSTNESS]
    clean = r["clean"]
    rows = [["clean", "-", pct(clean["accuracy"]), num(clean["ece"]), _worst_class(clean)]]
    rows += [
        [c["name"], str(c["severity"]), pct(c["accuracy"]), num(c["ece"]), _worst_class(c)]
        for c in r["corruptions"]
    ]
    headers = ["corruption", "severity", "accuracy", "ECE", "worst class"]
    section.tables.append(Table("corruptions", headers, rows))
    return section


def _worst_class(entry: dict[str, Any]) -> str:
    per_class = entry.get("per_class_accuracy") or {}
    if not per_class:
        return "-"
    worst = min(per_class, key=per_class.__getitem__)
    return f"{worst} ({pct(per_class[worst])})"


def slices_section(ev: Evidence) -> Section:
    section = Section("slices", "Slices")
    section.notes = _stale(ev, SLICES)
    s = ev.slices
    if s is None:
        section.missing = SINGLE_ONLY if ev.multilabel else _no_slices(ev)
        return section
    section.sources = [SLICES]
    section.facts = [("sliced by", str(s["column"]))]
    rows = [
        [
            str(x["value"]),
            count(x["images"]),
            pct(x["accuracy"]),
            num(x["ece"]),
            "-" if x.get("coverage") is None else pct(x["coverage"]),
        ]
        for x in s["slices"]
    ]
    headers = [str(s["column"]), "images", "accuracy", "ECE", "set coverage"]
    section.tables.append(Table("slice-table", headers, rows))
    section.notes.append("Worst slice first.")
    return section


def _no_slices(ev: Evidence) -> str:
    if ev.meta.data.kind == "csv":
        return (
            "Not measured: imagewise evaluate RUN DATA.csv --slice-by COLUMN (an extra column "
            "of a CSV manifest: site, camera, device)."
        )
    return (
        f"Not measured: slices need a CSV manifest with extra columns (site, camera, ...), and "
        f"this run's data is a {ev.meta.data.kind} dataset; list its images in one "
        "(path,label,site) and run imagewise evaluate RUN DATA.csv --slice-by site."
    )


def export_section(ev: Evidence) -> Section:
    section = Section("export", "Exported files")
    if ev.parity_other_weights:
        section.notes.append(
            f"Left out: {', '.join(ev.parity_other_weights)}, exported from other weights than "
            "the run's current ones; imagewise export RUN checks a file of these."
        )
    if ev.parity_unrecorded:
        section.notes.append(
            f"{PARITY} does not record which weights {', '.join(ev.parity_unrecorded)} "
            "came from (an older imagewise wrote it); they may be other weights than these."
        )
    p = ev.parity
    if p is None or not p.get("files"):
        which = " of these weights" if ev.parity_other_weights else ""
        section.missing = (
            f"No export{which} checked yet: imagewise export RUN (each file is checked against "
            "PyTorch)."
        )
        return section
    section.sources = [PARITY]
    headers = [
        "file",
        "format",
        "precision",
        "checked on",
        "top-1 agreement",
        "largest probability difference",
        "accuracy",
        "PyTorch accuracy",
        "passed",
    ]
    rows = [_parity_row(name, record) for name, record in p["files"].items()]
    section.tables.append(Table("parity", headers, rows))
    return section


def _parity_row(name: str, r: dict[str, Any]) -> list[str]:
    head = [name, str(r.get("format", "")), str(r.get("precision", ""))]
    passed = "yes" if r.get("passed") else f"no: {r.get('failure')}"
    if not r.get("images"):  # a format whose runtime does not run here (Core ML on Linux)
        return [*head, NOT_RUN, "-", "-", "-", "-", passed]
    return [
        *head,
        f"{count(r['images'])} {r['split']} images ({r['runtime']})",
        pct(r["top1_agreement"]),
        f"{float(r['max_abs_probability_difference']):.2g}",
        pct(r["accuracy_exported"]),
        pct(r["accuracy_pytorch"]),
        passed,
    ]
