"""Classic CNNs: LeNet-5, the Keras tutorial CNN, AlexNet and VGG-11/16 (with batch norm).

All take any ``in_chans`` and ``num_classes``, and image sizes from 28 to 224 px. Activations are
not in-place so that Grad-CAM hooks on ``gradcam_layer`` work.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from imagewise.errors import UserError
from imagewise.models.registry import ClassifierBase, register_model, size_error


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Return the output size of a convolution or pooling along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


class LeNet5(ClassifierBase):
    """LeCun et al. 1998 LeNet-5; padding 2 on the first conv so 28 px works like 32 px."""

    gradcam_layer = "features.act2"

    def __init__(self, num_classes: int, in_chans: int, act: str = "tanh") -> None:
        super().__init__()
        acts = {"tanh": nn.Tanh, "relu": nn.ReLU}
        if act not in acts:
            raise UserError(f"lenet5: unknown act '{act}'; use one of {', '.join(acts)}")
        act_layer = acts[act]
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_chans, 6, 5, padding=2),
                act1=act_layer(),
                pool1=nn.AvgPool2d(2),
                conv2=nn.Conv2d(6, 16, 5),
                act2=act_layer(),
                pool2=nn.AvgPool2d(2),
            )
        )
        self.pre_logits = nn.Sequential(
            nn.AdaptiveAvgPool2d((5, 5)),  # 5x5 at 28 px; makes any larger size work
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            act_layer(),
            nn.Linear(120, 84),
            act_layer(),
        )
        self._init_head(84, num_classes)


class TutorialCNN(ClassifierBase):
    """The Keras/TensorFlow tutorial CNN: three valid 3x3 convs, Dense(64), dropout, Dense."""

    gradcam_layer = "features.act3"

    def __init__(self, num_classes: int, in_chans: int, img_size: int, dropout: float = 0.5):
        super().__init__()
        size = _conv_out(_conv_out(_conv_out(img_size, 3) // 2, 3) // 2, 3)
        if size < 1:
            raise size_error("tutorial_cnn", img_size)
        # Pooling before ReLU computes exactly what the tutorial's ReLU-then-pool does (both are
        # monotone, so they commute, gradients included) with the ReLU and its backward on a
        # quarter of the values: one of the changes that make a CPU step 1.4x faster.
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_chans, 32, 3),
                pool1=nn.MaxPool2d(2),
                act1=nn.ReLU(),
                conv2=nn.Conv2d(32, 64, 3),
                pool2=nn.MaxPool2d(2),
                act2=nn.ReLU(),
                conv3=nn.Conv2d(64, 64, 3),
                act3=nn.ReLU(),
            )
        )
        self.pre_logits = nn.Sequential(nn.Flatten(), nn.Linear(64 * size * size, 64), nn.ReLU())
        self._init_head(64, num_classes, drop=dropout)


class AlexNet(ClassifierBase):
    """AlexNet: torchvision layout at >= 128 px, a CIFAR-style variant below.

    The small variant uses a stride-1 3x3 stem, a 5x5 second conv, three 2x2 max-pools (skipped
    when the map is already below 2 px), a 2x2 adaptive pool and a 1024-1024 classifier.
    """

    gradcam_layer = "features.act5"

    def __init__(self, num_classes: int, in_chans: int, img_size: int, dropout: float = 0.5):
        super().__init__()
        big = img_size >= 128
        layers: list[tuple[str, nn.Module]] = []
        if big:
            pool, hidden = 6, 4096
            specs = [(in_chans, 64, 11, 4, 2), (64, 192, 5, 1, 2)]
        else:
            pool, hidden = 2, 1024
            specs = [(in_chans, 64, 3, 1, 1), (64, 192, 5, 1, 2)]
        specs += [(192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
        size = img_size
        for i, (c_in, c_out, k, s, p) in enumerate(specs, start=1):
            layers += [(f"conv{i}", nn.Conv2d(c_in, c_out, k, s, p)), (f"act{i}", nn.ReLU())]
            size = _conv_out(size, k, s, p)
            if i in (1, 2, 5):
                if big:
                    layers.append((f"pool{i}", nn.MaxPool2d(3, 2)))
                    size = _conv_out(size, 3, 2)
                elif size >= 2:
                    layers.append((f"pool{i}", nn.MaxPool2d(2)))
                    size //= 2
            if size < 1:
                raise size_error("alexnet", img_size)
        self.features = nn.Sequential(OrderedDict(layers))
        self.pre_logits = nn.Sequential(
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(256 * pool * pool, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self._init_head(hidden, num_classes)


VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [*[64, 64, "M", 128, 128, "M", 256, 256, 256, "M"], *[512, 512, 512, "M"] * 2],
}


class VGG(ClassifierBase):
    """VGG with batch norm (configs A and D); pools are skipped once the map is below 2 px.

    Below 64 px the head is GAP -> 512 -> classes; from 64 px it is the classic
    7x7 pool -> 4096 -> 4096 -> classes (about 120M parameters).
    """

    def __init__(
        self, cfg: str, num_classes: int, in_chans: int, img_size: int, dropout: float = 0.5
    ) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = []
        c_in, size, n_conv, n_pool = in_chans, img_size, 0, 0
        for v in VGG_CFGS[cfg]:
            if v == "M":
                if size >= 2:
                    n_pool += 1
                    layers.append((f"pool{n_pool}", nn.MaxPool2d(2)))
                    size //= 2
                continue
            n_conv += 1
            layers += [
                (f"conv{n_conv}", nn.Conv2d(c_in, int(v), 3, padding=1, bias=False)),
                (f"bn{n_conv}", nn.BatchNorm2d(int(v))),
                (f"act{n_conv}", nn.ReLU()),
            ]
            c_in = int(v)
        self.features = nn.Sequential(OrderedDict(layers))
        self.gradcam_layer = f"features.act{n_conv}"
        if img_size < 64:
            hidden = 512
            self.pre_logits = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, hidden), nn.ReLU()
            )
        else:
            hidden = 4096
            self.pre_logits = nn.Sequential(
                nn.AdaptiveAvgPool2d(7),
                nn.Flatten(),
                nn.Linear(512 * 7 * 7, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
            )
        self._init_head(hidden, num_classes, drop=dropout)


@register_model("lenet5", family="classic", description="LeNet-5 (LeCun 1998), 61k params")
def lenet5(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, act: str = "tanh"
) -> nn.Module:
    """Build LeNet-5; ``act`` is "tanh" (classic) or "relu"."""
    return LeNet5(num_classes, in_chans, act=act)


@register_model(
    "tutorial_cnn", family="classic", description="Keras tutorial CNN: 3 convs, Dense(64)"
)
def tutorial_cnn(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, dropout: float = 0.5
) -> nn.Module:
    """Build the Keras tutorial CNN with ``dropout`` before the last layer."""
    return TutorialCNN(num_classes, in_chans, img_size, dropout=dropout)


@register_model("alexnet", family="classic", description="AlexNet (CIFAR-style below 128 px)")
def alexnet(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, dropout: float = 0.5
) -> nn.Module:
    """Build AlexNet; the layout depends on ``img_size``."""
    return AlexNet(num_classes, in_chans, img_size, dropout=dropout)


@register_model("vgg11", family="classic", description="VGG-11 with batch norm (config A)")
def vgg11(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, dropout: float = 0.5
) -> nn.Module:
    """Build VGG-11-BN."""
    return VGG("vgg11", num_classes, in_chans, img_size, dropout=dropout)


@register_model("vgg16", family="classic", description="VGG-16 with batch norm (config D)")
def vgg16(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, dropout: float = 0.5
) -> nn.Module:
    """Build VGG-16-BN."""
    return VGG("vgg16", num_classes, in_chans, img_size, dropout=dropout)
