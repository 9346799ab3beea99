"""``AuditResult``: what ``check(data)`` found, its JSON, its console summary and the clean
manifest it writes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagewise.audit.findings import OUTLIER_FACTOR, TINY
from imagewise.audit.scan import Scan
from imagewise.data.sources import ImageData
from imagewise.errors import UserError
from imagewise.io import atomic_write

KINDS = (
    "unreadable",
    "format_mismatch",
    "tiny",
    "size_outliers",
    "modes",
    "class_counts",
    "exact_duplicates",
    "near_duplicates",
    "label_issues",
)


@dataclass
class AuditResult:
    """What ``check`` found: one list per kind of finding (see ``KINDS``), each entry naming its
    files by path (or ``SOURCE:SPLIT/INDEX`` for built-in and IDX images)."""

    source: str
    kind: str
    images: int
    splits: dict[str, int]
    findings: dict[str, list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    scan: Scan | None = field(default=None, repr=False)
    data: ImageData | None = field(default=None, repr=False)
    flagged: set[int] = field(
        default_factory=set, repr=False
    )  # scan indices left out of a clean manifest
    label_sets: dict[str, Any] | None = None  # multi-label data: findings.label_sets
    # what the label check judged with: {"features": "hog"}, or a network's embeddings
    # (imagewise.audit.embedded: source, name, model, ...); None when it did not run
    label_check: dict[str, Any] | None = None

    def __getitem__(self, kind: str) -> list[dict[str, Any]]:
        return self.findings[kind]

    def to_json(self) -> dict[str, Any]:
        """The JSON report: the dataset, counts, notes and the lists of findings."""
        return {
            "source": self.source,
            "kind": self.kind,
            "images": self.images,
            "splits": self.splits,
            "seconds": round(self.seconds, 1),
            "notes": self.notes,
            **({"label_check": self.label_check} if self.label_check else {}),
            **self.findings,
            **({"task": "multilabel", "label_sets": self.label_sets} if self.label_sets else {}),
        }

    def summary(self) -> str:
        """A few lines for the console: the count of each kind of finding."""
        return "\n".join(summary_lines(self))

    def write_clean(self, path: str | Path) -> int:
        """Write a CSV manifest (``path,label[,split]``, or ``path,labels[,split]`` with ``a|b``
        for multi-label data) of the images nothing flagged; returns the number of rows.
        ``imagewise train`` reads it."""
        import io

        from imagewise.names import TEXT_ERRORS, CsvWriter

        if self.scan is None or self.scan.in_memory:
            raise UserError(
                f"--write-clean needs a dataset of files; '{self.source}' is held in memory "
                "(its images have no paths to list)"
            )
        scan = self.scan
        with_split = any(s != "train" for s in scan.splits)
        buffer = io.StringIO()
        writer = CsvWriter(buffer)  # a name's "\r" quoted, not a line end
        column = "labels" if scan.multilabel else "label"  # labels: a|b, read as multi-label
        writer.writerow(["path", column, "split"] if with_split else ["path", column])
        rows = 0
        for i, name in enumerate(scan.names):
            if i in self.flagged:
                continue
            row = [str(Path(name).resolve()), scan.label_text(i)]
            writer.writerow([*row, scan.splits[i]] if with_split else row)
            rows += 1
        text = buffer.getvalue()  # names that are not UTF-8 keep their bytes: they read back
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, "utf-8", TEXT_ERRORS, ""))
        return rows


def _pairs_line(entries: list[dict[str, Any]], unit: str) -> str:
    cross = sum(e["cross_split"] for e in entries)
    conflict = sum(e["conflicting_labels"] for e in entries)
    return (
        f"{len(entries):,} {unit} ({cross:,} across splits, {conflict:,} with conflicting labels)"
    )


def summary_lines(result: AuditResult) -> list[str]:
    """The console summary: one line per kind of finding, with counts."""
    f = result.findings
    splits = ", ".join(f"{s} {n:,}" for s, n in result.splits.items())
    reasons = Counter(e["reason"] for e in f["unreadable"])
    why = "; ".join(f"{r}: {n}" for r, n in reasons.most_common())
    balance = ", ".join(f"{c['split']} {c['imbalance_ratio']:g}x" for c in f["class_counts"])
    modes = ", ".join(f"{m['mode']} {m['count']:,}" for m in f["modes"])
    lines = [
        f"checked {result.images:,} images ({splits}) of {result.source} in {result.seconds:.0f}s",
        f"  unreadable        {len(f['unreadable']):,}" + (f" ({why})" if why else ""),
        f"  format mismatch   {len(f['format_mismatch']):,} (extension differs from the content)",
        f"  tiny (<{TINY} px)     {len(f['tiny']):,}; size outliers {len(f['size_outliers']):,}"
        f" (over {OUTLIER_FACTOR:g}x more or fewer pixels than the median)",
        f"  colour modes      {modes or '-'}",
        f"  class imbalance   {balance or '-'} (largest class / smallest)",
        f"  exact duplicates  {_pairs_line(f['exact_duplicates'], 'groups')}",
        f"  near duplicates   {_pairs_line(f['near_duplicates'], 'pairs')}",
        f"  label issues      {len(f['label_issues']):,} likely wrong labels"
        + (f" (judged on {judged_on(result.label_check)})" if result.label_check else ""),
    ]
    if result.label_sets is not None:
        lines[6:6] = label_set_lines(result.label_sets)
    lines += [f"  note: {n}" for n in result.notes]
    return lines


def judged_on(check: dict[str, Any]) -> str:
    """What the label check judged with, in words: ``HOG features``, ``embeddings of the run
    runs/fm (resnet9_tiny)`` or ``embeddings of tf_efficientnet_lite0 (pretrained)``."""
    features = str(check.get("features"))
    if not features.startswith("embeddings"):
        return "HOG features"
    if check.get("source") == "run":
        network = f"embeddings of the run {check['name']} ({check['model']})"
    else:
        network = f"embeddings of {check['model']} (pretrained)"
    return network + (" with HOG features" if features.endswith("+hog") else "")


TABLE_UP_TO = 12  # labels: a wider co-occurrence table is left to the JSON and HTML


def label_set_lines(sets: dict[str, Any]) -> list[str]:
    """The console lines of a multi-label dataset: images per label, with none, the most
    frequent pairs and (up to TABLE_UP_TO labels) the co-occurrence table."""
    counts = ", ".join(f"{k} {n:,}" for k, n in sets["counts"].items())
    pairs = ", ".join(f"{'+'.join(p['labels'])} {p['count']:,}" for p in sets["top_pairs"])
    lines = [
        f"  labels            {len(sets['labels'])} ({counts})",
        f"  label sets        {sets['labels_per_image']:g} labels per image; "
        f"{sets['no_label']:,} images with no label",
        f"  labels together   {pairs or '-'} (most frequent pairs)",
    ]
    names = sets["labels"]
    if len(names) > TABLE_UP_TO:
        return [*lines, "  co-occurrence     (a table per label pair in the JSON and HTML report)"]
    width = max(max(len(n) for n in names), max(len(f"{v:,}") for r in sets["cooccurrence"]
                                                for v in r))  # fmt: skip
    lines.append("  co-occurrence     (images with both labels; the diagonal: with the label)")
    lines.append("    " + " " * width + "".join(f" {n:>{width}}" for n in names))
    for name, row in zip(names, sets["cooccurrence"], strict=True):
        lines.append(f"    {name:>{width}}" + "".join(f" {v:>{width},}" for v in row))
    return lines
