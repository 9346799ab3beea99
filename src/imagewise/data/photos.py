"""The built-in ``photos`` dataset: crops of the colour photographs that scikit-image ships.

Seven classes, one per photograph (a cat, a cup of coffee, a rocket on its launch pad, a
motorcycle, the Hubble deep field, a stained tissue section, a retina). The astronaut is left
out: the right side of that photograph shows a model of the space shuttle, so its test crops
would be rockets. Each image is a square crop of
random size and place; training crops come from the left 60% of a photograph and test crops from
the right 40%, so no test pixel was ever seen in training: telling the classes apart from a part
of the scene is a small real-photo task, offline, that transfer from ImageNet should win and
training from scratch on a few dozen images should find hard.

The folder (``train/CLASS/*.jpg``, ``test/CLASS/*.jpg``) is written once, seeded, under
imagewise's dataset cache and read like any folder dataset.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from imagewise.errors import UserError

# class name -> how to get the photograph from scikit-image
PHOTOS = {
    "cat": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",
    "galaxies": "hubble_deep_field",
    "tissue": "immunohistochemistry",
    "retina": "retina",
}
TRAIN_PER_CLASS = 100
TEST_PER_CLASS = 50
SIDE = 256  # crops are stored at most this many pixels wide
TRAIN_SHARE = 0.6  # training crops come from the left 60% of each photograph


def _photograph(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return image[0] if isinstance(image, tuple) else image  # the stereo pair's left view


def _crops(image: np.ndarray, count: int, left: int, right: int, rng: np.random.Generator):
    """``count`` square crops inside columns [left, right): side 30-60% of the photograph's
    height (at most the region's width), anywhere in the region."""
    height = image.shape[0]
    for _ in range(count):
        side = int(rng.uniform(0.3, 0.6) * height)
        side = max(16, min(side, right - left, height))
        x = int(rng.integers(left, right - side + 1))
        y = int(rng.integers(0, height - side + 1))
        crop = Image.fromarray(image[y : y + side, x : x + side])
        if side > SIDE:
            crop = crop.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
        yield crop


def build_photos(folder: Path, seed: int = 0) -> Path:
    """Write the dataset into ``folder`` (made whole in a temporary folder beside it, then
    renamed into place) and return it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".photos-", dir=folder.parent))
    rng = np.random.default_rng(seed)
    for cls, name in PHOTOS.items():
        image = _photograph(name)
        width = image.shape[1]
        split_at = int(width * TRAIN_SHARE)
        regions = {
            "train": (0, split_at, TRAIN_PER_CLASS),
            "test": (split_at, width, TEST_PER_CLASS),
        }
        for split, (left, right, count) in regions.items():
            out = tmp / split / cls
            out.mkdir(parents=True)
            for i, crop in enumerate(_crops(image, count, left, right, rng)):
                crop.save(out / f"{cls}-{i:03d}.jpg", quality=92)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process made it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def find_or_build_photos(root: Path) -> Path:
    """The dataset's folder under ``root``, built on first use (needs scikit-image)."""
    folder = root / "photos"
    if (folder / "test").is_dir():
        return folder
    try:
        import skimage.data  # noqa: F401
    except ImportError as exc:
        raise UserError(
            "the photos dataset is made from scikit-image's photographs; "
            'pip install "imagewise[all]"'
        ) from exc
    return build_photos(folder)
