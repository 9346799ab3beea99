"""EfficientNet-Lite0 with ImageNet weights on CPU (issue 26): cached features and fine-tuning in
imagewise against a plain timm loop on the same threads, at 128, 160 and 224 px, with the test
accuracy each reaches on the built-in photos task (7 classes, 100 training crops per class).

The same process runs both, interleaved, round after round:

  features   imagewise: ``train(freeze=backbone)``'s one pass that caches the embeddings of the
             630 training and 70 validation images (its "cached features ... in X s" line);
             timm: ``forward_head(forward_features(x), pre_logits=True)`` in batches of 32,
             channels-last, no_grad, over the same images decoded beforehand.
  fine-tune  imagewise: ``train(augment=none)`` epochs, training images/s from history.csv;
             timm: AdamW steps of batch 32, channels-last, cross-entropy, over the same images.

Both see uint8 images already decoded in memory (imagewise decodes a small folder once into RAM
before training), so the figures compare the model work and what is around it. Accuracy: the
linear probe (30 epochs on cached features) and a full fine-tune (8 epochs), imagewise's
defaults otherwise, on the 350 test crops.

    .venv/bin/python benchmarks/pretrained_speed.py [--sizes 128 160 224] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

import imagewise
from imagewise.data.builtin import fetch
from imagewise.runtime.runs import RunFolder

ROOT = Path("runs/pretrained-speed")
MODEL = "tf_efficientnet_lite0"


class _Catch(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def imagewise_features(data: Path, size: int, out: Path, epochs: int = 1) -> tuple[float, float]:
    """(images/s of the caching pass, test accuracy after ``epochs`` probe epochs)."""
    catch = _Catch()
    logger = logging.getLogger("imagewise")
    logger.addHandler(catch)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        shutil.rmtree(out, ignore_errors=True)
        imagewise.train(str(data), out, model=MODEL, pretrained=True, freeze="backbone",
                        img_size=size, epochs=epochs, seed=0, show_progress=False)  # fmt: skip
    finally:
        logger.removeHandler(catch)
        logger.setLevel(level)
    line = next(x for x in catch.lines if x.startswith("cached features"))
    m = re.search(r"(\d+) train image\(s\) x 1 view\(s\) and (\d+) val.* in ([\d.]+)s", line)
    assert m, line
    images = int(m.group(1)) + int(m.group(2))
    acc = float(imagewise.evaluate(out, write=False, report=False).accuracy)
    return images / float(m.group(3)), acc


def imagewise_finetune(data: Path, size: int, out: Path, epochs: int, augment: str) -> tuple:
    """(median training images/s over the epochs after the first, test accuracy)."""
    shutil.rmtree(out, ignore_errors=True)
    imagewise.train(str(data), out, model=MODEL, pretrained=True, img_size=size, epochs=epochs,
                    augment=augment, seed=0, show_progress=False)  # fmt: skip
    rates = [float(h["images_per_second"]) for h in RunFolder.of(out).read_history()]
    acc = float(imagewise.evaluate(out, write=False, report=False).accuracy)
    return statistics.median(rates[1:] or rates), acc


def decoded(data: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and validation crops, decoded and squashed to ``size`` (uint8 NCHW)."""
    files = sorted((data / "train").glob("*/*.jpg"))
    classes = sorted({f.parent.name for f in files})
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR))
              for f in files]  # fmt: skip
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([classes.index(f.parent.name) for f in files])
    return x, y


def _normalize(x: torch.Tensor) -> torch.Tensor:
    x = x.float().div_(255).sub_(0.5).div_(0.5)
    return x.contiguous(memory_format=torch.channels_last)


def timm_model(classes: int) -> torch.nn.Module:
    from imagewise.models.weights import load_into, pretrained_weights

    model = timm.create_model(MODEL, num_classes=classes)
    load_into(model, pretrained_weights(MODEL))
    return model.to(memory_format=torch.channels_last)


@torch.no_grad()
def timm_features(x: torch.Tensor, classes: int) -> float:
    model = timm_model(classes).eval()
    start = time.perf_counter()
    for i in range(0, len(x), 32):
        model.forward_head(model.forward_features(_normalize(x[i : i + 32])), pre_logits=True)
    return len(x) / (time.perf_counter() - start)


def timm_finetune(x: torch.Tensor, y: torch.Tensor, classes: int, epochs: int) -> float:
    """Median training images/s over the epochs after the first."""
    model = timm_model(classes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        start = time.perf_counter()
        for i in range(0, len(x) - 31, 32):
            idx = order[i : i + 32]
            loss = torch.nn.functional.cross_entropy(model(_normalize(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates.append((len(x) // 32) * 32 / (time.perf_counter() - start))
    return statistics.median(rates[1:] or rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 224])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--speed-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--probe-epochs", type=int, default=30)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true", help="accuracy only (any load)")
    parser.add_argument("--parts", nargs="+", default=["features", "finetune"])
    args = parser.parse_args()
    data = fetch("photos")
    classes = len(list((data / "train").iterdir()))
    path = ROOT / "results.json"
    results: dict = json.loads(path.read_text()) if path.is_file() else {}
    results["threads"] = torch.get_num_threads()
    for size in args.sizes:
        x, y = decoded(data, size)
        rows: dict[str, list[float]] = {}
        # interleaved: imagewise, timm, imagewise, timm, ...
        for r in range(0 if args.skip_speed else args.rounds):
            if "features" in args.parts:
                rate, _ = imagewise_features(data, size, ROOT / f"speed-probe-{size}")
                rows.setdefault("features_imagewise", []).append(rate)
                rows.setdefault("features_timm", []).append(timm_features(x, classes))
            if "finetune" in args.parts:
                rate, _ = imagewise_finetune(
                    data, size, ROOT / f"speed-ft-{size}", args.speed_epochs, "none"
                )
                rows.setdefault("finetune_imagewise", []).append(rate)
                rows.setdefault("finetune_timm", []).append(
                    timm_finetune(x, y, classes, args.speed_epochs)
                )
            print(f"{size} px round {r + 1}: " + ", ".join(
                f"{k} {v[-1]:.1f}" for k, v in rows.items()), flush=True)  # fmt: skip
        row = results.get(str(size), {})
        row.update({k: statistics.median(v) for k, v in rows.items()})
        if not args.skip_accuracy:
            _, row["probe_accuracy"] = imagewise_features(
                data, size, ROOT / f"probe-{size}", args.probe_epochs
            )
            _, row["finetune_accuracy"] = imagewise_finetune(
                data, size, ROOT / f"finetune-{size}", args.finetune_epochs, "auto"
            )
        results[str(size)] = row
        print(f"{size} px: {json.dumps(row)}", flush=True)
        ROOT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
