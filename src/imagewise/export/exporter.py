"""Export: a trained run as an ONNX or TorchScript file, checked against PyTorch before it lands.

Every export is run on the run's own validation images (else test, else training) next to the
PyTorch model; the figures go to ``RUN/export/parity.json``, and a model that answers
differently (float: top-1 agreement below 99.9 %; INT8: more than 1 point of accuracy lost, or
weights that would saturate the int16 pair sums of CPUs without VNNI) is refused: it is kept
only as ``model.rejected.onnx`` for inspection and the call raises. A target that cannot be
written (a directory, a path under a file) is refused before any work.

    RUN/export/model.onnx        float32, input NCHW normalized (or NHWC uint8 with raw_input)
    RUN/export/model.int8.onnx   INT8 static quantization (ONNX Runtime, QDQ, 7-bit weights)
    RUN/export/model.pt          TorchScript
    RUN/export/parity.json       the check of the latest export
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imagewise.data.transforms import normalize
from imagewise.errors import UserError
from imagewise.io import atomic_write, atomic_write_json, existing_ancestor
from imagewise.runtime.runs import RunFolder

if TYPE_CHECKING:
    from imagewise.predict.base import Classifier

log = logging.getLogger("imagewise")

FORMATS = ("onnx", "torchscript")


@dataclass
class ExportResult:
    """What ``imagewise.export`` wrote: the model file and the parity figures."""

    path: Path
    format: str
    int8: bool
    raw_input: bool
    parity: dict[str, Any]
    parity_path: Path

    @property
    def passed(self) -> bool:
        return bool(self.parity["passed"])

    def summary(self) -> str:
        """Four lines: the file, its check against PyTorch, both accuracies, the figures' file."""
        p = self.parity
        kind = [
            self.format,
            *(["INT8"] if self.int8 else []),
            *(["uint8 NHWC input"] if self.raw_input else []),
        ]
        return "\n".join(
            [
                f"wrote {self.path} ({p['bytes'] / 1e6:.2f} MB; {', '.join(kind)})",
                f"checked on {p['images']} {p['split']} images: top-1 agreement with PyTorch "
                f"{p['top1_agreement']:.2%}, largest probability difference "
                f"{p['max_abs_probability_difference']:.2g}",
                f"accuracy {p['accuracy_exported']:.2%} (PyTorch {p['accuracy_pytorch']:.2%})",
                f"figures: {self.parity_path}",
            ]
        )


def default_file_name(format: str, int8: bool = False) -> str:
    """``model.onnx``, ``model.int8.onnx`` or ``model.pt``."""
    if format == "torchscript":
        return "model.pt"
    return "model.int8.onnx" if int8 else "model.onnx"


def rejected_path(target: Path) -> Path:
    """Where a model that failed its check is kept: ``model.rejected.onnx`` beside the target."""
    return target.with_name(f"{target.stem}.rejected{target.suffix}")


def _check_request(format: str, int8: bool, raw_input: bool, out: str | Path | None) -> None:
    if format not in FORMATS:
        raise UserError(f"unknown export format '{format}'; choose one of {', '.join(FORMATS)}")
    if format == "torchscript" and (int8 or raw_input):
        raise UserError(
            "--int8 and --raw-input are for ONNX exports; leave them out with --format torchscript"
        )
    suffix = ".pt" if format == "torchscript" else ".onnx"
    if out is not None and Path(out).suffix.lower() != suffix:
        raise UserError(f"--out must end in '{suffix}' for --format {format}, not '{out}'")


def check_target(target: Path, file_name: str = "model.onnx") -> None:
    """Refuse a model path that cannot be written, before minutes of export and checking.

    The file is written last (to a temporary name, then renamed); a directory in its place or a
    file where a parent folder should be would only fail then, after all the work.
    """
    if target.is_dir():
        raise UserError(
            f"cannot write the model to '{target}': it is a folder; give --out a file name, "
            f"e.g. --out {target / file_name}"
        )
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
) -> ExportResult:
    """Write the run's model as ONNX or TorchScript and check it against PyTorch.

    Args:
        run: a run folder written by ``imagewise train``.
        format: ``onnx`` (default) or ``torchscript``.
        int8: ONNX only: INT8 static quantization calibrated on a few hundred training images.
        raw_input: ONNX only: the graph takes uint8 NHWC images at the model's size and
            normalizes them itself (no resize inside).
        out: the model file (default ``RUN/export/model.onnx``, ``model.int8.onnx`` or
            ``model.pt``); ``parity.json`` always goes to ``RUN/export/``.

    Raises:
        UserError: for a classical (``hog_svm``) run, for a target that cannot be written
            (before any work), or when the exported model fails its check; ``parity.json``
            then says why (``"passed": false``).

    Example:
        >>> result = imagewise.export("runs/fm", int8=True)  # doctest: +SKIP
        >>> result.path, result.parity["accuracy_drop"]  # doctest: +SKIP
        (PosixPath('runs/fm/export/model.int8.onnx'), 0.0015)
    """
    from imagewise.export.metadata import build_metadata, file_spec
    from imagewise.export.quantize import PORTABLE
    from imagewise.export.verify import VERIFY_IMAGES, run_images
    from imagewise.predict.predictor import load_run
    from imagewise.predict.unknown import fitted_unknown

    format = format.lower()
    _check_request(format, int8, raw_input, out)
    folder = RunFolder.of(run)
    export_dir = folder.path / "export"
    target = export_dir / default_file_name(format, int8) if out is None else Path(out).expanduser()
    check_target(target, default_file_name(format, int8))  # before any work: answers at once
    reference = load_run(run)
    if not reference.capabilities.onnx_export:
        raise UserError(
            f"'{run}' holds a {reference.name} model, which declares no ONNX or TorchScript "
            "graph (a classical model computes its features outside tensor operations); use "
            "the run folder itself with imagewise predict or imagewise.load"
        )
    images, labels, split, source = run_images(
        folder.path, reference.preprocessing, reference.classes, ("val", "test", "train"),
        VERIFY_IMAGES,
    )  # fmt: skip
    quantization = PORTABLE.describe() if int8 else None
    spec = file_spec(reference.spec, raw_input, fitted_unknown(folder.path))
    metadata = build_metadata(spec, reference.tta, int8, quantization)
    with tempfile.TemporaryDirectory(prefix="imagewise-export-") as tmp:
        candidate = Path(tmp) / target.name
        model = load_run(run).network  # a copy of its own: exporters may touch the module
        if format == "onnx":
            _write_onnx(model, reference, metadata, raw_input, int8, candidate, folder.path)
        else:
            from imagewise.export.torchscript import save_torchscript

            log.info("tracing %s to TorchScript", metadata["model"])
            save_torchscript(model, reference.preprocessing, metadata, candidate)
        log.info("checking the export against PyTorch on %d %s images", len(labels), split)
        record = _check(reference, candidate, images, labels, int8)
        record = {
            "file": str(target), "format": format, "int8": int8, "raw_input": raw_input,
            "data": source, "split": split, "quantization": quantization, **record,
            "bytes": candidate.stat().st_size,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }  # fmt: skip
        parity_path = atomic_write_json(export_dir / "parity.json", record)
        if not record["passed"]:
            kept = atomic_write(rejected_path(target), lambda t: shutil.copyfile(candidate, t))
            raise UserError(
                f"the exported model failed its check on {len(labels)} {split} images: "
                f"{record['failure']}; it was kept as {kept} and not as {target.name} "
                f"(figures: {parity_path})"
            )
        atomic_write(target, lambda t: shutil.copyfile(candidate, t))
    rejected_path(target).unlink(missing_ok=True)  # from an earlier, failed attempt
    return ExportResult(target, format, int8, raw_input, record, parity_path)


def _check(
    reference: Classifier, candidate: Path, images: torch.Tensor, labels: np.ndarray, int8: bool
) -> dict[str, Any]:
    """The parity figures of the exported file, the gates applied and whether it passed.

    An INT8 file is also read back for its largest weights: the accuracy measured here is this
    CPU's, and only the int16 bound says the file computes the same on CPUs without VNNI.
    """
    from imagewise.export.verify import MAX_INT8_ACCURACY_DROP, MIN_AGREEMENT, check_gates, parity
    from imagewise.predict.predictor import load

    figures = parity(reference, load(candidate), images, labels)
    reason = check_gates(figures, int8)
    if int8:
        import onnx

        from imagewise.export.quantize import INT16_MAX, check_int16_pairs

        figures["int16_pair_sum_max"], portable = check_int16_pairs(onnx.load(str(candidate)))
        reason = reason or portable
        gates = {"max_accuracy_drop": MAX_INT8_ACCURACY_DROP, "max_int16_pair_sum": INT16_MAX}
    else:
        gates = {"min_top1_agreement": MIN_AGREEMENT}
    return {**figures, "gates": gates, "passed": reason is None, "failure": reason}


def _write_onnx(
    model: torch.nn.Module, reference: Classifier, metadata: dict[str, str], raw_input: bool,
    int8: bool, path: Path, run_dir: Path,
) -> None:  # fmt: skip
    """The float graph at ``path``, or its INT8 version calibrated on training images."""
    import onnx

    from imagewise.export.onnx import INPUT_NAME, OPSET, set_metadata, to_onnx

    pre = reference.preprocessing
    log.info("exporting %s to ONNX (opset %d)", metadata["model"], OPSET)
    proto = to_onnx(model, pre, reference.temperature, raw_input, metadata)
    if not int8:
        onnx.save(proto, str(path))
        return
    from imagewise.export.quantize import PORTABLE, quantize_int8

    fp32 = path.with_name("float.onnx")
    onnx.save(proto, str(fp32))
    batches = calibration_batches(run_dir, reference, raw_input)
    log.info("quantizing to INT8 (7-bit weights: exact on every CPU), calibrated on %d "
             "training images", sum(len(b) for b in batches))  # fmt: skip
    quantize_int8(fp32, path, batches, INPUT_NAME, PORTABLE)
    quantized = onnx.load(str(path))
    set_metadata(quantized, metadata)  # the quantizer does not promise to carry it over
    onnx.save(quantized, str(path))


def calibration_batches(run_dir: Path, reference: Classifier, raw_input: bool) -> list[np.ndarray]:
    """A few hundred training images of the run, in the graph's input layout, for INT8."""
    from imagewise.export.verify import CALIBRATION_IMAGES, run_images

    pre = reference.preprocessing
    images = run_images(run_dir, pre, reference.classes, ("train",), CALIBRATION_IMAGES)[0]
    batches = []
    for chunk in images.split(32):
        x = chunk.permute(0, 2, 3, 1).contiguous() if raw_input else normalize(pre, chunk)
        batches.append(x.numpy())
    return batches


__all__ = ["FORMATS", "ExportResult", "default_file_name", "export"]
