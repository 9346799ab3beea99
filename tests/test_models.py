"""Tests of the model registry, the built-in models and the size figures."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from imagewise.errors import UserError
from imagewise.models import (
    count_flops,
    count_parameters,
    create_model,
    describe_models,
    is_registered,
    list_models,
    register_model,
)

UNKNOWN = (
    "unknown model '{}'; run 'imagewise models' to list the built-in ones, "
    "or give any timm model name"
)


@functools.cache
def _built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=5, in_chans=1, img_size=28)


def small_model(name: str) -> nn.Module:
    """A fresh copy of ``name`` for 5 classes, 1 channel, 28 px (built once per session)."""
    return copy.deepcopy(_built(name))


def test_registry_lists_all_models() -> None:
    expected = {
        "lenet5", "tutorial_cnn", "alexnet", "vgg11", "vgg16", "resnet9", "resnet9_slim",
        "resnet9_tiny", "resnet9p_slim", "resnet9p_tiny", "capsnet", "resnet18", "resnet34",
        "resnet50", "densenet121", "mobilenetv3", "efficientnet_b0", "vit_tiny", "hog_svm",
    }  # fmt: skip
    assert set(list_models()) == expected
    assert list_models() == sorted(list_models())
    assert is_registered("resnet9") and not is_registered("resnet10t")


@pytest.mark.parametrize("name", list_models())
def test_train_step_28px_grayscale(name: str) -> None:
    model = small_model(name).train()
    torch.manual_seed(1)
    x = torch.randn(2, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    if getattr(model, "classical", False):
        return  # fitted in one pass (hog_svm): its gradients are not meaningful
    logits.sum().backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for pname, p in params:
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for _, p in params)


@pytest.mark.parametrize("name", list_models())
def test_common_interface(name: str) -> None:
    model = small_model(name).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        emb = model.forward_head(model.forward_features(x), pre_logits=True)
    # head_hidden_size == num_features everywhere except mobilenetv3 (1280 vs 960, as in timm)
    assert emb.shape == (2, model.head_hidden_size)
    if name != "mobilenetv3":
        assert model.head_hidden_size == model.num_features
    assert model.num_classes == 5
    assert isinstance(model.gradcam_layer, str)
    assert isinstance(model.get_submodule(model.gradcam_layer), nn.Module)
    assert model.default_loss == ("margin" if name == "capsnet" else "cross_entropy")


@pytest.mark.parametrize("name", list_models())
def test_gradcam_layer_takes_hooks(name: str) -> None:
    model = small_model(name).eval()
    layer = model.get_submodule(model.gradcam_layer)
    seen: dict[str, torch.Tensor] = {}
    layer.register_forward_hook(lambda mod, args, out: seen.update(act=out))
    layer.register_full_backward_hook(lambda mod, g_in, g_out: seen.update(grad=g_out[0]))
    logits = model(torch.randn(1, 1, 28, 28))
    logits[0, logits.argmax()].backward()
    assert seen["grad"].shape == seen["act"].shape


@pytest.mark.parametrize("name", list_models())
def test_reset_classifier(name: str) -> None:
    model = small_model(name).eval()
    model.reset_classifier(7)
    with torch.no_grad():
        out = model(torch.randn(1, 1, 28, 28))
    assert out.shape == (1, 7)
    assert model.num_classes == 7


@pytest.mark.parametrize(
    ("name", "img_size"),
    [
        ("tutorial_cnn", 64),
        ("resnet18", 64),
        ("vit_tiny", 64),
        ("resnet9_slim", 64),
        ("vit_tiny", 30),  # not a multiple of the 4 px patch: padded
        ("tutorial_cnn", 224),
        ("resnet18", 224),
    ],
)
def test_size_adaptation_rgb(name: str, img_size: int) -> None:
    model = create_model(name, num_classes=4, in_chans=3, img_size=img_size).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, img_size, img_size))
    assert out.shape == (1, 4)


def test_vit_patch_grid() -> None:
    model = _built("vit_tiny")
    assert model.patch_embed.patch_size == (4, 4)
    assert model.gradcam_reshape == (7, 7)


def test_too_small_image_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"^model 'tutorial_cnn' cannot take 12x12 inputs; try"):
        create_model("tutorial_cnn", num_classes=3, in_chans=1, img_size=12)
    with pytest.raises(UserError, match="cannot take 32x32 inputs") as info:
        create_model("timm:vit_tiny_patch16_224", num_classes=3, img_size=32)
    assert info.value.__cause__ is not None


def test_tutorial_cnn_has_keras_parameter_count() -> None:
    model = create_model("tutorial_cnn", num_classes=10, in_chans=1, img_size=28)
    assert count_parameters(model) == 320 + 18496 + 36928 + 36928 + 650 == 93322


def test_tutorial_cnn_flops() -> None:
    model = create_model("tutorial_cnn", num_classes=10, in_chans=1, img_size=28)
    macs = 26 * 26 * 32 * (3 * 3 * 1)  # conv1: 28 -> 26
    macs += 11 * 11 * 64 * (3 * 3 * 32)  # conv2: pool 13 -> 11
    macs += 3 * 3 * 64 * (3 * 3 * 64)  # conv3: pool 5 -> 3
    macs += 576 * 64 + 64 * 10  # dense layers
    assert count_flops(model, in_chans=1, img_size=28) == pytest.approx(2 * macs, rel=0.1)
    assert model.training  # mode restored


def test_vit_flops_include_attention() -> None:
    model = _built("vit_tiny")
    tokens, dim, depth = 7 * 7 + 1, 192, 12
    linear = 2 * tokens * depth * (dim * 3 * dim + dim * dim + 2 * dim * 4 * dim)
    attention = 2 * 2 * depth * tokens * tokens * dim
    assert count_flops(model, 1, 28) == pytest.approx(linear + attention, rel=0.05)


def test_describe_models() -> None:
    rows = describe_models(["lenet5", "tutorial_cnn"], in_chans=1, img_size=28, num_classes=10)
    assert [r["name"] for r in rows] == ["lenet5", "tutorial_cnn"]
    assert set(rows[0]) == {
        "name", "family", "params", "flops", "description", "pretrained", "pretrained_here",
    }  # fmt: skip
    assert rows[0]["pretrained"] is False and rows[0]["pretrained_here"] is False
    assert rows[0]["family"] == "classic" and rows[0]["params"] == 61706
    assert rows[1]["params"] == 93322 and rows[1]["description"]


def test_unknown_name_message() -> None:
    with pytest.raises(UserError) as info:
        create_model("no_such_model_xyz", num_classes=3)
    assert str(info.value) == UNKNOWN.format("no_such_model_xyz")
    with pytest.raises(UserError) as info:
        create_model("timm:no_such_model_xyz", num_classes=3)
    assert str(info.value) == UNKNOWN.format("timm:no_such_model_xyz")


def test_close_name_suggests_registry_name() -> None:
    with pytest.raises(UserError) as info:
        create_model("resnt18", num_classes=3)
    msg = str(info.value)
    assert msg.startswith(UNKNOWN.format("resnt18") + " (did you mean resnet18")
    assert msg.endswith("?)")


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("lenet5")(lambda num_classes, in_chans, img_size, pretrained=False: None)


@pytest.mark.parametrize("name", ["timm:resnet10t", "resnet10t"])
def test_timm_fallthrough(name: str) -> None:
    model = create_model(name, num_classes=3, in_chans=1, img_size=32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert model.gradcam_layer == "layer4"
    assert model.default_loss == "cross_entropy"
    assert model.training


def test_pretrained_own_model_is_refused() -> None:
    with pytest.raises(UserError) as info:
        create_model("resnet9", num_classes=3, pretrained=True)
    assert str(info.value) == (
        "model 'resnet9' has no pretrained weights; train it from scratch or pick a timm model"
    )


def test_unknown_option_is_a_user_error() -> None:
    with pytest.raises(UserError, match="does not take option"):
        create_model("lenet5", num_classes=3, img_size=28, bogus=1)


def test_capsnet_lengths_in_unit_interval() -> None:
    model = small_model("capsnet").eval()
    with torch.no_grad():
        lengths = model(torch.randn(4, 1, 28, 28) * 5)
        caps = model.forward_features(torch.randn(4, 1, 28, 28))
    assert lengths.shape == (4, 5)
    assert (lengths >= 0).all() and (lengths <= 1).all()
    assert caps.shape == (4, 5, 16) and model.num_features == 80


def test_capsnet_large_input_uses_stem() -> None:
    model = create_model("capsnet", num_classes=3, in_chans=3, img_size=64)
    assert len(model.stem) > 0 and model.n_primary == 32 * 8 * 8


@pytest.mark.parametrize("name", ["tutorial_cnn", "resnet9_tiny", "resnet18", "vit_tiny"])
def test_dropout_option_reaches_the_head(name: str) -> None:
    model = create_model(name, num_classes=3, in_chans=1, img_size=28, dropout=0.3)
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert 0.3 in drops or getattr(model, "drop_rate", None) == 0.3


def test_tta_wrapper_takes_the_model_mode() -> None:
    """A fresh wrapper in training mode would switch BatchNorm to batch statistics."""
    from imagewise.runtime.tta import ViewMean, with_tta

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).eval()
    wrapped = with_tta(model, True)
    assert isinstance(wrapped, ViewMean) and not wrapped.training
    assert with_tta(model.train(), {"mirror": False, "shift": 1}).training
    assert with_tta(model, False) is model and with_tta(model, {}) is model


def test_tta_views_follow_the_training_augmentation() -> None:
    from imagewise.runtime.tta import describe, tta_views, view_count, views_for_training

    assert views_for_training(True, 0.1, 28) == {"mirror": True, "shift": 1}
    assert views_for_training(False, 0.08, 28) == {"mirror": False, "shift": 1}  # `light`
    assert views_for_training(True, 0.0, 28) == {"mirror": True, "shift": 0}
    assert views_for_training(False, 0.0, 28) == {}  # nothing learned: no TTA
    assert views_for_training(True, 0.1, 224) == {"mirror": True, "shift": 7}
    assert views_for_training(False, 0.01, 224) == {"mirror": False, "shift": 2}  # within 2.24 px
    assert tta_views(True) == {"mirror": True, "shift": 0}  # meta.json before views
    assert view_count({"mirror": True, "shift": 1}) == 10 and view_count({}) == 1
    assert describe({"mirror": True, "shift": 1}) == (
        "mean of 10 views: mirror, 1 px shifts (in the graph)"
    )
    with pytest.raises(UserError, match="unreadable test-time augmentation entry"):
        tta_views({"rotate": 5})


def test_shift_views_move_the_image_and_fill_the_gap_with_black() -> None:
    from imagewise.runtime.tta import ViewMean

    seen: list[torch.Tensor] = []

    class Record(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return x.flatten(1)

    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    out = ViewMean(Record(), mirror=False, shift=1, fill=[-2.0])(x)  # black is -2 here
    pad = functools.partial(torch.nn.functional.pad, value=-2.0)
    expected = [
        x,
        pad(x, (1, 0, 0, 0))[..., :, :4],  # right
        pad(x, (0, 1, 0, 0))[..., :, 1:],  # left
        pad(x, (0, 0, 1, 0))[..., :4, :],  # down
        pad(x, (0, 0, 0, 1))[..., 1:, :],  # up
    ]
    assert expected[1][0, 0, 0].tolist() == [-2.0, 1.0, 2.0, 3.0]
    assert len(seen) == 5
    for got, want in zip(seen, expected, strict=True):
        assert torch.equal(got, want)
    assert torch.allclose(out, torch.stack(expected).mean(0).flatten(1))


def test_tutorial_cnn_pools_before_relu_with_the_same_values_and_gradients() -> None:
    model = create_model("tutorial_cnn", 10, 1, 28).eval()
    f = model.features
    # The tutorial's order, sharing the same layers: conv -> ReLU -> pool.
    tutorial = nn.Sequential(
        f.conv1, nn.ReLU(), nn.MaxPool2d(2), f.conv2, nn.ReLU(), nn.MaxPool2d(2), f.conv3, f.act3,
        model.pre_logits, model.head_drop, model.fc,
    )  # fmt: skip
    assert [type(m) for m in f][:6] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU] * 2
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    grads = []
    for net in (model, tutorial):
        model.zero_grad()
        out = net(x)
        out.square().sum().backward()
        grads.append((out.detach(), f.conv1.weight.grad.clone(), f.conv2.weight.grad.clone()))
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_pool_first_resnet9_normalizes_the_pooled_map() -> None:
    sizes: dict[str, int] = {}
    for name in ("resnet9_tiny", "resnet9p_tiny"):
        model = create_model(name, 10, 1, 28).eval()
        bn = next(m for m in model.layer1.modules() if isinstance(m, nn.BatchNorm2d))
        bn.register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, i[0].shape[-1]))
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # resnet9_tiny normalizes layer1's 28 px map then pools; resnet9p_tiny pools first
    assert sizes == {"resnet9_tiny": 28, "resnet9p_tiny": 14}
    assert count_parameters(create_model("resnet9p_tiny", 10, 1, 28)) == count_parameters(
        create_model("resnet9_tiny", 10, 1, 28)
    )
