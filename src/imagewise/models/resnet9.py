"""ResNet-9 of the DAWNBench / Myrtle.ai CIFAR-10 entry (David Page, "How to train your ResNet").

prep conv(64) -> layer1 conv(128)+pool+residual -> layer2 conv(256)+pool -> layer3
conv(512)+pool+residual -> global max pool -> Linear, with logits scaled by 0.125 as in Page's
code. ``resnet9_slim`` halves every width. Plain Conv/BN/ReLU(inplace) layers so it is fast on CPU.

The ``resnet9p_*`` variants pool first: conv -> max-pool -> batch norm -> ReLU in the three
downsampling blocks, as in Keller Jordan's airbench, so batch norm and ReLU (forward and
backward) run on a quarter of the values. Not the same function as pooling last (batch-norm
statistics are taken after the pool), hence separate names: runs trained with ``resnet9_*``
load unchanged. Measured 35.3 -> 30.8 s per 60,000-image epoch at 28 px, float32, 2 CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn

from imagewise.models.registry import ClassifierBase, register_model


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """Return 3x3 conv (no bias) -> batch norm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """``x + conv_bn(conv_bn(x))`` at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.res1 = conv_bn(channels, channels)
        self.res2 = conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the residual sum."""
        return x + self.res2(self.res1(x))


class ResNet9(ClassifierBase):
    """Page's ResNet-9; ``width`` is the prep width (64 for resnet9, 32 for resnet9_slim);
    ``pool_first`` puts each max-pool between its convolution and batch norm."""

    gradcam_layer = "layer3"
    logit_scale = 0.125

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        img_size: int,
        width: int = 64,
        pool_first: bool = False,
    ) -> None:
        super().__init__()
        self._size = img_size
        self._pool_first = pool_first
        self.prep = conv_bn(in_chans, width)
        self.layer1 = self._layer(width, 2 * width, residual=True)
        self.layer2 = self._layer(2 * width, 4 * width, residual=False)
        self.layer3 = self._layer(4 * width, 8 * width, residual=True)
        self.pre_logits = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self._init_head(8 * width, num_classes)

    def _layer(self, c_in: int, c_out: int, residual: bool) -> nn.Sequential:
        """Return conv_bn, a 2x2 max-pool unless the map is already below 2 px, and a residual."""
        block = conv_bn(c_in, c_out)
        layers: list[nn.Module] = [block]
        if self._size >= 2:
            if self._pool_first:
                block.insert(1, nn.MaxPool2d(2))
            else:
                layers.append(nn.MaxPool2d(2))
            self._size //= 2
        if residual:
            layers.append(Residual(c_out))
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the layer3 feature map, shape (N, 8*width, H/8, W/8)."""
        return self.layer3(self.layer2(self.layer1(self.prep(x))))


@register_model("resnet9", family="resnet9", description="DAWNBench ResNet-9 (Page), 6.6M params")
def resnet9(num_classes: int, in_chans: int, img_size: int, pretrained: bool = False) -> nn.Module:
    """Build ResNet-9 (widths 64/128/256/512)."""
    return ResNet9(num_classes, in_chans, img_size, width=64)


@register_model("resnet9_slim", family="resnet9", description="ResNet-9 at half width, 1.6M params")
def resnet9_slim(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """Build ResNet-9 with half the widths (32/64/128/256)."""
    return ResNet9(num_classes, in_chans, img_size, width=32)


@register_model(
    "resnet9_tiny", family="resnet9", description="ResNet-9 at quarter width, 0.4M params"
)
def resnet9_tiny(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """Build ResNet-9 with a quarter of the widths (16/32/64/128): the fast default for small
    images on CPU."""
    return ResNet9(num_classes, in_chans, img_size, width=16)


@register_model(
    "resnet9p_tiny",
    family="resnet9",
    description="resnet9_tiny pooling before batch norm: 1.15x faster on CPU, 0.4M params",
)
def resnet9p_tiny(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """Build resnet9_tiny with each 2x2 max-pool moved ahead of its batch norm and ReLU."""
    return ResNet9(num_classes, in_chans, img_size, width=16, pool_first=True)


@register_model(
    "resnet9p_slim",
    family="resnet9",
    description="resnet9_slim pooling before batch norm: faster on CPU, 1.6M params",
)
def resnet9p_slim(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """Build resnet9_slim with each 2x2 max-pool moved ahead of its batch norm and ReLU."""
    return ResNet9(num_classes, in_chans, img_size, width=32, pool_first=True)
