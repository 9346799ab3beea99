"""The library's summaries, the text the command line prints, on results made by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagewise.evaluate.compare import format_comparison
from imagewise.evaluate.evaluation import Evaluation
from imagewise.evaluate.scores import CalibrationScores, ClassScores, Confusion, Metrics, Scores
from imagewise.export import ExportResult
from imagewise.features import Features
from imagewise.models.summary import format_models
from imagewise.predict.sorting import SortResult
from imagewise.train import TrainResult


def test_train_summary_says_which_epoch_was_kept() -> None:
    result = TrainResult(
        run=Path("runs/a"), model="lenet5", epochs=3, best_epoch=2, best_val_accuracy=0.5,
        train_seconds=12.4, stop_reason="done", selected_by="val_macro_f1",
    )  # fmt: skip
    assert result.summary() == (
        "trained lenet5 for 3 epochs in 12s; best validation accuracy 50.00% (epoch 2, picked "
        "by macro F1)\nrun folder: runs/a"
    )
    result.epochs, result.best_val_accuracy = 1, float("nan")
    assert result.summary("distilled runs/big into lenet5").startswith(
        "distilled runs/big into lenet5 for 1 epoch in 12s; no validation split: kept epoch 2"
    )


def test_evaluation_summary_lists_scores_per_class_and_files() -> None:
    metrics = Metrics(
        images=16, accuracy=0.8125, top_k_accuracy={"1": 0.8125, "3": 0.95}, log_loss=0.3,
        per_class={"cat": ClassScores(0.5, 0.25, 0.3333, 4), "dog": ClassScores(1, 1, 1, 12)},
        macro=Scores(0.7, 0.6, 0.6667), weighted=Scores(0.8, 0.8, 0.8123),
        confusion_matrix=[[1, 3], [0, 12]], split="test", data="pets",
        most_confused=[Confusion("cat", "dog", 3)],
        calibration=CalibrationScores(1.25, 0.05, 0.02, 0.4, 0.3),
    )  # fmt: skip
    files = {"metrics": Path("r/eval/metrics.json"), "report": Path("r/eval/report.html")}
    ev = Evaluation(metrics, ["cat", "dog"], np.zeros(2, int), np.ones((2, 2)), files=files)
    assert ev.summary().splitlines() == [
        "16 images (test of pets)",
        "accuracy 81.25%   macro F1 0.6667   weighted F1 0.8123",
        "top-3 accuracy 95.00%",
        "",
        "class                precision  recall      f1  support",
        "cat                      0.500   0.250   0.333        4",
        "dog                      1.000   1.000   1.000       12",
        "",
        "most confused: cat -> dog (3 images)",
        "calibration: ECE 0.0500 before, 0.0200 after temperature scaling (T = 1.25)",
        "wrote r/eval/metrics.json, r/eval/report.html",
        "report: r/eval/report.html",
    ]


def test_export_summary_reports_the_check() -> None:
    parity = {
        "bytes": 1_234_567, "images": 60, "split": "val", "top1_agreement": 59 / 60,
        "max_abs_probability_difference": 0.000123, "accuracy_exported": 0.9,
        "accuracy_pytorch": 0.9167, "passed": True, "runtime": "ONNX Runtime",
    }  # fmt: skip
    result = ExportResult(Path("m.int8.onnx"), "onnx", True, False, parity, Path("parity.json"))
    assert result.summary().splitlines() == [
        "wrote m.int8.onnx (1.23 MB; onnx, INT8)",
        "checked on 60 val images by ONNX Runtime: top-1 agreement with PyTorch 98.33%, "
        "largest probability difference 0.00012",
        "accuracy 90.00% (PyTorch 91.67%)",
        "figures: parity.json",
    ]


def test_models_table_aligns_measured_speeds() -> None:
    row = {
        "name": "lenet5", "family": "classic", "params": 61_706, "flops": 845_000,
        "pretrained": True, "pretrained_here": False, "description": "LeNet-5",
        "train_images_per_s": 12_345.6, "infer_images_per_s": None,
    }  # fmt: skip
    lines = format_models([row], 28, measured=True).splitlines()
    assert lines[0].split() == [
        "model", "family", "params", "GFLOPs", "pretrained", "train/s", "infer/s", "description"
    ]  # fmt: skip
    assert lines[1].strip() == "@28px"
    assert lines[2].split() == [
        "lenet5",
        "classic",
        "0.06M",
        "0.001",
        "hub",
        "12,346",
        "-",
        "LeNet-5",
    ]


def test_comparison_as_csv_and_json() -> None:
    rows = [{"name": "a", "accuracy": 0.5}, {"name": "b", "accuracy": None}]
    assert format_comparison(rows, "csv") == "name,accuracy\na,0.5\nb,"
    assert format_comparison(rows, "json").startswith('[\n  {\n    "name": "a"')
    assert format_comparison(rows).splitlines()[2].split() == ["a", "50.00%"]


def test_sort_summary_counts_each_folder() -> None:
    result = SortResult(Path("o"), Path("o/p.csv"), {"dog": 2, "_unsure": 1}, earlier=3)
    assert result.summary().splitlines() == [
        "copied 3 images into o: _unsure 1, dog 2",
        "_unsure: top probability below 50%; review them by hand",
        "3 images were sorted by an earlier run and left as they are",
        "list: o/p.csv",
    ]
    result.gone = ["/in/a.png", "/in/b.png"]
    gone = "2 images went away before they were placed; skipped"
    assert result.summary().splitlines()[-2] == gone


def test_features_summary_names_the_file_only_when_one_was_written() -> None:
    feats = Features(
        np.zeros((2, 8), np.float32), ["a.png", "b.png"], ["", ""], ["", ""], [], "layer3",
        "lenet5", "r", skipped=[("c.png", "unreadable")], seconds=1.25,
    )  # fmt: skip
    plain = "2 images x 8 features (layer3, lenet5) in 1.2s (1 unreadable skipped)"
    assert feats.summary() == plain
    feats.files = {"features": Path("f.npz"), "map": Path("m.png")}
    assert feats.summary().splitlines() == [
        f"wrote f.npz: {plain}",
        "map: m.png",
    ]
