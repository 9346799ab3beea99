"""Image decoding to uint8 tensors: what ``imagewise.edge.images`` decodes (any format and mode,
EXIF orientation, JPEG draft decoding, the one resize), as PyTorch tensors (C, H, W).

The decoding itself lives in the edge layer so that an exported model predicts without PyTorch;
its names are re-exported here for the stages that use tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from imagewise.edge.images import (
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    find_images,
    fit_image,
    image_array,
    is_image_file,
    load_image,
    normalize_mode,
    probe_image,
    resize_image,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "UnreadableImageError",
    "find_images",
    "fit_image",
    "is_image_file",
    "load_image",
    "normalize_mode",
    "pil_to_tensor",
    "probe_image",
    "read_image",
    "resize_image",
    "resize_tensor_images",
]


def resize_tensor_images(
    images: torch.Tensor, size: int, interpolation: str = "bilinear", crop_pct: float = 1.0
) -> torch.Tensor:
    """Bring a uint8 batch (N, C, H, W) to ``size`` with :func:`fit_image`, image by image."""
    if images.shape[-2:] == (size, size) and crop_pct >= 1.0:
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for i, img in enumerate(images):
        arr = img.numpy()
        pil = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
        out[i] = pil_to_tensor(fit_image(pil, size, interpolation, crop_pct))
    return out


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image (L or RGB) as a uint8 tensor of shape (C, H, W)."""
    return torch.from_numpy(image_array(img))


def read_image(
    path: str | Path,
    channels: int = 3,
    size: int | None = None,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
) -> torch.Tensor:
    """Decode an image file to a uint8 tensor (C, H, W); see :func:`load_image`."""
    return pil_to_tensor(load_image(path, channels, size, interpolation, crop_pct))
