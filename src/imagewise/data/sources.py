"""Turn what the user points at into labelled train / val / test splits.

Accepted sources: a built-in name (``digits``, ``fashion-mnist``); a folder of class folders,
with or without ``train/ val/ test/`` sub-splits; a folder of MNIST-format IDX files; a CSV
manifest with ``path,label`` columns (and an optional ``split`` column). Where a split is not
given, a stratified, seeded split carves it out of the training data.

Multi-label data (any number of labels per image, none included) comes from a CSV manifest in
either form: a ``labels`` column (``dog|cat``, the separator configurable; empty for none), or
one 0/1 column per class (``path,dog,cat,split``). Its splits' labels are then 0/1 arrays
(N, classes) and ``ImageData.task`` is ``multilabel``.
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
from imagewise.edge.spec import MULTILABEL, SINGLE
from imagewise.errors import UserError

SPLITS = ("train", "val", "test")
MANIFEST = ("path", "label", "labels", "split")  # a manifest's own columns; the rest are extra
TASK_CHOICES = ("auto", SINGLE, MULTILABEL)


@dataclass
class Split:
    """One split: labels plus either decoded images (uint8, N×C×H×W) or file paths, and a CSV
    manifest's extra columns (``site``, ``camera``, ...: one value per image) when it has any.

    ``labels``: class indices (int64, N), or for multi-label data 0/1 per class (uint8, N×K)."""

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
    task: str = SINGLE  # single | multilabel (labels 0/1 per class)

    @property
    def multilabel(self) -> bool:
        return self.task == MULTILABEL

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


def strata(labels: np.ndarray) -> np.ndarray:
    """What a split is stratified by: the class, or for multi-label rows (N, K) the rarest
    label each image carries (K for an image with none), so every label, rare ones first,
    reaches every split in proportion."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels
    counts = labels.sum(axis=0).astype(np.float64)
    rarity = np.where(labels > 0, counts[None, :], np.inf)
    return np.where(labels.any(axis=1), rarity.argmin(axis=1), labels.shape[1]).astype(np.int64)


def _carve(
    pool: Split, val: Split | None, test: Split | None, val_frac: float, test_frac: float, seed: int
) -> tuple[Split, Split, Split]:
    """Fill the missing val / test splits from ``pool`` with a stratified split."""
    fracs = [val_frac if val is None else 0.0, test_frac if test is None else 0.0]
    train_idx, val_idx, test_idx = stratified_split(strata(pool.labels), fracs, seed)
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
    header = [c.strip() for c in reader.fieldnames or [] if c and c.strip()]
    if not rows or "path" not in header:
        raise UserError(
            f"CSV manifest '{path}' needs a header with columns path,label (one class per "
            "image), path,labels (several: dog|cat) or path and one 0/1 column per class"
        )
    rows = [{(k or "").strip(): v for k, v in row.items()} for row in rows]
    return rows, header


def _cell(row: dict[str, str | None], column: str) -> str:
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""


def _label_form(
    path: Path, rows: list[dict[str, str]], header: list[str], task: str, separator: str
) -> tuple[str, str | list[str]]:
    """How the manifest gives its labels: ``("single", "label")``, ``("list", column)`` (a
    separated list in one column) or ``("columns", [class columns])`` (0/1 per class)."""
    if task not in TASK_CHOICES:
        raise UserError(f"unknown task '{task}'; choose one of {', '.join(TASK_CHOICES)}")
    if "labels" in header:
        form: tuple[str, str | list[str]] = ("list", "labels")
    elif "label" in header:
        listed = any(separator in _cell(r, "label") for r in rows)
        form = (
            ("list", "label")
            if task == MULTILABEL or (task == "auto" and listed)
            else ("single", "label")
        )
    else:
        binary = [c for c in header if c not in MANIFEST and _zero_one(rows, c)]
        if not binary:
            raise UserError(
                f"CSV manifest '{path}' has no label column: give path,label (one class per "
                "image), path,labels (several: dog|cat) or one 0/1 column per class"
            )
        form = ("columns", binary)
    if task == SINGLE and form[0] != "single":
        given = f"column {form[1]}" if form[0] == "list" else "0/1 class columns"
        raise UserError(
            f"CSV manifest '{path}' gives several labels per image ({given}); "
            "train it with --task multilabel (or auto)"
        )
    return form


def _zero_one(rows: list[dict[str, str]], column: str) -> bool:
    """Whether a column reads as one class's 0/1 flags (every cell 0 or 1)."""
    return all(_cell(r, column) in ("0", "1") for r in rows)


def _multilabel_rows(
    path: Path, rows: list[dict[str, str]], form: tuple[str, str | list[str]], separator: str
) -> tuple[list[str], np.ndarray]:
    """The class names and the 0/1 label matrix (rows, classes) of a multi-label manifest."""
    kind, where = form
    if kind == "columns":
        columns = list(where)
        for line, row in enumerate(rows, start=2):
            for c in columns:
                if _cell(row, c) not in ("0", "1"):
                    raise UserError(
                        f"CSV manifest '{path}' line {line}: column '{c}' is "
                        f"'{_cell(row, c)}'; a class column holds 0 or 1"
                    )
        matrix = np.array([[_cell(r, c) == "1" for c in columns] for r in rows], dtype=np.uint8)
        return columns, matrix.reshape(len(rows), len(columns))
    assert isinstance(where, str)
    per_row = []
    for line, row in enumerate(rows, start=2):
        names = [n.strip() for n in _cell(row, where).split(separator)]
        if any(not n for n in names) and any(names):
            raise UserError(
                f"CSV manifest '{path}' line {line}: '{_cell(row, where)}' has an empty label "
                f"between the separators ('{separator}'); write the labels as a{separator}b"
            )
        per_row.append(sorted({n for n in names if n}))
    classes = sorted({n for names in per_row for n in names})
    if not classes:
        raise UserError(f"CSV manifest '{path}' has no labelled rows")
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(rows), len(classes)), dtype=np.uint8)
    for i, names in enumerate(per_row):
        matrix[i, [index[n] for n in names]] = 1
    return classes, matrix


def _from_csv(
    path: Path, val_frac: float, test_frac: float, seed: int, task: str = "auto",
    separator: str = "|",
) -> ImageData:  # fmt: skip
    rows, header = _read_manifest(path)
    form = _label_form(path, rows, header, task, separator)
    multilabel = form[0] != "single"
    if multilabel:
        classes, matrix = _multilabel_rows(path, rows, form, separator)
    else:
        classes = sorted({_cell(r, "label") for r in rows if _cell(r, "label")})
        if not classes:
            raise UserError(f"CSV manifest '{path}' has no labelled rows")
    label_columns = set(form[1]) if form[0] == "columns" else {form[1]}
    by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
    paths: list[str] = []
    labels: list[int] = []
    for line, row in enumerate(rows, start=2):
        label = _cell(row, "label")
        rel = _cell(row, "path")
        if not rel or (not multilabel and not label):
            raise UserError(f"CSV manifest '{path}' line {line}: path and label must not be empty")
        split = _cell(row, "split").lower() or "train"
        if split not in SPLITS:
            raise UserError(f"CSV manifest '{path}' line {line}: unknown split '{split}'")
        file = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        by_split[split].append(len(paths))
        paths.append(str(file))
        if not multilabel:
            labels.append(classes.index(label))
    # Columns beyond path,label,split (site, camera, ...) travel with their images through every
    # subset, for `evaluate --slice-by`.
    extra = {
        c: [_cell(r, c) for r in rows]
        for c in header
        if c not in MANIFEST and c not in label_columns
    }
    values = matrix if multilabel else np.array(labels, dtype=np.int64)
    every = Split(values, paths=paths, columns=extra or None)

    def make(split: str) -> Split | None:
        return every.subset(np.array(by_split[split])) if by_split[split] else None

    pool = make("train")
    if pool is None:
        raise UserError(f"CSV manifest '{path}' has no training rows")
    train, val, test = _carve(pool, make("val"), make("test"), val_frac, test_frac, seed)
    data = ImageData(classes, train, val, test, str(path), "csv")
    if multilabel:
        data.task = MULTILABEL
    return data


def describe_labels(data: ImageData) -> str:
    """One line about a multi-label dataset: its labels, how many per image, how many images
    carry none, and the rarest label's count (training split)."""
    rows = np.asarray(data.train.labels)
    counts = rows.sum(axis=0)
    per_image = rows.sum(axis=1)
    rarest = int(np.argmin(counts))
    return (
        f"multi-label data (several labels per image; --task single to refuse): "
        f"{len(data.classes)} labels, {per_image.mean():.2f} per training image on average, "
        f"{int((per_image == 0).sum())} of {len(rows)} training images with none; rarest "
        f"label '{data.classes[rarest]}' on {int(counts[rarest])} images"
    )


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
    source: str, val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
    task: str = "auto", label_separator: str = "|",
) -> ImageData:  # fmt: skip
    """Find the dataset ``source`` names and split it; images stay undecoded file paths.

    Args:
        source: a built-in name, a folder, an IDX folder or a CSV manifest.
        val_fraction: share of the training pool held out for validation when no val split exists.
        test_fraction: likewise for the test split.
        split_seed: seed of the stratified split, so the same images land in the same split.
        task: ``auto`` (a CSV manifest with several labels per image is multi-label), ``single``
            or ``multilabel`` (a ``label`` column is then read as separated lists too).
        label_separator: what separates a multi-label manifest's labels in one cell.
    """
    if not source:
        raise UserError(
            "no dataset given; name a folder, a CSV manifest, digits, fashion-mnist or photos"
        )
    name = builtin.canonical_name(source)
    if task == MULTILABEL and not source.lower().endswith(".csv"):
        raise UserError(
            f"'{source}' has one class per image; multi-label data comes in a CSV manifest "
            "(path,labels with dog|cat, or one 0/1 column per class)"
        )
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
            return _from_csv(path, val_fraction, test_fraction, split_seed, task, label_separator)
        raise UserError(f"'{source}' is a file but not a CSV manifest; give a folder or a .csv")
    return _from_folder(path, val_fraction, test_fraction, split_seed)
