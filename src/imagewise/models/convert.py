"""Checkpoints of other implementations, mapped onto a model's own tensor names.

A weights file saved by another project names its tensors its own way: the ``efficientnet_pytorch``
project's ``_blocks.3._depthwise_conv.weight`` is timm's ``blocks.1.1.conv_dw.weight``. ``match``
finds, in this order, the first mapping under which every tensor of the model's body (everything
but its classifier) has a partner of the right shape:

1. **by name**: the file uses the model's own names (timm, torchvision's ResNet, an imagewise run);
2. **a known layout**, converted by name (``LAYOUTS``: ``efficientnet_pytorch`` -> timm EfficientNet
   and EfficientNet-Lite, torchvision's DenseNet (old and new key styles) and VGG -> timm);
3. **by order and shape**: the file and the model hold the same number of tensors and each pairs
   with the one at the same place with the same shape (a 1x1 convolution pairs with a linear layer
   of the same size). This covers torchvision's MobileNetV3 and any port that kept the order.

A mapping that leaves part of the body without weights is refused with one line that names the
first tensor it could not place: loading half a network in silence trains a model that looks
pretrained and is not. The classifier may differ (other classes), and tensors that
``imagewise.models.weights`` adapts (input channels, a ViT's patch and position grid) or a stem
replaced for small images count as placed.

Why by hand: timm's ``checkpoint_filter_fn``s convert only their own upstream checkpoints at
model-creation time (and need the network to fetch them); no library maps one arbitrary state dict
onto another and says what it did.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout of another implementation and how to rename it to the model's."""

    name: str
    detect: Callable[[State], bool]
    convert: Callable[[State, State], dict[str, torch.Tensor]]  # (file, model) -> renamed file


@dataclass
class NameMapping:
    """The outcome of ``match``: the file renamed to the model's names, and how."""

    state: dict[str, torch.Tensor]
    how: str  # "by name" | "layout efficientnet_pytorch" | "by order and shape"
    complete: bool = True
    problem: str = ""  # why it is not complete: the first tensor it could not place


def _body(state: State) -> list[tuple[str, torch.Tensor]]:
    """Tensors that carry weights or statistics (BatchNorm's step counters, integer scalars
    whatever their name, are not weights)."""
    return [
        (k, v)
        for k, v in state.items()
        if not k.endswith("num_batches_tracked") and (v.ndim or v.is_floating_point())
    ]


# ------------------------------------------------------------------ efficientnet_pytorch -> timm

# efficientnet_pytorch's MBConvBlock names -> timm's, for a block with an expansion conv
# (InvertedResidual) and without one (DepthwiseSeparableConv).
_EFFNET_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EFFNET_DS = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_EFFNET_TOP["_fc"] = "classifier"


def _is_efficientnet_pytorch(state: State) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def _timm_blocks(model: State) -> list[str]:
    """The model's ``blocks.S.I`` prefixes in network order (stage, then index)."""
    found = {tuple(int(p) for p in m.groups()) for k in model if (m := _BLOCK.match(k))}
    return [f"blocks.{s}.{i}" for s, i in sorted(found)]


_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
_FLAT_BLOCK = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")


def _from_efficientnet_pytorch(file: State, model: State) -> dict[str, torch.Tensor]:
    """``_blocks.N.*`` (one flat list) -> ``blocks.S.I.*`` (stages), module names per block kind."""
    blocks = _timm_blocks(model)
    expands = {
        m.group(1) for k in file if (m := _FLAT_BLOCK.match(k)) and m.group(2) == "_expand_conv"
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in file.items():
        if m := _FLAT_BLOCK.match(key):
            n, module, rest = int(m.group(1)), m.group(2), m.group(3)
            names = _EFFNET_IR if m.group(1) in expands else _EFFNET_DS
            if n >= len(blocks) or module not in names:
                out[key] = value  # no partner: reported as unused
                continue
            out[f"{blocks[n]}.{names[module]}.{rest}"] = value
        else:
            module, _, rest = key.partition(".")
            out[f"{_EFFNET_TOP.get(module, module)}.{rest}"] = value
    return out


# ------------------------------------------------------------------------- torchvision -> timm

_OLD_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _is_torchvision_densenet(state: State) -> bool:
    return "features.conv0.weight" in state and any(".denselayer" in k for k in state)


def _from_torchvision_densenet(file: State, model: State) -> dict[str, torch.Tensor]:
    """torchvision's DenseNet -> timm's: the same names, but checkpoints from before torchvision
    0.3 write ``norm.1`` for ``norm1`` (torchvision fixes them with this pattern on load)."""
    out = {}
    for key, value in file.items():
        m = _OLD_DENSENET.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def _is_torchvision_vgg(state: State) -> bool:
    return "features.0.weight" in state and "classifier.6.weight" in state


def _from_torchvision_vgg(file: State, model: State) -> dict[str, torch.Tensor]:
    """torchvision's VGG -> timm's: its first two linear layers are timm's ``pre_logits``
    convolutions (7x7 and 1x1), its last is ``head.fc``."""
    renames = {"classifier.0": "pre_logits.fc1", "classifier.3": "pre_logits.fc2"}
    renames["classifier.6"] = "head.fc"
    out = {}
    for key, value in file.items():
        module, _, param = key.rpartition(".")
        name = f"{renames[module]}.{param}" if module in renames else key
        mine = model.get(name)
        if mine is not None and mine.shape != value.shape and mine.numel() == value.numel():
            value = value.reshape(mine.shape)
        out[name] = value
    return out


LAYOUTS: list[Layout] = [
    Layout("efficientnet_pytorch", _is_efficientnet_pytorch, _from_efficientnet_pytorch),
    Layout("torchvision densenet", _is_torchvision_densenet, _from_torchvision_densenet),
    Layout("torchvision vgg", _is_torchvision_vgg, _from_torchvision_vgg),
]


# ----------------------------------------------------------------------------------- matching


Placeable = Callable[[str, torch.Tensor, torch.Tensor], bool]


def _coverage(file: State, model: State, head: set[str], placeable: Placeable) -> str:
    """'' when every body tensor of ``model`` has a partner in ``file``, else the first that
    has none, described for the user."""
    for name, mine in _body(model):
        if name in head:
            continue
        theirs = file.get(name)
        if theirs is None:
            return f"the model's {name} {tuple(mine.shape)} has no tensor of that name in the file"
        if theirs.shape != mine.shape and not placeable(name, mine, theirs):
            return f"the model's {name} {tuple(mine.shape)} meets {tuple(theirs.shape)} in the file"
    return ""


def _pairs_1x1(mine: torch.Tensor, theirs: torch.Tensor) -> bool:
    """A 1x1 convolution's weight and a linear layer's of the same size."""
    return (
        mine.numel() == theirs.numel()
        and {mine.ndim, theirs.ndim} == {2, 4}
        and (mine.shape[:2] == theirs.shape[:2])
    )


def by_order(file: State, model: State, head: set[str], placeable: Placeable) -> NameMapping:
    """Pair the file's tensors with the model's by position; complete only when the counts are
    equal and every body pair has equal shapes (or a 1x1 conv / linear pair, or placeable)."""
    ours, theirs = _body(model), _body(file)
    if len(ours) != len(theirs):
        return NameMapping({}, "by order and shape", False,
                        f"the file holds {len(theirs)} tensors, the model {len(ours)}")  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for i, ((name, mine), (key, value)) in enumerate(zip(ours, theirs, strict=True)):
        if value.shape != mine.shape and _pairs_1x1(mine, value):
            value = value.reshape(mine.shape)
        if value.shape == mine.shape or placeable(name, mine, value):
            out[name] = value
        elif name not in head:
            return NameMapping({}, "by order and shape", False, (
                f"tensor {i + 1} of {len(ours)}: the model's {name} {tuple(mine.shape)} "
                f"against the file's {key} {tuple(value.shape)}"
            ))  # fmt: skip
    return NameMapping(out, f"by order and shape ({len(out)} tensors paired)")


def match(
    file: State, model: State, head: set[str], placeable: Placeable, *, ordered: bool = True
) -> NameMapping:
    """The first complete mapping of ``file`` onto ``model`` (see the module's docstring), or
    an incomplete one whose ``problem`` says what is missing under each that was tried.
    ``ordered``: the file keeps the order its network saved the tensors in (a pickled state
    dict does; safetensors sorts them by name), without which no pairing by position is tried.
    """
    problem = _coverage(file, model, head, placeable)
    if not problem:
        return NameMapping(dict(file), "by name")
    tried = [f"by name, {problem}"]
    for layout in LAYOUTS:
        if layout.detect(file):
            renamed = layout.convert(file, model)
            missing = _coverage(renamed, model, head, placeable)
            if not missing:
                return NameMapping(renamed, f"layout {layout.name}, converted by name")
            tried.append(f"as {layout.name}, {missing}")
    if not ordered:
        tried.append("not by order (a .safetensors file keeps no order)")
        return NameMapping(dict(file), "by name", False, "; ".join(tried))
    paired = by_order(file, model, head, placeable)
    if paired.complete:
        return paired
    tried.append(f"by order, {paired.problem}")
    return NameMapping(dict(file), "by name", False, "; ".join(tried))
