"""Uploaded bytes to the model's view of an image, refusing what is not a safe, whole image.

The format is decided by the content (PIL identifies it from the magic bytes), never by the
file name or the content type. The size is read from the header and checked before any pixel
is decoded, so a small file that declares a huge image costs nothing. Decoding then follows
``edge.images.load_image`` step by step (JPEG draft, EXIF orientation, mode, the one resize), so
the server sees an image exactly as ``imagewise predict`` does.
"""

from __future__ import annotations

import io
import re

from PIL import Image, ImageOps, UnidentifiedImageError

from imagewise.edge.images import decoded_side, normalize_mode
from imagewise.edge.spec import InputContract

# PIL format ids; camera JPEGs with several pictures open as MPO.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"


class ImageRejected(Exception):
    """An upload the server will not classify, with the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def safe_name(name: str | None, fallback: str) -> str:
    """The uploaded file name as it may be echoed back: no folders, no control characters.

    The name is only ever a label in the answer; the server never opens a path a client chose.
    """
    base = re.split(r"[/\\]", name or "")[-1]
    base = re.sub(r"[\x00-\x1f\x7f]", "", base).strip()
    return base[:200] if base not in ("", ".", "..") else fallback


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Identify an image from its bytes and check its size, decoding no pixels.

    Raises:
        ImageRejected: empty (400), not an allowed format (415) or too many pixels (413).
    """
    if not data:
        raise ImageRejected(400, "the file is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise ImageRejected(413, f"the image has more than {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageRejected(415, f"not an image imagewise reads; send {FORMAT_NAMES}") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageRejected(
            413, f"the image is {width}x{height} pixels, more than the limit of {max_pixels}"
        )
    if width < 1 or height < 1:
        img.close()
        raise ImageRejected(400, f"the image has no pixels ({width}x{height})")
    return img


def open_upload(data: bytes, pre: InputContract, max_pixels: int) -> Image.Image:
    """:func:`open_image`, with a JPEG set to decode at the reduced size the model needs (its
    ``size`` is then the size it decodes to: what decoding it costs)."""
    img = open_image(data, max_pixels)
    if img.format == "JPEG":
        side = decoded_side(pre.img_size, pre.crop_pct)
        img.draft("L" if pre.channels == 1 else "RGB", (side, side))
    return img


def decode_opened(img: Image.Image, pre: InputContract) -> Image.Image:
    """An image from :func:`open_upload` -> an ``L`` or ``RGB`` image of ``size`` x ``size``, as
    the model sees it; ``img`` is closed.

    Raises:
        ImageRejected: 400 when the data is truncated or corrupt.
    """
    try:
        with img:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return pre.fit(normalize_mode(img, pre.channels))
    except MemoryError:
        raise
    except Exception as exc:  # decoders of untrusted data fail in many ways; all mean "bad file"
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(400, f"the image data is {reason}") from None


def decode_image(data: bytes, pre: InputContract, max_pixels: int) -> Image.Image:
    """Uploaded bytes -> an ``L`` or ``RGB`` image of ``size`` x ``size``, as the model sees it.

    Raises:
        ImageRejected: as :func:`open_image`, or 400 when the data is truncated or corrupt.
    """
    return decode_opened(open_upload(data, pre, max_pixels), pre)
