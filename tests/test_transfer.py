"""Transfer learning: weights from a file, a run or the hub; freeze modes; cached features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import imagewise
from imagewise.errors import UserError
from imagewise.models import create_model
from imagewise.models import weights as weights_mod
from imagewise.models.weights import file_weights, load_into
from imagewise.train.transfer import Freezer, lr_scales, stages

from conftest import run_cli

FAST = {"model": "lenet5", "batch_size": 8, "img_size": 32, "augment": "none", "precision": "fp32"}


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# (our name, the architecture the file is saved from, size, channels, tensors left new)
FAMILIES = [
    ("resnet18", "timm:resnet18", 64, 3, {"fc.weight", "fc.bias"}),
    ("densenet121", "timm:densenet121", 64, 3, {"classifier.weight", "classifier.bias"}),
    ("efficientnet_b0", "timm:efficientnet_b0", 64, 3, {"classifier.weight", "classifier.bias"}),
    ("mobilenetv3", "timm:mobilenetv3_large_100", 64, 3, {"classifier.weight", "classifier.bias"}),
    ("vit_tiny", "timm:vit_tiny_patch16_224", 224, 3, {"head.weight", "head.bias"}),
    ("vgg11", "vgg11", 32, 3, {"fc.weight", "fc.bias"}),
    ("tutorial_cnn", "tutorial_cnn", 28, 1, {"fc.weight", "fc.bias"}),
    ("lenet5", "lenet5", 28, 1, {"fc.weight", "fc.bias"}),
    ("resnet9p_tiny", "resnet9p_tiny", 28, 1, {"fc.weight", "fc.bias"}),
]


@pytest.mark.parametrize(("name", "source", "size", "chans", "new"), FAMILIES)
def test_a_safetensors_file_loads_into_each_family_with_a_new_head(
    name: str, source: str, size: int, chans: int, new: set[str], tmp_path: Path
) -> None:
    if source.startswith("timm:"):  # the hub's layout: 1000 ImageNet classes
        src = timm.create_model(source.removeprefix("timm:"), num_classes=1000)
    else:  # a network of ours trained on 7 other classes
        src = create_model(source, 7, chans, size)
    path = _save(src.state_dict(), tmp_path / "w.safetensors")
    model = create_model(name, 5, chans, size)
    report = load_into(model, file_weights(path))
    assert set(report.new) == new and not report.adapted and not report.unused
    theirs = load_file(path)
    for key in report.loaded:  # loaded means equal to the file, tensor by tensor
        assert torch.equal(model.state_dict()[key], theirs[key].to(model.state_dict()[key].dtype))
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.get_classifier().parameters())
    probe = Freezer(model, "backbone")
    assert probe.counts() == (head, total - head)
    assert all(p.requires_grad for p in model.get_classifier().parameters())
    two = Freezer(model, "2")
    first_two = sum(model.get_parameter(n).numel() for g in stages(model)[:2] for n in g)
    assert two.counts() == (total - first_two, first_two)
    assert Freezer(model, "none").counts() == (total, 0)


def test_grayscale_data_on_rgb_weights_sums_the_input_filters(tmp_path: Path) -> None:
    src = timm.create_model("resnet18", num_classes=1000)
    path = _save(src.state_dict(), tmp_path / "rgb.safetensors")
    gray = create_model("resnet18", 4, in_chans=1, img_size=96)
    report = load_into(gray, file_weights(path))
    assert report.adapted == {"conv1.weight": "input channels 3 -> 1"}
    expected = src.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(gray.conv1.weight, expected, atol=1e-6)
    # and back: a grayscale network's weights into an RGB one, spread over the 3 channels
    path1 = _save(gray.state_dict(), tmp_path / "gray.safetensors")
    rgb = create_model("resnet18", 4, in_chans=3, img_size=96)
    load_into(rgb, file_weights(path1))
    assert torch.allclose(rgb.conv1.weight, gray.conv1.weight.repeat(1, 3, 1, 1) / 3, atol=1e-6)


def test_vit_patch_and_position_grid_are_resampled(tmp_path: Path) -> None:
    src = timm.create_model("vit_tiny_patch16_224", num_classes=1000)
    path = _save(src.state_dict(), tmp_path / "vit.safetensors")
    small = create_model("vit_tiny", 3, in_chans=1, img_size=32)  # patch 4, 8x8 grid
    report = load_into(small, file_weights(path))
    assert report.adapted["pos_embed"] == "position grid 14x14 -> 8x8"
    assert "patch (16, 16) -> (4, 4)" in report.adapted["patch_embed.proj.weight"]
    assert "input channels 3 -> 1" in report.adapted["patch_embed.proj.weight"]
    assert small.pos_embed.shape == (1, 65, 192)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = _save(create_model("lenet5", 3, 1, 28).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(UserError, match=r"the weights in .* do not fit this model: by name, "):
        load_into(create_model("tutorial_cnn", 3, 1, 28), file_weights(path))


def test_state_dict_files_load_with_weights_only(tmp_path: Path) -> None:
    model = create_model("lenet5", 3, 1, 28)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    state = file_weights(tmp_path / "ckpt.pth").state
    assert set(state) == set(model.state_dict())  # unwrapped, DDP prefix gone
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="is not a weights file that loads safely"):
        file_weights(tmp_path / "bad.pth")


def test_offline_without_cached_weights_says_how_to_pass_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(weights_mod, "_cached_path", lambda cfg: None)
    monkeypatch.setattr(weights_mod, "_reachable", lambda url, timeout=3.0: False)
    code, _, err = run_cli(
        ["train", "digits", "--model", "resnet18", "--pretrained", "--out", str(tmp_path / "r")],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no pretrained weights for 'resnet18' on this machine" in err
    assert "--weights FILE" in err and not (tmp_path / "r").exists()


def test_pretrained_weights_come_from_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Hugging Face hub cache's own layout: refs/main names the snapshot holding the file
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    _save(
        timm.create_model("resnet18").state_dict(),
        repo / "snapshots" / ("0" * 40) / "model.safetensors",
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(weights_mod, "_reachable", lambda url, timeout=3.0: False)
    assert weights_mod.has_pretrained("resnet18") and not weights_mod.has_pretrained("lenet5")
    model = create_model("resnet18", 3, in_chans=1, img_size=96, pretrained=True)
    report = model.weights_report
    assert report.adapted == {"conv1.weight": "input channels 3 -> 1"}
    assert report.new == ["fc.weight", "fc.bias"] and len(report.loaded) == 99
    source = weights_mod.pretrained_weights("resnet18")
    assert source.preprocessing["mean"] == [0.485, 0.456, 0.406]
    assert source.preprocessing["img_size"] == 224


def test_layer_lr_decay_scales_each_stage(tmp_path: Path) -> None:
    model = create_model("resnet18", 3, 3, 64)
    scales = lr_scales(model, 0.5)
    groups = stages(model)
    assert len(groups) == 5  # stem, layer1..layer4
    assert scales["conv1.weight"] == 0.5**5 and scales["layer4.1.bn2.bias"] == 0.5
    assert "fc.weight" not in scales  # the classifier learns at the full rate
    from imagewise.config import TrainConfig
    from imagewise.train.optim import build_optimizer

    opt = build_optimizer(model, TrainConfig(lr=0.1), lr_scales=scales)
    rates = sorted({round(g["lr"], 8) for g in opt.param_groups}, reverse=True)
    assert rates == [round(0.1 * 0.5**k, 8) for k in range(6)]


def test_frozen_backbone_keeps_batchnorm_statistics(folder_data: Path, tmp_path: Path) -> None:
    model = create_model("resnet9p_tiny", 3, 1, 32)
    freezer = Freezer(model, "backbone")
    model.train()
    freezer.set_modes()
    assert not model.prep[1].training and model.fc.training
    before = model.prep[1].running_mean.clone()
    model(torch.randn(4, 1, 32, 32))
    assert torch.equal(model.prep[1].running_mean, before)
    bn = Freezer(create_model("resnet9p_tiny", 3, 1, 32), "none", freeze_bn=True)
    assert not bn.model.prep[1].weight.requires_grad and bn.model.prep[0].weight.requires_grad


def test_progressive_unfreezing_flips_requires_grad_at_the_stated_epoch(
    folder_data: Path, tmp_path: Path
) -> None:
    class Watch:
        def __init__(self) -> None:
            self.trainable: list[int] = []

        def on_epoch_end(self, state) -> None:
            params = state.parts.model.parameters()
            self.trainable.append(sum(p.numel() for p in params if p.requires_grad))

    watch = Watch()
    out = tmp_path / "prog"
    imagewise.train(
        str(folder_data), out, epochs=3, freeze="backbone", unfreeze_at=3, hooks=[watch], **FAST
    )  # the watch runs after the freezer: epoch 2's count is already the unfrozen one
    model = imagewise.load(out).model
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.get_classifier().parameters())
    assert watch.trainable == [head, total, total]
    record = json.loads((out / "meta.json").read_text())["transfer"]
    assert record["mode"] == "backbone" and record["unfreeze_at"] == 3


def test_cached_features_train_exactly_like_the_frozen_backbone(
    folder_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEWISE_ADAPTIVE_THREADS", "0")
    opts = {**FAST, "epochs": 3, "freeze": "backbone", "dropout": 0.0, "channels_last": False}
    src = imagewise.train(str(folder_data), tmp_path / "src", **{**FAST, "epochs": 1})
    runs = {}
    for cache in ("on", "off"):
        runs[cache] = imagewise.train(
            str(folder_data), tmp_path / cache, init_from=str(src.run), cache_features=cache, **opts
        )
    on, off = (load_file(runs[c].run / "model.safetensors") for c in ("on", "off"))
    assert set(on) == set(off)
    for key in on:
        assert torch.allclose(on[key], off[key], atol=1e-5), key
    backbone = [k for k in on if not k.startswith("fc.")]
    first = load_file(src.run / "model.safetensors")
    assert all(torch.equal(on[k], first[k]) for k in backbone)  # frozen means unchanged
    assert not torch.equal(on["fc.weight"], first["fc.weight"])  # the head learned


def test_init_from_a_run_with_other_classes_starts_a_new_head(
    folder_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="imagewise")
    src = tmp_path / "digits"
    code, _, _ = run_cli(
        ["train", "digits", "--model", "lenet5", "--epochs", "1", "--img-size", "32",
         "--out", str(src), "-q"], capsys,
    )  # fmt: skip
    assert code == 0
    out = tmp_path / "shapes"
    code, _, err = run_cli(
        ["train", str(folder_data), "--init-from", str(src), "--epochs", "1", "--channels", "1",
         "--batch-size", "8", "--out", str(out)], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "weights from run" in caplog.text and "new: fc.weight, fc.bias" in caplog.text
    assert "mode: full fine-tuning" in caplog.text
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"]["name"] == "lenet5"  # the run named the model
    assert meta["classes"] == ["circle", "square", "stripes"]
    assert meta["transfer"]["weights"]["new"] == ["fc.weight", "fc.bias"]
    assert (
        meta["preprocessing"]["mean"]
        == json.loads((src / "meta.json").read_text())["preprocessing"]["mean"]
    )  # the weights' preprocessing, not the new data's


def test_bad_transfer_flags_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["--freeze", "some"], "--freeze must be none, backbone or a number of stages"),
        (["--unfreeze-at", "2"], "--unfreeze-at needs something frozen first"),
        (["--weights", "a.pt", "--pretrained"], "both name starting weights"),
        (["--weights", str(tmp_path / "missing.safetensors")], "does not exist"),
        (["--init-from", str(tmp_path)], "is not a finished imagewise run"),
        (["--freeze", "99"], "this model has"),
    ]
    for flags, message in cases:
        out = tmp_path / "never"
        args = ["train", "digits", "--model", "lenet5", "--out", str(out), *flags]
        code, _, err = run_cli(args, capsys)
        assert code == 2 and message in err, (flags, err)
        assert len(err.strip().splitlines()) == 1


def test_a_new_classifier_on_loaded_weights_learns_faster(tmp_path: Path) -> None:
    from imagewise.train.transfer import NEW_HEAD_LR, head_lr_scale

    src = create_model("resnet9p_tiny", 7, 1, 28)
    path = _save(src.state_dict(), tmp_path / "w.safetensors")
    model = create_model("resnet9p_tiny", 5, 1, 28)
    report = load_into(model, file_weights(path))
    assert head_lr_scale(model, report) == NEW_HEAD_LR / model.logit_scale == 80.0
    assert head_lr_scale(model, None) == 1.0  # from scratch: every layer alike
    same = create_model("resnet9p_tiny", 7, 1, 28)
    assert head_lr_scale(same, load_into(same, file_weights(path), keep_head=True)) == 1.0
    scales = lr_scales(model, 1.0, 80.0)
    assert scales == {"fc.weight": 80.0, "fc.bias": 80.0}
