"""What the audit keeps of each image: an exact content hash, a perceptual hash, a small
embedding for confirming near duplicates, and a small view for the label-error model.

The perceptual hash is a DCT pHash written with NumPy and SciPy rather than taken from the
``imagehash`` package: it runs on arrays we already hold (built-in datasets have no files),
needs no extra dependency (``imagehash`` pulls in PyWavelets), and the 64 bits pack into one
``uint64`` so the pairwise search is a vectorized XOR and popcount.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import dctn

from imagewise.data.decode import normalize_mode, resize_image

HASH_SIZE = 32  # the pHash's DCT input, as in the original pHash (32x32 grey)
COARSE_SIZE = 16  # the coarse view near duplicates are confirmed on (rescaled copies)
FINE_LIMIT = 64  # the fine view: the image itself up to 64 px a side (shifted copies), else 64
COLOUR_SIZE = 8  # the label model's coarse colour view (its grey view is the pHash input)
# The pHash of the image and of copies shifted by one pixel each way: a copy shifted by a pixel
# flips up to 24 of the 64 bits of a small image's pHash (measured on Fashion-MNIST), but one
# of these five matches it within a few bits.
SHIFTS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))

# Modes that keep more than 8 bits or carry alpha are hashed as they are: converting them
# to RGB would make different images equal.
_RAW_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F", "RGBA", "LA")

MODE_NAMES = {
    "1": "1-bit",
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "P": "palette",
    "PA": "palette+alpha",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "I;16": "16-bit",
    "I;16B": "16-bit",
    "I;16L": "16-bit",
    "I;16N": "16-bit",
    "I": "32-bit integer",
    "F": "32-bit float",
}


@dataclass
class Fingerprint:
    """One image's fingerprint (see the module docstring)."""

    exact: bytes  # 16-byte BLAKE2 of the decoded pixels, their shape and kind
    hashes: np.ndarray  # uint64 (len(SHIFTS),): pHash of the image and of its shifted copies
    coarse: np.ndarray  # uint8 (COARSE_SIZE, COARSE_SIZE) grey
    fine: np.ndarray  # uint8 grey, the image's own size up to FINE_LIMIT a side
    gray: np.ndarray  # uint8 (HASH_SIZE, HASH_SIZE): the pHash input and the label model's view
    colour: np.ndarray  # uint8 (3, COLOUR_SIZE, COLOUR_SIZE)
    features: np.ndarray | None = None  # float16: the label model's input (labels.py)


def exact_hash(img: Image.Image) -> bytes:
    """A hash of the decoded pixels: a PNG and its lossless re-save (or a grey image saved as
    RGB) hash the same; metadata, compression and file format do not count."""
    if img.mode not in _RAW_MODES:
        img = img.convert("RGB")
    arr = np.ascontiguousarray(np.asarray(img))
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{img.mode}:{arr.dtype.str}:{arr.shape}".encode())
    digest.update(arr.tobytes())
    return digest.digest()


def shifted(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``img`` moved by (dy, dx) pixels, the uncovered edge repeating its neighbour."""
    out = np.roll(img, (dy, dx), axis=(0, 1))
    if dy > 0:
        out[:dy] = out[dy : dy + 1]
    elif dy < 0:
        out[dy:] = out[dy - 1 : dy]
    if dx > 0:
        out[:, :dx] = out[:, dx : dx + 1]
    elif dx < 0:
        out[:, dx:] = out[:, dx - 1 : dx]
    return out


def phash(gray: np.ndarray) -> int:
    """DCT perceptual hash: the 8x8 lowest frequencies of a 32x32 grey image, each bit set when
    the coefficient is above their median (Zauner 2010; what ``imagehash.phash`` computes)."""
    low = dctn(gray.astype(np.float64), type=2, norm="ortho")[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def fingerprint(img: Image.Image, with_features: bool = False) -> Fingerprint:
    """The fingerprint of a decoded image (any PIL mode, EXIF orientation already applied);
    ``with_features`` adds the label model's features, computed here so they are computed in
    the worker processes."""
    grey_img = normalize_mode(img, 1)
    gray = np.asarray(resize_image(grey_img, HASH_SIZE), dtype=np.uint8)
    if max(grey_img.size) > FINE_LIMIT:
        grey_img = resize_image(grey_img, FINE_LIMIT)
    colour = resize_image(normalize_mode(img, 3), COLOUR_SIZE)
    colour_arr = np.asarray(colour, dtype=np.uint8).transpose(2, 0, 1)
    return Fingerprint(
        exact=exact_hash(img),
        hashes=np.array([phash(shifted(gray, dy, dx)) for dy, dx in SHIFTS], dtype=np.uint64),
        coarse=np.asarray(resize_image(grey_img, COARSE_SIZE), dtype=np.uint8),
        fine=np.asarray(grey_img, dtype=np.uint8),
        gray=gray,
        colour=colour_arr,
        features=label_features(gray, colour_arr) if with_features else None,
    )


def label_features(gray: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The label model's input for one image, float16: HOG of the 32x32 grey view, the grey
    view at 16x16, and the 8x8 colour minus its grey (all zero, so no weight, for grey data).
    The grey pixels beside HOG found 82% of planted flips where HOG alone found 78%
    (Fashion-MNIST, BENCHMARKS.md)."""
    from imagewise.models.hog_svm import hog_features, hog_settings

    g = gray.astype(np.float32) / 255.0
    h = hog_features(g[None, None], hog_settings(HASH_SIZE))[0]
    side = HASH_SIZE // 2
    small = g.reshape(side, 2, side, 2).mean(axis=(1, 3)).ravel()
    c = colour.astype(np.float32) / 255.0
    chroma = (c - c.mean(axis=0, keepdims=True)).ravel()
    return np.concatenate([h, small, chroma]).astype(np.float16)


def mode_name(mode: str) -> str:
    """The colour mode in the user's words (``I;16`` -> ``16-bit``)."""
    return MODE_NAMES.get(mode, mode)
