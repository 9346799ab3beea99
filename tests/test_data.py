"""Data: decoding every format and mode, dataset sources, splits, corrupt files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagewise.config import DataConfig
from imagewise.data import builtin
from imagewise.data.decode import UnreadableImageError, read_image
from imagewise.data.idx import read_idx
from imagewise.data.pipeline import TensorBatches, prepare
from imagewise.data.sources import resolve_source, stratified_split
from imagewise.errors import UserError

from conftest import make_folder_dataset


def gradient(mode: str = "RGB", size: tuple[int, int] = (40, 20)) -> Image.Image:
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = 128
    arr[:5, :5] = 255  # a bright top-left corner to check orientation
    return Image.fromarray(arr, "RGB").convert(mode)


@pytest.mark.parametrize("ext", ["jpg", "png", "bmp", "tif", "webp", "gif"])
def test_every_format_decodes_to_requested_channels_and_size(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"img.{ext}"
    gradient().save(path)
    rgb = read_image(path, channels=3, size=16)
    gray = read_image(path, channels=1, size=16)
    assert rgb.shape == (3, 16, 16) and rgb.dtype == torch.uint8
    assert gray.shape == (1, 16, 16)
    # left-to-right red gradient survives every codec: right side brighter than left
    assert rgb[0, 8, -1] > rgb[0, 8, 1] + 100


def test_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("L", (8, 8), 10), Image.new("L", (8, 8), 250)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert int(read_image(tmp_path / "a.gif", channels=1).float().mean()) < 30


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    Image.new("RGBA", (6, 6), (255, 0, 0, 0)).save(tmp_path / "t.png")
    assert read_image(tmp_path / "t.png", channels=3).min() == 255


def test_cmyk_jpeg_decodes(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    x = read_image(tmp_path / "c.jpg", channels=3)
    assert x[0].float().mean() > 200 and x[1].float().mean() < 60  # red


def test_16_bit_png_keeps_its_range(tmp_path: Path) -> None:
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    x = read_image(tmp_path / "deep.png", channels=1)
    assert x[0, 0, 0] == 0 and x[0, 0, 1] == 255 and 126 <= x[0, 1, 0] <= 128


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = gradient(size=(40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    x = read_image(tmp_path / "rot.jpg", channels=3)
    assert x.shape == (3, 40, 20)  # portrait after applying the orientation
    # the bright corner, top-left on disk, is top-right once rotated clockwise
    assert x[:, :3, -3:].float().mean() > 200


@pytest.mark.parametrize(
    "content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00"]
)
def test_unreadable_files_raise(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError):
        read_image(path)


def test_truncated_jpeg_is_unreadable(tmp_path: Path) -> None:
    gradient(size=(64, 64)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError):
        read_image(tmp_path / "cut.jpg")


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_round_trip_and_idx_folder_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(50, 12, 12), dtype=np.uint8)
    labels = np.arange(50) % 5
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:10])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:10])
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    data = resolve_source(str(tmp_path), val_fraction=0.2)
    assert data.kind == "idx" and data.classes == ["0", "1", "2", "3", "4"]
    assert len(data.test) == 10 and len(data.train) == 40 and len(data.val) == 10
    assert data.train.images is not None and data.train.images.shape[1:] == (1, 12, 12)


def test_folder_without_splits_gets_stratified_seeded_80_10_10(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d", per_class=20, corrupt=False)
    a = resolve_source(str(root))
    b = resolve_source(str(root))
    assert (len(a.train), len(a.val), len(a.test)) == (48, 6, 6)
    assert a.test.paths == b.test.paths  # seeded
    for split in (a.val, a.test):
        assert np.bincount(split.labels).tolist() == [2, 2, 2]  # stratified
    assert not set(a.train.paths) & set(a.test.paths)
    c = resolve_source(str(root), split_seed=1)
    assert c.test.paths != a.test.paths


def test_folder_with_train_val_test_subfolders(tmp_path: Path) -> None:
    for split, n in (("train", 9), ("val", 3), ("test", 4)):
        make_folder_dataset(tmp_path / split, per_class=n, corrupt=False)
    data = resolve_source(str(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (27, 9, 12)
    assert data.classes == ["circle", "square", "stripes"]


def test_csv_manifest_with_relative_paths_and_splits(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "imgs", per_class=6, corrupt=False)
    rows = ["path,label,split"]
    for i, p in enumerate(sorted(root.rglob("*.*"))):
        rows.append(f"{p.relative_to(tmp_path)},{p.parent.name},{'test' if i % 6 == 0 else ''}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = resolve_source(str(tmp_path / "m.csv"))
    assert data.kind == "csv" and data.classes == ["circle", "square", "stripes"]
    assert len(data.test) == 3 and len(data.train) + len(data.val) == 15
    assert all(Path(p).is_file() for p in data.train.paths or [])


def test_corrupt_image_is_skipped_and_counted_or_fails_with_strict(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d", per_class=10, corrupt=True)
    raw = resolve_source(str(root), val_fraction=0.0, test_fraction=0.0)
    data, pre = prepare(raw, DataConfig())
    assert len(data.skipped) == 1 and data.skipped[0][0].endswith("broken.jpg")
    assert len(data.train) == 30
    assert pre.channels == 3 and pre.img_size == 32  # mixed RGB/gray -> RGB; native 32 px
    with pytest.raises(UserError, match=r"unreadable image .*broken\.jpg"):
        prepare(raw, DataConfig(strict=True))


def test_stratified_split_keeps_singleton_classes_in_training() -> None:
    labels = np.array([0] * 10 + [1])
    train, val, test = stratified_split(labels, [0.1, 0.1], seed=0)
    assert 10 in train.tolist() and len(val) == 1 and len(test) == 1


def test_digits_builtin_is_uint8_in_memory() -> None:
    data = resolve_source("digits")
    assert data.train.images is not None and data.train.images.dtype == torch.uint8
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.train.images.max() == 255


@pytest.mark.skipif(builtin.find_fashion_mnist() is None, reason="dataset-fashion-mnist missing")
def test_fashion_mnist_builtin_has_official_test_split() -> None:
    data = resolve_source("fashion-mnist")
    assert len(data.test) == 10_000 and len(data.train) + len(data.val) == 60_000
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"


def test_tensor_batches_shard_across_ranks_without_overlap() -> None:
    from imagewise.data.sources import Split

    split = Split(labels=np.arange(10), images=torch.zeros(10, 1, 2, 2, dtype=torch.uint8))
    seen = []
    for rank in range(2):
        loader = TensorBatches(split, 3, shuffle=True, seed=1, rank=rank, world_size=2)
        loader.set_epoch(3)
        seen += [int(v) for _, y in loader for v in y]
    assert sorted(seen) == list(range(10))
