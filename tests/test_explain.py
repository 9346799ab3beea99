"""Grad-CAM: the maps point at what decides the class, for CNNs and ViTs, through the CLI too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import imagewise
from imagewise.errors import UserError
from imagewise.explain import cam_maps, find_target_layer, overlay
from imagewise.models import create_model

from conftest import CLASSES, run_cli

SIZE, SIDE = 32, 8  # image and bright-square sizes in pixels


def squares(n: int, rng: np.random.Generator, bright: bool) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy uint8 images, each with a dim SIDE-px square somewhere; with ``bright``, also
    a bright square elsewhere. Only the bright square tells the classes apart.

    Returns the images (n, SIZE, SIZE) and the bright squares' top-left corners (n, 2).
    """
    images = rng.normal(40, 15, (n, SIZE, SIZE))
    corners = np.zeros((n, 2), dtype=np.int64)
    for img, corner in zip(images, corners, strict=True):
        while True:  # two squares that do not overlap
            (y, x), (dy, dx) = rng.integers(0, SIZE - SIDE + 1, size=(2, 2))
            if abs(y - dy) >= SIDE or abs(x - dx) >= SIDE:
                break
        img[dy : dy + SIDE, dx : dx + SIDE] = rng.normal(100, 10, (SIDE, SIDE))
        if bright:
            img[y : y + SIDE, x : x + SIDE] = rng.normal(220, 10, (SIDE, SIDE))
        corner[:] = y, x
    return np.clip(images, 0, 255).astype(np.uint8), corners


def as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images)[:, None].float().div(255).sub(0.5).div(0.5)


class SquareNet(nn.Module):
    """A small same-padded CNN (so map cells line up with pixels) with a global max-pool head."""

    def __init__(self) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int) -> nn.Conv2d:
            return nn.Conv2d(c_in, c_out, 3, padding=1)

        self.features = nn.Sequential(
            conv(1, 8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            conv(8, 16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            conv(16, 32),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def square_net() -> SquareNet:
    """SquareNet trained to tell images with a bright square (class 1) from plain noise."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    noise, _ = squares(200, rng, bright=False)
    bright, _ = squares(200, rng, bright=True)
    x, y = as_batch(np.concatenate([noise, bright])), torch.tensor([0] * 200 + [1] * 200)
    model = SquareNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small trains fastest on one thread, busy machine or not
    try:
        for _ in range(4):
            for idx in torch.randperm(len(x)).split(32):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


def peaks_on_square(maps: np.ndarray, corners: np.ndarray, margin: int = 2) -> int:
    """How many maps have their maximum inside their bright square (give or take ``margin``)."""
    hits = 0
    for m, (y, x) in zip(maps, corners, strict=True):
        py, px = np.unravel_index(m.argmax(), m.shape)
        hits += y - margin <= py < y + SIDE + margin and x - margin <= px < x + SIDE + margin
    return hits


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam"])
def test_the_map_peaks_on_the_bright_square_that_decides_the_class(
    square_net: SquareNet, method: str
) -> None:
    images, corners = squares(20, np.random.default_rng(1), bright=True)
    batch = as_batch(images)
    assert (square_net(batch).argmax(1) == 1).float().mean() >= 0.9  # the net learned the task
    maps = cam_maps(square_net, batch, targets=[1] * len(batch), method=method)
    assert maps.shape == (20, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    hits = peaks_on_square(maps, corners)
    assert hits >= 16, f"{method}: {hits}/20 peaks on the bright square"
    # The map is the target class's: the evidence for "no bright square" lies elsewhere. (An
    # untrained net fails one check or the other; Grad-CAM++ keeps only positive gradients
    # and is known to be less class-discriminative, so it is not held to this.)
    if method != "gradcam++":
        other = cam_maps(square_net, batch, targets=[0] * len(batch), method=method)
        assert peaks_on_square(other, corners) <= 4


def test_cam_maps_leaves_the_model_as_it_was(square_net: SquareNet) -> None:
    batch = as_batch(squares(2, np.random.default_rng(2), bright=True)[0])
    square_net.train()
    square_net.features[0].weight.requires_grad_(False)
    try:
        maps = cam_maps(square_net, batch, method="eigencam")
        assert square_net.training and all(m.training for m in square_net.modules())
        flags = [p.requires_grad for p in square_net.parameters()]
        assert flags == [False] + [True] * (len(flags) - 1)
        assert no_hooks(square_net)
        assert all(p.grad is None for p in square_net.parameters())
    finally:
        square_net.features[0].weight.requires_grad_(True)
        square_net.eval()
    assert maps.shape == (2, SIZE, SIZE) and np.isfinite(maps).all()
    # Under no_grad (as in prediction code) the maps still come out.
    with torch.no_grad():
        again = cam_maps(square_net, batch, targets=[1, 1])
    assert again.max() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("resnet18", "layer4"),
        ("efficientnet_b0", "bn2"),
        ("resnet9_tiny", "layer3"),
        ("tutorial_cnn", "features"),  # the Sequential whose output is act3's
        ("lenet5", "features.act2"),  # not the pooled map after it
        ("vgg11", "features.act8"),
    ],
)
def test_find_target_layer_per_family(name: str, layer: str) -> None:
    model = create_model(name, num_classes=3, in_chans=1, img_size=SIZE).eval()
    found, module, reshape = find_target_layer(model, torch.zeros(1, 1, SIZE, SIZE))
    assert (found, reshape) == (layer, None)
    assert module is model.get_submodule(layer)
    assert no_hooks(model) and not model.training


def test_find_target_layer_on_the_custom_net(square_net: SquareNet) -> None:
    name, module, _ = find_target_layer(square_net, torch.zeros(1, 1, SIZE, SIZE))
    assert name == "features" and module is square_net.features


def test_vit_maps_come_from_the_last_blocks_norm1() -> None:
    model = create_model("vit_tiny", num_classes=3, in_chans=1, img_size=SIZE).eval()
    x = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    name, module, reshape = find_target_layer(model, x[:1])
    assert name == "blocks.11.norm1" and module is model.blocks[-1].norm1
    tokens = torch.zeros(2, 1 + 8 * 8, 192)  # class token + 8x8 patches of 4 px
    assert reshape is not None and reshape(tokens).shape == (2, 192, 8, 8)
    for method in ("gradcam", "eigencam"):
        maps = cam_maps(model, x, targets=[0, 2], method=method)
        assert maps.shape == (2, SIZE, SIZE) and np.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > maps.min()
    assert no_hooks(model)


def test_channels_last_gives_the_same_maps() -> None:
    torch.manual_seed(0)
    model = create_model("resnet9_tiny", num_classes=3, in_chans=1, img_size=SIZE).eval()
    x = torch.randn(2, 1, SIZE, SIZE)
    plain = cam_maps(model, x, targets=[0, 1])
    model = model.to(memory_format=torch.channels_last)
    fast = cam_maps(model, x.contiguous(memory_format=torch.channels_last), targets=[0, 1])
    np.testing.assert_allclose(plain, fast, atol=1e-4)


def test_bad_layers_methods_and_models_are_refused(square_net: SquareNet) -> None:
    x = torch.zeros(1, 1, SIZE, SIZE)
    with pytest.raises(
        UserError, match=r"model has no layer 'nope'; its layers are features, head"
    ):
        cam_maps(square_net, x, layer="nope")
    with pytest.raises(UserError, match=r"outputs of shape \(1, 2\); pick a layer with a spatial"):
        cam_maps(square_net, x, layer="head.2")
    maps = cam_maps(square_net, x, layer="features.3")  # a named layer works
    assert maps.shape == (1, SIZE, SIZE)
    with pytest.raises(UserError) as err:
        cam_maps(square_net, x, method="lime")
    assert str(err.value) == (
        "unknown method 'lime'; choose one of gradcam, gradcam++, hirescam, eigencam"
    )

    class HogSvm:
        classical = True
        name = "hog_svm"

    with pytest.raises(UserError) as err:
        cam_maps(HogSvm(), x)  # type: ignore[arg-type]
    assert str(err.value) == "Grad-CAM needs a neural network; 'hog_svm' is a classical model"


def test_overlay_enlarges_colours_and_accepts_every_layout() -> None:
    cam = np.zeros((SIZE, SIZE), np.float32)
    cam[:4, :4] = 1.0  # hot top-left corner
    gray = np.full((SIZE, SIZE), 128, np.uint8)
    picture = overlay(gray, cam)
    assert picture.mode == "RGB" and picture.size == (224, 224)  # 32 px x 7
    rgb = np.asarray(picture).astype(int)
    assert (
        rgb[5, 5, 0] > rgb[5, 5, 2] and rgb[-5, -5, 2] > rgb[-5, -5, 0]
    )  # jet: red hot, blue cold
    chw = torch.full((3, 28, 28), 200, dtype=torch.uint8)
    assert overlay(chw, cam).size == (224, 224)  # 28 px x 8; the map is resized to the image
    hwc = np.zeros((40, 30, 3), np.uint8)
    assert overlay(hwc, cam, min_size=64).size == (90, 120)  # shorter side 30 x 3
    assert overlay(np.zeros((300, 400, 1), np.uint8), cam).size == (400, 300)  # big: unchanged
    with pytest.raises(UserError, match="1 or 3 channels"):
        overlay(np.zeros((8, 8, 4), np.uint8), cam)


def test_cli_explain_writes_overlays_and_an_index(
    trained_run: Path, folder_data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    square, circle = folder_data / "square" / "001.png", folder_data / "circle" / "002.png"
    out = tmp_path / "cams"
    args = ["explain", str(trained_run), str(square), str(circle), "--method", "gradcam++"]
    code, stdout, err = run_cli([*args, "--out", str(out)], capsys)
    assert code == 0, err
    files = [out / "001.gradcam++.png", out / "002.gradcam++.png"]
    assert stdout.splitlines()[:2] == [str(f) for f in files]
    assert f"wrote 2 heat maps to {out}" in stdout
    for f in files:
        with Image.open(f) as img:
            assert img.format == "PNG" and img.mode == "RGB" and img.size == (224, 224)
    index = json.loads((out / "explain.json").read_text())
    assert index["method"] == "gradcam++" and index["layer"] == "layer3"
    rows = index["images"]
    assert [r["source"] for r in rows] == [str(square), str(circle)]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    for r in rows:
        assert r["predicted"] in CLASSES and r["target"] == r["predicted"]
        assert 1 / 3 < r["probability"] <= 1 and r["probability"] == r["target_probability"]
        assert r["method"] == "gradcam++" and r["layer"] == "layer3"
    assert rows[0]["predicted"] == "square"  # easy shapes: the fixture's model gets this right

    code, stdout, err = run_cli(
        [*args[:3], "--class", "1", "--layer", "layer2", "--out", str(out)], capsys
    )
    assert code == 0, err
    row = json.loads((out / "explain.json").read_text())["images"][0]
    assert row["target"] == "square" and row["file"] == str(out / "001.gradcam.png")
    assert row["layer"] == "layer2"


def test_cli_explain_errors_are_one_line(
    trained_run: Path, folder_data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = str(folder_data / "square" / "001.png")
    base = ["explain", str(trained_run), image, "--out", str(tmp_path)]
    cases = {
        "--class=hexagon": (
            "error: unknown class 'hexagon'; the run's classes are: circle, square, stripes"
        ),
        "--class=7": "error: unknown class '7'; the run's classes are: circle, square, stripes",
        "--method=lime": (
            "error: unknown method 'lime'; choose one of gradcam, gradcam++, hirescam, eigencam"
        ),
        "--layer=nope": (
            "error: model has no layer 'nope'; its layers are prep, layer1, layer2, layer3, "
            "pre_logits, head_drop, fc (nested ones with dots, e.g. layer3.2)"
        ),
    }
    for flag, message in cases.items():
        code, stdout, err = run_cli([*base, flag], capsys)
        assert (code, stdout, err) == (2, "", message + "\n")
    broken = folder_data / "circle" / "broken.jpg"
    code, _, err = run_cli(["explain", str(trained_run), str(broken)], capsys)
    assert code == 2 and err.startswith(f"error: cannot read image '{broken}' (")
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written for a failed call


def test_python_api_defaults_and_shared_stems(
    trained_run: Path, folder_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    same_stem = [folder_data / "square" / "001.png", folder_data / "circle" / "001.png"]
    written = imagewise.explain(run, same_stem, method="hirescam", target="circle")
    assert written == [
        run / "explain" / "square_001.hirescam.png",
        run / "explain" / "circle_001.hirescam.png",
    ]
    rows = json.loads((run / "explain" / "explain.json").read_text())["images"]
    assert {r["target"] for r in rows} == {"circle"}
    # A folder is searched like predict does; its corrupt file is skipped, not fatal.
    written = imagewise.explain(run, [str(folder_data / "circle")], out=tmp_path / "all")
    assert len(written) == 24 and all(p.exists() for p in written)
    # What the evaluation report uses: load, cam_maps, overlay; no hooks stay behind.
    clf = imagewise.load(run)
    maps = cam_maps(clf.model, clf.preprocess([same_stem[0]]), targets=[1])
    assert overlay(clf._read(same_stem[0]), maps[0]).size == (224, 224)
    assert no_hooks(clf.model)


def test_explain_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["explain", "--help"], capsys)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:\n  imagewise explain runs/fm " in out and "--class CLASS" in out
