"""Multi-label answers after training: predict (table, CSV, JSON, unknown, --sort-into), the
server and its page, ONNX and web exports, and the edge runtime without PyTorch."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import imagewise
from imagewise.edge.model import ImageModel
from imagewise.edge.multilabel import decision_confidence, label_sets
from imagewise.edge.results import Prediction, format_predictions
from imagewise.edge.spec import MULTILABEL, InputContract, ModelSpec
from imagewise.predict.sorting import NO_LABEL, UNSURE, folder_names, sort_into

from conftest import run_cli, serve_process, served_copy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# --- a stand-in model with known probabilities ------------------------------------------------

THRESHOLDS = (0.5, 0.3, 0.9)
# an image's grey level -> its probabilities (cat, dog, owl)
ROWS = {
    10: [0.9, 0.4, 0.2],  # cat and dog; dog decided at 0.4 only
    60: [0.1, 0.1, 0.05],  # no label, surely
    110: [0.45, 0.95, 0.95],  # dog and owl (a tie: class order)
}


class FixedModel(ImageModel):
    """A torch-free multi-label model answering ``ROWS`` by each image's grey level."""

    def __init__(self) -> None:
        pre = InputContract(img_size=8, channels=1, mean=[0.5], std=[0.5])
        spec = ModelSpec(
            classes=("cat", "dog", "owl"), input=pre, model="fixed", task=MULTILABEL,
            thresholds=THRESHOLDS,
        )  # fmt: skip
        super().__init__(spec)

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        levels = images.reshape(len(images), -1).mean(axis=1).round().astype(int)
        probs = np.array([ROWS[int(v)] for v in levels], np.float32)
        return np.log(probs / (1 - probs)), probs


def grey_images(folder: Path) -> list[Path]:
    """a.png (cat, dog), b.png (no label), c.png (dog, owl)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, level in zip("abc", ROWS, strict=True):
        paths.append(folder / f"{name}.png")
        Image.fromarray(np.full((8, 8), level, np.uint8)).save(paths[-1])
    return paths


def test_answers_carry_label_sets_and_unknown_is_the_least_sure_decision(tmp_path: Path) -> None:
    model = FixedModel()
    preds = model.predict(grey_images(tmp_path), top_k=2, min_confidence=0.5)
    assert [p.labels for p in preds] == [["cat", "dog"], [], ["dog", "owl"]]
    assert preds[0].label_probabilities == pytest.approx([0.9, 0.4])
    assert preds[2].label_probabilities == pytest.approx([0.95, 0.95])
    # top_k still lists classes by probability; the label set is the answer
    assert [p.classes for p in preds] == [["cat", "dog"], ["cat", "dog"], ["dog", "owl"]]
    # unknown: some label decided below 0.5 (a: dog at 0.4); b is surely without labels
    assert [p.unknown for p in preds] == [True, False, False]
    assert [p.answer for p in preds] == ["unknown", "", "dog|owl"]
    probs = np.array(list(ROWS.values()))
    assert decision_confidence(probs, np.array(THRESHOLDS)) == pytest.approx([0.4, 0.9, 0.55])
    assert [p.labels for p in model.predict(grey_images(tmp_path))] == [
        [model.classes[i] for i in s] for s in label_sets(probs, np.array(THRESHOLDS))
    ]


def test_table_csv_and_json_show_the_label_sets(tmp_path: Path) -> None:
    preds = FixedModel().predict(grey_images(tmp_path), top_k=2)
    for p in preds:
        p.source = Path(p.source).name
    assert format_predictions(preds, "table").splitlines() == [
        "image  top classes (probability)",
        "a.png  labels {cat, dog}   cat (90.0%)  dog (40.0%)",
        "b.png  no labels   cat (10.0%)  dog (10.0%)",
        "c.png  labels {dog, owl}   dog (95.0%)  owl (95.0%)",
    ]
    rows = list(csv.reader(io.StringIO(format_predictions(preds, "csv"))))
    assert rows[0] == ["source", "rank", "class", "probability", "labels"]
    assert rows[1] == ["a.png", "1", "cat", "0.900000", "cat|dog"]
    assert rows[3] == ["b.png", "1", "cat", "0.100000", ""]  # no label: an empty cell
    assert rows[6] == ["c.png", "2", "owl", "0.950000", "dog|owl"]
    first = json.loads(format_predictions(preds, "json"))[0]
    assert first["labels"] == ["cat", "dog"]
    assert first["label_probabilities"] == [0.9, 0.4]
    assert "answer" not in first  # as for single-label: only with --min-confidence


def test_single_label_answers_carry_no_label_fields() -> None:
    p = Prediction("x.png", ["cat", "dog"], [0.7, 0.3])
    assert "labels" not in p.to_dict() and p.answer == "cat"
    assert format_predictions([p], "csv").splitlines()[0] == "source,rank,class,probability"


def test_sort_into_copies_each_image_into_every_label_folder(tmp_path: Path) -> None:
    out = tmp_path / "sorted"
    paths = grey_images(tmp_path / "inbox")
    result = sort_into(FixedModel(), [str(p) for p in paths], out, min_confidence=None)
    found = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.png"))
    assert found == ["_none/b.png", "cat/a.png", "dog/a.png", "dog/c.png", "owl/c.png"]
    assert NO_LABEL == "_none" and (out / "dog/a.png").read_bytes() == paths[0].read_bytes()
    assert result.placed == 3 and result.counts == {"cat": 1, "dog": 2, "owl": 1, "_none": 1}
    summary = result.summary()
    assert "copied 3 images" in summary and "5 copies" in summary and "_none: images" in summary
    rows = list(csv.reader((out / "predictions.csv").open()))
    assert rows[1:3] == [
        [str(paths[0]), "cat/a.png", "cat|dog", "cat", "0.900000"],
        [str(paths[0]), "dog/a.png", "cat|dog", "dog", "0.400000"],
    ]
    again = sort_into(FixedModel(), [str(p) for p in paths], out, min_confidence=None)
    assert (again.placed, again.earlier) == (0, 3)
    # a class named like the no-label folder gets a folder of its own
    assert folder_names(["_none", "x"], (UNSURE, NO_LABEL)) == {"_none": "__none", "x": "x"}


def test_sort_into_moves_into_every_label_folder_and_sends_undecided_to_unsure(
    tmp_path: Path,
) -> None:
    out = tmp_path / "sorted"
    paths = grey_images(tmp_path / "inbox")
    data = {p.name: p.read_bytes() for p in paths}
    result = sort_into(FixedModel(), [str(p) for p in paths], out, move=True, min_confidence=0.5)
    found = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.png"))
    assert found == ["_none/b.png", f"{UNSURE}/a.png", "dog/c.png", "owl/c.png"]
    assert not any(p.exists() for p in paths)  # moved
    assert (out / "owl/c.png").read_bytes() == (out / "dog/c.png").read_bytes() == data["c.png"]
    assert "some label undecided at confidence 50%" in result.summary()


# --- a trained multi-label run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pictures(mosaics: Path) -> list[Path]:
    return sorted(mosaics.parent.glob("*.png"))[:24]


def away_from_thresholds(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Images none of whose probabilities is within 1e-4 of its threshold (a float32 runtime
    may put one at a threshold on either side)."""
    return (np.abs(probs - thresholds[None, :]) > 1e-4).all(axis=1)


def test_run_answers_are_the_label_sets_of_its_thresholds(ml_run: Path, pictures: list[Path]):
    clf = imagewise.load(ml_run)
    assert clf.spec.task == MULTILABEL and clf.spec.thresholds is not None
    preds = clf.predict(pictures, top_k=3)
    _, probs = clf.scores(np.stack([clf.read(p) for p in pictures]))
    expected = label_sets(probs, clf.spec.label_thresholds())
    assert [p.labels for p in preds] == [[clf.classes[i] for i in s] for s in expected]
    assert any(len(s) >= 2 for s in expected)  # the mosaics hold several shapes
    for p, row in zip(preds, probs, strict=True):
        chosen = [clf.classes.index(c) for c in p.labels or []]
        assert p.label_probabilities == pytest.approx(row[chosen].tolist(), abs=1e-6)


def test_min_confidence_auto_fits_on_exact_label_sets(ml_run: Path, pictures: list[Path]):
    run = ml_run.parent / "auto"
    shutil.copytree(ml_run, run)
    preds = imagewise.predict(run, [str(p) for p in pictures], min_confidence="auto",
                              target_precision=0.6, ood="none")  # fmt: skip
    fitted = json.loads((run / "unknown.json").read_text())
    assert fitted["precision"] >= 0.6 and 0 < fitted["coverage"] <= 1
    clf = imagewise.load(run)
    _, probs = clf.scores(np.stack([clf.read(p) for p in pictures]))
    sure = decision_confidence(probs, clf.spec.label_thresholds())
    assert [p.unknown for p in preds] == (sure < fitted["min_confidence"]).tolist()


def test_coverage_is_refused_in_one_line(ml_run: Path, pictures: list[Path], capsys) -> None:
    code, _, err = run_cli(["predict", str(ml_run), str(pictures[0]), "--coverage", "0.9"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --coverage (conformal prediction sets) is for single-label models; this "
        "multi-label model answers each image's label set from its fitted thresholds"
    ]


@pytest.fixture(scope="module")
def ml_onnx(ml_run: Path) -> Path:
    run = ml_run.parent / "exported"
    shutil.copytree(ml_run, run)
    return imagewise.export(run).path


def test_onnx_answers_as_pytorch_and_carries_task_and_thresholds(
    ml_run: Path, ml_onnx: Path, pictures: list[Path]
) -> None:
    import onnx

    from imagewise.edge import load_model

    props = {p.key: p.value for p in onnx.load(str(ml_onnx)).metadata_props}
    clf = imagewise.load(ml_run)
    assert props["task"] == MULTILABEL
    assert json.loads(props["thresholds"]) == pytest.approx(list(clf.spec.thresholds))
    assert "conformal" not in props
    parity = json.loads((ml_onnx.parent / "parity.json").read_text())["files"]["model.onnx"]
    assert parity["passed"] and 0.9 <= parity["label_set_agreement"] <= 1
    edge = load_model(ml_onnx)
    images = np.stack([clf.read(p) for p in pictures])
    _, p_torch = clf.scores(images)
    _, p_onnx = edge.scores(images)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-5)
    keep = away_from_thresholds(p_torch, clf.spec.label_thresholds())
    assert keep.sum() >= len(pictures) // 2
    got, want = edge.predict(pictures, top_k=2), clf.predict(pictures, top_k=2)
    for g, w, ok in zip(got, want, keep, strict=True):
        if ok:
            assert g.labels == w.labels and g.answer == w.answer
    # without PyTorch: the edge runtime alone answers label sets
    script = (
        "import sys, json; from imagewise.edge import load_model; "
        "p = load_model(sys.argv[1]).predict(sys.argv[2:]); "
        "print(json.dumps([[x.labels for x in p], 'torch' in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(ml_onnx), *map(str, pictures[:4])],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    labels, torch_loaded = json.loads(done.stdout)
    assert torch_loaded is False
    assert [x for x, ok in zip(labels, keep[:4], strict=True) if ok] == [
        w.labels for w, ok in zip(want[:4], keep[:4], strict=True) if ok
    ]


def test_a_served_multilabel_run_answers_label_sets(
    ml_run: Path, pictures: list[Path], tmp_path: Path
) -> None:
    run = served_copy(ml_run, tmp_path)
    clf = imagewise.load(run)
    expected = clf.predict(pictures[:6], top_k=2)
    most = max(range(6), key=lambda i: len(expected[i].labels or []))
    files = [("file", (p.name, p.read_bytes())) for p in pictures[:6]]
    with serve_process(run, tmp_path / "server.log", "-q") as url:  # drift checks: auto
        info = httpx.get(url + "/v1/info").json()
        answer = httpx.post(url + "/v1/predict", files=files, params={"top_k": 2})
        drift = httpx.get(url + "/v1/drift")
        chips = page_chips(url, pictures[most]) if CHROMIUM else None
    assert info["task"] == MULTILABEL
    assert info["thresholds"] == pytest.approx(list(clf.spec.thresholds))
    assert answer.status_code == 200, answer.text
    for got, want in zip(answer.json()["predictions"], expected, strict=True):
        assert got["labels"] == want.labels
        assert got["label_probabilities"] == pytest.approx(want.label_probabilities, abs=1e-5)
        assert [c["class"] for c in got["top_k"]] == want.classes
    assert drift.status_code == 200 and drift.json()["images_seen"] == 6
    if chips is not None:
        want = expected[most]
        assert len(chips) >= 2 and chips == [
            (c, f"{100 * p:.1f}%")
            for c, p in zip(want.labels or [], want.label_probabilities or [], strict=True)
        ]


def page_chips(url: str, picture: Path) -> list[tuple[str, str]]:
    """The label chips (name, percentage) the server's page shows for one uploaded picture."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#model:has-text('multi-label')")
        page.set_input_files("#files", [str(picture)])
        page.wait_for_selector(".result[data-state=done]", timeout=20_000)
        chips = page.eval_on_selector_all(
            ".chips li", "els => els.map(e => [e.firstChild.textContent, e.lastChild.textContent])"
        )
        browser.close()
    return [tuple(c) for c in chips]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make install installs it)")
def test_the_web_export_page_shows_the_label_sets(
    ml_run: Path, pictures: list[Path], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    run = served_copy(ml_run, tmp_path)
    folder = imagewise.export(run, format="web").path
    clf = imagewise.load(run)
    want = clf.predict(pictures[:8], top_k=1)
    _, probs = clf.scores(np.stack([clf.read(p) for p in pictures[:8]]))
    keep = away_from_thresholds(probs, clf.spec.label_thresholds())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((folder / "index.html").as_uri())
        page.set_input_files("#files", [str(f) for f in pictures[:8]])
        page.wait_for_function(
            "() => document.querySelectorAll('.result[data-state=done]').length === 8",
            timeout=30_000,
        )
        shown = dict(
            page.eval_on_selector_all(
                ".result",
                "els => els.map(e => [e.querySelector('.name').textContent, e.dataset.labels])",
            )
        )
        facts = page.text_content("#about")
        browser.close()
    assert "multi-label" in (facts or "")
    assert keep.sum() >= 4
    for w, ok in zip(want, keep, strict=True):
        if ok:
            assert shown[Path(w.source).name] == "|".join(w.labels or []), w.source
