"""What a model card is built from: the run folder's own files, read as their writers left them.

Nothing is measured here. Each file is optional except ``meta.json`` and
``eval/metrics.json``; a file that is there but not what its writer writes is refused in one
line naming it. Files fitted with weights (``conformal.json``, ``unknown.json``,
``knn_reference.npz``, ``drift_reference.json``) are used only when their ``weights_sha256``
is the run's current one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagewise.errors import UserError
from imagewise.evaluate.scores import Metrics
from imagewise.io import read_json
from imagewise.runtime.meta import RunMeta
from imagewise.runtime.runs import RunFolder

if TYPE_CHECKING:
    from imagewise.config import RunConfig
    from imagewise.edge.drift import DriftReference
    from imagewise.edge.unknown import KnnReference

# The files a card reads, relative to the run folder (the names each section cites).
META = "meta.json"
CONFIG = "config.yaml"
METRICS = "eval/metrics.json"
ROBUSTNESS = "eval/robustness.json"
SLICES = "eval/slices.json"
CONFORMAL = "conformal.json"
UNKNOWN = "unknown.json"
KNN = "knn_reference.npz"
DRIFT = "drift_reference.json"  # what imagewise serve's drift alarms compare with
PARITY = "export/parity.json"

# Why a file was left out (``Evidence.stale``).
OTHER_WEIGHTS = "weights"
OTHER_IMAGES = "images"

# The format each optional JSON file must declare (its writer's contract).
FORMATS = {
    ROBUSTNESS: "imagewise-robustness/1",
    SLICES: "imagewise-slices/1",
    CONFORMAL: "imagewise-conformal/1",
    UNKNOWN: "imagewise-unknown/1",
    DRIFT: "imagewise-drift/1",
    PARITY: "imagewise-parity/1",
}


@dataclass
class Evidence:
    """The run's recorded facts, one attribute per file (None: the file is not there, or was
    fitted with other weights or measured on other images: see ``stale``)."""

    run: Path
    meta: RunMeta
    config: RunConfig | None
    metrics: Metrics
    metrics_json: dict[str, Any]
    weights_sha256: str
    conformal: dict[str, Any] | None = None
    unknown: dict[str, Any] | None = None
    knn: KnnReference | None = None
    drift: DriftReference | None = None
    robustness: dict[str, Any] | None = None
    slices: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    audit_file: str | None = None
    # left-out files by name: OTHER_WEIGHTS or OTHER_IMAGES (why it was left out)
    stale: dict[str, str] = field(default_factory=dict)
    parity_other_weights: tuple[str, ...] = ()  # parity records of files of other weights
    parity_unrecorded: tuple[str, ...] = ()  # older records that name no weights

    @property
    def multilabel(self) -> bool:
        """Whether the run gives each image any number of labels (sigmoids, thresholds)."""
        return bool(self.meta.spec.multilabel)

    @property
    def conformal_metrics(self) -> dict[str, Any] | None:
        """``metrics.json``'s "conformal" section (written by ``evaluate(..., coverage=c)``)."""
        section = self.metrics_json.get("conformal")
        return section if isinstance(section, dict) else None


def missing_evaluation(run: str | Path) -> UserError:
    return UserError(
        f"'{run}' has no {METRICS}; run 'imagewise evaluate {run}' first "
        "(or add --evaluate to imagewise card)"
    )


def read_evidence(run: str | Path, audit: str | Path | None = None) -> Evidence:
    """The run's files for its card.

    Args:
        run: a trained run folder, evaluated (``eval/metrics.json``).
        audit: the JSON written by ``imagewise data check DATA --json FILE``, if any.

    Raises:
        UserError: no run, no evaluation, or a file that is not what its writer writes.
    """
    from imagewise.predict.unknown import weights_sha256

    folder = RunFolder.of(run)
    meta = folder.read_meta()
    path = folder.path / METRICS
    if not path.is_file():
        raise missing_evaluation(run)
    metrics_json = _json_object(path, METRICS)
    metrics = Metrics.from_json(metrics_json, f"{METRICS} of '{folder.path}'", "")
    digest = weights_sha256(folder.path)
    if metrics.weights_sha256 not in (None, digest):
        raise UserError(
            f"'{path}' measured other weights than the run's; run 'imagewise evaluate {run}' "
            "again (add --coverage / --robustness / --slice-by as before)"
        )
    ev = Evidence(folder.path, meta, _config(folder), metrics, metrics_json, digest)
    ev.robustness = _same_images(ev, _fitted(ev, ROBUSTNESS), ROBUSTNESS)
    ev.slices = _same_images(ev, _fitted(ev, SLICES), SLICES)
    ev.parity = _same_weights(ev, _parity(folder.path))
    ev.conformal = _fitted(ev, CONFORMAL)
    ev.unknown = _fitted(ev, UNKNOWN)
    ev.knn = _knn(ev)
    ev.drift = _drift(ev)
    if audit is not None:
        ev.audit, ev.audit_file = _audit(Path(audit), ev), Path(audit).name
    return ev


def _json_object(path: Path, name: str) -> dict[str, Any]:
    try:
        values = read_json(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {name} of the run ('{path}'): {exc}") from exc
    if not isinstance(values, dict):
        raise UserError(f"'{path}' must hold a JSON object; write it again")
    return values


def _optional(run: Path, name: str) -> dict[str, Any] | None:
    """An optional file of the run, checked for its writer's format; None when absent."""
    path = run / name
    if not path.is_file():
        return None
    values = _json_object(path, name)
    if values.get("format") != FORMATS[name]:
        raise UserError(
            f"'{path}' has format {values.get('format')!r}, not {FORMATS[name]!r}; "
            "write it again with this imagewise"
        )
    return values


def _parity(run: Path) -> dict[str, Any] | None:
    """export/parity.json; an older flat file (one export's record, no format) read as the
    record of its file, as ``imagewise export`` itself keeps it."""
    path = run / PARITY
    if path.is_file() and "file" in (flat := _json_object(path, PARITY)) and "files" not in flat:
        return {"format": FORMATS[PARITY], "files": {Path(str(flat["file"])).name: flat}}
    return _optional(run, PARITY)


def _same_weights(ev: Evidence, values: dict[str, Any] | None) -> dict[str, Any] | None:
    """parity.json with the records of files exported from other weights left out (named in
    ``parity_other_weights``); older records, which name no weights, are kept and named in
    ``parity_unrecorded``."""
    if values is None or not isinstance(values.get("files"), dict):
        return values
    kept = {}
    for name, record in values["files"].items():
        digest = record.get("weights_sha256") if isinstance(record, dict) else None
        if digest is None:
            ev.parity_unrecorded += (name,)
        elif digest != ev.weights_sha256:
            ev.parity_other_weights += (name,)
            continue
        kept[name] = record
    return {**values, "files": kept}


def _fitted(ev: Evidence, name: str) -> dict[str, Any] | None:
    """A file fitted with weights, when fitted with the run's current ones."""
    values = _optional(ev.run, name)
    if values is not None and values.get("weights_sha256") != ev.weights_sha256:
        ev.stale[name] = OTHER_WEIGHTS
        return None
    return values


def _same_images(ev: Evidence, values: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """A measurement of the images metrics.json measured (its data and split), else None (an
    older evaluation on other images left it behind)."""
    if values is None or "data" not in values:
        return values
    if (values.get("data"), values.get("split")) != (ev.metrics.data, ev.metrics.split):
        ev.stale[name] = OTHER_IMAGES
        return None
    return values


def _knn(ev: Evidence) -> KnnReference | None:
    if not (ev.run / KNN).is_file():
        return None
    from imagewise.edge.unknown import KnnReference

    reference = KnnReference.load(ev.run / KNN)
    if reference.weights_sha256 != ev.weights_sha256:
        ev.stale[KNN] = OTHER_WEIGHTS
        return None
    return reference


def _drift(ev: Evidence) -> DriftReference | None:
    if (values := _fitted(ev, DRIFT)) is None:
        return None
    from imagewise.edge.drift import DriftReference

    return DriftReference.from_json(values, str(ev.run / DRIFT), len(ev.meta.classes))


def _config(folder: RunFolder) -> RunConfig | None:
    from imagewise.config import load_config_file

    return load_config_file(folder.config) if folder.config.is_file() else None


def _audit(path: Path, ev: Evidence) -> dict[str, Any]:
    """``imagewise data check --json``'s file: the counts and the lists of findings; refused
    when it checked other data than the run was trained on."""
    if not path.is_file():
        raise UserError(
            f"--audit '{path}' does not exist; write it with imagewise data check DATA --json FILE"
        )
    values = _json_object(path, "the audit")
    from imagewise.audit.result import KINDS

    absent = [k for k in ("images", "splits", *KINDS) if k not in values]
    if absent:
        raise UserError(
            f"'{path}' is not imagewise data check's JSON ({', '.join(absent)} missing); "
            "write it with imagewise data check DATA --json FILE"
        )
    _same_data(path, values, ev)
    return values


def _same_data(path: Path, audit: dict[str, Any], ev: Evidence) -> None:
    """Refuse an audit of other data: its source against the run's (config.yaml, else
    meta.json); an audit naming no source, by its image count against meta.json's."""
    data = ev.meta.data
    trained_on = ev.config.data.source if ev.config is not None else data.source
    if "source" in audit:
        if not _same_source(str(audit["source"]), trained_on):
            raise UserError(
                f"'{path}' audited '{audit['source']}', but the run was trained on "
                f"'{trained_on}'; audit that with imagewise data check {trained_on} --json FILE"
            )
        return
    kept = data.train_images + data.val_images + data.test_images
    if audit["images"] not in (kept, kept + data.skipped_images):
        raise UserError(
            f"'{path}' checked {audit['images']:,} images, but the run was trained on "
            f"{kept + data.skipped_images:,} ({META}); audit the run's data with "
            f"imagewise data check {trained_on} --json FILE"
        )


def _same_source(a: str, b: str) -> bool:
    """Two dataset sources name the same data: the same built-in, or the same path."""
    from imagewise.data.builtin import canonical_name

    if a == b:
        return True
    if canonical_name(a) or canonical_name(b):
        return canonical_name(a) == canonical_name(b)
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
