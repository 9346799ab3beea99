"""Common corruptions of uint8 images at three severities, for ``evaluate --robustness``.

The set follows ImageNet-C (Hendrycks & Dietterich, 2019): noise, blur, digital and weather
corruptions, each at rising severities. The pixel operations come from torchvision
(``transforms.v2.functional``: brightness, contrast), Pillow (JPEG) and torch (random draws,
convolutions, area resampling). The reference package of the benchmark,
``imagecorruptions``, is not used: its last release is from 2020 and it no longer runs on this
stack (``skimage.filters.gaussian(multichannel=...)`` was removed in scikit-image 0.19,
``np.float_`` in NumPy 2, ``pkg_resources`` is deprecated), it draws from NumPy's global random
state (a library call must leave it alone) and works on one HxWxC image at a time.

Sizes (blur widths) are given for a 32-pixel image and scale with the image, so a severity
looks alike on Fashion-MNIST and on 224-pixel photographs. Random corruptions draw from a
generator seeded per corruption and severity: the same images give the same pixels on every run.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from imagewise.errors import UserError

SEVERITIES = (1, 2, 3)
REFERENCE_SIZE = 32  # blur widths below are pixels of a 32-pixel image


@dataclass(frozen=True)
class Corruption:
    """One corruption: what it does to float images in [0, 1] (N, C, H, W) at a level, its
    levels for severities 1-3 and what the level measures."""

    name: str
    apply: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
    levels: tuple[float, float, float]
    unit: str


def _gaussian_noise(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    # torchvision's gaussian_noise draws from the global generator; the seeded one is one line
    return x + sigma * torch.randn(x.shape, generator=g)


def _shot_noise(x: torch.Tensor, photons: float, g: torch.Generator) -> torch.Tensor:
    return torch.poisson(x * photons, generator=g) / photons


def _impulse_noise(x: torch.Tensor, amount: float, g: torch.Generator) -> torch.Tensor:
    """Salt and pepper: a share ``amount`` of the pixels set to 0 or 1, half each."""
    u = torch.rand(x.shape, generator=g)
    return torch.where(u < amount / 2, 0.0, torch.where(u > 1 - amount / 2, 1.0, x))


def _scaled(x: torch.Tensor, width: float) -> float:
    return width * min(x.shape[-2:]) / REFERENCE_SIZE


def _gaussian_blur(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    # Two 1-D passes rather than torchvision's gaussian_blur, which convolves with the full
    # 2-D kernel: k x k products per pixel against 2k (15x slower at 224 pixels).
    s = _scaled(x, sigma)
    half = math.ceil(3 * s)
    t = torch.arange(-half, half + 1.0)
    k = torch.exp(-(t**2) / (2 * s * s))
    k = k / k.sum()
    return _convolve(_convolve(x, k[None, :]), k[:, None])


def _convolve(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each channel convolved with ``kernel`` (odd sides), edges replicated."""
    kh, kw = kernel.shape
    c = x.shape[1]
    padded = torch.nn.functional.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    weight = kernel.to(x.dtype).expand(c, 1, kh, kw)
    return torch.nn.functional.conv2d(padded, weight, groups=c)


def disk_kernel(radius: float) -> torch.Tensor:
    """A lens's out-of-focus blur: a disk of ``radius`` pixels, its rim weighted by how much of
    each pixel it covers (so the blur grows smoothly with the radius), summing to 1."""
    r = math.ceil(radius)
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1.0), torch.arange(-r, r + 1.0), indexing="ij")
    weight = (radius + 0.5 - torch.sqrt(yy**2 + xx**2)).clamp(0, 1)
    return weight / weight.sum()


def _defocus_blur(x: torch.Tensor, radius: float, g: torch.Generator) -> torch.Tensor:
    return _convolve(x, disk_kernel(_scaled(x, radius)))


def _motion_blur(x: torch.Tensor, length: float, g: torch.Generator) -> torch.Tensor:
    """A horizontal camera shake: the mean over ``length`` pixels of the row (odd, at least 1)."""
    n = 2 * round((_scaled(x, length) - 1) / 2) + 1
    return _convolve(x, torch.full((1, n), 1.0 / n))


def _pixelate(x: torch.Tensor, keep: float, g: torch.Generator) -> torch.Tensor:
    """Down to ``keep`` of the resolution (area mean), back up with nearest neighbours."""
    h, w = x.shape[-2:]
    small = torch.nn.functional.interpolate(
        x, size=(max(1, round(h * keep)), max(1, round(w * keep))), mode="area"
    )
    return torch.nn.functional.interpolate(small, size=(h, w), mode="nearest-exact")


def _jpeg(x: torch.Tensor, quality: float, g: torch.Generator) -> torch.Tensor:
    # Pillow's encoder: torchvision's F.jpeg warns that its image codecs are deprecated (0.29)
    from PIL import Image

    def roundtrip(image: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(image.squeeze(2) if image.shape[2] == 1 else image).save(
            buf, format="JPEG", quality=int(quality)
        )
        return np.asarray(Image.open(buf)).reshape(image.shape)

    pixels = to_uint8(x).permute(0, 2, 3, 1).numpy()
    out = np.stack([roundtrip(image) for image in pixels])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


def _brightness(x: torch.Tensor, factor: float, g: torch.Generator) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    return F.adjust_brightness(x, factor)


def _contrast(x: torch.Tensor, factor: float, g: torch.Generator) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    return F.adjust_contrast(x, factor)


def _fog(x: torch.Tensor, density: float, g: torch.Generator) -> torch.Tensor:
    """Haze: a smooth random veil (a 4x4 grid of random values, bicubic up to the image) added
    with weight ``density``, the result scaled back into range. A cheaper stand-in for
    ImageNet-C's plasma-fractal fog, with the same look on small images."""
    n, _, h, w = x.shape
    veil = torch.rand((n, 1, 4, 4), generator=g)
    veil = torch.nn.functional.interpolate(veil, size=(h, w), mode="bicubic", align_corners=True)
    return (x + density * veil.clamp(0, 1)) / (1 + density)


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("gaussian_noise", _gaussian_noise, (0.04, 0.08, 0.16), "standard deviation"),
        Corruption("shot_noise", _shot_noise, (60.0, 25.0, 10.0), "photons at full white"),
        Corruption("impulse_noise", _impulse_noise, (0.02, 0.05, 0.10), "share of pixels"),
        Corruption("gaussian_blur", _gaussian_blur, (0.6, 1.0, 1.5), "sigma at 32 px"),
        Corruption("defocus_blur", _defocus_blur, (1.0, 1.5, 2.0), "disk radius at 32 px"),
        Corruption("motion_blur", _motion_blur, (3.0, 5.0, 7.0), "length at 32 px"),
        Corruption("pixelate", _pixelate, (0.6, 0.4, 0.25), "resolution kept"),
        Corruption("jpeg", _jpeg, (30.0, 15.0, 7.0), "JPEG quality"),
        Corruption("brightness", _brightness, (1.4, 1.8, 2.4), "factor"),
        Corruption("darkness", _brightness, (0.6, 0.4, 0.25), "factor"),
        Corruption("contrast", _contrast, (0.5, 0.3, 0.15), "factor"),
        Corruption("fog", _fog, (0.4, 0.8, 1.5), "veil weight"),
    )
}


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] as uint8, rounded and clipped."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``images`` (uint8, N x C x H x W) under corruption ``name`` at ``severity`` (1-3), uint8.

    The result depends only on the images, the corruption, the severity and ``seed``.

    Example:
        >>> x = torch.full((1, 1, 2, 2), 200, dtype=torch.uint8)
        >>> corrupt(x, "darkness", 2)[0, 0, 0].tolist()  # 200 x 0.4
        [80, 80]
    """
    if name not in CORRUPTIONS:
        raise UserError(f"unknown corruption '{name}'; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise UserError(f"severity must be one of {SEVERITIES}, not {severity}")
    c = CORRUPTIONS[name]
    g = torch.Generator().manual_seed(seed * 1000 + list(CORRUPTIONS).index(name) * 10 + severity)
    return to_uint8(c.apply(images.float() / 255, c.levels[severity - 1], g).clamp(0, 1))


__all__ = ["CORRUPTIONS", "SEVERITIES", "Corruption", "corrupt", "disk_kernel", "to_uint8"]
