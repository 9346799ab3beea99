"""The serving web page in headless chromium on a phone-sized screen: upload, classes, Grad-CAM."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from conftest import serve_process, served_copy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_page_shows_the_api_top_class_for_uploaded_images(
    trained_run: Path, folder_data: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    images = []
    for kind in ("square", "stripes"):
        images.append(tmp_path / f"{kind}.png")
        shutil.copy(sorted((folder_data / kind).glob("*.png"))[0], images[-1])
    run = served_copy(trained_run, tmp_path)
    errors: list[str] = []
    serving = serve_process(run, tmp_path / "server.log", "-q", "--coverage", "0.9")
    with serving as url, sync_playwright() as p:
        answers = {
            image.name: httpx.post(
                f"{url}/v1/predict", files={"file": (image.name, image.read_bytes())}
            ).json()["predictions"][0]
            for image in images
        }
        api = {name: a["top_k"][0]["class"] for name, a in answers.items()}
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 375, "height": 800})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
        page.goto(url + "/")
        page.wait_for_selector("#model:has-text('classes')")
        page.set_input_files("#files", [str(i) for i in images])
        page.wait_for_function(
            "() => document.querySelectorAll('.result[data-state=done]').length === 2",
            timeout=20_000,
        )
        shown = page.evaluate(
            "Array.from(document.querySelectorAll('.result')).map(r => ["
            "r.querySelector('.name').textContent, r.querySelector('.label').textContent,"
            "r.querySelectorAll('.bars li').length, r.querySelector('.set').textContent])"
        )
        overflow = page.evaluate("document.documentElement.scrollWidth")
        # Grad-CAM: the toggle fetches an overlay per image and shows it instead of the photo.
        page.check("#gradcam")
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('.result .cam'))"
            ".every(i => !i.hidden && i.complete && i.naturalWidth > 0)",
            timeout=20_000,
        )
        # each overlay is drawn whole inside its frame, not cropped by it
        cams_fit = page.evaluate(
            "Array.from(document.querySelectorAll('.result .cam')).every(i => {"
            "const box = i.getBoundingClientRect();"
            "const frame = i.parentElement.getBoundingClientRect();"
            "return box.height <= frame.height + 0.5 && box.width <= frame.width + 0.5; })"
        )
        page.uncheck("#gradcam")
        photos_back = page.evaluate(
            "Array.from(document.querySelectorAll('.result .photo')).every(i => !i.hidden)"
        )
        browser.close()
    assert errors == []
    assert {name: label for name, label, _, _ in shown} == api
    assert all(bars == 3 for _, _, bars, _ in shown)  # top 5 of 3 classes
    # the prediction set the API answered, as the page shows it
    assert {name: s for name, _, _, s in shown} == {
        name: "set {" + ", ".join(a["prediction_set"]) + "} at 90% coverage"
        for name, a in answers.items()
    }
    assert overflow <= 375  # no sideways scrolling on a phone
    assert photos_back
    assert cams_fit


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_docs_render_the_operations_from_this_server_alone(
    trained_run: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    run = served_copy(trained_run, tmp_path)
    elsewhere: list[str] = []
    errors: list[str] = []
    with serve_process(run, tmp_path / "server.log", "-q") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("request", lambda r: None if r.url.startswith(url) else elsewhere.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
        page.goto(url + "/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=20_000)
        paths = page.eval_on_selector_all(
            ".opblock-summary-path", "nodes => nodes.map(n => n.textContent.trim())"
        )
        browser.close()
    assert elsewhere == [] and errors == []
    assert {"/v1/predict", "/v1/labels", "/v1/info", "/readyz"} <= set(paths)
