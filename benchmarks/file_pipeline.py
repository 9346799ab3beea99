"""Images per second of the file-dataset pipeline at 224 px: imagewise vs torchvision ImageFolder.

A folder of JPEG photos (generated once: smooth random scenes, 640x480, 10 classes) is read
for one training epoch by:
  - ``imagefolder``: torchvision ``ImageFolder`` with the standard training transforms
    (RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize), DataLoader, batch 64;
  - ``imagewise-stream``: imagewise's streaming loader (``--cache none``): JPEG draft decoding
    at reduced scale and resize to 224 in the workers, then the ``standard`` augmentation on
    whole uint8 batches;
  - ``imagewise-cached``: imagewise's default for data that fits in memory: the images decoded
    once at 224 px (timed separately), then epochs from memory with the same augmentation.
Same number of DataLoader workers for both loaders; the passes are interleaved, repeated, and
the median is reported.

    .venv/bin/python benchmarks/file_pipeline.py --images 10000 --workers 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

BATCH = 64


def make_photos(root: Path, count: int, classes: int = 10) -> Path:
    """Smooth random colour scenes as quality-90 JPEGs (about 20-40 KB each); made once."""
    marker = root / f".complete-{count}"
    if marker.exists():
        return root
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, size=(12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
        img.filter(ImageFilter.GaussianBlur(2)).save(folder / f"{i:05d}.jpg", quality=90)
    marker.touch()
    return root


def imagefolder_pass(root: Path, workers: int) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomResizedCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])  # fmt: skip
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(root, tf), batch_size=BATCH, shuffle=True, num_workers=workers
    )
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def imagewise_setup(root: Path, cache: str):
    from imagewise.config import AugmentConfig, DataConfig
    from imagewise.data.pipeline import prepare
    from imagewise.data.sources import resolve_source
    from imagewise.data.transforms import BatchAugment

    raw = resolve_source(str(root), val_fraction=0.0, test_fraction=0.0)
    start = time.perf_counter()
    data, pre = prepare(raw, DataConfig(img_size=224, channels=3, cache=cache))
    setup = time.perf_counter() - start
    augment = BatchAugment(pre, AugmentConfig(preset="standard"), len(data.classes))
    return data, pre, augment, setup


def imagewise_pass(data, pre, augment, workers: int) -> float:
    from imagewise.data.pipeline import make_loader

    loader = make_loader(data.train, pre, BATCH, shuffle=True, workers=workers)
    start, n = time.perf_counter(), 0
    for images, labels in loader:
        x, _ = augment(images, labels)
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", default="/tmp/imagewise-bench-photos")
    args = parser.parse_args()
    root = make_photos(Path(args.root), args.images)
    stream = imagewise_setup(root, "none")
    cached = imagewise_setup(root, "ram")
    print(
        f"imagewise: checking {args.images} files took {stream[3]:.1f}s; decoding them once "
        f"into memory at 224 px took {cached[3]:.1f}s ({args.images / cached[3]:.0f} img/s)"
    )
    rates: dict[str, list[float]] = {"imagefolder": [], "imagewise-stream": [],
                                     "imagewise-cached": []}  # fmt: skip
    for r in range(args.repeats):
        rates["imagefolder"].append(imagefolder_pass(root, args.workers))
        rates["imagewise-stream"].append(imagewise_pass(*stream[:3], args.workers))
        rates["imagewise-cached"].append(imagewise_pass(*cached[:3], args.workers))
        print(f"pass {r + 1}: " + "  ".join(f"{k} {v[-1]:.0f} img/s" for k, v in rates.items()),
              flush=True)  # fmt: skip
    base = statistics.median(rates["imagefolder"])
    print(f"\n| pipeline ({args.workers} workers, batch {BATCH}) | median img/s | vs ImageFolder |")
    print("|---|---|---|")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.0f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
