"""``check(data)``: every audit over a dataset, as one ``AuditResult``.

Nothing here writes to the user's data: files are opened read-only, and the only files written
are the ones asked for (JSON, HTML, clean manifest), atomically.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagewise.audit import duplicates, embedded, labels
from imagewise.audit.findings import file_findings, label_sets, split_counts
from imagewise.audit.result import KINDS, AuditResult
from imagewise.audit.scan import SERIAL_BELOW, Scan, read_all, usable_cores
from imagewise.data.sources import SPLITS, ImageData, resolve_source
from imagewise.errors import UserError
from imagewise.io import atomic_write_json, check_output_file, refuse_overwriting

log = logging.getLogger("imagewise")


def _duplicate_entry(scan: Scan, members: list[int], **extra: Any) -> dict[str, Any]:
    names = [scan.label_text(i) for i in members]
    splits = [str(scan.splits[i]) for i in members]
    return {
        "paths": [scan.names[i] for i in members],
        "splits": splits,
        "labels": names,
        "cross_split": len(set(splits)) > 1,
        "conflicting_labels": len(set(names)) > 1,
        **extra,
    }


def _drop_copies(members: list[int], conflicting: bool) -> list[int]:
    """Which copies a clean manifest leaves out: all when the labels disagree (which one is
    right is unknown), else all but the first in split order (the training copy is kept, so
    a copy in val / test stops leaking)."""
    return list(members) if conflicting else sorted(members)[1:]


def _duplicates(
    scan: Scan, readable: np.ndarray, flagged: set[int], workers: int
) -> dict[str, list[Any]]:
    prints = scan.prints(readable)
    groups = duplicates.exact_groups(readable, prints)
    exact = []
    for members in groups:
        entry = _duplicate_entry(scan, sorted(members))
        flagged.update(_drop_copies(members, entry["conflicting_labels"]))
        exact.append(entry)
    # One image per exact group takes part in the near search, so a pair is reported once.
    copies = {i for members in groups for i in sorted(members)[1:]}
    keep = np.array([i not in copies for i in readable.tolist()], dtype=bool)
    near_index = readable[keep]
    near_prints = [p for p, k in zip(prints, keep, strict=True) if k]
    log.debug("near duplicates: comparing %d images", len(near_index))
    near = []
    for pair in duplicates.near_pairs(near_index, near_prints, groups, workers):
        entry = _duplicate_entry(scan, [pair.a, pair.b], hash_bits=pair.bits, psnr_db=pair.psnr)
        flagged.update(_drop_copies([pair.a, pair.b], entry["conflicting_labels"]))
        near.append(entry)
    return {"exact_duplicates": exact, "near_duplicates": near}


def _label_issues(
    scan: Scan, judge: _LabelJudge, readable: np.ndarray, flagged: set[int], notes: list[str]
) -> list[dict[str, Any]]:
    """The label check's findings (one class per image, or label sets), each image flagged."""
    issues, skipped = judge.find(scan, readable)
    if skipped:
        notes.append(f"label check skipped: {skipped}")
    notes.extend(judge.notes(len(readable)))
    describe = _multilabel_issue if scan.multilabel else _issue
    out = []
    for issue in issues:
        flagged.add(issue.index)
        where = {"path": scan.names[issue.index], "split": str(scan.splits[issue.index])}
        out.append({**where, **describe(scan, issue)})
    return out


@dataclass
class _LabelJudge:
    """What the label check judges with: HOG features (``features`` None) or a network's
    embeddings; ``info`` is what the findings say about it (``label_check`` in the JSON)."""

    dataset: ImageData
    features: embedded.EmbeddingFeatures | None
    seed: int
    show_progress: bool
    info: dict[str, Any] = field(default_factory=dict)

    def find(self, scan: Scan, index: np.ndarray) -> tuple[list[Any], str | None]:
        if self.features is None:
            self.info = {"features": "hog"}
            find = labels.find_multilabel_issues if scan.multilabel else labels.find_issues
            return find(index, scan.prints(index), scan.labels[index], self.seed)
        self.info = self.features.describe()
        if scan.multilabel:  # judged on the embeddings alone (embedded.find_issues)
            self.info["features"] = "embeddings"
        return embedded.find_issues(
            self.features, self.dataset, scan, index, self.seed, self.show_progress, self.info
        )

    def notes(self, judged: int) -> list[str]:
        """A run that trained on the images it judges may have learnt their wrong labels."""
        fitted = self.info.get("trained_on", 0)
        if not fitted:
            return []
        return [
            f"the run {self.info['name']} was trained on {fitted:,} of the {judged:,} images "
            f"judged: {embedded.MEMORISED}"
        ]


def _issue(scan: Scan, issue: Any) -> dict[str, Any]:
    return {
        "given": scan.classes[issue.given],
        "suggested": scan.classes[issue.suggested],
        "given_probability": issue.given_probability,
        "suggested_probability": issue.suggested_probability,
    }


def _multilabel_issue(scan: Scan, issue: Any) -> dict[str, Any]:
    return {
        "given": scan.separator.join(scan.classes[k] for k in issue.given),
        "suggested": scan.separator.join(scan.classes[k] for k in issue.suggested),
        "given_probability": issue.given_probability,
        "doubted": [
            {"label": scan.classes[k], "given": given, "probability": p}
            for k, given, p in issue.doubted
        ],
    }


def _refuse_overwriting_data(dataset: ImageData, outputs: dict[str, str | Path | None]) -> None:
    """An output that names the manifest or an image being checked is refused: the check never
    writes a user's data file, even when asked to."""
    existing = {flag: os.path.realpath(p) for flag, p in outputs.items() if p and Path(p).exists()}
    if not existing:
        return
    data_files = {os.path.realpath(dataset.source)}
    for split in SPLITS:
        data_files.update(os.path.realpath(p) for p in dataset.split(split).paths or [])
    for flag, path in existing.items():
        if path in data_files:
            raise UserError(
                f"{flag} '{outputs[flag]}' is part of the dataset being checked; "
                "name a new file (the check never writes over your data)"
            )


def check(
    data: str | ImageData,
    *,
    json_path: str | Path | None = None,
    html_path: str | Path | None = None,
    clean_manifest: str | Path | None = None,
    find_label_issues: bool = True,
    workers: int | None = None,
    show_progress: bool = True,
    seed: int = 0,
    task: str = "auto",
    label_separator: str = "|",
    features: str | None = None,
    device: str = "cpu",
) -> AuditResult:
    """Check a dataset before training: unreadable and odd files, class balance, exact and near
    duplicates within and across splits, likely label errors. Multi-label data also gets its
    label sets described (``result.label_sets``: counts, images with no label, co-occurrence).

    Args:
        data: a folder, CSV manifest, IDX folder or built-in name (as ``train`` takes), or an
            ``ImageData``. Splits are the ones the data gives; none is carved out.
        json_path: write the findings as JSON here.
        html_path: write a self-contained HTML page with thumbnails here.
        clean_manifest: write a CSV manifest without the flagged images here.
        find_label_issues: run the out-of-fold label check (the slowest part).
        workers: processes for reading and hashing (default: the usable CPU cores).
        show_progress: progress bars on stderr.
        seed: seed of the label check's folds.
        task: how a CSV manifest is read, as ``train`` reads it: ``auto``, ``single`` or
            ``multilabel``.
        label_separator: what separates a multi-label manifest's labels in one cell (the clean
            manifest writes its label sets with it too).
        features: judge the labels on a network's embeddings instead of HOG features: a run
            folder (its network) or a model name with pretrained weights
            (``tf_efficientnet_lite0``); see ``imagewise.audit.embedded``.
        device: where that network runs (``cpu``, ``cuda``, ``auto``).

    Example:
        >>> result = imagewise.check_data("photos/", json_path="audit.json")  # doctest: +SKIP
        >>> [d["paths"] for d in result["exact_duplicates"] if d["cross_split"]]  # doctest: +SKIP
    """
    outputs = {"--json": json_path, "--html": html_path, "--write-clean": clean_manifest}
    start = time.perf_counter()
    dataset = _open(data, outputs, task, label_separator)
    judge = _judge(dataset, features, device, find_label_issues, seed, show_progress)
    scan = read_all(dataset, workers, show_progress, with_features=find_label_issues)
    scan.separator = label_separator
    readable = scan.readable()
    flagged: set[int] = set()
    notes: list[str] = []
    findings: dict[str, list[Any]] = file_findings(scan, flagged)
    tiny = flagged - {i for i, f in enumerate(scan.infos) if f.error is not None}
    findings["class_counts"] = split_counts(scan)
    sets = label_sets(scan) if scan.multilabel else None
    pool = workers or (1 if len(scan) < SERIAL_BELOW else usable_cores())
    findings.update(_duplicates(scan, readable, flagged, pool))
    # Tiny images are already flagged, and their few pixels would only confuse the model.
    judged = readable[~np.isin(readable, sorted(tiny))]
    findings["label_issues"] = (
        _label_issues(scan, judge, judged, flagged, notes) if find_label_issues else []
    )
    if not find_label_issues:
        notes.append("label check not run")
    result = AuditResult(
        source=dataset.source,
        kind=dataset.kind,
        images=len(scan),
        splits=dict(Counter(str(s) for s in scan.splits)),
        findings={kind: findings[kind] for kind in KINDS},
        notes=notes,
        scan=scan,
        data=dataset,
        flagged=flagged,
        label_sets=sets,
        label_check=judge.info or None,
    )
    result.seconds = time.perf_counter() - start
    _write(result, json_path, html_path, clean_manifest)
    return result


def _judge(
    dataset: ImageData, features: str | None, device: str, run_check: bool, seed: int,
    show_progress: bool,
) -> _LabelJudge:  # fmt: skip
    """The label check's judge; a ``features`` value that names no network fails here, before
    any image is read."""
    if features is not None and not run_check:
        raise UserError(
            "--features chooses what the label check judges with; drop --no-label-check"
        )
    network = embedded.open_features(features, device) if features is not None else None
    return _LabelJudge(dataset, network, seed, show_progress)


def _open(
    data: str | ImageData, outputs: dict[str, str | Path | None], task: str, separator: str
) -> ImageData:
    """The dataset to check, after the output files are checked: writable, not a run's file,
    not one of the data's own files; ``--write-clean`` needs files to list."""
    for flag, target in outputs.items():
        if target is not None:
            check_output_file(target, flag)
            refuse_overwriting(target, [], flag)  # a run's files (the data's: below)
    if isinstance(data, ImageData):
        dataset = data
    else:
        dataset = resolve_source(
            data, val_fraction=0.0, test_fraction=0.0, task=task, label_separator=separator
        )
    _refuse_overwriting_data(dataset, outputs)
    if outputs["--write-clean"] is not None and any(dataset.split(s).in_memory for s in SPLITS):
        raise UserError(
            f"--write-clean needs a dataset of files; '{dataset.source}' is held in memory "
            "(its images have no paths to list)"
        )
    return dataset


def _write(
    result: AuditResult, json_path: str | Path | None, html_path: str | Path | None,
    clean_manifest: str | Path | None,
) -> None:  # fmt: skip
    """The findings as JSON, the HTML page and the clean manifest, each when asked for."""
    if json_path is not None:
        atomic_write_json(json_path, result.to_json())
    if html_path is not None:
        from imagewise.audit.report import write_html

        write_html(result, html_path)
    if clean_manifest is not None:
        result.write_clean(clean_manifest)
