"""A sanity check of loaded ImageNet weights on real photographs.

A mapping that pairs the wrong tensors, or inputs standardized with the wrong mean and std, still
give a network that runs and outputs probabilities; only its answers show the mistake. So the
check loads the weights with their original 1000-class ImageNet head and classifies photographs
that scikit-image ships (a cat, a cup of coffee, a rocket on its launch pad), each resized and
centre-cropped as the weights expect. It passes when every photograph's top answer is one of
the ImageNet classes that photograph shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imagewise.errors import UserError

# scikit-image photograph -> the ImageNet-1k classes whose top answer is right for it.
PHOTOS: dict[str, frozenset[int]] = {
    "chelsea": frozenset(
        {281, 282, 283, 285, 287}
    ),  # tabby, tiger cat, Persian, Egyptian cat, lynx
    "coffee": frozenset({504, 967, 968}),  # coffee mug, espresso, cup
    "rocket": frozenset({657, 744, 812}),  # missile, projectile, space shuttle
}


@dataclass
class PhotoAnswer:
    photo: str
    top5: list[tuple[str, float]]  # (ImageNet class, probability)
    correct: bool


@dataclass
class SanityCheck:
    """The outcome of ``check_pretrained``: one answer per photograph."""

    model: str
    source: str
    mapping: str
    preprocessing: dict[str, Any]
    answers: list[PhotoAnswer] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.answers) and all(a.correct for a in self.answers)

    def lines(self) -> list[str]:
        """The block ``imagewise models --check`` prints."""
        pre = self.preprocessing
        out = [
            f"{self.model}: weights from {self.source} ({self.mapping})",
            f"preprocessing: {pre['img_size']} px, {pre['interpolation']}, centre crop "
            f"{pre.get('crop_pct', 1.0):g}, mean {_fmt(pre['mean'])}, std {_fmt(pre['std'])}",
        ]
        for a in self.answers:
            top = ", ".join(f"{name} {p:.2f}" for name, p in a.top5)
            out.append(f"  {'ok ' if a.correct else 'BAD'} {a.photo:8s} {top}")
        verdict = (
            "passed" if self.passed else "FAILED: the weights or their preprocessing are wrong"
        )
        out.append(f"sanity check {verdict} ({sum(a.correct for a in self.answers)}/"
                   f"{len(self.answers)} photographs right)")  # fmt: skip
        return out


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def photo_batch(pre: Mapping[str, Any]) -> tuple[list[str], torch.Tensor]:
    """The check's photographs as the weights' evaluation transform makes them: shorter side to
    ``img_size / crop_pct`` with their interpolation, centre crop, standardized."""
    import skimage.data
    from torchvision.transforms import InterpolationMode, v2

    size = int(pre["img_size"])
    mode = InterpolationMode(str(pre.get("interpolation", "bilinear")))
    transform = v2.Compose([
        v2.Resize(int(size / float(pre.get("crop_pct", 1.0))), interpolation=mode, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(pre["mean"]), list(pre["std"])),
    ])  # fmt: skip
    names = list(PHOTOS)
    images = [torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, n)())) for n in names]
    return names, torch.stack([transform(img.permute(2, 0, 1)) for img in images])


@torch.inference_mode()
def check_pretrained(
    name: str, weights: str = "", preprocessing: Mapping[str, Any] | None = None
) -> SanityCheck:
    """Load model ``name``'s ImageNet weights (``--pretrained``'s, or the file ``weights``)
    with their 1000-class head and classify the scikit-image photographs in ``PHOTOS``.

    Args:
        name: a model whose architecture timm has a pretrained config for.
        weights: a weights file to check instead of the installed / cached ones.
        preprocessing: overrides of the weights' own (``mean``, ``std``, ...), for trying
            what a mistake looks like.

    Example:
        >>> check_pretrained("tf_efficientnet_lite0").passed
        True
    """
    from timm.data import ImageNetInfo

    from imagewise.models.factory import create_model
    from imagewise.models.weights import (
        file_weights,
        load_into,
        pretrained_weights,
        weights_preprocessing,
    )

    pre = weights_preprocessing(name)
    if not pre:
        raise UserError(
            f"--check: '{name}' has no ImageNet configuration in timm; give an architecture "
            "with pretrained weights (imagewise models lists them)"
        )
    source = file_weights(weights, name) if weights else pretrained_weights(name)
    pre = {**pre, **(preprocessing or {})}
    model = create_model(name, num_classes=1000, in_chans=3, img_size=int(pre["img_size"]))
    report = load_into(model, source, keep_head=True)
    if report.new:
        raise UserError(
            f"--check: the weights in {source.where} have no 1000-class ImageNet head "
            f"({', '.join(report.new[:2])} start new), so their answers cannot be checked"
        )
    photos, x = photo_batch(pre)
    probs = model.eval()(x).softmax(dim=1)
    info = ImageNetInfo()
    result = SanityCheck(name, source.where, report.mapping, pre)
    for photo, p in zip(photos, probs, strict=True):
        values, idx = p.topk(5)
        names = [info.index_to_description(int(i)) for i in idx]
        top5 = [(name, float(v)) for name, v in zip(names, values, strict=True)]
        result.answers.append(PhotoAnswer(photo, top5, int(idx[0]) in PHOTOS[photo]))
    return result
