"""Shared fixtures: tiny generated datasets and a trained tiny run, made once per session."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagewise.cli

CLASSES = ("circle", "square", "stripes")


def draw(kind: str, size: int, rng: np.random.Generator, rgb: bool) -> Image.Image:
    """A noisy picture of one of three easy-to-learn classes."""
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 + rng.uniform(-2, 2, size=2)
    if kind == "circle":
        img = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (size / 3) ** 2).astype(float)
    elif kind == "square":
        img = ((abs(yy - c[0]) < size / 4) & (abs(xx - c[1]) < size / 4)).astype(float)
    else:
        img = ((xx // 3) % 2).astype(float)
    img = np.clip(img * 200 + rng.normal(30, 15, img.shape), 0, 255).astype(np.uint8)
    if rgb:
        tint = rng.uniform(0.6, 1.0, size=3)
        return Image.fromarray((img[..., None] * tint).astype(np.uint8), "RGB")
    return Image.fromarray(img, "L")


def make_folder_dataset(
    root: Path, per_class: int = 24, size: int = 32, corrupt: bool = True
) -> Path:
    """DATA/CLASS/*.png|jpg: PNG and JPEG, RGB and grayscale, plus one corrupt file."""
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = draw(kind, size, rng, rgb=i % 2 == 0)
            if i % 3 == 0:
                img.save(folder / f"{i:03d}.jpg", quality=95)
            else:
                img.save(folder / f"{i:03d}.png")
    if corrupt:
        (root / CLASSES[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture(scope="session")
def trained_run(folder_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained through the CLI on the folder dataset (shared by several tests)."""
    out = tmp_path_factory.mktemp("runs") / "shapes"
    args = f"train {folder_data} --model resnet9_tiny --epochs 10 --batch-size 8 --out {out}"
    code = imagewise.cli.main([*args.split(), "-q", "--augment", "light"])
    assert code == 0
    return out


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = imagewise.cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


SERVING_LINE = re.compile(r" at (http://\S+)/ \(API docs at /docs\)$", re.MULTILINE)


@contextmanager
def serve_process(
    run: Path,
    log: Path,
    *flags: str,
    headers: dict[str, str] | None = None,
    wait_for: str = "/readyz",
) -> Iterator[str]:
    """``python -m imagewise serve RUN --port 0`` on loopback; yields its URL once ``wait_for``
    answers 200 (with ``headers``, e.g. the token). The system picks the port as it binds, so
    no other process can take it between a pick and the bind; the URL comes from the server's
    "serving RUN at URL" line. The server's output goes to ``log``."""
    import httpx

    cmd = [sys.executable, "-m", "imagewise", "serve", str(run), "--port", "0", *flags]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    url = None
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready in 90 s:\n{log.read_text()}")
            if url is None and (found := SERVING_LINE.search(log.read_text())):
                url = found[1]
            try:
                if url and httpx.get(url + wait_for, headers=headers, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def served_copy(trained_run: Path, folder: Path) -> Path:
    """A copy of the run for a server to use, so other tests writing into the run do not race."""
    run = folder / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval", "explain", "tens*"))
    return run


def make_mosaic_manifest(root: Path, count: int = 240, size: int = 32, seed: int = 0) -> Path:
    """A multi-label dataset: 2x2 mosaics whose tiles are a circle, a square, stripes or blank;
    each image's labels are the shapes it shows (``labels`` column, ``|``-separated, empty for
    none). Returns the CSV manifest."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    half = size // 2
    lines = ["path,labels"]
    for i in range(count):
        canvas = np.zeros((size, size), dtype=np.uint8)
        present = set()
        for tile in range(4):
            if rng.random() < 0.35:
                continue
            kind = CLASSES[int(rng.integers(len(CLASSES)))]
            r, c = divmod(tile, 2)
            canvas[r * half : (r + 1) * half, c * half : (c + 1) * half] = np.asarray(
                draw(kind, half, rng, rgb=False)
            )
            present.add(kind)
        Image.fromarray(canvas).save(root / f"{i:04d}.png")
        lines.append(f"{i:04d}.png,{'|'.join(sorted(present))}")
    manifest = root / "labels.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="session")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-label manifest of 300 shape mosaics (``make_mosaic_manifest``)."""
    return make_mosaic_manifest(tmp_path_factory.mktemp("mosaics"), count=300)


@pytest.fixture(scope="session")
def ml_run(mosaics: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-label run on ``mosaics`` (resnet9p_tiny, 6 epochs), made once per session."""
    import imagewise

    out = tmp_path_factory.mktemp("mlrun") / "run"
    imagewise.train(
        str(mosaics), out, model="resnet9p_tiny", epochs=6, augment="none", show_progress=False
    )
    return out
