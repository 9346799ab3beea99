"""The card's first sections: the model, the author's intended use, the data and its audit,
the evaluation and the calibration. Every figure is read from ``Evidence``; nothing is computed
but formatting."""

from __future__ import annotations

from typing import Any

from imagewise.card import multilabel
from imagewise.card.content import Section, Table, count, num, pct
from imagewise.card.evidence import CONFIG, META, METRICS, Evidence
from imagewise.card.fields import CardFields

AUTHOR = "given by the author"


def model_section(ev: Evidence, name: str) -> Section:
    meta, training = ev.meta, ev.meta.training
    pre = meta.preprocessing
    facts = [
        ("name", name),
        *([("task", multilabel.TASK)] if ev.multilabel else []),
        ("architecture", meta.model.name),
        ("parameters", count(meta.model.parameters)),
        ("input", f"{pre.channels} x {pre.img_size} x {pre.img_size} ({pre.interpolation})"),
        (
            "labels" if ev.multilabel else "classes",
            f"{len(meta.classes)}: {', '.join(meta.classes)}",
        ),
    ]
    if training.epochs_run is not None:
        facts.append(("epochs", f"{training.epochs_run} of {training.epochs_planned}"))
    if training.train_seconds is not None:
        facts.append(("training time", f"{training.train_seconds:.0f} s"))
    if meta.precision:
        facts.append(("training precision", meta.precision))
    if meta.transfer is not None and meta.transfer.weights is not None:
        facts.append(("starting weights", meta.transfer.weights.source))
    facts += [("created", meta.created), ("weights sha256", ev.weights_sha256)]
    versions = ", ".join(f"{k} {v}" for k, v in meta.versions.items())
    facts.append(("software", versions))
    return Section("model", "Model", [META, "model.safetensors"], facts)


def intended_use_section(fields: CardFields) -> Section:
    given = [
        (label, value)
        for label, value in (
            ("intended use", fields.intended_use),
            ("out of scope", fields.out_of_scope),
            ("limitations", fields.limitations),
            ("license", fields.license),
            ("authors", ", ".join(fields.authors)),
            ("citation", fields.citation),
        )
        if value
    ]
    section = Section("intended-use", "Intended use", [AUTHOR], given)
    if not given:
        section.missing = (
            "Not given: imagewise card RUN --intended-use TEXT --out-of-scope TEXT "
            "--limitations TEXT --license ID (or --card-yaml FILE)."
        )
    elif not fields.intended_use:
        section.notes.append("The intended use is not given (--intended-use TEXT).")
    return section


def data_section(ev: Evidence) -> Section:
    data, m = ev.meta.data, ev.metrics
    facts = [
        ("source", f"{data.source} ({data.kind})"),
        ("training images", count(data.train_images)),
        ("validation images", count(data.val_images)),
        ("test images", count(data.test_images)),
        ("unreadable images skipped", count(data.skipped_images)),
    ]
    sources = [META]
    if (cfg := ev.config) is not None:
        sources.append(CONFIG)
        facts += [
            (
                "split",
                f"validation fraction {cfg.data.val_fraction:g}, test fraction "
                f"{cfg.data.test_fraction:g}, seed {cfg.data.split_seed} (where the data gives "
                "no split of its own)",
            ),
            ("augmentation", cfg.data.augment.preset),
        ]
        if cfg.data.add_labels:  # train --add-labels / --unlabelled
            facts.append(("labels added", ", ".join(cfg.data.add_labels)))
    if ev.meta.pseudo_labels is not None:
        facts.append(("pseudo-labels", ev.meta.pseudo_labels.describe()))
    rows = [[name, count(c.support)] for name, c in m.per_class.items()]
    sources.append(METRICS)
    first = "label" if ev.multilabel else "class"
    table = Table("class-images", [first, f"{m.split} images"], rows)
    return Section("data", "Training data", sources, facts, [table])


def audit_section(ev: Evidence) -> Section:
    section = Section("audit", "Data audit", [ev.audit_file] if ev.audit_file else [])
    a = ev.audit
    if a is None:
        section.missing = (
            "Not run: imagewise data check DATA --json audit.json, then "
            "imagewise card RUN --audit audit.json."
        )
        return section
    splits = ", ".join(f"{s} {count(n)}" for s, n in a["splits"].items())
    source = f" of {a['source']}" if "source" in a else ""
    section.facts = [("images checked", f"{count(a['images'])} ({splits}){source}")]
    section.facts += [(kind.replace("_", " "), count(len(a[kind]))) for kind in _FINDINGS]
    section.facts += multilabel.audit_facts(a)
    section.tables.append(
        Table(
            "imbalance",
            ["split", "largest / smallest class", "empty classes"],
            [
                [c["split"], f"{c['imbalance_ratio']:g}", ", ".join(c["empty_classes"]) or "none"]
                for c in a["class_counts"]
            ],
        )
    )
    section.notes = [str(n) for n in a.get("notes", [])]
    return section


_FINDINGS = (
    "unreadable",
    "format_mismatch",
    "tiny",
    "size_outliers",
    "exact_duplicates",
    "near_duplicates",
    "label_issues",
)


def evaluation_section(ev: Evidence) -> Section:
    m = ev.metrics
    facts = [
        ("evaluated on", f"the {m.split} split of {m.data}: {count(m.images)} images"),
        ("accuracy", pct(m.accuracy)),
        *((f"top-{k} accuracy", pct(v)) for k, v in m.top_k_accuracy.items() if k != "1"),
        ("macro F1", num(m.macro.f1)),
        ("weighted F1", num(m.weighted.f1)),
        ("log loss", num(m.log_loss)),
    ]
    per_class = Table(
        "per-class",
        ["class", "precision", "recall", "F1", "images"],
        [
            [name, num(c.precision), num(c.recall), num(c.f1), count(c.support)]
            for name, c in m.per_class.items()
        ],
    )
    tables = [per_class]
    if m.most_confused:
        tables.append(
            Table(
                "confused",
                ["true class", "predicted as", "images"],
                [[p.true, p.predicted, count(p.count)] for p in m.most_confused[:5]],
            )
        )
    return Section("evaluation", "Evaluation", [METRICS], facts, tables)


def calibration_section(ev: Evidence) -> Section:
    cal = ev.metrics.calibration
    section = Section("calibration", "Calibration", [METRICS])
    if cal is None:
        section.missing = "Not in eval/metrics.json: run imagewise evaluate RUN again."
        return section
    section.facts = [
        ("temperature", f"{cal.temperature:.4g}"),
        ("confidence bins", str(cal.bins)),
    ]
    section.tables.append(
        Table(
            "calibration-table",
            ["", "ECE", "NLL"],
            [
                ["before temperature scaling", num(cal.ece_before), num(cal.nll_before)],
                ["after temperature scaling", num(cal.ece_after), num(cal.nll_after)],
            ],
        )
    )
    if (fit := ev.meta.calibration) is not None and fit.val_ece_after is not None:
        section.sources.append(META)
        section.notes.append(_fitted_on(fit))
    return section


def _fitted_on(fit: Any) -> str:
    images = f"{count(fit.val_images)} " if fit.val_images is not None else ""
    split = _SPLITS.get(fit.fitted_on, fit.fitted_on)
    return (
        f"The temperature was fitted on {images}{split} images, where "
        f"it took the ECE from {num(fit.val_ece_before)} to {num(fit.val_ece_after)}."
    )


_SPLITS = {"val": "validation", None: "validation"}
