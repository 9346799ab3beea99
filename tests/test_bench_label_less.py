"""benchmarks/label_less.py end to end on a tiny made-up IDX dataset (no Fashion-MNIST)."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "label_less.py"
CLASSES = 10


def _bench():
    if "label_less" in sys.modules:
        return sys.modules["label_less"]
    spec = importlib.util.spec_from_file_location("label_less", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["label_less"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _make_idx(folder: Path, train: int = 150, test: int = 60) -> Path:
    """Ten easy classes of 28x28 images (a bright bar whose row says the class) as IDX files
    named as Fashion-MNIST's."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for prefix, n in (("train", train), ("t10k", test)):
        labels = np.arange(n) % CLASSES
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 + 2 * k : 4 + 2 * k, 4:24] = 230
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The benchmark run once on the tiny data: its JSON path and its command line."""
    root = tmp_path_factory.mktemp("label-less")
    args = [
        "--idx-dir", str(_make_idx(root / "idx")), "--cache", str(root / "cache"),
        "--work", str(root), "--json", str(root / "out.json"), "--plot", str(root / "plot.png"),
        "--pool", "120", "--test-size", "50", "--start", "1", "--batch", "10", "--labels", "20",
        "--epochs", "2", "--seeds", "0", "--strategies", "random", "mixed",
    ]  # fmt: skip
    assert _bench().main(args) == 0
    return root / "out.json", args


def test_json_holds_every_point_with_accuracies_in_range(tiny, capsys):
    path, _ = tiny
    results = json.loads(path.read_text())
    assert results["format"] == "imagewise-label-less/1"
    assert results["test_images"] == 50
    points = results["points"]
    assert {(p["strategy"], p["labels"]) for p in points} == {
        (s, n) for s in ("random", "mixed") for n in (10, 20)
    }
    assert all(p["variant"] == "labelled" and 0.0 <= p["accuracy"] <= 1.0 for p in points)
    assert all(p["train_seconds"] > 0 for p in points)
    # every strategy starts from the same images, one per class: one shared first run
    first = {p["strategy"]: p["accuracy"] for p in points if p["labels"] == 10}
    assert first["random"] == first["mixed"]
    stats = results["summary"]["accuracy"]["labelled"]["mixed"]["20"]
    assert stats["min"] <= stats["mean"] <= stats["max"] and stats["seeds"] == 1
    reach = results["summary"]["reach_random"]
    assert reach["random_labels"] == 20
    assert set(reach["labels_needed"]["labelled"]) == {"random", "mixed"}


def test_each_trajectory_labels_new_pool_images(tiny):
    path, _ = tiny
    data = _bench().load_dataset(path.parent / "idx", path.parent / "cache", 120, 50)
    assert len(data.pool) == 120 and all(p.is_file() for p in data.pool_paths)
    for traj in json.loads(path.read_text())["trajectories"]:
        order = traj["order"]
        assert len(order) == 20 and len(set(order)) == 20  # the next batch, none labelled twice
        assert all(0 <= i < 120 for i in order)
        assert sorted(data.pool_labels[order[:10]]) == list(range(CLASSES))  # one per class


def test_plot_is_written_and_resume_keeps_the_points(tiny, capsys):
    path, args = tiny
    assert (path.parent / "plot.png").stat().st_size > 10_000
    before = json.loads(path.read_text())["points"]
    assert _bench().main([*args, "--resume"]) == 0
    assert json.loads(path.read_text())["points"] == before
    assert "labels needed to reach it" in capsys.readouterr().out


def test_resume_refuses_other_settings(tiny):
    _, args = tiny
    with pytest.raises(SystemExit, match="other settings"):
        _bench().main([*args, "--resume", "--epochs", "3"])


def _self_training() -> bool:
    import importlib
    import inspect

    train = importlib.import_module("imagewise.train.run").train
    return "unlabelled" in inspect.signature(train).parameters


@pytest.mark.skipif(not _self_training(), reason="imagewise.train has no unlabelled= here")
def test_pseudo_point_follows_the_labelled_trajectory(tiny, tmp_path):
    path, args = tiny
    copy = tmp_path / "pseudo.json"
    copy.write_text(path.read_text())
    i = args.index("--json")
    args = [*args[:i], "--json", str(copy), *args[i + 2 :], "--plot", ""]
    assert _bench().main([*args, "--resume", "--pseudo", "--pseudo-at", "20"]) == 0
    results = json.loads(copy.read_text())
    pseudo = [p for p in results["points"] if p["variant"] == "pseudo"]
    assert {(p["strategy"], p["labels"]) for p in pseudo} == {("random", 20), ("mixed", 20)}
    labelled = {
        p["strategy"]: p
        for p in results["points"]
        if p["labels"] == 20 and p["variant"] == "labelled"
    }
    for p in pseudo:
        assert 0.0 <= p["accuracy"] <= 1.0
        if "refused" in p:  # the tiny teacher reached the precision at no threshold
            assert "precision" in p["refused"] and p["pseudo_labelled"] == 0
            assert p["accuracy"] == labelled[p["strategy"]]["accuracy"]
        else:
            assert p["pool_images"] == 100  # the pool less the 20 labelled images
            assert 0 <= p["pseudo_labelled"] <= 100 and 0 <= p["threshold"] <= 1
    # the labelled-only points and the order they were picked in are as before
    before = json.loads(path.read_text())
    assert [t["order"] for t in results["trajectories"]] == [
        t["order"] for t in before["trajectories"]
    ]
