"""Export: a trained run as a model file for another runtime (ONNX, TorchScript, OpenVINO,
LiteRT, ExecuTorch, Core ML, the browser), checked against PyTorch.

The package is light: its contents load on first use (``import imagewise`` stays quick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.export.exporter import (
        FORMATS,
        ExportResult,
        calibration_batches,
        check_target,
        default_file_name,
        export,
        export_many,
        parity_record,
    )

_NAMES = (
    "ExportResult",
    "FORMATS",
    "calibration_batches",
    "check_target",
    "default_file_name",
    "export",
    "export_many",
    "parity_record",
)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        from imagewise.export import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMATS",
    "ExportResult",
    "calibration_batches",
    "check_target",
    "default_file_name",
    "export",
    "export_many",
    "parity_record",
]
