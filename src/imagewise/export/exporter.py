"""Export: a trained run as a model file for another runtime, checked against PyTorch before it
lands.

The formats and what each writes are ``imagewise.export.targets``' table (ONNX, TorchScript,
OpenVINO, LiteRT / TFLite, ExecuTorch, Core ML, the web page). Every export whose runtime runs
on this OS is run on the run's own validation images (else test, else training) next to the
PyTorch model; the figures go to ``RUN/export/parity.json`` (one record per file written), and a
model that answers differently (float32: top-1 agreement below 99.9 %; float16 and INT8: more
than 1 point of accuracy lost; ONNX INT8 also: weights that would saturate the int16 pair sums
of CPUs without VNNI) is refused and leaves nothing behind: the call raises and parity.json
says why. A format with no runtime here (Core ML on Linux) is converted and its file checked;
its parity is recorded as "not run on this OS", never claimed. A target that cannot be written
(a directory, a path under a file) or a converter that is not installed is refused before any
work.

    RUN/export/model.onnx        float32, input NCHW normalized (or NHWC uint8 with raw_input)
    RUN/export/model.int8.onnx   INT8 static quantization (ONNX Runtime, QDQ, 7-bit weights)
    RUN/export/model.pt          TorchScript
    RUN/export/model.xml/.bin    OpenVINO IR (model.fp16.xml, model.int8.xml)
    RUN/export/model.tflite      LiteRT (model.fp16.tflite, model.int8.tflite)
    RUN/export/model.pte         ExecuTorch, XNNPACK (model.int8.pte)
    RUN/export/model.mlpackage/  Core ML (model.fp16.mlpackage)
    RUN/export/web/              a page that classifies in the browser (web.int8/)
    RUN/export/parity.json       {"files": {file name: its check}}

Each parity record names the weights it was made from (``weights_sha256``). A run with a model
card (``imagewise card``: RUN/MODEL_CARD.md) gives every file its text as the metadata entry
``model_card``; the web folder also gets a copy of MODEL_CARD.md. A card of other weights (its
"weights sha256" line is not the run's model.safetensors') is left out, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imagewise.errors import UserError
from imagewise.export.targets import FORMATS, NOT_RUN, PRECISIONS, ExportJob, Target
from imagewise.export.targets import target as target_of
from imagewise.io import atomic_write, atomic_write_json, existing_ancestor, read_json
from imagewise.runtime.runs import RunFolder

if TYPE_CHECKING:
    from imagewise.predict.base import Classifier

log = logging.getLogger("imagewise")

PARITY_FORMAT = "imagewise-parity/1"

# How a card (imagewise card's model section) names the weights it describes.
CARD_WEIGHTS = re.compile(r"^- \*\*weights sha256\*\*: ([0-9a-f]{64})$", re.MULTILINE)


@dataclass
class ExportResult:
    """What ``imagewise.export`` wrote: the model file (or folder) and its parity figures."""

    path: Path
    format: str
    int8: bool
    raw_input: bool
    parity: dict[str, Any]
    parity_path: Path
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.int8:
            self.precision = "int8"

    @property
    def passed(self) -> bool:
        return bool(self.parity["passed"])

    def summary(self) -> str:
        """Four lines: the file, its check against PyTorch, both accuracies, the figures' file
        (two for a format whose runtime does not run here)."""
        p = self.parity
        kind = [
            self.format,
            *([self.precision.replace("int8", "INT8")] if self.precision != "float32" else []),
            *(["uint8 NHWC input"] if self.raw_input else []),
        ]
        by = f" by {p['runtime']}" if p.get("runtime") else ""
        wrote = f"wrote {self.path} ({p['bytes'] / 1e6:.2f} MB; {', '.join(kind)})"
        if p.get("runtime") == NOT_RUN:
            return "\n".join(
                [
                    f"{wrote}; {p['checked']}",
                    f"not run against PyTorch: its runtime is {NOT_RUN}; figures: "
                    f"{self.parity_path}",
                ]
            )
        return "\n".join(
            [
                wrote,
                f"checked on {p['images']} {p['split']} images{by}: top-1 agreement "
                f"with PyTorch {p['top1_agreement']:.2%}, largest probability difference "
                f"{p['max_abs_probability_difference']:.2g}",
                f"accuracy {p['accuracy_exported']:.2%} (PyTorch {p['accuracy_pytorch']:.2%})",
                f"figures: {self.parity_path}",
            ]
        )


def default_file_name(format: str, int8: bool = False, precision: str | None = None) -> str:
    """``model.onnx``, ``model.int8.onnx``, ``model.pt``, ``model.fp16.xml``, ``web``, ..."""
    return target_of(format).file_name(precision or ("int8" if int8 else "float32"))


def _check_request(fmt: Target, precision: str, raw_input: bool, out: str | Path | None) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if precision not in fmt.precisions:
        flag = "--int8" if precision == "int8" else f"--precision {precision}"
        raise UserError(
            f"{flag} is not offered for --format {fmt.name} (it offers {', '.join(fmt.precisions)})"
        )
    if raw_input and not fmt.raw_input:
        raise UserError(f"--raw-input is for ONNX exports; leave it out with --format {fmt.name}")
    if out is not None and fmt.suffix and Path(out).suffix.lower() != fmt.suffix:
        raise UserError(f"--out must end in '{fmt.suffix}' for --format {fmt.name}, not '{out}'")
    if problem := fmt.missing():
        raise UserError(problem)


def check_target(target: Path, file_name: str = "model.onnx", folder: bool = False) -> None:
    """Refuse a model path that cannot be written, before minutes of export and checking.

    The file is written last (to a temporary name, then renamed); a directory in its place or a
    file where a parent folder should be would only fail then, after all the work. ``folder``:
    the model is a folder (web, Core ML), which may replace an earlier export's folder but not
    a file.
    """
    if target.is_dir() and not folder:
        raise UserError(
            f"cannot write the model to '{target}': it is a folder; give --out a file name, "
            f"e.g. --out {target / file_name}"
        )
    if folder and target.exists() and not target.is_dir():
        raise UserError(f"cannot write the model to '{target}': a file is in its place")
    parent = existing_ancestor(target)
    if not parent.is_dir():
        raise UserError(f"cannot write '{target}': '{parent}' is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write '{target}': no permission to write in '{parent}'")


def export(
    run: str | Path,
    format: str = "onnx",
    int8: bool = False,
    raw_input: bool = False,
    out: str | Path | None = None,
    precision: str | None = None,
) -> ExportResult:
    """Write the run's model for another runtime and check it against PyTorch.

    Args:
        run: a run folder written by ``imagewise train``.
        format: ``onnx`` (default), ``torchscript``, ``openvino``, ``tflite``, ``executorch``,
            ``coreml`` or ``web`` (``imagewise.export.targets``).
        int8: INT8 quantization calibrated on a few hundred training images (the same as
            ``precision="int8"``).
        raw_input: ONNX only: the graph takes uint8 NHWC images at the model's size and
            normalizes them itself (no resize inside).
        out: the model file or folder (default ``RUN/export/`` + ``default_file_name``);
            ``parity.json`` always goes to ``RUN/export/``.
        precision: ``float32`` (default), ``float16`` or ``int8``, where the format offers it.

    Raises:
        UserError: for a classical (``hog_svm``) run, an unknown format or precision, a
            converter that is not installed, a target that cannot be written (all before any
            work), or when the exported model fails its check; ``parity.json`` then says why
            (``"passed": false``) and no model file is left behind.

    Example:
        >>> result = imagewise.export("runs/fm", "openvino", precision="int8")  # doctest: +SKIP
        >>> result.path, result.parity["accuracy_drop"]  # doctest: +SKIP
        (PosixPath('runs/fm/export/model.int8.xml'), 0.0015)
    """
    from imagewise.export.verify import VERIFY_IMAGES, run_images
    from imagewise.predict.unknown import weights_sha256

    fmt = target_of(format)
    precision = (precision or ("int8" if int8 else "float32")).lower()
    _check_request(fmt, precision, raw_input, out)
    folder = RunFolder.of(run)
    export_dir = folder.path / "export"
    name = fmt.file_name(precision)
    target = export_dir / name if out is None else Path(out).expanduser()
    check_target(target, name, fmt.folder)  # before any work: answers at once
    reference = _exportable(run)
    images, labels, split, source = run_images(
        folder.path, reference.preprocessing, reference.classes, ("val", "test", "train"),
        VERIFY_IMAGES,
    )  # fmt: skip
    int8 = precision == "int8"
    digest = weights_sha256(folder.path)
    with tempfile.TemporaryDirectory(prefix="imagewise-export-") as tmp:
        candidate = Path(tmp) / "out" / target.name
        candidate.parent.mkdir()
        job = _job(run, reference, precision, raw_input, Path(tmp), digest)
        log.info("exporting %s as %s (%s)", job.metadata["model"], fmt.name, precision)
        fmt.write(job, candidate)
        record = _check(fmt, reference, candidate, images, labels, precision, split)
        record = {
            "file": str(target), "format": fmt.name, "precision": precision, "int8": int8,
            "raw_input": raw_input, "weights_sha256": digest, "data": source, "split": split,
            "quantization": _settings(job.metadata) if int8 else None,
            **record, "bytes": _size(fmt, candidate),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }  # fmt: skip
        parity_path = _record_parity(export_dir / "parity.json", target.name, record)
        if not record["passed"]:
            raise UserError(
                f"the exported model failed its check on {record['images']} {split} images: "
                f"{record['failure']}; nothing was written in place of {target.name} "
                f"(figures: {parity_path})"
            )
        _move_into_place(fmt, candidate, target)
    return ExportResult(target, fmt.name, int8, raw_input, record, parity_path, precision)


def _exportable(run: str | Path) -> Classifier:
    """The run's PyTorch classifier, refused in one line when its model has no graph to
    export (a classical model)."""
    from imagewise.predict.predictor import load_run

    reference = load_run(run)
    if not reference.capabilities.onnx_export:
        raise UserError(
            f"'{run}' holds a {reference.name} model, which declares no ONNX or TorchScript "
            "graph (a classical model computes its features outside tensor operations); use "
            "the run folder itself with imagewise predict or imagewise.load"
        )
    return reference


def _job(
    run: str | Path,
    reference: Classifier,
    precision: str,
    raw_input: bool,
    workdir: Path,
    digest: str,
) -> ExportJob:
    """What a writer is handed: a copy of the network of its own (writers may touch it), the
    spec and metadata the file carries (the card when it describes the weights ``digest``),
    the run's training images for INT8."""
    from imagewise.export.metadata import build_metadata, file_spec
    from imagewise.export.quantize import PORTABLE
    from imagewise.predict.drift import fitted_drift
    from imagewise.predict.predictor import load_run
    from imagewise.predict.unknown import fitted_unknown

    run_dir = RunFolder.of(run).path
    int8 = precision == "int8"
    drift = fitted_drift(reference, run_dir)
    conformal = _conformal(run_dir, reference)
    spec = file_spec(reference.spec, raw_input, fitted_unknown(run_dir), drift, conformal)
    metadata = build_metadata(
        spec, reference.tta, int8, PORTABLE.describe() if int8 else None,
        _model_card(run_dir, digest),
    )  # fmt: skip
    return ExportJob(
        module=load_run(run).network, reference=reference, spec=spec, metadata=metadata,
        precision=precision, raw_input=raw_input, run_dir=run_dir, workdir=workdir,
        calibration_images=lambda: _training_images(run_dir, reference),
        onnx_writer=_onnx_graph,
    )  # fmt: skip


def _model_card(run_dir: Path, digest: str) -> str | None:
    """The run's MODEL_CARD.md when it describes the weights ``digest`` (the card names them in
    its "weights sha256" line); None, with a warning, for a card of other weights (written
    before a retraining or a resume)."""
    card = RunFolder.of(run_dir).model_card
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8")
    named = CARD_WEIGHTS.search(text)
    if named is None or named[1] != digest:
        what = "names no weights" if named is None else "describes other weights than the run's"
        log.warning(
            "%s %s; the export carries no card: run 'imagewise card %s' again to carry one",
            card.name, what, run_dir,
        )  # fmt: skip
        return None
    return text


def _conformal(run_dir: Path, reference: Classifier) -> dict[str, Any] | None:
    """The run's conformal thresholds for the file: the stored fit, else fitted now on its
    validation split; None (with a warning) when the run's data cannot be re-opened."""
    from imagewise.predict.conformal import fitted_conformal, run_conformal

    if reference.spec.multilabel:  # conformal sets are single-label (see resolve_sets)
        return None
    carried = fitted_conformal(run_dir)
    if carried is not None:
        return carried
    try:
        return run_conformal(reference, run_dir).to_json()
    except UserError as exc:
        log.warning("the export carries no conformal thresholds (--coverage): %s", exc)
        return None


def export_many(
    run: str | Path,
    formats: Sequence[str],
    precision: str | None = None,
    raw_input: bool = False,
    out: str | Path | None = None,
) -> list[ExportResult]:
    """``export`` for several formats in turn (``imagewise export RUN --format onnx openvino``);
    every format is checked for its precision and converter before the first is written, and
    ``out`` (a folder here) holds them all."""
    if out is not None and len(formats) > 1 and Path(out).suffix:
        raise UserError(f"with several formats --out is a folder, not '{out}'")
    chosen = [target_of(f) for f in dict.fromkeys(f.lower() for f in formats)]
    for fmt in chosen:
        _check_request(fmt, (precision or "float32").lower(), raw_input, None)
    results = []
    for fmt in chosen:
        where = None
        if out is not None:
            where = Path(out) / fmt.file_name(precision or "float32") if len(chosen) > 1 else out
        results.append(export(run, fmt.name, raw_input=raw_input, out=where, precision=precision))
    return results


def _settings(metadata: dict[str, str]) -> Any:
    """How the INT8 weights were made, as the file's metadata says (its writer's settings)."""
    text = metadata.get("quantization_settings")
    return None if text is None else json.loads(text)


def _size(fmt: Target, path: Path) -> int:
    """Bytes of the model: its file and companions, or every file of its folder."""
    if fmt.folder:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return sum(p.stat().st_size for p in fmt.parts(path) if p.exists())


def _check(
    fmt: Target,
    reference: Classifier,
    candidate: Path,
    images: torch.Tensor,
    labels: np.ndarray,
    precision: str,
    split: str,
) -> dict[str, Any]:
    """The parity figures of the exported model, the gates applied and whether it passed.

    An ONNX INT8 file is also read back for its largest weights: the accuracy measured here is
    this CPU's, and only the int16 bound says the file computes the same on CPUs without VNNI.
    """
    from imagewise.export.verify import (
        MAX_INT8_ACCURACY_DROP,
        MIN_AGREEMENT,
        check_gates,
        parity,
        runtime_name,
    )

    if fmt.loader is None:
        return {"runtime": NOT_RUN, "images": 0, "checked": _spec_check(fmt, candidate),
                "passed": True, "failure": None}  # fmt: skip
    exported = fmt.load(candidate)
    # A slow runtime (the page's single WebAssembly thread: 2.6 resnet18 images/s at 224 px)
    # checks the first images of the seeded sample only.
    limit = getattr(exported, "check_images", None) or len(labels)
    images, labels = images[:limit], labels[:limit]
    log.info("checking the %s export against PyTorch on %d %s images", fmt.name, len(labels),
             split)  # fmt: skip
    # a loader may name the runtime it fell back to (the web page without Chromium)
    runtime = getattr(exported, "runtime_name", None) or runtime_name(fmt.name)
    try:
        figures = {"runtime": runtime, **parity(reference, exported, images, labels)}
    finally:
        if hasattr(exported, "close"):  # a runtime in another process (the page's browser)
            exported.close()
    del exported  # its session's memory, before the next export of a batch
    approximate = precision != "float32"
    reason = check_gates(figures, approximate)
    gates: dict[str, Any]
    if approximate:
        gates = {"max_accuracy_drop": MAX_INT8_ACCURACY_DROP}
    else:
        gates = {"min_top1_agreement": MIN_AGREEMENT}
    if precision == "int8" and fmt.name == "onnx":
        import onnx

        from imagewise.export.quantize import INT16_MAX, check_int16_pairs

        figures["int16_pair_sum_max"], portable = check_int16_pairs(onnx.load(str(candidate)))
        reason = reason or portable
        gates["max_int16_pair_sum"] = INT16_MAX
    return {**figures, "gates": gates, "passed": reason is None, "failure": reason}


def _spec_check(fmt: Target, candidate: Path) -> str:
    """What was checked of a file no runtime here can run: its writer's own check, stored
    beside it as ``check.txt`` in the temporary folder."""
    note = candidate.parent / "check.txt"
    return note.read_text() if note.exists() else "converted; its runtime is " + NOT_RUN


def _record_parity(path: Path, name: str, record: dict[str, Any]) -> Path:
    """parity.json's record for ``name`` replaced; the others kept (an older flat file, of one
    export, is kept as its file's record)."""
    files: dict[str, Any] = {}
    if path.is_file():
        try:
            old = read_json(path)
        except (OSError, ValueError):
            old = {}
        if isinstance(old, dict) and isinstance(old.get("files"), dict):
            files = old["files"]
        elif isinstance(old, dict) and "file" in old:
            files = {Path(str(old["file"])).name: old}
    files[name] = record
    return atomic_write_json(path, {"format": PARITY_FORMAT, "latest": name, "files": files})


def parity_record(run: str | Path, name: str = "model.onnx") -> dict[str, Any]:
    """The parity record of the file ``name`` exported from ``run`` (``RUN/export/parity.json``)."""
    path = RunFolder.of(run).path / "export" / "parity.json"
    if not path.is_file():
        raise UserError(f"'{run}' has no export/parity.json; run imagewise export first")
    files = read_json(path).get("files", {})
    if name not in files:
        raise UserError(f"'{path}' has no record of '{name}' (it has {', '.join(files)})")
    return dict(files[name])


def _move_into_place(fmt: Target, candidate: Path, target: Path) -> None:
    """The checked model moved to ``target``: each file atomically (companions first, so the
    file that names them is never there without them); a folder renamed in as a whole, an
    earlier export's folder removed only once the new one is in place."""
    if fmt.folder:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        shutil.copytree(candidate, staged / "new")
        old = staged / "old"
        if target.exists():
            os.replace(target, old)
        os.replace(staged / "new", target)
        shutil.rmtree(staged)
        return
    for part, dest in reversed(list(zip(fmt.parts(candidate), fmt.parts(target), strict=True))):
        atomic_write(dest, lambda t, src=part: shutil.copyfile(src, t))


def _training_images(run_dir: Path, reference: Classifier) -> np.ndarray:
    from imagewise.export.verify import CALIBRATION_IMAGES, run_images

    pre = reference.preprocessing
    return run_images(run_dir, pre, reference.classes, ("train",), CALIBRATION_IMAGES)[0].numpy()


def _onnx_graph(job: ExportJob, precision: str) -> Path:
    """The job's ONNX graph in its temporary folder, for writers that convert from ONNX."""
    from imagewise.export.onnx import write_graph

    path = job.workdir / f"graph.{precision}.onnx"
    write_graph(job, path, precision)
    return path


def calibration_batches(run_dir: Path, reference: Classifier, raw_input: bool) -> list[np.ndarray]:
    """A few hundred training images of the run, in the ONNX graph's input layout, for INT8."""
    from imagewise.export.graph import graph_batches

    images = _training_images(run_dir, reference)
    return graph_batches(reference.preprocessing, images, raw_input)


__all__ = [
    "FORMATS",
    "ExportResult",
    "calibration_batches",
    "default_file_name",
    "export",
    "export_many",
    "parity_record",
]
