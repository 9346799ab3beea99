"""The web page's speed in headless Chromium (onnxruntime-web, WebAssembly, one thread).

For each page folder (written by ``imagewise export RUN --format web``), in one Chromium:

- ``start``: seconds from opening index.html (file://) to the model ready;
- ``model``: images/s of the page's normalization and session on pixels already at the model's
  size (``imagewise.scoresOfPixels``), at batch 1 and batch 16, median of ``--repeats`` rounds;
- ``page``: images/s of the whole path a user gets: PNG files chosen in the file input, decoded
  by the browser, resized as Pillow does, classified one by one and shown.

``--resnet18`` also measures a page for torchvision's resnet18 at 224 px (1000 classes, random
weights: the speed does not depend on them), written by the same writer.

    .venv/bin/python benchmarks/web_page.py runs/fm/export/web --resnet18
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image


def resnet18_page(out: Path) -> Path:
    """A page folder for an untrained torchvision resnet18 at 224 px, 0.875 centre crop."""
    import torchvision

    from imagewise.edge.spec import InputContract, ModelSpec
    from imagewise.export.metadata import build_metadata
    from imagewise.export.onnx import to_onnx
    from imagewise.export.web import write

    pre = InputContract(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875)
    spec = ModelSpec(tuple(f"class {i}" for i in range(1000)), pre, model="resnet18")
    metadata = build_metadata(spec, {}, False)
    model = torchvision.models.resnet18(num_classes=1000).eval()
    onnx_path = out / "resnet18.onnx"
    onnx_path.write_bytes(to_onnx(model, pre, 1.0, False, metadata).SerializeToString())
    job = SimpleNamespace(onnx_file=lambda precision: onnx_path, metadata=metadata,
                          precision="float32")  # fmt: skip
    write(job, out / "web")  # type: ignore[arg-type]
    return out / "web"


def measure(browser: object, folder: Path, repeats: int, files: list[Path]) -> dict:
    page = browser.new_page()  # type: ignore[attr-defined]
    start = time.perf_counter()
    page.goto((folder / "index.html").resolve().as_uri())
    page.wait_for_function("() => window.imagewise.state === 'ready'", timeout=120_000)
    started = time.perf_counter() - start
    contract = page.evaluate("window.imagewise.contract")
    shape = (contract["channels"], contract["imgSize"], contract["imgSize"])
    rng = np.random.default_rng(0)
    out = {"folder": str(folder), "input": list(shape), "start_s": round(started, 2)}
    for batch in (1, 16):
        data = base64.b64encode(rng.integers(0, 256, (batch, *shape), np.uint8).tobytes()).decode()
        call = "([d, n]) => window.imagewise.scoresOfPixels(d, n)"
        page.evaluate(call, [data, batch])  # warm-up
        rates = []
        for _ in range(repeats):
            calls = max(1, 32 // batch)
            t = time.perf_counter()
            for _ in range(calls):
                page.evaluate(call, [data, batch])
            rates.append(calls * batch / (time.perf_counter() - t))
        out[f"model_images_per_s_batch{batch}"] = round(statistics.median(rates), 1)
    t = time.perf_counter()
    page.set_input_files("#files", [str(f) for f in files])
    page.wait_for_function(
        f"() => document.querySelectorAll('.result[data-state=done]').length === {len(files)}",
        timeout=600_000,
    )
    out["page_images_per_s"] = round(len(files) / (time.perf_counter() - t), 1)
    out["page_files"] = f"{len(files)} PNGs of {Image.open(files[0]).size}"
    page.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="page folders (RUN/export/web)")
    parser.add_argument("--resnet18", action="store_true", help="also a resnet18 page at 224 px")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=32, help="files for the page path")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), help="their size")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from imagewise.export.web import chromium

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folders = list(args.folders) + ([resnet18_page(work)] if args.resnet18 else [])
        rng = np.random.default_rng(1)
        files = []
        for i in range(args.images):
            w, h = args.size
            files.append(work / f"{i:03d}.png")
            Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(files[-1])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            for folder in folders:
                result = measure(browser, folder, args.repeats, files)
                result["chromium"] = browser.version
                print(json.dumps(result))
            browser.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
