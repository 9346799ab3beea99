"""benchmarks/multilabel_mosaics.py's mosaic builder, on tiny made-up data (no Fashion-MNIST)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "multilabel_mosaics.py"


def _bench():
    spec = importlib.util.spec_from_file_location("multilabel_mosaics", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(values: list[int]) -> np.ndarray:
    """One flat 28x28 image per value: a tile's pixels say which image it is."""
    return np.stack([np.full((1, 28, 28), v, np.uint8) for v in values])


def test_labels_are_the_classes_of_the_tiles():
    bench = _bench()
    values = list(range(10, 90, 8))  # 10 images, image i has value 10 + 8i and class i % 3
    labels = np.arange(10) % 3
    x, y, tiles = bench.build_mosaics(
        _images(values), labels, 200, 3, 0.3, np.random.default_rng(1)
    )
    assert x.shape == (200, 56, 56) and x.dtype == np.uint8
    assert y.shape == (200, 3) and y.dtype == np.uint8
    for i in range(200):
        expected = np.zeros(3, np.uint8)
        for k in range(4):
            r, c = divmod(k, 2)
            tile = x[i, r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28]
            if tiles[i, k] < 0:
                assert not tile.any()  # blank: black
            else:
                assert (tile == values[tiles[i, k]]).all()
                expected[labels[tiles[i, k]]] = 1
        assert (y[i] == expected).all()
    assert (tiles < 0).any() and (tiles >= 0).any()
    assert {int(n) for n in y.sum(1)} >= {1, 2, 3}  # mosaics hold several distinct labels


def test_blank_tiles_give_no_label():
    bench = _bench()
    x, y, tiles = bench.build_mosaics(
        _images([200] * 4), np.arange(4), 20, 4, 1.0, np.random.default_rng(0)
    )
    assert (tiles == -1).all() and not x.any() and not y.any()
    x, y, _ = bench.build_mosaics(
        _images([200] * 4), np.arange(4), 20, 4, 0.0, np.random.default_rng(0)
    )
    assert (x == 200).all() and (y.sum(1) >= 1).all()


def test_dataset_tiles_come_from_their_own_split(tmp_path):
    """Train tiles only from training images, test tiles only from test images; the manifest's
    labels match the pixels."""
    bench = _bench()
    train_values, test_values = list(range(1, 101)), list(range(150, 250))
    data = SimpleNamespace(
        classes=["a/b", "c", "d", "e"],
        train=SimpleNamespace(
            images=torch.from_numpy(_images(train_values)), labels=np.arange(100) % 4
        ),
        test=SimpleNamespace(
            images=torch.from_numpy(_images(test_values)), labels=np.arange(100) % 4
        ),
    )
    manifest = bench.write_dataset(tmp_path, train=30, test=12, val=6, blank=0.3, data=data)
    rows = list(csv.DictReader(manifest.open()))
    assert [r["split"] for r in rows] == ["train"] * 30 + ["val"] * 6 + ["test"] * 12
    seen: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    for row in rows:
        pixels = np.asarray(Image.open(row["path"]))
        assert pixels.shape == (56, 56)
        present = {int(v) for v in np.unique(pixels)} - {0}
        seen[row["split"]] |= present
        expected = {data.classes[(v - (1 if v < 150 else 150)) % 4] for v in present}
        assert set(filter(None, row["labels"].split("|"))) == expected
    assert seen["train"] and seen["train"] <= set(train_values)
    assert seen["val"] and seen["val"] <= set(train_values)
    assert not seen["train"] & seen["val"]  # val tiles: a held-out part of the training images
    assert seen["test"] and seen["test"] <= set(test_values)
    arrays = np.load(manifest.parent / "arrays.npz")
    assert arrays["x_train"].shape == (30, 56, 56) and arrays["y_test"].shape == (12, 4)
