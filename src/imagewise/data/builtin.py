"""Built-in datasets: ``digits`` (ships with scikit-learn), ``fashion-mnist`` and ``photos``
(crops of scikit-image's photographs, ``imagewise.data.photos``).

Fashion-MNIST is read from the files the Debian package ``dataset-fashion-mnist`` installs, or
from imagewise's cache, or downloaded from the dataset's official address (checked by MD5).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np

from imagewise.errors import UserError

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
BUILTIN_NAMES = ("digits", "fashion-mnist", "photos")


def cache_dir() -> Path:
    """Where downloaded datasets live: ``$IMAGEWISE_HOME`` or ``~/.cache/imagewise``."""
    root = os.environ.get("IMAGEWISE_HOME") or Path.home() / ".cache" / "imagewise"
    return Path(root) / "datasets"


def canonical_name(name: str) -> str | None:
    """The built-in dataset a name refers to (``fashion_mnist`` -> ``fashion-mnist``), or None."""
    key = name.strip().lower().replace("_", "-")
    return key if key in BUILTIN_NAMES else None


def _complete(folder: Path) -> bool:
    return all(
        (folder / name).is_file() or (folder / name[:-3]).is_file() for name in FASHION_FILES
    )


def find_fashion_mnist() -> Path | None:
    """The folder holding the four Fashion-MNIST IDX files, if any is present locally."""
    for folder in (cache_dir() / "fashion-mnist", DEBIAN_FASHION_DIR):
        if _complete(folder):
            return folder
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_fashion_mnist(dest: Path | None = None, base_url: str = FASHION_URL) -> Path:
    """Download the four official Fashion-MNIST files into ``dest``, checking each MD5."""
    dest = dest or cache_dir() / "fashion-mnist"
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in FASHION_FILES.items():
        target = dest / name
        if target.is_file() and _md5(target) == md5:
            continue
        tmp = target.with_suffix(".part")
        try:
            with urllib.request.urlopen(base_url + name, timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UserError(
                f"could not download Fashion-MNIST ({exc}); install the Debian package "
                "dataset-fashion-mnist or put the four IDX files in " + str(dest)
            ) from exc
        if _md5(tmp) != md5:
            tmp.unlink(missing_ok=True)
            raise UserError(f"downloaded {name} has the wrong checksum; try again later")
        os.replace(tmp, target)
    return dest


def fetch(name: str) -> Path:
    """Make a built-in dataset available locally and return its folder (``data fetch``)."""
    key = canonical_name(name)
    if key == "digits":
        from sklearn.datasets import load_digits

        load_digits()  # ships inside scikit-learn: nothing to download
        import sklearn

        return Path(sklearn.__file__).parent / "datasets" / "data"
    if key == "fashion-mnist":
        return find_fashion_mnist() or download_fashion_mnist()
    if key == "photos":
        from imagewise.data.photos import find_or_build_photos

        return find_or_build_photos(cache_dir())
    raise UserError(f"unknown built-in dataset '{name}'; choose one of {', '.join(BUILTIN_NAMES)}")


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 8x8 handwritten digits as uint8 images (N, 1, 8, 8), labels and names."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, bunch.target.astype(np.int64), [str(c) for c in bunch.target_names]
