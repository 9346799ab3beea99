"""The command line end to end on tiny data, and every error message word for word."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagewise.data import builtin

from conftest import CLASSES, make_folder_dataset, run_cli


def test_evaluate_writes_metrics_and_confusion_matrix(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["evaluate", str(trained_run)], capsys)
    assert code == 0, err
    metrics = json.loads((trained_run / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] == 6  # 10% of 24 per class -> 2
    assert metrics["accuracy"] >= 5 / 6  # three easy shapes
    assert f"accuracy {metrics['accuracy']:.2%}" in out
    assert set(metrics["per_class"]) == set(CLASSES)
    assert sum(c["support"] for c in metrics["per_class"].values()) == 6
    assert 0 <= metrics["macro"]["f1"] <= 1
    assert metrics["top_k_accuracy"] == {"1": metrics["accuracy"]}  # k < 3 classes only
    rows = list(csv.reader((trained_run / "eval" / "confusion_matrix.csv").open()))
    assert rows[0][1:] == list(CLASSES)
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == 6
    for png in ("confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert (trained_run / "eval" / png).read_bytes()[:4] == b"\x89PNG"


def test_predict_table_csv_json_on_files_folders_and_globs(
    trained_run: Path, folder_data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    square = str(folder_data / "square" / "001.png")
    code, out, _ = run_cli(["predict", str(trained_run), square, "--top-k", "2"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("image") and lines[1].startswith(square) and "%" in lines[1]

    code, out, _ = run_cli(
        ["predict", str(trained_run), str(folder_data / "circle"), "--format", "json"], capsys
    )
    data = json.loads(out)
    assert len(data) == 24  # broken.jpg, found in the folder, is skipped with a warning
    first = data[0]["top_k"]
    assert len(first) == 3 and first[0]["probability"] >= first[1]["probability"]
    assert abs(sum(k["probability"] for k in first) - 1) < 1e-3

    pattern = str(folder_data / "s*" / "00[0-2].*")
    target = tmp_path / "preds.csv"
    code, out, _ = run_cli(
        [
            "predict",
            str(trained_run),
            pattern,
            "--format",
            "csv",
            "--top-k",
            "1",
            "--out",
            str(target),
        ],
        capsys,
    )
    assert code == 0 and "wrote 6 predictions" in out
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 6 and {r["rank"] for r in rows} == {"1"}
    assert all(r["class"] in CLASSES for r in rows)


def test_train_evaluate_on_digits_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "digits"
    code, stdout, err = run_cli(
        [
            "train",
            "digits",
            "--model",
            "tutorial_cnn",
            "--epochs",
            "3",
            "--batch-size",
            "32",
            "--augment",
            "none",
            "--out",
            str(out),
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    assert "best validation accuracy" in stdout
    code, stdout, _ = run_cli(["evaluate", str(out)], capsys)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert code == 0 and metrics["images"] == 179 and metrics["accuracy"] > 0.8


def test_models_lists_every_registered_model(capsys: pytest.CaptureFixture[str]) -> None:
    from imagewise.models import list_models

    code, out, _ = run_cli(["models", "--img-size", "28", "--channels", "1"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[2:] if line.strip()]
    assert set(list_models()) <= set(names)
    tutorial = next(line for line in out.splitlines() if line.startswith("tutorial_cnn"))
    assert "0.09M" in tutorial and "0.006" in tutorial  # 93,322 params, 5.6 MFLOPs


def _error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err.strip()


def test_error_missing_dataset_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert _error_line(["train", str(missing)], capsys) == (
        f"error: dataset '{missing}' does not exist; give a folder of class folders, a CSV "
        "manifest, or a built-in name (digits, fashion-mnist, photos)"
    )


def test_error_empty_class_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d", per_class=3, corrupt=False)
    (root / "empty").mkdir()
    assert _error_line(["train", str(root), "--out", str(tmp_path / "r")], capsys) == (
        f"error: class folder '{root / 'empty'}' has no images; add images to it or remove "
        "the folder"
    )
    assert not (tmp_path / "r").exists()  # nothing written for a failed start


def test_error_unreadable_image_given_to_predict(
    trained_run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("just text")
    assert _error_line(["predict", str(trained_run), str(fake)], capsys) == (
        f"error: cannot read image '{fake}' (not an image, or a format imagewise cannot read); "
        "give a JPEG, PNG, BMP, TIFF, WebP or GIF file"
    )


def test_error_unknown_model(
    folder_data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = _error_line(
        ["train", str(folder_data), "--model", "resnet19", "--out", str(tmp_path / "r")], capsys
    )
    assert line == (
        "error: unknown model 'resnet19'; run 'imagewise models' to list the built-in ones, "
        "or give any timm model name (did you mean resnet9, resnet18, resnet50?)"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_error_gpu_asked_for_without_gpu(
    folder_data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = _error_line(
        ["train", str(folder_data), "--device", "cuda", "--out", str(tmp_path / "r")], capsys
    )
    assert line == (
        "error: a GPU was asked for (--device cuda) but none is available; use --device cpu "
        "or --device auto"
    )


def test_error_not_a_run_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert _error_line(["evaluate", str(tmp_path)], capsys) == (
        f"error: '{tmp_path}' is not an imagewise run folder (no meta.json and "
        "model.safetensors); train one with 'imagewise train DATA --out DIR'"
    )


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "imagewise", "train", str(tmp_path / "nope")]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=120)
    debug = subprocess.run([*args, "--debug"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "UserError" in debug.stderr


def test_help_of_every_verb_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in (["demo"], ["data", "fetch"], ["models"], ["train"], ["evaluate"], ["predict"]):
        with pytest.raises(SystemExit) as exit_info:
            run_cli([*verb, "--help"], capsys)
        assert exit_info.value.code == 0
        assert "example:\n  imagewise " in capsys.readouterr().out


def test_data_fetch_uses_local_files(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["data", "fetch", "digits"], capsys)
    assert code == 0 and out.startswith("digits is available in ")
    if builtin.find_fashion_mnist() is not None:
        code, out, _ = run_cli(["data", "fetch", "fashion-mnist"], capsys)
        assert code == 0 and str(builtin.find_fashion_mnist()) in out


def test_download_checks_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real download code, pointed at a local 'server' (file:// URLs)."""
    server = tmp_path / "server"
    server.mkdir()
    sums = {}
    for name in builtin.FASHION_FILES:
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
            f.write(name.encode())
        (server / name).write_bytes(buf.getvalue())
        sums[name] = hashlib.md5(buf.getvalue(), usedforsecurity=False).hexdigest()
    from imagewise.errors import UserError

    with pytest.raises(UserError, match="has the wrong checksum"):
        builtin.download_fashion_mnist(tmp_path / "bad", base_url=server.as_uri() + "/")
    assert not list((tmp_path / "bad").glob("*.gz"))  # nothing half-checked is kept
    monkeypatch.setattr(builtin, "FASHION_FILES", sums)
    dest = builtin.download_fashion_mnist(tmp_path / "good", base_url=server.as_uri() + "/")
    assert sorted(p.name for p in dest.iterdir()) == sorted(sums)


def test_two_class_dataset_evaluates(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "two", per_class=10, corrupt=False)
    shutil.rmtree(root / "stripes")
    out = tmp_path / "r"
    code, _, err = run_cli(
        ["train", str(root), "--model", "lenet5", "--epochs", "1", "--out", str(out), "-q"], capsys
    )
    assert code == 0, err
    code, _, err = run_cli(["evaluate", str(out)], capsys)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert code == 0, err
    assert metrics["top_k_accuracy"] == {"1": metrics["accuracy"]}


def test_resume_refuses_flags_that_change_the_run(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _error_line(["train", "--resume", "--out", str(trained_run), "--lr", "0.1"], capsys)
    assert line == (
        "error: --resume continues the run as it was configured; only --workers, --epochs, "
        "--device, --precision and --compile may change (got --lr)"
    )


def test_empty_validation_split_is_reported_as_such(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = make_folder_dataset(tmp_path / "d", per_class=6, corrupt=False)
    code, out, err = run_cli(
        ["train", str(root), "--model", "lenet5", "--epochs", "1", "--val-fraction", "0",
         "--out", str(tmp_path / "r"), "-q"], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "no validation split: kept epoch 1 (lowest training loss)" in out
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["training"]["best_val_accuracy"] is None
    assert meta["training"]["selected_by"] == "train_loss"


def test_hidden_folders_are_not_data(tmp_path: Path) -> None:
    from imagewise.data.sources import resolve_source

    root = make_folder_dataset(tmp_path / "d", per_class=5, corrupt=False)
    hidden = root / "circle" / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "000-checkpoint.png").write_bytes((root / "circle" / "001.png").read_bytes())
    data = resolve_source(str(root), val_fraction=0.0, test_fraction=0.0)
    assert len(data.train) == 15
    assert not any(".ipynb_checkpoints" in p for p in data.train.paths or [])
