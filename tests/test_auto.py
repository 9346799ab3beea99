"""Defaults that fit the data, warm-up in steps, --time-budget, --model auto, models --measure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from imagewise.config import RunConfig, TrainConfig, apply_options, parse_time_budget
from imagewise.data.sources import ImageData, Split
from imagewise.errors import UserError
from imagewise.models.speed import Speed, cache_path, measured_speeds
from imagewise.train.auto import Candidate, adapt_defaults, pick_within_budget
from imagewise.train.optim import lr_factor
from imagewise.train.recipes import recipe_options

from conftest import run_cli


def fake_data(train: int, val: int = 10, classes: int = 10) -> ImageData:
    """Counts are all adapt_defaults reads: labels only, no images."""

    def split(n: int) -> Split:
        return Split(labels=np.arange(n) % classes, paths=[f"{i}.png" for i in range(n)])

    return ImageData(
        [str(c) for c in range(classes)], split(train), split(val), split(5), "x", "folder"
    )


def test_small_dataset_gets_small_batches_more_epochs_and_light_augmentation() -> None:
    cfg = RunConfig()
    adapted = adapt_defaults(cfg, fake_data(1437))  # digits' training split
    t = cfg.train
    # 1437 / 32 = 45 steps an epoch; 2,000 steps would be 45 epochs, capped at 40
    assert (t.batch_size, t.epochs, cfg.data.augment.preset) == (32, 40, "light")
    assert t.warmup_steps == int(0.25 * 40 * 45)  # one-cycle's quarter, in steps
    assert adapted == {"batch_size": 32, "epochs": 40, "augment": "light", "warmup_steps": 450}


def test_large_dataset_keeps_the_fashion_mnist_defaults() -> None:
    cfg = RunConfig()
    adapt_defaults(cfg, fake_data(54_000))
    t = cfg.train
    # 54,000 / 128 -> 422 steps an epoch: the 10-epoch floor already gives more than 2,000
    # and 10 epochs is a short run: 'light' augmentation
    assert (t.batch_size, t.epochs, cfg.data.augment.preset) == (128, 10, "light")
    assert t.warmup_steps == int(0.25 * 10 * 422)


def test_a_network_small_for_its_data_gets_no_augmentation() -> None:
    # the tutorial CNN's 93,322 weights: no augmentation from 2,000 images on
    for images, params, preset in [
        (54_000, 93_322, "none"),
        (4_500, 93_322, "none"),
        (1_437, 93_322, "light"),
        (54_000, 410_000, "light"),  # resnet9p_tiny, 10 epochs: a short run
    ]:
        cfg = RunConfig()
        adapt_defaults(cfg, fake_data(images), parameters=params)
        assert cfg.data.augment.preset == preset, (images, params)


def test_a_short_run_on_a_large_dataset_augments_lightly() -> None:
    cfg = apply_options(RunConfig(), {"epochs": 5})
    adapt_defaults(cfg, fake_data(54_000))
    assert cfg.data.augment.preset == "light" and cfg.train.epochs == 5


def test_settings_the_user_gave_are_never_adapted() -> None:
    given = {"batch_size": 128, "epochs": 3, "augment": "strong", "warmup_steps": 7}
    cfg = apply_options(RunConfig(), given)
    assert adapt_defaults(cfg, fake_data(500)) == {}
    t = cfg.train
    assert (t.batch_size, t.epochs, cfg.data.augment.preset, t.warmup_steps) == (
        128,
        3,
        "strong",
        7,
    )
    # a recipe's settings count as given too
    fast = apply_options(RunConfig(), recipe_options("fast"))
    adapted = adapt_defaults(fast, fake_data(500))
    assert (fast.train.batch_size, fast.train.epochs, fast.data.augment.preset) == (256, 6, "light")
    assert set(adapted) == {"warmup_steps"}


def test_warmup_is_counted_in_steps() -> None:
    f = lr_factor(TrainConfig(epochs=2, schedule="cosine", warmup_steps=10), steps_per_epoch=50)
    assert f(0) == pytest.approx(0.04) and f(5) == pytest.approx(0.52) and f(10) == 1.0
    # the Keras-tutorial settings: constant means constant, from the first step
    keras = apply_options(RunConfig(), {"schedule": "constant", "epochs": 5})
    adapt_defaults(keras, fake_data(1437))
    f = lr_factor(keras.train, steps_per_epoch=23)
    assert keras.train.warmup_steps == 0 and f(0) == 1.0 == f(100)
    # warm-up in epochs still works, and never takes the whole run
    f = lr_factor(TrainConfig(epochs=1, schedule="cosine", warmup_epochs=3), steps_per_epoch=20)
    assert f(18) < 1.0 and f(19) == 1.0
    # ...but not for one-cycle, whose quarter is its shape: old runs saved warmup_epochs 1.0
    f = lr_factor(TrainConfig(epochs=8, schedule="onecycle", warmup_epochs=1), steps_per_epoch=25)
    assert f(30) < 1.0 and f(50) == 1.0


def test_time_budget_parsing_and_its_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert [parse_time_budget(t) for t in ("90s", "5m", "1h", "1.5h", "300")] == [
        90,
        300,
        3600,
        5400,
        300,
    ]
    for bad in ("", "soon", "-5m", "0s", "5x"):
        with pytest.raises(UserError):
            parse_time_budget(bad)
    code, out, err = run_cli(
        ["train", "digits", "--model", "auto", "--time-budget", "soon", "--out", str(tmp_path)],
        capsys,
    )
    assert code == 2 and out == "" and "Traceback" not in err
    assert (
        err.strip() == "error: --time-budget must be a duration such as 90s, 5m or 1h, not 'soon'"
    )


def fake_speeds(table: dict[str, float]):
    def speeds(shapes, num_classes):
        return {s: Speed(train=table[s[0]], infer=10 * table[s[0]]) for s in shapes}

    return speeds


OPTIONS = [Candidate("big", 28, 10), Candidate("mid", 28, 5), Candidate("small", 28, 2)]


def test_auto_picks_the_most_accurate_model_that_fits_the_budget() -> None:
    speeds = fake_speeds({"big": 100.0, "mid": 1000.0, "small": 10_000.0})
    # 1,000 images: big 10.1 s an epoch (needs 10), mid 1.01 s, small 0.1 s; 60 s * 0.85 room
    c = pick_within_budget(OPTIONS, 1000, 100, 1, 10, 60.0, None, 40, speeds)
    assert (c.model, c.epochs) == ("mid", 40) and c.estimate_seconds <= 60
    c = pick_within_budget(OPTIONS, 1000, 100, 1, 10, 20.0, None, 40, speeds)
    assert (c.model, c.epochs) == ("mid", 16) and c.estimate_seconds <= 20
    c = pick_within_budget(OPTIONS, 1000, 100, 1, 10, 150.0, None, 40, speeds)
    assert (c.model, c.epochs) == ("big", 12)
    # the user's epochs stay, and decide which model fits them
    c = pick_within_budget(OPTIONS, 1000, 100, 1, 10, 20.0, 30, 40, speeds)
    assert (c.model, c.epochs) == ("small", 30)
    # nothing fits: the fastest, one epoch, and it says so
    c = pick_within_budget(OPTIONS, 1000, 100, 1, 10, 0.05, None, 40, speeds)
    assert (c.model, c.epochs) == ("small", 1) and "too small" in c.reason


def test_speed_table_is_measured_once_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEWISE_HOME", str(tmp_path))
    shape = ("tutorial_cnn", 28, 1)
    first = measured_speeds([shape], 10)[shape]
    assert first.train > 0 and first.infer > 0
    assert cache_path().parent == tmp_path and cache_path().is_file()
    import imagewise.models.speed as speed

    def refuse(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(speed, "measure_speed", refuse)
    assert measured_speeds([shape], 10)[shape] == first


def test_model_auto_stays_within_its_budget_on_a_tiny_dataset(
    folder_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imagewise
    import imagewise.models.weights

    monkeypatch.setenv("IMAGEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(imagewise.models.weights, "has_pretrained", lambda name: False)
    # This machine's speed table, written slower than any CPU runs these models so the test
    # does not hang on the load of a shared machine: big models cannot fit, tutorial_cnn can.
    slow = {"resnet9p_slim": 2.0, "resnet9p_tiny": 5.0, "tutorial_cnn": 100.0}
    table = {
        f"{m}|3x32{half}": {"train": v, "infer": 4 * v}
        for m, v in slow.items()
        for half in ("", "|bf16")  # the bf16 entries are read on CPUs with native bf16
    }
    cache_path().parent.mkdir(parents=True)
    cache_path().write_text(json.dumps({"speeds": table}))
    result = imagewise.train(
        str(folder_data), tmp_path / "run", model="auto", time_budget="4s", show_progress=False
    )
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    choice = meta["choice"]
    assert result.model == choice["model"] == "tutorial_cnn"
    assert choice["estimate_seconds"] <= choice["budget_seconds"] == 4
    assert 1 <= result.epochs == choice["epochs"] < 40  # unbudgeted, these 57 images get 40
    # the epochs chosen are those the measured speed fits in the budget (never a wall-clock
    # assertion: a shared machine's load decides how long they really take)
    assert choice["epochs"] <= choice["considered"][-1]["epochs_that_fit"]
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["model"]["name"] == "tutorial_cnn"
    assert config["train"]["epochs"] == result.epochs
    # a resumed run keeps the record of what was chosen
    imagewise.train(
        out=tmp_path / "run", resume=True, epochs=result.epochs + 1, show_progress=False
    )
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["choice"] == choice


def test_models_measure_prints_speeds_and_the_pretrained_column(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEWISE_HOME", str(tmp_path))
    args = ["models", "--measure", "--img-size", "28", "--channels", "1"]
    code, out, _ = run_cli([*args, "tutorial_cnn", "mobilenetv3", "hog_svm"], capsys)
    assert code == 0
    header, *lines = out.splitlines()
    assert "pretrained" in header and "train/s" in header and "infer/s" in header
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    # name family params GFLOPs pretrained train/s infer/s ...
    # pretrained: here (weights on this machine), hub (downloaded on first use) or -
    assert rows["tutorial_cnn"][4] == "-" and rows["mobilenetv3"][4] in ("hub", "here")
    for name in ("tutorial_cnn", "mobilenetv3"):
        assert float(rows[name][5].replace(",", "")) > 0
        assert float(rows[name][6].replace(",", "")) > 0
    assert rows["hog_svm"][5:7] == ["-", "-"]  # fitted in one pass: no training step


def test_speed_table_keeps_the_faster_precision_when_bf16_is_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imagewise.models.speed as speed

    def fake(name, size, channels, num_classes, pace=None, bf16=False):
        return Speed(train=200.0 if bf16 else 100.0, infer=50.0)

    monkeypatch.setattr(speed, "measure_speed", fake)
    shape = ("tutorial_cnn", 28, 1)
    path = tmp_path / "speed.json"
    assert measured_speeds([shape], 10, cache=path)[shape].train == 100.0
    assert measured_speeds([shape], 10, cache=path, bf16=True)[shape].train == 200.0
    assert set(json.loads(path.read_text())["speeds"]) == {
        "tutorial_cnn|1x28",
        "tutorial_cnn|1x28|bf16",
    }


def test_long_runs_on_large_sets_get_standard_augmentation() -> None:
    from imagewise.train.auto import SHORT_RUN_EPOCHS, augment_for

    assert augment_for(54_000, SHORT_RUN_EPOCHS, 410_000) == "standard"
    assert augment_for(54_000, SHORT_RUN_EPOCHS - 1, 410_000) == "light"


@pytest.mark.parametrize(("img_size", "model"), [(16, "resnet9p_tiny"), (96, "resnet18")])
def test_model_auto_without_a_budget_or_weights_picks_by_image_size(
    img_size: int, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the path every small-image `train DATA` takes when no ImageNet weights are here: it
    # raised UnboundLocalError before the non-transfer pick kept the data's size
    import imagewise.data.pipeline
    import imagewise.models.weights
    from imagewise.train.auto import choose_auto_model

    monkeypatch.setattr(imagewise.models.weights, "has_pretrained", lambda name: False)
    monkeypatch.setattr(imagewise.data.pipeline, "infer_shape", lambda raw, d: (img_size, 3))
    cfg = RunConfig()
    cfg.model.name = "auto"
    choice = choose_auto_model(cfg, fake_data(300))
    assert choice is not None and (choice.model, choice.img_size) == (model, img_size)
    assert not choice.pretrained and choice.epochs is None
    assert (cfg.model.name, cfg.data.img_size) == (model, img_size)
    assert "add --time-budget" in choice.reason
