"""Which runtime opens an exported file: one row per file type, none of them PyTorch.

``imagewise predict`` and ``imagewise serve`` hand a model file to ``load_model``, which picks
the runtime from the file's suffix and imports only that one, so a device with just OpenVINO (or
just LiteRT, ExecuTorch or ONNX Runtime) installed predicts without torch. A runtime that is not
installed is named in one line with the extra that installs it.

    .onnx    ONNX Runtime   imagewise.edge.onnx.OnnxModel           imagewise[runtime]
    .xml     OpenVINO       imagewise.edge.openvino.OpenVinoModel   imagewise[openvino]
    .tflite  LiteRT         imagewise.edge.litert.LiteRtModel       imagewise[litert]
    .pte     ExecuTorch     imagewise.edge.executorch.ExecuTorchModel  imagewise[executorch]

Edge layer: numpy only here; each runtime's module imports its own package when it opens a file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from imagewise.edge.model import ImageModel
from imagewise.errors import UserError


@dataclass(frozen=True)
class EdgeRuntime:
    """A runtime that runs one kind of exported file on the CPU without PyTorch."""

    suffix: str  # the file's suffix, lower case
    kind: str  # what its files are called: "ONNX", "OpenVINO", ...
    name: str  # how people call the runtime
    package: str  # the Python module the runtime is (found before the model loads)
    extra: str  # pip install "imagewise[EXTRA]"
    model: str  # "module:Class", an ImageModel taking (path, threads=None, few_images=False)

    def missing(self) -> str | None:
        """One line naming the extra when the runtime's package is not installed, else None."""
        if importlib.util.find_spec(self.package) is not None:
            return None
        return (
            f"{self.name} is not installed; it runs {self.suffix} files: "
            f'pip install "imagewise[{self.extra}]"'
        )


RUNTIMES: dict[str, EdgeRuntime] = {
    r.suffix: r
    for r in (
        EdgeRuntime(
            ".onnx",
            "ONNX",
            "ONNX Runtime",
            "onnxruntime",
            "runtime",
            "imagewise.edge.onnx:OnnxModel",
        ),
        EdgeRuntime(
            ".xml",
            "OpenVINO",
            "OpenVINO",
            "openvino",
            "openvino",
            "imagewise.edge.openvino:OpenVinoModel",
        ),
        EdgeRuntime(
            ".tflite",
            "LiteRT",
            "LiteRT",
            "ai_edge_litert",
            "litert",
            "imagewise.edge.litert:LiteRtModel",
        ),
        EdgeRuntime(
            ".pte",
            "ExecuTorch",
            "ExecuTorch",
            "executorch",
            "executorch",
            "imagewise.edge.executorch:ExecuTorchModel",
        ),
    )
}


def runtime_of(path: str | Path) -> EdgeRuntime | None:
    """The runtime for an exported file, by its suffix; None for anything else (a run folder,
    a TorchScript ``.pt``)."""
    return RUNTIMES.get(Path(path).suffix.lower())


def is_edge_file(path: str | Path) -> bool:
    """True for the files an edge runtime opens (``.onnx``, ``.xml``, ``.tflite``, ``.pte``)."""
    return runtime_of(path) is not None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. under taskset or a container's
    cpuset), which is what a runtime's threads should match."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_cpu_device(device: str, kind: str = "ONNX") -> None:
    """The edge runtimes run on the CPU here; any other device asked for is an error."""
    if device not in ("cpu", "auto"):
        raise UserError(f"{kind} models run on the CPU here, not '{device}'")


def existing_model_file(path: str | Path) -> Path:
    """``path`` with ``~`` expanded; one line when it is not a file."""
    found = Path(path).expanduser()
    if not found.is_file():
        raise UserError(f"model file '{path}' does not exist; check the path")
    return found


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    threads: int | None = None,
    check: bool = True,
    few_images: bool = False,
) -> ImageModel:
    """An exported file, ready to predict, with its own runtime and without PyTorch.

    Args:
        path: a ``.onnx``, ``.xml`` (OpenVINO IR), ``.tflite`` or ``.pte`` file written by
            ``imagewise export``.
        device: ``cpu`` or ``auto``.
        threads: the runtime's threads (default: the CPUs this process may use).
        check: refuse a model whose outputs for a plain grey image are not finite (NaN or inf).
        few_images: the model answers a handful of images (ONNX Runtime: a lighter session).

    Raises:
        UserError: in one line: the file is missing or of an unknown kind, its runtime is not
            installed (naming the extra), it has no imagewise metadata, or (with ``check``) it
            gives no finite outputs.
    """
    from imagewise.edge.finite import unusable_reason

    runtime = runtime_of(path)
    if runtime is None:
        known = ", ".join(RUNTIMES)
        raise UserError(f"'{path}' is not a model file an edge runtime opens ({known})")
    check_cpu_device(device, runtime.kind)
    found = existing_model_file(path)
    if problem := runtime.missing():
        raise UserError(problem)
    module, _, cls = runtime.model.partition(":")
    model: ImageModel = getattr(importlib.import_module(module), cls)(found, threads, few_images)
    if check and (reason := unusable_reason(model, path)):
        raise UserError(reason)
    return model


__all__ = [
    "RUNTIMES",
    "EdgeRuntime",
    "check_cpu_device",
    "existing_model_file",
    "is_edge_file",
    "load_model",
    "runtime_of",
    "usable_cpus",
]
