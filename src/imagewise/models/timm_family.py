"""timm models under short names, adapted to small inputs.

Below 64 px the stems are made CIFAR-style so 28-32 px images are not shrunk to nothing: ResNet
and DenseNet get a 3x3 stride-1 first conv and no stem max-pool; MobileNetV3 and EfficientNet get
their 3x3 stem conv switched to stride 1. ViT-Tiny picks its patch size from the image size.
Pretrained weights are loaded after building (``imagewise.models.weights``), by name and shape:
an adapted stem starts new, everything else is the hub's.
"""

from __future__ import annotations

import math
from typing import Any

import timm
from torch import nn

from imagewise.models.registry import register_model

SMALL = 64  # below this many pixels the stem is adapted


def _timm(timm_name: str, num_classes: int, in_chans: int, pretrained: bool, **kwargs: Any):
    """Create a timm model."""
    return timm.create_model(
        timm_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


def _small_stem(old: nn.Conv2d) -> nn.Conv2d:
    """Return a fresh 3x3 stride-1 conv with ``old``'s channels.

    The new conv is randomly initialised: with pretrained=True this one layer loses its
    pretrained weights, which is acceptable for small inputs that the 7x7 stem does not suit.
    """
    return nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)


def _unstride_stem(model: nn.Module) -> None:
    """Set the 3x3 ``conv_stem`` of an EfficientNet/MobileNet to stride 1 (keeps its weights)."""
    stem = model.conv_stem
    if type(stem) is nn.Conv2d and stem.kernel_size == (3, 3) and stem.padding == (1, 1):
        stem.stride = (1, 1)
    else:  # e.g. "same"-padded TF ports: replace the conv
        model.conv_stem = _small_stem(stem)
        model.replaced_for_small_input = ["conv_stem.weight"]


def _resnet(timm_name: str, num_classes: int, in_chans: int, img_size: int, pretrained: bool, **kw):
    """Build a timm ResNet, CIFAR-style stem below ``SMALL`` px."""
    model = _timm(timm_name, num_classes, in_chans, pretrained, **kw)
    if img_size < SMALL:
        model.conv1 = _small_stem(model.conv1)
        model.replaced_for_small_input = ["conv1.weight"]
        model.maxpool = nn.Identity()
    model.gradcam_layer = "layer4"
    return model


@register_model("resnet18", family="timm", pretrained=True, description="ResNet-18 (timm)")
def resnet18(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build timm resnet18 (CIFAR-style stem below 64 px)."""
    return _resnet("resnet18", num_classes, in_chans, img_size, pretrained, **kwargs)


@register_model("resnet34", family="timm", pretrained=True, description="ResNet-34 (timm)")
def resnet34(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build timm resnet34 (CIFAR-style stem below 64 px)."""
    return _resnet("resnet34", num_classes, in_chans, img_size, pretrained, **kwargs)


@register_model("resnet50", family="timm", pretrained=True, description="ResNet-50 (timm)")
def resnet50(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build timm resnet50 (CIFAR-style stem below 64 px)."""
    return _resnet("resnet50", num_classes, in_chans, img_size, pretrained, **kwargs)


@register_model("densenet121", family="timm", pretrained=True, description="DenseNet-121 (timm)")
def densenet121(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build timm densenet121 (3x3 stride-1 stem, no stem pool below 64 px)."""
    model = _timm("densenet121", num_classes, in_chans, pretrained, **kwargs)
    if img_size < SMALL:
        model.features.conv0 = _small_stem(model.features.conv0)
        model.replaced_for_small_input = ["features.conv0.weight"]
        model.features.pool0 = nn.Identity()
    model.gradcam_layer = "features.norm5"
    return model


@register_model(
    "mobilenetv3",
    family="timm",
    pretrained=True,
    hub="mobilenetv3_large_100",
    description="MobileNetV3-Large 1.0 (timm)",
)
def mobilenetv3(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build timm mobilenetv3_large_100 (stride-1 stem below 64 px).

    Note: its pre-logits embedding is ``head_hidden_size`` (1280) wide, not ``num_features``
    (960, the channels of ``forward_features``), as in timm.
    """
    model = _timm("mobilenetv3_large_100", num_classes, in_chans, pretrained, **kwargs)
    if img_size < SMALL:
        _unstride_stem(model)
    model.gradcam_layer = f"blocks.{len(model.blocks) - 1}"  # conv_head comes after pooling
    return model


@register_model(
    "efficientnet_b0",
    family="timm",
    pretrained=True,
    hub="efficientnet_b0",
    description="EfficientNet-B0 (timm)",
)
def efficientnet_b0(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build timm efficientnet_b0 (stride-1 stem below 64 px)."""
    model = _timm("efficientnet_b0", num_classes, in_chans, pretrained, **kwargs)
    if img_size < SMALL:
        _unstride_stem(model)
    model.gradcam_layer = "bn2"  # conv_head + BN + SiLU: the last spatial map
    return model


def vit_patch_size(img_size: int) -> int:
    """Return the ViT patch size for ``img_size``: 16 from 160 px, 8 from 64 px, else 4."""
    if img_size >= 160:
        return 16
    return 8 if img_size >= 64 else 4


@register_model(
    "vit_tiny",
    family="timm",
    pretrained=True,
    hub="vit_tiny_patch16_224",
    description="ViT-Tiny (timm)",
)
def vit_tiny(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build timm vit_tiny_patch16_224 with a patch size that suits ``img_size``.

    Sizes that are not a multiple of the patch are padded (``dynamic_img_pad``); other input
    sizes than ``img_size`` also work (``dynamic_img_size`` resamples the position embedding).
    ``gradcam_reshape`` is the token grid (h, w) for turning tokens back into a map.
    """
    patch = vit_patch_size(img_size)
    grid = math.ceil(img_size / patch)
    kwargs = {"dynamic_img_pad": True, "dynamic_img_size": True, **kwargs}
    model = _timm(
        "vit_tiny_patch16_224",
        num_classes,
        in_chans,
        pretrained,
        img_size=grid * patch,
        patch_size=patch,
        **kwargs,
    )
    model.gradcam_layer = f"blocks.{len(model.blocks) - 1}.norm1"
    model.gradcam_reshape = (grid, grid)
    return model
