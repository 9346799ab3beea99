"""``imagewise card RUN``: the run's model card (MODEL_CARD.md and model_card.html), built
from the files the run holds and the fields its author gives."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagewise.card import multilabel
from imagewise.card.content import Section, num, pct
from imagewise.card.evidence import METRICS, Evidence, missing_evaluation, read_evidence
from imagewise.card.fields import KEPT, CardFields, keep_fields, kept_fields, read_card_yaml
from imagewise.card.header import header_values, license_warning, render_header
from imagewise.card.render import render_markdown, render_page
from imagewise.card.sections import (
    audit_section,
    calibration_section,
    data_section,
    evaluation_section,
    intended_use_section,
    model_section,
)
from imagewise.card.trust import (
    conformal_section,
    export_section,
    robustness_section,
    slices_section,
    unknown_section,
)
from imagewise.io import atomic_write_text
from imagewise.names import valid_text
from imagewise.runtime.runs import RunFolder

log = logging.getLogger("imagewise")

PAGE = "model_card.html"


@dataclass
class ModelCard:
    """What ``card`` wrote: the two files, the card's text, its sections and its header."""

    markdown_path: Path
    html_path: Path
    text: str
    sections: list[Section]
    header: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # where the author's fields came from

    @property
    def missing(self) -> list[Section]:
        """The sections without evidence (each says what to run)."""
        return [s for s in self.sections if s.missing]

    def summary(self) -> str:
        """What ``imagewise card`` prints: the files, then one line per missing section."""
        shown = len(self.sections) - len(self.missing)
        lines = [
            f"wrote {self.markdown_path} and {self.html_path} ({shown} of "
            f"{len(self.sections)} sections with evidence)"
        ]
        lines += [f"  {note}" for note in self.notes]
        lines += [f"  {s.title.lower()}: {s.missing}" for s in self.missing]
        return "\n".join(lines)


def card(
    run: str | Path,
    audit: str | Path | None = None,
    card_yaml: str | Path | None = None,
    evaluate: bool = False,
    device: str = "cpu",
    **fields: str | Sequence[str] | None,
) -> ModelCard:
    """Write ``RUN/MODEL_CARD.md`` and ``RUN/model_card.html`` from the run's evidence.

    Every figure is read from a file of the run (``meta.json``, ``config.yaml``,
    ``eval/metrics.json`` and, when they are there, ``eval/robustness.json``,
    ``eval/slices.json``, ``conformal.json``, ``unknown.json``, ``knn_reference.npz``,
    ``drift_reference.json``, ``export/parity.json``) or from the audit JSON given; each
    section names its files, and a section without evidence says what to run instead.
    ``imagewise export`` then carries the card in the exported file's metadata
    (``model_card``).

    Args:
        run: an evaluated run folder.
        audit: the JSON of ``imagewise data check DATA --json FILE`` for the training data.
        card_yaml: a YAML file of the author's fields (``CardFields``); keywords win over it.
            The fields given (here, in ``card_yaml`` or as keywords) are kept in
            ``RUN/model_card.yaml``, which later cards read as their defaults.
        evaluate: run ``imagewise.evaluate(run)`` first when ``eval/metrics.json`` is missing.
        device: the device for that evaluation.
        **fields: the author's fields: ``name``, ``intended_use``, ``out_of_scope``,
            ``limitations``, ``license``, ``citation``, ``authors``, ``tags``, ``datasets``.

    Raises:
        UserError: no run folder, no evaluation (without ``evaluate``), an unknown field, or a
            run file that is not what its writer writes.

    Example:
        >>> imagewise.card("runs/fm", intended_use="Sorting catalogue photos",
        ...                license="apache-2.0").markdown_path  # doctest: +SKIP
        PosixPath('runs/fm/MODEL_CARD.md')
    """
    folder = RunFolder.of(run)
    given = (read_card_yaml(card_yaml) if card_yaml else CardFields()).merged(
        **fields, audit=None if audit is None else str(audit)
    )
    kept = kept_fields(folder.path)
    chosen = given.over(kept or CardFields())
    flags = audit is not None or any(fields.values())
    notes = [_fields_note(folder.path, kept, card_yaml, flags)] if kept or given.given() else []
    if chosen.audit and not given.audit and not Path(chosen.audit).is_file():
        notes.append(
            f"audit: {chosen.audit} (kept from an earlier card) no longer exists; the data "
            "audit is left as not run"
        )
        chosen = replace(chosen, audit=None)
    if not (folder.path / METRICS).is_file() and folder.meta.is_file():
        if not evaluate:
            raise missing_evaluation(run)
        from imagewise.evaluate.evaluation import evaluate as run_evaluation

        log.info("evaluating %s first (no %s)", folder.path, METRICS)
        run_evaluation(folder.path, device=device)
    ev = read_evidence(folder.path, chosen.audit)
    result = write_card(ev, chosen)
    if given.given():
        keep_fields(folder.path, chosen)
    result.notes = notes
    return result


def _fields_note(
    run: Path, kept: CardFields | None, card_yaml: str | Path | None, flags: bool
) -> str:
    """Where the author's fields came from, for the summary."""
    kept_path = run / KEPT
    given = [f"--card-yaml {card_yaml}"] * bool(card_yaml) + ["flags"] * flags
    if not given:
        return f"author's fields: {kept_path} (kept from an earlier card)"
    source = " and ".join(given)
    over = f" over {kept_path} (kept from an earlier card)" if kept else ""
    return f"author's fields: {source}{over}; kept in {kept_path} for the next card"


def card_sections(ev: Evidence, fields: CardFields, name: str) -> list[Section]:
    """The card's sections in reading order (a multi-label run: its evaluation by mAP and F1,
    and its labels' thresholds after the calibration)."""
    if ev.multilabel:
        return [
            model_section(ev, name),
            intended_use_section(fields),
            data_section(ev),
            audit_section(ev),
            multilabel.evaluation_section(ev),
            calibration_section(ev),
            multilabel.thresholds_section(ev),
            conformal_section(ev),
            unknown_section(ev),
            robustness_section(ev),
            slices_section(ev),
            export_section(ev),
        ]
    return [
        model_section(ev, name),
        intended_use_section(fields),
        data_section(ev),
        audit_section(ev),
        evaluation_section(ev),
        calibration_section(ev),
        conformal_section(ev),
        unknown_section(ev),
        robustness_section(ev),
        slices_section(ev),
        export_section(ev),
    ]


def summary_cards(ev: Evidence) -> list[tuple[str, str]]:
    """The page's headline figures: accuracy first (a multi-label run: mAP and micro F1)."""
    if ev.multilabel:
        return multilabel.summary_cards(ev)
    m = ev.metrics
    cards = [("accuracy", pct(m.accuracy)), ("macro F1", num(m.macro.f1))]
    if m.calibration is not None:
        cards.append(("ECE", num(m.calibration.ece_after)))
    cards.append((f"{m.split} images", f"{m.images:,}"))
    if (c := ev.conformal_metrics) is not None:
        cards.append((f"coverage (target {pct(c['coverage_target'])})", pct(c["coverage"])))
    return cards


def write_card(ev: Evidence, fields: CardFields) -> ModelCard:
    """Render the card of ``ev`` and write both files atomically."""
    from imagewise.version import __version__

    name = fields.name or ev.run.name
    if (warning := license_warning(fields.license)) is not None:
        log.warning(warning)
    sections = card_sections(ev, fields, name)
    values = header_values(ev, fields, name)
    header = render_header(values)
    title = f"Model card: {name}"
    day = datetime.now(UTC).date().isoformat()
    intro = (
        f"Written by imagewise {__version__} on {day} from the files of the run '{ev.run.name}'. "
        "Every figure is read from the file its section names; a section without evidence "
        "says what to run to measure it."
    )
    text = valid_text(render_markdown(header, title, intro, sections))
    page = valid_text(render_page(header, title, intro, summary_cards(ev), sections))
    md_path = atomic_write_text(RunFolder.of(ev.run).model_card, text)
    html_path = atomic_write_text(ev.run / PAGE, page)
    return ModelCard(md_path, html_path, text, sections, values)
