"""Image decoding without PyTorch: any common format and mode to a PIL image or a uint8 array
of the wanted channels and size.

JPEG, PNG, BMP, TIFF, WebP and GIF (first frame); grayscale, RGB, RGBA / LA / transparent
palette (composited on white), CMYK, YCbCr, 1-bit, 16-bit and 32-bit integer and float images;
EXIF orientation respected. JPEGs are decoded at reduced size when the target is smaller
(PIL ``draft``), which is several times faster for large photos.

This module is part of the edge layer: it imports numpy and Pillow only, so an exported model
predicts and serves on a device without PyTorch. ``imagewise.data.decode`` adds the tensors.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jfif", ".pgm", ".ppm"}
)


class UnreadableImageError(Exception):
    """The file is not an image we can decode (missing, truncated, corrupt or another format)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(path: str | Path) -> bool:
    """True when the file name has an image extension we decode (case-insensitive)."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def find_images(folder: Path) -> list[str]:
    """Image files under ``folder``, sorted, skipping hidden files and folders (.ipynb_checkpoints
    holds copies that would otherwise leak between splits)."""
    return sorted(
        str(p)
        for p in folder.rglob("*")
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _to_8bit(img: Image.Image) -> Image.Image:
    """High bit-depth and float images to 8-bit grayscale, keeping the full range visible."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) // 257).astype(np.uint8)
    elif img.mode == "I":
        hi = max(int(arr.max()), 1)
        scale = 255.0 / (65535 if hi > 255 else 255)
        arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
    else:  # "F": floats of any range
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / ((hi - lo) or 1.0) * 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def normalize_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode to ``L`` (channels=1) or ``RGB`` (channels=3); alpha composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _reason(path: str | Path, exc: Exception) -> str:
    """A short, stable reason for an unreadable file (PIL's own texts vary between versions)."""
    if isinstance(exc, Image.DecompressionBombError):
        return "too many pixels"
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        return "the file is empty"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image, or a format imagewise cannot read"
    if "truncated" in str(exc).lower():
        return "the file is truncated"
    return "the image data is corrupt"


def load_image(
    path: str | Path,
    channels: int = 3,
    size: int | None = None,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
) -> Image.Image:
    """Decode an image file to a PIL image with ``channels`` (1 or 3), brought to ``size``
    square with ``interpolation`` and ``crop_pct`` (see :func:`fit_image`).

    Raises:
        UnreadableImageError: the file is missing, truncated, corrupt or not an image.
    """
    try:
        with Image.open(path) as img:
            if size and img.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale when that still covers the target size.
                side = decoded_side(size, crop_pct)
                img.draft("L" if channels == 1 else "RGB", (side, side))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            img = normalize_mode(img, channels)
    except FileNotFoundError:
        raise UnreadableImageError(path, "no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(path, _reason(path, exc)) from exc
    return fit_image(img, size, interpolation, crop_pct) if size else img


# The interpolations a model's preprocessing may name (timm's pretrained configs use these).
RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def resize_image(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """The one resize every stage uses: squash to ``size`` x ``size``, antialiased, with the
    model's interpolation (bilinear unless its weights were trained with another)."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), RESAMPLING[interpolation], reducing_gap=3.0)


def fit_image(
    img: Image.Image, size: int, interpolation: str = "bilinear", crop_pct: float = 1.0
) -> Image.Image:
    """The one resize every stage uses (training, evaluation, prediction, serving, export
    checks): ``crop_pct`` 1 squashes the image to ``size`` x ``size``; below 1 the shorter side
    goes to ``floor(size / crop_pct)`` and the centre ``size`` square is kept (timm's eval
    transform, same rounding)."""
    if crop_pct >= 1.0:
        return resize_image(img, size, interpolation)
    side = decoded_side(size, crop_pct)
    w, h = img.size
    scale = side / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new != img.size:
        img = img.resize(new, RESAMPLING[interpolation], reducing_gap=3.0)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def decoded_side(size: int, crop_pct: float = 1.0) -> int:
    """The shorter side an image is resized to before its centre ``size`` crop (timm rounds
    down the same way); ``size`` itself without a crop."""
    return size if crop_pct >= 1.0 else math.floor(size / crop_pct)


def probe_image(path: str | Path) -> tuple[int, int, bool]:
    """Width, height and whether the image is grayscale, read from the header only."""
    with Image.open(path) as img:
        gray = img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
        if img.mode == "P":
            palette = img.getpalette() or []
            rgb = np.array(palette[: 3 * 256]).reshape(-1, 3)
            gray = bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height, gray


def image_array(img: Image.Image) -> np.ndarray:
    """A PIL image (L or RGB) as a contiguous uint8 array of shape (C, H, W)."""
    arr = np.array(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)
