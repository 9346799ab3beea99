"""A model with its own fit strategy plugs in with its registry entry alone: no stage names it.

The example is a real one-pass classifier, the nearest class mean of the normalized pixels
(sklearn's NearestCentroid as a linear layer: ``-||x - c||^2`` is ``2 c.x - ||c||^2`` plus a
per-image constant that softmax ignores), registered for the test only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import imagewise
from imagewise.models import registry
from imagewise.models.registry import Batches, register_model


class NearestCentroid(nn.Module):
    """Flattened pixels -> a linear layer holding the class means."""

    default_loss = "cross_entropy"
    gradcam_layer = ""

    def __init__(self, num_classes: int, in_chans: int, img_size: int) -> None:
        super().__init__()
        self.num_features = in_chans * img_size * img_size
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes)


def fit_centroids(model: nn.Module, train: Batches, val: Batches, *, seed: int = 0) -> dict:
    """The one-pass fit: each class's mean image, as weights ``2c`` and bias ``-||c||^2``."""
    sums = torch.zeros_like(model.fc.weight, dtype=torch.float64)
    counts = torch.zeros(len(sums), dtype=torch.float64)
    for x, y in train:
        flat = torch.from_numpy(x).flatten(1).double()
        sums.index_add_(0, torch.from_numpy(y), flat)
        counts += torch.bincount(torch.from_numpy(y), minlength=len(counts))
    centroids = (sums / counts.clamp_min(1)[:, None]).float()
    with torch.no_grad():
        model.fc.weight.copy_(2 * centroids)
        model.fc.bias.copy_(-(centroids**2).sum(1))

    def score(batches: Batches) -> tuple[float, float, int]:
        logits, labels = [], []
        with torch.no_grad():
            for x, y in batches:
                logits.append(model(torch.from_numpy(x)))
                labels.append(torch.from_numpy(y))
        if not logits:
            return float("nan"), float("nan"), 0
        z, t = torch.cat(logits), torch.cat(labels)
        loss = float(nn.functional.cross_entropy(z, t))
        return float((z.argmax(1) == t).float().mean()), loss, len(t)

    (train_acc, train_loss, n_train), (val_acc, val_loss, n_val) = score(train), score(val)
    return {
        "train_accuracy": train_acc, "train_loss": train_loss, "train_images": n_train,
        "val_accuracy": val_acc, "val_loss": val_loss, "val_images": n_val,
        "train_seconds": 0.0,
    }  # fmt: skip


@pytest.fixture
def centroid_model(monkeypatch: pytest.MonkeyPatch) -> str:
    """``nearest_centroid`` in the registry for one test: the whole of the edit a user makes."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model(
        "nearest_centroid",
        family="classical",
        description="nearest class mean of the pixels",
        fit="one_pass",
        fitter=fit_centroids,
        gradcam=False,
    )
    def nearest_centroid(
        num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, **_: Any
    ) -> nn.Module:
        return NearestCentroid(num_classes, in_chans, img_size)

    return "nearest_centroid"


def test_a_one_pass_model_trains_evaluates_and_exports_by_its_entry_alone(
    centroid_model: str, folder_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "centroid"
    imagewise.train(str(folder_data), run, model=centroid_model, show_progress=False)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["model"]["capabilities"] == {
        "fit": "one_pass",
        "onnx_export": True,
        "gradcam": False,
    }
    assert meta["training"]["stop_reason"] == "classical fit"
    assert meta["training"]["classical"]["train_images"] == meta["data"]["train_images"]
    assert not (run / "last.ckpt").exists()  # nothing to resume
    ev = imagewise.evaluate(run, write=False, report=False)
    assert ev.accuracy >= 0.8  # three easy shapes: their mean images tell them apart
    exported = imagewise.export(run)  # a linear layer: ONNX, checked against PyTorch
    assert exported.parity["passed"] and exported.path.is_file()


def test_a_one_pass_entry_without_its_fitter_is_refused() -> None:
    with pytest.raises(ValueError, match="a fitter goes with fit='one_pass'"):
        register_model("half_declared", fit="one_pass")


def test_the_fitter_sees_what_evaluation_sees(centroid_model: str, folder_data: Path) -> None:
    """The batches a fitter reads are the evaluation preprocessing: float32, standardized."""
    from imagewise.config import DataConfig
    from imagewise.data.pipeline import prepare
    from imagewise.data.sources import resolve_source
    from imagewise.data.transforms import normalize
    from imagewise.train.classical import NormalizedBatches

    raw = resolve_source(str(folder_data), 0.1, 0.1, 0)
    data, pre = prepare(raw, DataConfig(source=str(folder_data)))
    batches = list(NormalizedBatches(data.train, pre))
    x = np.concatenate([b for b, _ in batches])
    assert x.dtype == np.float32 and len(x) == len(data.train)
    expected = normalize(pre, data.train.images).numpy()
    np.testing.assert_allclose(x, expected, atol=1e-6)
