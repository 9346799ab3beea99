"""Input preprocessing and augmentation of uint8 image batches (N, C, H, W), on CPU or GPU.

One ``InputContract`` (``imagewise.edge.spec``: size, channels, mean/std, ...) travels with the
weights in ``meta.json`` and serves training, evaluation, prediction and export alike; here are
its torch operations (``normalize``). Augmentation works on whole batches:
torchvision's v2 transforms draw one set of random parameters per call, so a batch would share
one rotation; here each image gets its own affine matrix, flip, colour change and erasing box in
a handful of tensor operations, which is what makes in-memory training fast. RandAugment, MixUp
and CutMix come from torchvision v2 as they are.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from imagewise.config import AugmentConfig
from imagewise.edge.spec import LAYOUT_EMBEDDINGS, InputContract

# ITU-R BT.601 luma weights, for RGB -> gray everywhere.
LUMA = (0.299, 0.587, 0.114)

# Preset -> settings; a part set on its own (AugmentConfig field not None) wins over its preset.
PRESETS: dict[str, dict[str, float | bool]] = {
    "none": {},
    "light": {"translate": 0.08, "scale": 0.05},
    "standard": {"translate": 0.1, "scale": 0.1, "rotation": 5.0, "hflip": True, "erasing": 0.25},
    "strong": {
        "translate": 0.125,
        "scale": 0.2,
        "rotation": 15.0,
        "shear": 8.0,
        "hflip": True,
        "color_jitter": 0.3,
        "noise": 0.02,
        "erasing": 0.5,
        "randaugment": True,
    },
}
_PARTS = {
    "rotation": 0.0,
    "scale": 0.0,
    "translate": 0.0,
    "shear": 0.0,
    "hflip": False,
    "vflip": False,
    "color_jitter": 0.0,
    "noise": 0.0,
    "erasing": 0.0,
    "randaugment": False,
}


def resolve_augment(cfg: AugmentConfig) -> dict[str, float | bool]:
    """The concrete augmentation settings: preset values, overridden by parts set on their own."""
    preset = PRESETS[cfg.preset]
    values = asdict(cfg)
    out = {k: (values[k] if values[k] is not None else preset.get(k, d)) for k, d in _PARTS.items()}
    out["mixup"], out["cutmix"] = cfg.mixup, cfg.cutmix
    return out


def to_unit(pre: InputContract, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [0, 1], resized to ``pre.img_size`` if needed."""
    x = images.to(torch.float32, copy=True).div_(255.0)  # never alter the caller's tensor
    if x.shape[-2:] != (pre.img_size, pre.img_size):
        size = (pre.img_size, pre.img_size)
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True)
    return x


def standardize(pre: InputContract, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """[0, 1] floats -> (x - mean) / std per channel (in place when asked: no 4-byte copy of
    the whole batch, which costs more than the arithmetic at 224 px)."""
    mean = torch.tensor(pre.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std) if inplace else (x - mean) / std


def normalize(pre: InputContract, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the model's input: resized and standardized floats (the torch
    twin of ``InputContract.normalize``, which does the same in numpy). Cached embeddings
    (``LAYOUT_EMBEDDINGS``) pass through as floats."""
    if pre.layout == LAYOUT_EMBEDDINGS:
        return images.float()
    return standardize(pre, to_unit(pre, images), inplace=True)


def _affine_matrices(n: int, settings: dict, generator: torch.Generator) -> torch.Tensor:
    """Per-image 2x3 matrices (in affine_grid's normalized coordinates) for the random affine."""

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    angle = uniform(-settings["rotation"], settings["rotation"]) * (math.pi / 180)
    shear = uniform(-settings["shear"], settings["shear"]) * (math.pi / 180)
    # The grid maps output to input coordinates, so zooming in by s samples 1/s of the input.
    zoom = 1.0 / uniform(1 - settings["scale"], 1 + settings["scale"])
    sx = zoom.clone()
    if settings["hflip"]:
        sx = sx * torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    sy = zoom.clone()
    if settings["vflip"]:
        sy = sy * torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    tx = uniform(-settings["translate"], settings["translate"]) * 2
    ty = uniform(-settings["translate"], settings["translate"]) * 2
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    theta = torch.empty(n, 2, 3)
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = (-sin + cos * tan) * sy
    theta[:, 0, 2] = tx
    theta[:, 1, 0] = sin * sx
    theta[:, 1, 1] = (cos + sin * tan) * sy
    theta[:, 1, 2] = ty
    return theta


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, H, W), align_corners=False)`` by broadcasting.

    The same sampling grid, built with two fused multiply-adds per coordinate instead of a
    batched matrix product with an inner size of 3, which is several times faster on CPU.
    """
    n, dev = theta.shape[0], theta.device
    xs = (torch.arange(width, device=dev, dtype=torch.float32) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=dev, dtype=torch.float32) * 2 + 1) / height - 1
    xs, ys = xs.view(1, 1, width), ys.view(1, height, 1)
    t = theta.view(n, 6, 1, 1)
    grid = torch.empty(n, height, width, 2, device=dev)
    grid[..., 0] = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    grid[..., 1] = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    return grid


class BatchAugment:
    """Random per-image augmentation of a uint8 batch, returning a normalized float batch.

    Args:
        preprocessing: the size and mean/std to produce.
        augment: the augmentation config (preset and parts).
        num_classes: needed by MixUp / CutMix, which turn labels into soft targets.
        seed: seed of this augmenter's random generator (CPU generator; the result moves to the
            batch's device).
    """

    def __init__(
        self, preprocessing: InputContract, augment: AugmentConfig, num_classes: int, seed: int = 0
    ) -> None:
        self.pre = preprocessing
        self.settings = resolve_augment(augment)
        self.generator = torch.Generator().manual_seed(seed)
        s = self.settings
        self.geometric = any(s[k] for k in ("rotation", "scale", "translate", "shear"))
        self.geometric = self.geometric or bool(s["hflip"] or s["vflip"])
        self.randaugment = v2.RandAugment() if s["randaugment"] else None
        mixers = []
        if augment.mixup > 0:
            mixers.append(v2.MixUp(alpha=augment.mixup, num_classes=num_classes))
        if augment.cutmix > 0:
            mixers.append(v2.CutMix(alpha=augment.cutmix, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if mixers else None
        self.alphas = {"mixup": augment.mixup, "cutmix": augment.cutmix}

    @property
    def active(self) -> bool:
        s = self.settings
        return self.geometric or bool(
            s["color_jitter"] or s["noise"] or s["erasing"] or self.randaugment or self.mix
        )

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s, n, dev = self.settings, images.shape[0], images.device
        if self.randaugment is not None:
            images = torch.stack([self.randaugment(img) for img in images])
        x = to_unit(self.pre, images)
        if self.geometric:
            theta = _affine_matrices(n, s, self.generator).to(dev)
            grid = affine_grid(theta, x.shape[-2], x.shape[-1])
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if s["color_jitter"]:
            x = self._color_jitter(x, float(s["color_jitter"]))
        if s["noise"]:
            noise = torch.randn(x.shape, generator=self.generator).to(dev) * float(s["noise"])
            x = (x + noise).clamp_(0, 1)
        x = standardize(self.pre, x, inplace=True)
        if s["erasing"]:
            x = self._erase(x, float(s["erasing"]))
        if self.mix is not None:
            if labels.ndim == 2:  # multi-label rows: torchvision's mixers take class indices
                x, labels = self._mix_rows(x, labels.float())
            else:
                x, labels = self.mix(x, labels)
        return x, labels

    def _mix_rows(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp / CutMix (one of those configured, at random) for multi-label 0/1 rows, as
        torchvision's ``v2.MixUp`` / ``v2.CutMix`` do for one-hot rows: each image with the
        batch's next (rolled by one), the targets mixed by the share of each image's pixels."""
        names = [k for k, alpha in self.alphas.items() if alpha > 0]
        name = names[int(torch.randint(len(names), (1,), generator=self.generator))]
        alpha = torch.tensor(float(self.alphas[name]))
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        other, other_rows = x.roll(1, 0), rows.roll(1, 0)
        if name == "mixup":
            return x.mul(lam).add_(other, alpha=1 - lam), rows * lam + other_rows * (1 - lam)
        h, w = x.shape[-2:]
        cy, cx = (int(torch.randint(n, (1,), generator=self.generator)) for n in (h, w))
        half_h, half_w = int(h * math.sqrt(1 - lam) / 2), int(w * math.sqrt(1 - lam) / 2)
        y0, y1 = max(cy - half_h, 0), min(cy + half_h, h)
        x0, x1 = max(cx - half_w, 0), min(cx + half_w, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        return x, rows * lam + other_rows * (1 - lam)

    def _rand(self, n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
        return (torch.rand(n, generator=self.generator) * (hi - lo) + lo).to(device)

    def _color_jitter(self, x: torch.Tensor, strength: float) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        brightness = self._rand(n, 1 - strength, 1 + strength, dev).view(n, 1, 1, 1)
        contrast = self._rand(n, 1 - strength, 1 + strength, dev).view(n, 1, 1, 1)
        x = x * brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        if x.shape[1] == 3:
            saturation = self._rand(n, 1 - strength, 1 + strength, dev).view(n, 1, 1, 1)
            gray = (x * torch.tensor(LUMA, device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
            x = (x - gray) * saturation + gray
        return x.clamp_(0, 1)

    def _erase(self, x: torch.Tensor, prob: float) -> torch.Tensor:
        """Random erasing (Zhong et al.): a box of 2-33% of the area, ratio 0.3-3.3, set to 0."""
        n, _, h, w = x.shape
        dev = x.device
        area = self._rand(n, 0.02, 0.33, dev) * h * w
        log_ratio = self._rand(n, math.log(0.3), math.log(3.3), dev)
        ratio = torch.exp(log_ratio)
        eh = torch.sqrt(area * ratio).clamp(1, h)
        ew = torch.sqrt(area / ratio).clamp(1, w)
        top = self._rand(n, 0, 1, dev) * (h - eh)
        left = self._rand(n, 0, 1, dev) * (w - ew)
        rows = torch.arange(h, device=dev).view(1, h)
        cols = torch.arange(w, device=dev).view(1, w)
        apply = (self._rand(n, 0, 1, dev) < prob).view(n, 1)
        # Small (N, H) and (N, W) masks, combined once: the (N, H, W) mask is built one time.
        in_rows = (rows >= top.view(n, 1)) & (rows < (top + eh).view(n, 1)) & apply
        in_cols = (cols >= left.view(n, 1)) & (cols < (left + ew).view(n, 1))
        mask = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)
        return x.masked_fill_(mask, 0.0)
