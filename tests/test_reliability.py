"""Issue 33's findings: outputs that would overwrite inputs or a run's files, and the edge cases
of the command line that used to print tracebacks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import CLASSES, run_cli


@pytest.fixture
def inside(folder_data: Path, trained_run: Path, tmp_path: Path) -> Path:
    """A dataset folder with a run folder inside it, as a user might keep them (``ow/``)."""
    root = tmp_path / "ow"
    shutil.copytree(folder_data, root)
    (root / "run").mkdir()
    for name in ("config.yaml", "meta.json", "model.safetensors"):
        shutil.copy(trained_run / name, root / "run" / name)
    return root


def test_predict_out_never_overwrites_an_input_image(
    inside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = inside / CLASSES[0] / "001.png"
    before = image.read_bytes()
    for given in (str(image), str(inside), str(inside / CLASSES[0] / "*.png")):
        code, out, err = run_cli(
            ["predict", str(inside / "run"), given, "--out", str(image)], capsys
        )
        assert (code, out) == (2, "") and err.count("\n") == 1, err
        assert "is one of the inputs" in err or "is an image inside the input folder" in err
    assert image.read_bytes() == before


def test_outputs_never_overwrite_a_runs_files(
    inside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = inside / "run" / "meta.json"
    before = meta.read_bytes()
    image = str(inside / CLASSES[0] / "001.png")
    attempts = [
        ["data", "check", str(inside), "--html", str(meta), "--no-label-check", "-q"],
        ["data", "check", str(inside), "--json", str(inside / "run" / "config.yaml"), "-q"],
        ["predict", str(inside / "run"), image, "--out", str(meta)],
        ["similar", str(inside / "run"), image, "--index", str(inside), "--out", str(meta)],
    ]
    for args in attempts:
        code, _, err = run_cli(args, capsys)
        assert code == 2 and "is a file of the run folder" in err and err.count("\n") == 1, args
    assert meta.read_bytes() == before
    # a file of the user's own inside the run folder may be replaced by a rerun
    mine = inside / "run" / "predictions.csv"
    mine.write_text("old\n")
    code, _, err = run_cli(["predict", str(inside / "run"), image, "--out", str(mine)], capsys)
    assert code == 0, err
    assert mine.read_text() != "old\n" and "001.png" in mine.read_text()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "nan"], "--lr must be a finite number, not nan"),
        (["--lr", "inf"], "--lr must be a finite number, not inf"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1), not 1.5"),
        (["--momentum", "-0.5"], "--momentum must be in [0, 1), not -0.5"),
    ],
)
def test_impossible_numbers_are_one_line(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "digits", *flags, "--out", str(out)], capsys)
    assert code == 2 and err == f"error: {message}\n" and not out.exists()


def test_config_files_with_nan_or_deep_nesting_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        "nan.yaml": ("train:\n  lr: .nan\n", "--lr must be a finite number, not nan"),
        "deep.yaml": ("train: " + "[" * 2000 + "]" * 2000 + "\n", "nests more than 64 levels"),
        "indented.yaml": (
            "".join(f"{'  ' * i}k{i}:\n" for i in range(2000)) + "  " * 2000 + "v: 1\n",
            "config file",
        ),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        code, _, err = run_cli(
            ["train", "digits", "--config", str(path), "--out", str(tmp_path / "r")], capsys
        )
        assert code == 2 and message in err and err.count("\n") == 1, (name, err[:300])


def test_a_tune_space_out_of_range_is_one_line_before_any_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("lr: " + "[" * 2000 + "]" * 2000 + "\n")
    space = tmp_path / "space.yaml"
    space.write_text("dropout: {low: 0.5, high: 1.5}\n")
    for path, message in (
        (space, "--dropout must be in [0, 1), not 1.5"),
        (deep, "nests more than"),
    ):
        out = tmp_path / f"study-{path.stem}"
        code, _, err = run_cli(
            ["tune", "digits", "--model", "lenet5", "--space", str(path), "--trials", "2",
             "--out", str(out)], capsys,
        )  # fmt: skip
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert "Traceback" not in err and not (out / "trials").exists()


def test_weights_with_nan_or_integers_are_refused_and_float64_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from imagewise.models import create_model

    state = create_model("lenet5", 10, 1, 28).state_dict()
    nan = dict(state, **{"fc.weight": torch.full_like(state["fc.weight"], float("nan"))})
    first = next(iter(state))
    ints = dict(state, **{first: state[first].to(torch.int8)})
    for name, bad, message in (
        ("nan.pth", nan, "are not finite: fc.weight holds NaN or infinite values"),
        ("int8.pth", ints, f"hold int8 values for {first}, where the network keeps floats"),
    ):
        torch.save(bad, tmp_path / name)
        code, _, err = run_cli(
            ["train", "digits", "--model", "lenet5", "--weights", str(tmp_path / name),
             "--out", str(tmp_path / "r")], capsys,
        )  # fmt: skip
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert "lower --lr" not in err and not (tmp_path / "r").exists()
    from imagewise.models.weights import file_weights, load_into

    torch.save({k: v.double() if v.is_floating_point() else v for k, v in state.items()},
               tmp_path / "f64.pth")  # fmt: skip
    report = load_into(create_model("lenet5", 10, 1, 28), file_weights(tmp_path / "f64.pth"))
    loaded = [k for k, v in state.items() if v.is_floating_point() and not k.startswith("fc.")]
    assert report.cast == {"float64": len(loaded)}  # the new classifier is not loaded
    assert any("converted to the network's float type" in line for line in report.lines())


def test_a_class_with_only_unreadable_files_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", per_class=10, corrupt=False)
    for f in (data / CLASSES[1]).iterdir():
        f.write_bytes(b"\\x89PNG\\r\\n\\x1a\\n truncated")
    code, _, err = run_cli(["train", str(data), "--model", "lenet5", "--epochs", "1",
                            "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 2 and f"class '{CLASSES[1]}' has no readable training image" in err


def test_a_run_no_better_than_guessing_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import imagewise

    caplog.set_level("WARNING", logger="imagewise")
    from conftest import make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", per_class=12, corrupt=False)
    result = imagewise.train(str(data), tmp_path / "r", model="lenet5", epochs=2, lr=1e-9,
                             show_progress=False)  # fmt: skip
    assert result.best_val_accuracy <= 0.5
    assert "is no better than guessing" in caplog.text
