"""PyTorch -> TorchScript (``torch.jit.trace``), for C++ (libtorch) and PyTorch Mobile users.

The traced module maps a normalized float batch (N, C, H, W) to logits, like the run's model;
the preprocessing, classes and temperature travel in the extra file ``imagewise.json``, the same
string map that ONNX files carry, and ``imagewise.load("model.pt")`` reads them back.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from imagewise.edge.spec import InputContract
from imagewise.predict.file_meta import EXTRA_FILE

if TYPE_CHECKING:
    from imagewise.export.targets import ExportJob
    from imagewise.predict.base import BaseClassifier


def save_torchscript(
    model: nn.Module, pre: InputContract, metadata: Mapping[str, str], path: str | Path
) -> None:
    """Trace ``model`` (eval mode, CPU) on a batch of 2 and save it with ``metadata``."""
    model = model.to(memory_format=torch.contiguous_format).eval()
    x = torch.randn(2, pre.channels, pre.img_size, pre.img_size)
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit is deprecated in favour of torch.export, but it is what libtorch loads.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, x)
        extra = {EXTRA_FILE: json.dumps(dict(metadata), ensure_ascii=False)}
        torch.jit.save(traced, str(path), _extra_files=extra)


def write(job: ExportJob, path: Path) -> None:
    """The ``torchscript`` format's writer."""
    save_torchscript(job.module, job.reference.preprocessing, job.metadata, path)


def load(path: Path, threads: int | None = None) -> BaseClassifier:
    """A TorchScript file as a classifier (``imagewise.load``), for the export's check."""
    from imagewise.predict.exported import load_exported

    return load_exported(path)
