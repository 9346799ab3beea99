"""Where a model can be exported to: one row per format, and what each writer is handed.

``imagewise export RUN --format F`` looks the format up here: the file it writes, the precisions
it offers, the Python packages its converter needs (checked before any work, a missing one named
in one line with the extra that installs it), the function that writes it and how its parity is
checked. A writer is a function ``write(job: ExportJob, path: Path) -> None`` in its own module
(``imagewise.export.openvino``, ...): it writes the model at ``path`` (inside a temporary
folder; the exporter moves it into place only once its check has passed) with the job's
metadata in the file (or a sidecar ``.json`` where the format has none).

    format       writes               precisions                 runtime of the parity check
    onnx         model.onnx           float32, int8              ONNX Runtime
    torchscript  model.pt             float32                    PyTorch (libtorch)
    openvino     model.xml (+ .bin)   float32, float16, int8     OpenVINO
    tflite       model.tflite         float32, float16, int8     LiteRT
    executorch   model.pte            float32, int8              ExecuTorch (XNNPACK)
    coreml       model.mlpackage/     float32, float16           none on Linux: spec checked only
    web          web/                 float32, int8              onnxruntime-web in Chromium
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagewise.errors import UserError

if TYPE_CHECKING:
    import torch

    from imagewise.edge.spec import ModelSpec
    from imagewise.predict.base import Classifier

PRECISIONS = ("float32", "float16", "int8")
PRECISION_TAGS = {"float32": "", "float16": ".fp16", "int8": ".int8"}
NOT_RUN = "not run on this OS"


@dataclass(frozen=True)
class Target:
    """One export format."""

    name: str
    suffix: str  # the model file's (or folder's) suffix; "" for a folder named after the format
    precisions: tuple[str, ...]
    packages: tuple[str, ...]  # Python modules the converter needs
    extra: str  # pip install "imagewise[EXTRA]" installs them
    writer: str  # "module:function", write(job, path)
    # How the written file is opened for the parity check: "module:function" taking the path
    # and returning an ImageModel; None: no runtime on this OS (parity NOT_RUN, never claimed).
    loader: str | None
    companions: tuple[str, ...] = ()  # files written beside the model (OpenVINO's ".bin")
    folder: bool = False  # the model is a folder (web, Core ML)
    raw_input: bool = False  # --raw-input allowed

    def file_name(self, precision: str = "float32") -> str:
        """``model.xml``, ``model.int8.tflite``, ``model.fp16.mlpackage``, ``web``, ``web.int8``."""
        tag = PRECISION_TAGS[precision]
        if not self.suffix:
            return f"{self.name}{tag}"
        return f"model{tag}{self.suffix}"

    def missing(self) -> str | None:
        """One line naming the extra when a package the converter needs is not installed."""
        absent = [p for p in self.packages if importlib.util.find_spec(p) is None]
        if not absent:
            return None
        return (
            f"--format {self.name} needs {', '.join(absent)}, which is not installed: "
            f'pip install "imagewise[{self.extra}]"'
        )

    def write(self, job: ExportJob, path: Path) -> None:
        """Write the model at ``path`` with this format's writer."""
        _function(self.writer)(job, path)

    def load(self, path: Path, threads: int | None = None) -> Any:
        """The written model opened by its runtime (an ``ImageModel``), for the check."""
        if self.loader is None:
            raise RuntimeError(f"{self.name} has no runtime on this OS")
        return _function(self.loader)(path, threads)

    def parts(self, path: Path) -> list[Path]:
        """Every path the model consists of: itself and its companions."""
        return [path, *(path.with_suffix(s) for s in self.companions)]


def _function(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "onnx",
            ".onnx",
            ("float32", "int8"),
            ("onnx", "onnxruntime"),
            "all",
            "imagewise.export.onnx:write",
            "imagewise.edge.onnx:OnnxModel",
            raw_input=True,
        ),
        Target(
            "torchscript",
            ".pt",
            ("float32",),
            ("torch",),
            "all",
            "imagewise.export.torchscript:write",
            "imagewise.export.torchscript:load",
        ),
        Target(
            "openvino",
            ".xml",
            ("float32", "float16", "int8"),
            ("openvino",),
            "openvino",
            "imagewise.export.openvino:write",
            "imagewise.edge.openvino:OpenVinoModel",
            companions=(".bin",),
        ),
        Target(
            "tflite",
            ".tflite",
            ("float32", "float16", "int8"),
            ("ai_edge_litert", "onnx"),  # onnx2tf runs in its own environment (export.tflite)
            "tflite",
            "imagewise.export.tflite:write",
            "imagewise.edge.litert:LiteRtModel",
        ),
        Target(
            "executorch",
            ".pte",
            ("float32", "int8"),
            ("executorch",),
            "executorch",
            "imagewise.export.executorch:write",
            "imagewise.edge.executorch:ExecuTorchModel",
        ),
        Target(
            "coreml",
            ".mlpackage",
            ("float32", "float16"),
            ("coremltools",),
            "coreml",
            "imagewise.export.coreml:write",
            None,
            folder=True,
        ),
        Target(
            "web",
            "",
            ("float32", "int8"),
            ("onnx", "onnxruntime"),
            "all",
            "imagewise.export.web:write",
            "imagewise.export.web:load",
            folder=True,
        ),
    )
}
FORMATS = tuple(TARGETS)


def target(name: str) -> Target:
    """The format called ``name``; one line listing them for anything else."""
    try:
        return TARGETS[name.lower()]
    except KeyError:
        raise UserError(
            f"unknown export format '{name}'; choose one of {', '.join(FORMATS)}"
        ) from None


@dataclass
class ExportJob:
    """What a writer is handed: the network, what the file must carry, and shared inputs.

    ``module`` is a float32 CPU copy of the run's network in eval mode (a writer may change it);
    ``graph`` wraps it as every exported file computes: the (raw or normalized) input to
    ``(logits, probabilities)`` with the run's temperature. ``metadata`` is the string map every
    file carries (``imagewise.export.metadata.build_metadata``): its classes, input contract
    and temperature. ``calibration`` gives INT8 writers a few hundred of the run's training
    images (uint8, N x C x H x W), ``onnx_file`` the float (or INT8) ONNX graph written once per
    export, for writers that convert from ONNX (OpenVINO, web).
    """

    module: torch.nn.Module
    reference: Classifier
    spec: ModelSpec
    metadata: dict[str, str]
    precision: str
    raw_input: bool
    run_dir: Path
    workdir: Path
    calibration_images: Callable[[], np.ndarray]
    onnx_writer: Callable[[ExportJob, str], Path]
    _onnx: dict[str, Path] = field(default_factory=dict)

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

    @cached_property
    def graph(self) -> torch.nn.Module:
        """The module every exported file computes: input -> (logits, probabilities)."""
        from imagewise.export.graph import ExportModule

        pre = self.reference.preprocessing
        return ExportModule(
            self.module, pre, self.reference.temperature, self.raw_input,
            multilabel=self.reference.spec.multilabel,
        ).eval()  # fmt: skip

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A batch of the graph's input (normalized floats, or uint8 NHWC for raw input)."""
        from imagewise.export.graph import example_input

        return example_input(self.reference.preprocessing, self.raw_input, batch)

    def calibration(self) -> np.ndarray:
        """A few hundred of the run's training images, uint8 (N, C, H, W) at the model's size."""
        return self.calibration_images()

    def calibration_batches(self) -> list[np.ndarray]:
        """The calibration images in the ONNX graph's input layout (normalized NCHW floats, or
        uint8 NHWC for raw input), in batches of 32."""
        from imagewise.export.graph import graph_batches

        return graph_batches(self.reference.preprocessing, self.calibration(), self.raw_input)

    def onnx_file(self, precision: str = "float32") -> Path:
        """The run's ONNX graph (``float32`` or ``int8``, with the metadata), written once into
        the job's temporary folder."""
        if precision not in self._onnx:
            self._onnx[precision] = self.onnx_writer(self, precision)
        return self._onnx[precision]


__all__ = ["FORMATS", "NOT_RUN", "PRECISIONS", "TARGETS", "ExportJob", "Target", "target"]
