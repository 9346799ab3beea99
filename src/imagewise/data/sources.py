"""Turn what the user points at into labelled train / val / test splits.

Accepted sources: a built-in name (``digits``, ``fashion-mnist``); a folder of class folders,
with or without ``train/ val/ test/`` sub-splits; a folder of MNIST-format IDX files; a CSV
manifest with ``path,label`` columns (and an optional ``split`` column). Where a split is not
given, a stratified, seeded split carves it out of the training data.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imagewise.data import builtin
from imagewise.data.decode import find_images
from imagewise.data.idx import find_idx_pairs, read_idx
from imagewise.errors import UserError

SPLITS = ("train", "val", "test")
MANIFEST = ("path", "label", "split")  # a CSV manifest's own columns; the rest are extra


@dataclass
class Split:
    """One split: labels plus either decoded images (uint8, N×C×H×W) or file paths, and a CSV
    manifest's extra columns (``site``, ``camera``, ...: one value per image) when it has any."""

    labels: np.ndarray
    images: torch.Tensor | None = None
    paths: list[str] | None = None
    columns: dict[str, list[str]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        index = np.asarray(index, dtype=np.int64)
        return Split(
            labels=self.labels[index],
            images=self.images[torch.from_numpy(index)] if self.images is not None else None,
            paths=[self.paths[i] for i in index] if self.paths is not None else None,
            columns=(
                {k: [v[i] for i in index] for k, v in self.columns.items()}
                if self.columns is not None
                else None
            ),
        )

    @property
    def in_memory(self) -> bool:
        return self.images is not None


@dataclass
class ImageData:
    """A labelled dataset, split three ways, with what is known about its images."""

    classes: list[str]
    train: Split
    val: Split
    test: Split
    source: str
    kind: str  # builtin | folder | csv | idx
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise UserError(f"unknown split '{name}'; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices per class by ``fractions`` (the rest is the first part), seeded.

    Written here rather than taken from scikit-learn because ``train_test_split`` refuses classes
    with a single member, and real folders have them; every class keeps at least one training
    image and gets a held-out image once it has enough.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for k, frac in enumerate(fractions):
            n = round(len(idx) * frac)
            if frac > 0 and n == 0 and len(idx) - start >= 2 + (len(fractions) - k - 1):
                n = 1
            n = min(n, len(idx) - start - 1)
            parts[k + 1].extend(idx[start : start + n].tolist())
            start += n
        parts[0].extend(idx[start:].tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def _carve(
    pool: Split, val: Split | None, test: Split | None, val_frac: float, test_frac: float, seed: int
) -> tuple[Split, Split, Split]:
    """Fill the missing val / test splits from ``pool`` with a stratified split."""
    fracs = [val_frac if val is None else 0.0, test_frac if test is None else 0.0]
    train_idx, val_idx, test_idx = stratified_split(pool.labels, fracs, seed)
    return (
        pool.subset(train_idx),
        val if val is not None else pool.subset(val_idx),
        test if test is not None else pool.subset(test_idx),
    )


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_class_folders(root: Path, classes: list[str] | None = None) -> tuple[list[str], Split]:
    """Files under ``root/CLASS/**``; classes from the folder names (or the given list)."""
    folders = _class_folders(root)
    names = [p.name for p in folders]
    if classes is None:
        if not folders:
            raise UserError(
                f"'{root}' has no class folders; put the images of each class in a folder of "
                "its own (DATA/cat/1.jpg, DATA/dog/2.jpg)"
            )
        classes = names
    else:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise UserError(
                f"'{root}' has class folders not in the training split: {', '.join(unknown)}; "
                "every split must use the training classes"
            )
    paths: list[str] = []
    labels: list[int] = []
    for folder in folders:
        files = find_images(folder)
        if not files:
            raise UserError(
                f"class folder '{folder}' has no images; add images to it or remove the folder"
            )
        paths.extend(files)
        labels.extend([classes.index(folder.name)] * len(files))
    return classes, Split(labels=np.array(labels, dtype=np.int64), paths=paths)


def _from_folder(root: Path, val_frac: float, test_frac: float, seed: int) -> ImageData:
    if any(find_idx_pairs(root)):
        return _from_idx(root, val_frac, test_frac, seed)
    sub = {name: root / name for name in SPLITS if (root / name).is_dir()}
    if "train" not in sub:
        classes, pool = _scan_class_folders(root)
        train, val, test = _carve(pool, None, None, val_frac, test_frac, seed)
        return ImageData(classes, train, val, test, str(root), "folder")
    classes, pool = _scan_class_folders(sub["train"])
    given = {
        name: _scan_class_folders(sub[name], classes)[1] for name in ("val", "test") if name in sub
    }
    train, val, test = _carve(pool, given.get("val"), given.get("test"), val_frac, test_frac, seed)
    return ImageData(classes, train, val, test, str(root), "folder")


def _read_manifest(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The rows of a CSV manifest and its header's column names."""
    try:
        # errors=: a file name that is not UTF-8 is its own bytes (as --write-clean writes it)
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read CSV manifest '{path}': {exc}") from exc
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise UserError(f"CSV manifest '{path}' needs a header with columns path,label")
    return rows, [c for c in reader.fieldnames or [] if c]


def _from_csv(path: Path, val_frac: float, test_frac: float, seed: int) -> ImageData:
    rows, header = _read_manifest(path)
    classes = sorted({r["label"].strip() for r in rows if (r.get("label") or "").strip()})
    if not classes:
        raise UserError(f"CSV manifest '{path}' has no labelled rows")
    by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
    paths: list[str] = []
    labels: list[int] = []
    for line, row in enumerate(rows, start=2):
        label = (row.get("label") or "").strip()
        rel = (row.get("path") or "").strip()
        if not rel or not label:
            raise UserError(f"CSV manifest '{path}' line {line}: path and label must not be empty")
        split = (row.get("split") or "train").strip().lower() or "train"
        if split not in SPLITS:
            raise UserError(f"CSV manifest '{path}' line {line}: unknown split '{split}'")
        file = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        by_split[split].append(len(paths))
        paths.append(str(file))
        labels.append(classes.index(label))
    # Columns beyond path,label,split (site, camera, ...) travel with their images through every
    # subset, for `evaluate --slice-by`.
    extra = {c: [(r.get(c) or "").strip() for r in rows] for c in header if c not in MANIFEST}
    every = Split(np.array(labels, dtype=np.int64), paths=paths, columns=extra or None)

    def make(split: str) -> Split | None:
        return every.subset(np.array(by_split[split])) if by_split[split] else None

    pool = make("train")
    if pool is None:
        raise UserError(f"CSV manifest '{path}' has no training rows")
    train, val, test = _carve(pool, make("val"), make("test"), val_frac, test_frac, seed)
    return ImageData(classes, train, val, test, str(path), "csv")


def _idx_split(images: Path, labels: Path) -> Split:
    x = read_idx(images)
    y = read_idx(labels).astype(np.int64)
    if x.ndim != 3 or len(x) != len(y):
        raise UserError(
            f"IDX files '{images}' and '{labels}' do not match (N×H×W images, N labels)"
        )
    return Split(
        labels=y, images=torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))[:, None]
    )


def _from_idx(
    root: Path, val_frac: float, test_frac: float, seed: int, classes: list[str] | None = None
) -> ImageData:
    pairs = find_idx_pairs(root)
    if "train" not in pairs:
        raise UserError(f"'{root}' has no train-images-idx3-ubyte / train-labels-idx1-ubyte pair")
    given = {name: _idx_split(*pairs[name]) for name in ("val", "test") if name in pairs}
    pool = _idx_split(*pairs["train"])
    if classes is None:
        names_file = root / "classes.txt"
        n = int(pool.labels.max()) + 1
        classes = names_file.read_text().split("\n")[:n] if names_file.is_file() else None
        classes = classes if classes and len(classes) == n else [str(i) for i in range(n)]
    train, val, test = _carve(pool, given.get("val"), given.get("test"), val_frac, test_frac, seed)
    return ImageData(classes, train, val, test, str(root), "idx")


def _from_builtin(name: str, val_frac: float, test_frac: float, seed: int) -> ImageData:
    if name == "digits":
        images, labels, classes = builtin.load_digits_arrays()
        pool = Split(labels=labels, images=torch.from_numpy(images))
        train, val, test = _carve(pool, None, None, val_frac, test_frac, seed)
        return ImageData(classes, train, val, test, "digits", "builtin")
    if name == "photos":
        data = _from_folder(builtin.fetch("photos"), val_frac, test_frac, seed)
        data.source, data.kind = "photos", "builtin"
        return data
    folder = builtin.find_fashion_mnist()
    if folder is None:
        raise UserError(
            "Fashion-MNIST is not on this machine; run 'imagewise data fetch fashion-mnist' "
            "(or install the Debian package dataset-fashion-mnist)"
        )
    data = _from_idx(folder, val_frac, 0.0, seed, classes=list(builtin.FASHION_CLASSES))
    data.source, data.kind = "fashion-mnist", "builtin"
    return data


def resolve_source(
    source: str, val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0
) -> ImageData:
    """Find the dataset ``source`` names and split it; images stay undecoded file paths.

    Args:
        source: a built-in name, a folder, an IDX folder or a CSV manifest.
        val_fraction: share of the training pool held out for validation when no val split exists.
        test_fraction: likewise for the test split.
        split_seed: seed of the stratified split, so the same images land in the same split.
    """
    if not source:
        raise UserError(
            "no dataset given; name a folder, a CSV manifest, digits, fashion-mnist or photos"
        )
    name = builtin.canonical_name(source)
    if name and not Path(source).exists():
        return _from_builtin(name, val_fraction, test_fraction, split_seed)
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(
            f"dataset '{source}' does not exist; give a folder of class folders, a CSV manifest, "
            f"or a built-in name ({', '.join(builtin.BUILTIN_NAMES)})"
        )
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _from_csv(path, val_fraction, test_fraction, split_seed)
        raise UserError(f"'{source}' is a file but not a CSV manifest; give a folder or a .csv")
    return _from_folder(path, val_fraction, test_fraction, split_seed)
