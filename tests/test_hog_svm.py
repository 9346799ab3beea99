"""The classical baseline hog_svm: HOG features, one-pass fit, run folder, evaluate, predict."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from skimage.feature import hog

import imagewise
import imagewise.cli
from imagewise.config import DataConfig
from imagewise.data.pipeline import prepare
from imagewise.data.sources import resolve_source
from imagewise.data.transforms import normalize
from imagewise.models import create_model, describe_models
from imagewise.models.hog_svm import hog_settings
from imagewise.models.registry import get_entry
from imagewise.runtime.checkpoint import load_weights, save_weights
from imagewise.train.classical import fit_one_pass

from conftest import run_cli

# 24 images per class, 3 classes: a larger test split than the default 10 % so that the
# accuracy below means something (about 21 test images; chance is 1/3).
SPLITS = ["--val-fraction", "0.2", "--test-fraction", "0.3"]
HISTORY_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "epoch_seconds",
    "images_per_second",
]  # fmt: skip  (the columns imagewise.train.loop.fit writes)
TORCHRUN_REFUSAL = "model 'hog_svm' is fitted in one process on the CPU; run it without torchrun"
RESUME_REFUSAL = (
    "model 'hog_svm' is fitted in one pass and has no last.ckpt to resume; start a new run instead"
)


@pytest.fixture(scope="module")
def hog_run(folder_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hog") / "run"
    args = ["train", str(folder_data), "--model", "hog_svm", "--out", str(out), "-q", *SPLITS]
    assert imagewise.cli.main(args) == 0
    return out


def test_features_equal_skimage_hog() -> None:
    torch.manual_seed(0)
    for chans in (1, 3):
        model = create_model("hog_svm", num_classes=3, in_chans=chans, img_size=28).eval()
        x = torch.randn(2, chans, 28, 28).contiguous(memory_format=torch.channels_last)
        kwargs = {"orientations": 9, "pixels_per_cell": (4, 4), "cells_per_block": (2, 2)}
        for i in range(2):
            expected = hog(x[i].mean(0).numpy(), block_norm="L1-sqrt", **kwargs)
            np.testing.assert_allclose(model.hog(x)[i].numpy(), expected, rtol=1e-5, atol=1e-6)
        assert model.forward_features(x).shape == (2, 1296)


def test_settings_and_size_figures() -> None:
    assert hog_settings(28).pixels_per_cell == 4 and hog_settings(224).pixels_per_cell == 16
    model = create_model("hog_svm", num_classes=10, in_chans=1, img_size=28)
    assert model.num_features == 6 * 6 * 2 * 2 * 9
    entry = get_entry("hog_svm")  # what it can do is declared once, on its registry entry
    assert entry is not None and (entry.fit, entry.onnx_export, entry.gradcam) == (
        "one_pass",
        False,
        False,
    )
    assert create_model("hog_svm", 10, in_chans=3, img_size=224).num_features == 13 * 13 * 36
    (row,) = describe_models(["hog_svm"], in_chans=1, img_size=28, num_classes=10)
    assert row["params"] == 1296 * 10 + 10 and row["flops"] == 2 * 1296 * 10
    assert row["family"] == "classical" and "SVM only" in row["description"]


def test_train_writes_a_run_folder(hog_run: Path) -> None:
    names = {p.name for p in hog_run.iterdir()}
    assert {"config.yaml", "meta.json", "model.safetensors", "history.csv"} <= names
    assert "last.ckpt" not in names and "curves.png" not in names
    assert yaml.safe_load((hog_run / "config.yaml").read_text())["model"]["name"] == "hog_svm"
    with open(hog_run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and list(rows[0]) == HISTORY_COLUMNS
    assert float(rows[0]["val_accuracy"]) >= 0.9 and float(rows[0]["train_loss"]) > 0
    meta = json.loads((hog_run / "meta.json").read_text())
    training = meta["training"]
    assert training["epochs_run"] == training["best_epoch"] == 1
    assert training["stop_reason"] == "classical fit" and training["selected_by"] == "val_accuracy"
    fit = training["classical"]
    assert set(fit["candidates"]) == {"0.0003", "0.001", "0.003"} and fit["C"] in (3e-4, 1e-3, 3e-3)
    assert fit["feature_dim"] == 1764 and fit["hog"]["pixels_per_cell"] == 4  # 32 px images
    assert training["best_val_accuracy"] == fit["val_accuracy"]
    # Calibration ran on the validation split, as for every run (with every validation image
    # right there is nothing to fit, and the temperature stays 1).
    if fit["val_accuracy"] == 1.0:
        assert meta["calibration"]["note"].endswith("classified right: nothing to fit")
        assert meta["temperature"] == 1.0
    else:
        assert meta["calibration"]["fitted_on"] == "val" and meta["temperature"] > 0
    weights = load_file(str(hog_run / "model.safetensors"))
    assert set(weights) == {"hog_config", "feature_mean", "feature_scale", "fc.weight", "fc.bias"}
    assert weights["fc.weight"].shape == (3, 1764) and weights["fc.weight"].abs().sum() > 0


def test_evaluate_and_predict_unchanged(
    hog_run: Path, folder_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ev = imagewise.evaluate(hog_run, report=False)
    assert len(ev.labels) >= 18 and ev.accuracy >= 0.9
    image = str(next((folder_data / "square").glob("*.png")))
    code, out, _ = run_cli(["predict", str(hog_run), image, "--top-k", "1"], capsys)
    assert code == 0 and "square" in out


def test_reloaded_weights_predict_like_the_fitted_model(
    hog_run: Path, folder_data: Path, tmp_path: Path
) -> None:
    cfg = DataConfig(source=str(folder_data), val_fraction=0.2, test_fraction=0.3)
    raw = resolve_source(cfg.source, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    data, pre = prepare(raw, cfg)
    model = create_model("hog_svm", num_classes=3, in_chans=pre.channels, img_size=pre.img_size)
    fit = fit_one_pass("hog_svm", model, data.train, data.val, pre, seed=0)
    x = normalize(pre, data.test.images)
    with torch.no_grad():
        fitted = model.eval()(x)
    save_weights(model, tmp_path / "w.safetensors")
    fresh = create_model("hog_svm", num_classes=3, in_chans=pre.channels, img_size=pre.img_size)
    load_weights(fresh, tmp_path / "w.safetensors")
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), fitted)
    # The CLI run made the same fit (same data, same seed), and load() moves to channels_last.
    assert torch.allclose(imagewise.load(hog_run).logits(x), fitted, atol=1e-5)
    assert fit["val_accuracy"] >= 0.9


def test_two_classes_use_one_hyperplane(folder_data: Path) -> None:
    raw = resolve_source(str(folder_data), 0.2, 0.0, 0)
    data, pre = prepare(raw, DataConfig(source=str(folder_data)))
    keep = np.flatnonzero(data.train.labels < 2)
    model = create_model("hog_svm", num_classes=2, in_chans=pre.channels, img_size=pre.img_size)
    fit = fit_one_pass(
        "hog_svm", model, data.train.subset(keep), data.val.subset(np.array([])), pre
    )
    assert fit["selected_by"] == "default C" and fit["train_accuracy"] == 1.0
    assert torch.allclose(model.fc.weight[0], -model.fc.weight[1])


def test_resume_is_refused(hog_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", "--resume", "--out", str(hog_run)], capsys)
    assert code == 2 and err.strip() == f"error: {RESUME_REFUSAL}"


def test_torchrun_is_refused(folder_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "imagewise", "train", str(folder_data), "--model", "hog_svm", "--out", str(out),
         "-q", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode != 0
    assert f"error: {TORCHRUN_REFUSAL}" in ddp.stderr.splitlines()
    assert ddp.stderr.count(TORCHRUN_REFUSAL) == 1  # rank 0 speaks; the others exit quietly
    assert not out.exists()
