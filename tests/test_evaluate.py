"""Evaluation: metrics against scikit-learn, calibration, the HTML report, compare."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import imagewise
from imagewise.evaluate.metrics import classification_metrics, most_confused
from imagewise.evaluate.scores import Metrics
from imagewise.runtime.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)

from conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_metrics_equal_scikit_learn_on_fixed_predictions() -> None:
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        top_k_accuracy_score,
    )

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=200)
    probs = rng.dirichlet(np.ones(4), size=200)
    probs[np.arange(120), labels[:120]] += 1.0  # mostly right, not always
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    m = classification_metrics(labels, probs, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert m["top_k_accuracy"]["3"] == pytest.approx(top_k_accuracy_score(labels, probs, k=3))
    for avg in ("macro", "weighted"):
        assert m[avg]["f1"] == pytest.approx(f1_score(labels, pred, average=avg))
        assert m[avg]["precision"] == pytest.approx(precision_score(labels, pred, average=avg))
        assert m[avg]["recall"] == pytest.approx(recall_score(labels, pred, average=avg))
    per_class_f1 = f1_score(labels, pred, average=None)
    assert [m["per_class"][c]["f1"] for c in "abcd"] == pytest.approx(per_class_f1.tolist())
    assert m["confusion_matrix"] == confusion_matrix(labels, pred).tolist()
    assert 0.5 < m["accuracy"] < 1.0


def test_most_confused_lists_off_diagonal_cells_largest_first() -> None:
    cm = np.array([[5, 3, 0], [1, 7, 4], [0, 0, 9]])
    pairs = most_confused(cm, ["x", "y", "z"])
    assert pairs == [
        {"true": "y", "predicted": "z", "count": 4},
        {"true": "x", "predicted": "y", "count": 3},
        {"true": "y", "predicted": "x", "count": 1},
    ]


def test_ece_of_a_known_toy_case() -> None:
    # Four images at 0.9 confidence, 3 right (gap 0.15); two at 0.6, 1 right (gap 0.1).
    probs = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    labels = np.array([0, 0, 0, 1, 1, 0])
    expected = 4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(0.5 - 0.6)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected)
    bins = reliability_bins(probs, labels, n_bins=10)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 0, 2, 0, 0, 4, 0]
    assert bins[8]["accuracy"] == pytest.approx(0.75)
    assert bins[8]["confidence"] == pytest.approx(0.9)
    # Perfectly calibrated: confidence 1 and always right.
    assert expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)


def _overconfident(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a 70%-accurate model that speaks as if it were 99% sure."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (n,), generator=g)
    wrong = torch.rand(n, generator=g) > 0.7
    pred = torch.where(wrong, (labels + 1) % 5, labels)
    logits = torch.randn(n, 5, generator=g)
    logits[torch.arange(n), pred] += 8.0
    return logits, labels


def test_temperature_scaling_lowers_the_validation_nll() -> None:
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    before = negative_log_likelihood(logits, labels)
    after = negative_log_likelihood(logits, labels, t)
    assert t > 2.0  # an overconfident model is cooled down
    assert after < before - 0.5
    # T is the minimum: nudging it either way does not help.
    assert after <= negative_log_likelihood(logits, labels, t * 1.05) + 1e-9
    assert after <= negative_log_likelihood(logits, labels, t / 1.05) + 1e-9
    summary = calibrate(logits, labels)
    assert summary["val_ece_after"] < summary["val_ece_before"] / 2
    # and it holds on fresh images of the same model
    test_logits, test_labels = _overconfident(seed=1)
    p_before = torch.softmax(test_logits, 1).numpy()
    p_after = torch.softmax(test_logits / t, 1).numpy()
    y = test_labels.numpy()
    assert expected_calibration_error(p_after, y) < expected_calibration_error(p_before, y)


def test_training_stores_the_temperature_and_predict_uses_it(
    trained_run: Path, tmp_path: Path
) -> None:
    meta = json.loads((trained_run / "meta.json").read_text())
    cal = meta["calibration"]
    assert meta["temperature"] == cal["temperature"]
    if cal["fitted_on"] is None:  # every validation image right: nothing to fit
        assert cal["note"].endswith("nothing to fit") and cal["temperature"] == 1.0
    else:
        assert cal["fitted_on"] == "val" and cal["val_nll_after"] <= cal["val_nll_before"]
    run = shutil.copytree(trained_run, tmp_path / "run")
    meta["temperature"] = 2.5  # as a fit on a harder validation split would leave it
    (run / "meta.json").write_text(json.dumps(meta))
    clf = imagewise.load(run)
    image = next(Path(meta["data"]["source"]).glob("square/*.png"))
    batch = clf.preprocess([image])
    expected = torch.softmax(clf.logits(batch) / meta["temperature"], dim=1)
    pred = clf.predict([image], top_k=3)[0]
    assert pred.probabilities[0] == pytest.approx(float(expected.max()), abs=1e-6)


@pytest.fixture(scope="module")
def evaluated(trained_run: Path) -> imagewise.evaluate.Evaluation:
    return imagewise.evaluate(trained_run)


def test_evaluate_returns_metrics_confusion_and_top_losses(evaluated) -> None:
    ev = evaluated
    assert ev.confusion_matrix.sum() == len(ev.labels) == ev.metrics.images
    assert ev.accuracy == pytest.approx(float((ev.predictions == ev.labels).mean()))
    losses = ev.top_losses(5)
    assert [x["loss"] for x in losses] == sorted((x["loss"] for x in losses), reverse=True)
    i = losses[0]["index"]
    assert losses[0]["loss"] == pytest.approx(-np.log(ev.probabilities[i, ev.labels[i]]))
    cal = ev.metrics.calibration
    assert cal is not None and ev.ece == cal.ece_after
    p1 = torch.softmax(torch.from_numpy(ev.logits), 1).numpy()
    assert cal.ece_before == pytest.approx(expected_calibration_error(p1, ev.labels))
    stored = json.loads((ev.files["metrics"]).read_text())
    assert stored["calibration"]["temperature"] == pytest.approx(cal.temperature)
    assert Metrics.from_json(stored, "metrics.json", "") == ev.metrics  # the file, typed
    assert ev.files["reliability_png"].stat().st_size > 1000


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_report_opens_in_headless_chromium_with_every_image_loaded(evaluated) -> None:
    from playwright.sync_api import sync_playwright

    report = evaluated.files["report"]
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])"
        )
        sections = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
        shown = page.inner_text("#summary .card b")
        gallery = page.locator("#errors figure").count()
        # Sorting: click "F1" twice -> descending F1 order.
        page.click("#per-class th:nth-child(4)")
        page.click("#per-class th:nth-child(4)")
        f1 = page.evaluate(
            "Array.from(document.querySelectorAll('#per-class tbody tr'))"
            ".map(r => parseFloat(r.cells[3].dataset.value))"
        )
        browser.close()
    assert errors == []
    assert images and all(ok for _, ok in images), images
    alts = {alt for alt, _ in images}
    assert {"confusion matrix (counts)", "reliability diagram", "training curves"} <= {
        a.split(" (a classical")[0] for a in alts
    } | alts
    assert sections == [
        "summary", "classes", "confusion", "curves", "confused", "errors", "calibration",
    ]  # fmt: skip
    assert shown == f"{100 * evaluated.accuracy:.2f}%"
    errors_made = int((evaluated.predictions != evaluated.labels).sum())
    assert gallery == min(24, errors_made)
    assert f1 == sorted(f1, reverse=True)


def test_evaluate_cli_reports_calibration_and_the_report(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["evaluate", str(trained_run), "--gallery", "4"], capsys)
    assert code == 0
    metrics = json.loads((trained_run / "eval" / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert (
        f"calibration: ECE {cal['ece_before']:.4f} before, {cal['ece_after']:.4f} after "
        f"temperature scaling (T = {cal['temperature']:.3g})"
    ) in out
    assert f"report: {trained_run / 'eval' / 'report.html'}" in out
    assert out.count("\n") > 5


def test_compare_lists_both_runs_with_their_figures(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "copy"
    shutil.copytree(trained_run, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["training"]["train_seconds"] = 123.0
    (other / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(other / "eval", ignore_errors=True)  # compare evaluates it
    page = tmp_path / "cmp.html"
    code, out, _ = run_cli(
        ["compare", str(trained_run), str(other), "--out", str(page), "--format", "json"], capsys
    )
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == [trained_run.name, "copy"]
    truth = json.loads((trained_run / "eval" / "metrics.json").read_text())
    clf = imagewise.load(trained_run)
    for r in rows:
        assert r["accuracy"] == pytest.approx(truth["accuracy"])
        assert r["macro_f1"] == pytest.approx(truth["macro"]["f1"])
        assert r["params"] == sum(p.numel() for p in clf.model.parameters())
        assert r["flops"] > 0
        assert 0 < r["latency_ms_batch1"] < 1000 and 0 < r["latency_ms_batch64"] < 1000
    assert rows[1]["train_seconds"] == 123.0
    assert (other / "eval" / "metrics.json").is_file()
    html = page.read_text()
    assert html.count("<tr>") == 3 and "copy" in html and "data:image/png;base64," in html
    code, table, _ = run_cli(
        ["compare", str(trained_run), "--no-latency", "--out", str(page)], capsys
    )
    assert code == 0
    assert f"{100 * truth['accuracy']:.2f}%" in table.splitlines()[2]


def test_compare_of_a_folder_without_a_run_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["compare", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1


def test_log_axis_labels_only_the_2x_and_5x_minor_ticks() -> None:
    from imagewise.evaluate.plots import _two_and_five

    labels = [_two_and_five(v, 0) for v in (0.2, 0.3, 0.5, 0.7, 5.0, 7.0, 20.0)]
    assert labels == ["0.2", "", "0.5", "", "5", "", "20"]
