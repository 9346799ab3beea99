"""Robustness to common corruptions and per-slice metrics (evaluate --robustness, --slice-by)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import imagewise
from imagewise.errors import UserError
from imagewise.evaluate.corruptions import CORRUPTIONS, corrupt, disk_kernel
from imagewise.evaluate.robustness import measure, stratified_sample
from imagewise.evaluate.slices import slice_metrics

from conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def flat(*values: int, size: int = 8) -> torch.Tensor:
    """Grayscale images (N, 1, size, size), image k filled with values[k]."""
    return torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, size, size)


def test_brightness_darkness_and_contrast_give_the_hand_computed_pixels() -> None:
    assert corrupt(flat(100, 200), "brightness", 1)[:, 0, 0, 0].tolist() == [140, 255]  # x 1.4
    assert corrupt(flat(200), "darkness", 2)[0, 0, 0, 0].item() == 80  # x 0.4
    x = torch.tensor([[0, 100], [200, 100]], dtype=torch.uint8).view(1, 1, 2, 2)
    # contrast 0.5 blends with the image's mean (100): 0.5 x + 50
    assert corrupt(x, "contrast", 1)[0, 0].tolist() == [[50, 100], [150, 100]]


def test_pixelate_averages_blocks_and_motion_blur_smears_a_line() -> None:
    x = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    x[0, 0, :4, :4] = 100  # top-left block; keep 0.25 of 8 pixels -> 2 x 2 blocks of 4 x 4
    x[0, 0, 0, 4] = 160  # one pixel of the top-right block: its mean is 10
    out = corrupt(x, "pixelate", 3)[0, 0]
    assert out[:4, :4].unique().tolist() == [100]
    assert out[:4, 4:].unique().tolist() == [10]
    assert out[4:].unique().tolist() == [0]
    line = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    line[0, 0, :, 10] = 255  # severity 1: 3 pixels at 32 px, horizontal
    row = corrupt(line, "motion_blur", 1)[0, 0, 5]
    assert row[8:13].tolist() == [0, 85, 85, 85, 0]


def test_defocus_disk_and_gaussian_blur_kernels() -> None:
    k = disk_kernel(1.0)  # centre 1, edge neighbours 0.5, corners 1.5 - sqrt(2)
    raw = torch.tensor([1.5 - 2**0.5, 0.5, 1.0])
    total = raw[2] + 4 * raw[1] + 4 * raw[0]
    assert k[1, 1].item() == pytest.approx(1 / total.item())
    assert k[0, 1].item() == pytest.approx(0.5 / total.item())
    assert k[0, 0].item() == pytest.approx(raw[0].item() / total.item())
    dot = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    dot[0, 0, 16, 16] = 255
    blurred = corrupt(dot, "gaussian_blur", 3)[0, 0].float()  # sigma 1.5 at 32 px
    t = torch.arange(-5, 6.0)
    g = torch.exp(-(t**2) / (2 * 1.5**2))
    expected = 255 * g[5] * g / g.sum() ** 2  # the row through the dot
    assert blurred[16, 11:22].tolist() == pytest.approx(expected.round().tolist(), abs=1)


def test_random_corruptions_are_seeded_and_of_the_stated_strength() -> None:
    gray = flat(128, 128, 128, 128, size=64)
    a = corrupt(gray, "gaussian_noise", 1, seed=3)
    assert torch.equal(a, corrupt(gray, "gaussian_noise", 1, seed=3))
    assert not torch.equal(a, corrupt(gray, "gaussian_noise", 1, seed=4))
    assert a.float().std().item() == pytest.approx(0.04 * 255, rel=0.05)
    salt = corrupt(gray, "impulse_noise", 3)  # 10% of the pixels to 0 or 255
    assert ((salt == 0) | (salt == 255)).float().mean().item() == pytest.approx(0.10, abs=0.01)
    assert corrupt(gray, "jpeg", 3).unique().tolist() == [128]  # flat blocks survive JPEG
    with pytest.raises(UserError, match="unknown corruption 'rain'"):
        corrupt(gray, "rain", 1)


def threshold_classifier(images: torch.Tensor) -> np.ndarray:
    """'light' (0.8) when an image's mean is above 128, else 'dark' (0.8)."""
    light = images.float().mean(dim=(1, 2, 3)).numpy() > 128
    return np.where(light[:, None], [[0.2, 0.8]], [[0.8, 0.2]])


def test_robustness_table_equals_the_hand_computed_one() -> None:
    images, labels = flat(60, 100, 160, 200), np.array([0, 0, 1, 1])
    r = measure(threshold_classifier, images, labels, ["dark", "light"],
                names=["contrast", "brightness", "darkness"])  # fmt: skip
    assert (r.clean.accuracy, r.clean.ece) == (1.0, pytest.approx(0.2))  # 80% sure, all right
    # darkness 0.6 / 0.4 / 0.25: every image below 128 -> "dark"; brightness 1.4: 100 -> 140
    # is light (3 of 4), 1.8: the same, 2.4: 60 -> 144 too (2 of 4); contrast keeps flat images
    expected = {
        "darkness": [0.5, 0.5, 0.5], "brightness": [0.75, 0.75, 0.5], "contrast": [1, 1, 1]
    }  # fmt: skip
    assert r.worst_first() == ["darkness", "brightness", "contrast"]
    for name, accuracies in expected.items():
        assert [s.score.accuracy for s in r.of(name)] == pytest.approx(accuracies)
    data = r.to_json()
    first = data["corruptions"][0]
    assert (first["name"], first["severity"], first["level"]) == ("darkness", 1, 0.6)
    assert first["accuracy_drop"] == pytest.approx(0.5)
    assert first["ece"] == pytest.approx(0.3)  # 80% sure, 50% right
    assert first["per_class_accuracy"] == {"dark": 1.0, "light": 0.0}
    assert data["by_corruption"][1]["mean_accuracy"] == pytest.approx(2 / 3)
    assert data["worst"] == {"name": "darkness", "severity": 1, "accuracy": 0.5}
    assert r.example[("darkness", 1)][0, 0, 0] == 36  # 60 x 0.6, the strip's first image


def test_stratified_sample_keeps_class_shares_and_is_seeded() -> None:
    labels = np.array([0] * 100 + [1] * 50)
    index = stratified_sample(labels, 30, seed=1)
    assert np.bincount(labels[index]).tolist() == [20, 10]
    assert np.array_equal(index, stratified_sample(labels, 30, seed=1))
    assert len(stratified_sample(labels, 500)) == 150


def test_slice_table_equals_the_hand_computed_one() -> None:
    p = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    labels = np.array([0, 0, 1, 1, 0])
    sites = ["a", "a", "b", "b", "c"]
    sets = np.array([[1, 0], [1, 1], [1, 0], [0, 1], [1, 0]], dtype=bool)
    s = slice_metrics("site", sites, labels, p, sets, min_images=2)
    rows = [(x.value, x.images, x.accuracy, x.coverage, x.too_small) for x in s.slices]
    # a: 1 of 2 right, both true classes in the sets; b: 1 of 2, one covered; c: 1 image
    assert rows == [("a", 2, 0.5, 1.0, False), ("b", 2, 0.5, 0.5, False), ("c", 1, 1.0, 1.0, True)]
    assert s.slices[0].ece == pytest.approx(abs(0.9 - 1) / 2 + abs(0.7 - 0) / 2)
    assert s.warnings == ["1 slice(s) of 'site' have fewer than 2 images, too few to judge: c (1)"]
    assert slice_metrics("site", sites, labels, p).slices[0].coverage is None


def copy_run(trained_run: Path, folder: Path) -> Path:
    """A copy of the shared run, so this file's eval/ does not race other tests'."""
    run = folder / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval", "explain", "tens*"))
    return run


def write_manifest(folder_data: Path, path: Path) -> dict[str, str]:
    """A CSV manifest of the folder dataset with a site column; returns path -> site."""
    files = sorted(p for p in folder_data.rglob("*.*") if p.name != "broken.jpg")
    sites = {str(f): "north" if i % 3 else ("south" if i % 2 else "lab") for i, f in
             enumerate(files)}  # fmt: skip
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "label", "site"])
        for f in files:
            writer.writerow([str(f), f.parent.name, sites[str(f)]])
    return sites


@pytest.fixture(scope="module")
def measured(trained_run: Path, folder_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """(run, evaluation, path -> site): the run evaluated once on a manifest with a site
    column, with robustness and slices by site."""
    folder = tmp_path_factory.mktemp("robust")
    run = copy_run(trained_run, folder)
    sites = write_manifest(folder_data, folder / "manifest.csv")
    ev = imagewise.evaluate(
        run, str(folder / "manifest.csv"), robustness=True, robustness_images=30,
        slice_by="site", gallery=0,
    )  # fmt: skip
    return run, ev, sites


def test_evaluate_robustness_writes_the_file_and_the_report_section(measured) -> None:
    from imagewise.evaluate.robustness import classifier_predict
    from imagewise.predict.predictor import load_run

    run, ev, _ = measured
    data = json.loads((run / "eval" / "robustness.json").read_text())
    assert data["format"] == "imagewise-robustness/1"
    index = stratified_sample(ev.labels, 30, seed=0)
    assert (data["images"], data["sampled_from"]) == (len(index), len(ev.labels))
    assert data["sample"] == "stratified by class, seed 0"
    labels = ev.labels[index]
    clean = float((ev.predictions[index] == labels).mean())
    assert data["clean"]["accuracy"] == pytest.approx(clean)
    assert len(data["corruptions"]) == 3 * len(CORRUPTIONS)
    # one entry recomputed by hand: the sample's images, corrupted, through the classifier
    entry = data["corruptions"][0]
    predict = classifier_predict(load_run(run), 64)
    probs = predict(corrupt(ev.images.images[index], entry["name"], entry["severity"]))
    assert entry["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert entry["accuracy_drop"] == pytest.approx(clean - entry["accuracy"])
    page = (run / "eval" / "report.html").read_text()
    table = page[page.index('id="robustness-table"') :]
    first_row = re.search(r"<tbody><tr><td>([a-z_]+)</td><td[^>]*>[^<]*</td>(.*?)</tr>", table)
    assert first_row is not None and first_row[1] == entry["name"]
    assert f"{100 * entry['accuracy']:.2f}%" in first_row[2]
    strip = page[page.index('id="robustness-strip"') :]
    strip = strip[: strip.index("</section>")]
    assert strip.count("data:image/png;base64,") == 1 + 3 * len(CORRUPTIONS)  # clean, 3 each
    assert '<a href="#robustness">' in page


def test_slice_by_site_matches_a_hand_count_and_shows_in_the_report(measured) -> None:
    run, ev, sites = measured
    data = json.loads((run / "eval" / "slices.json").read_text())
    assert data["format"] == "imagewise-slices/1" and data["column"] == "site"
    weights = json.loads((run / "eval" / "robustness.json").read_text())["weights_sha256"]
    assert (
        data["weights_sha256"]
        == weights
        == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    )
    correct = ev.predictions == ev.labels
    by_site = np.array([sites[s] for s in ev.sources])
    for row in data["slices"]:
        members = by_site == row["value"]
        assert row["images"] == int(members.sum())
        assert row["accuracy"] == pytest.approx(float(correct[members].mean()))
        assert row["coverage"] is None  # no prediction sets asked for
        assert row["too_small"] == (row["images"] < 30)
    assert sum(r["images"] for r in data["slices"]) == len(ev.labels)
    page = (run / "eval" / "report.html").read_text()
    assert "Slices by site" in page
    first = data["slices"][0]
    assert f'<td>{first["value"]}</td><td data-value="{first["images"]}">' in page


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_report_sections_open_in_chromium_with_every_image_and_sort(measured) -> None:
    from playwright.sync_api import sync_playwright

    run, ev, _ = measured
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((run / "eval" / "report.html").as_uri())
        page.wait_for_load_state("load")
        strip = page.evaluate(
            "Array.from(document.querySelectorAll('#robustness-strip img'))"
            ".map(i => i.complete && i.naturalWidth > 0)"
        )
        sections = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
        page.click("#robustness-table th:nth-child(6)")  # mean accuracy, ascending
        means = page.evaluate(
            "Array.from(document.querySelectorAll('#robustness-table tbody tr'))"
            ".map(r => parseFloat(r.cells[5].dataset.value))"
        )
        browser.close()
    assert errors == []
    assert len(strip) == 1 + 3 * len(CORRUPTIONS) and all(strip)
    assert sections[-2:] == ["robustness", "slices"]
    assert means == sorted(means) and len(means) == len(CORRUPTIONS)
    assert means[0] == pytest.approx(ev.robustness.mean_accuracy(ev.robustness.worst_first()[0]))


def test_cli_refuses_bad_slices_and_samples_in_one_line(
    trained_run: Path, folder_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_copy = copy_run(trained_run, tmp_path)
    manifest = tmp_path / "manifest.csv"
    write_manifest(folder_data, manifest)
    cases = [
        ([str(manifest), "--slice-by", "camera"], "has no column 'camera'; its columns to "
         "slice by are: site"),
        (["--slice-by", "site"], "needs a CSV manifest with extra columns"),
        (["--robustness", "--robustness-images", "0"], "--robustness-images must be 1 or more"),
        (["--robustness-images", "0"], "--robustness-images must be 1 or more"),  # implies it
    ]  # fmt: skip
    for args, message in cases:
        code, _, err = run_cli(["evaluate", str(run_copy), *args], capsys)
        assert code == 2
        assert err.count("\n") == 1 and message in err, err
    assert not (run_copy / "eval").exists()  # refused before anything was written
