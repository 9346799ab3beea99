"""Imbalanced classes: --class-weight auto, --sampler balanced, macro F1 picks the best epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

import imagewise
from imagewise.data.pipeline import BalancedSampler, TensorBatches, balanced_draw
from imagewise.data.sources import Split
from imagewise.train.loop import macro_f1
from imagewise.train.task import ClassificationTask, class_weights

from conftest import draw, run_cli

FAST = {"model": "lenet5", "batch_size": 8, "img_size": 32, "augment": "none", "precision": "fp32"}


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """circle 40, square 40, stripes 8 images: 5x imbalance."""
    root = tmp_path_factory.mktemp("imb") / "shapes"
    rng = np.random.default_rng(1)
    for kind, count in (("circle", 40), ("square", 40), ("stripes", 8)):
        (root / kind).mkdir(parents=True)
        for i in range(count):
            draw(kind, 32, rng, rgb=False).save(root / kind / f"{i:03d}.png")
    return root


def test_class_weights_are_inverse_frequency() -> None:
    labels = np.array([0] * 8 + [1] * 2)
    assert class_weights(labels, 3).tolist() == [0.625, 2.5, 1.0]  # 10 / (2 x count); absent: 1


def test_weighted_cross_entropy_matches_the_hand_computed_value() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([0, 1, 1])
    task = ClassificationTask(torch.nn.Identity(), "cross_entropy", 2)
    task.class_weight = torch.tensor([0.5, 2.0])
    nll = -F.log_softmax(logits, dim=1)[torch.arange(3), target]
    w = torch.tensor([0.5, 2.0, 2.0])
    assert float(task.loss(logits, target)) == pytest.approx(float((w * nll).sum() / w.sum()))
    task.loss_name = "mse"  # other losses: a weighted mean over images
    per_image = (logits.softmax(1) - F.one_hot(target, 2)).pow(2).mean(1)
    assert float(task.loss(logits, target)) == pytest.approx(float((w * per_image).sum() / w.sum()))


def test_balanced_draw_gives_every_class_the_same_share() -> None:
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    order = balanced_draw(labels, seed=0, epoch=1)
    shares = np.bincount(labels[order.numpy()], minlength=3) / len(order)
    assert len(order) == 1000 and np.allclose(shares, 1 / 3, atol=0.05)
    assert torch.equal(order, balanced_draw(labels, seed=0, epoch=1))  # every process alike
    assert not torch.equal(order, balanced_draw(labels, seed=0, epoch=2))
    ranks = [list(BalancedSampler(labels, 0, rank, 2)) for rank in (0, 1)]
    for sampler_rank in ranks:
        assert len(sampler_rank) == 500
    batches = TensorBatches(
        Split(labels, torch.zeros(1000, 1, 2, 2)), 100, shuffle=True, balanced=True
    )
    batches.set_epoch(1)
    drawn = np.concatenate([y.numpy() for _, y in batches])
    assert np.allclose(np.bincount(drawn) / len(drawn), 1 / 3, atol=0.05)


def test_macro_f1_equals_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    pred[pred == 3] = 2  # a class never predicted
    t, p = torch.from_numpy(true), torch.from_numpy(pred)
    counts = [
        *torch.bincount(t[p == t], minlength=4).tolist(),
        *torch.bincount(p, minlength=4).tolist(),
        *torch.bincount(t, minlength=4).tolist(),
    ]
    expected = f1_score(true, pred, average="macro", zero_division=0)
    assert macro_f1([float(c) for c in counts]) == pytest.approx(expected)


def test_imbalanced_classes_pick_the_best_epoch_by_macro_f1(
    imbalanced: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="imagewise")
    out = tmp_path / "weighted"
    result = imagewise.train(
        str(imbalanced), out, epochs=2, class_weight="auto", sampler="balanced", **FAST
    )
    assert result.selected_by == "val_macro_f1"
    # the training split holds 32 / 32 / 6 of them: weights 70 / (3 x count)
    assert "classes imbalanced 5.3x" in caplog.text
    assert "class weights: circle 0.73, square 0.73, stripes 3.89" in caplog.text
    meta = json.loads((out / "meta.json").read_text())
    assert meta["training"]["selected_by"] == "val_macro_f1"
    assert 0 <= meta["training"]["best_val_macro_f1"] <= 1
    header = (out / "history.csv").read_text().splitlines()[0]
    assert "val_macro_f1" in header.split(",")
    forced = imagewise.train(str(imbalanced), tmp_path / "acc", epochs=1, select_by="accuracy",
                             **FAST)  # fmt: skip
    assert forced.selected_by == "val_accuracy"


def test_balanced_classes_keep_accuracy(folder_data: Path, tmp_path: Path) -> None:
    result = imagewise.train(str(folder_data), tmp_path / "r", epochs=1, **FAST)
    assert result.selected_by == "val_accuracy"


def test_bad_imbalance_flags_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for flags, message in (
        (["--sampler", "weighted"], "--sampler must be shuffle or balanced, not 'weighted'"),
        (["--class-weight", "yes"], "--class-weight must be none or auto, not 'yes'"),
        (["--select-by", "f1"], "--select-by must be auto, accuracy, macro_f1 or map, not 'f1'"),
    ):
        code, _, err = run_cli(["train", "digits", "--out", str(tmp_path / "x"), *flags], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
