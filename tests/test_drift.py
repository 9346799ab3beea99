"""Drift and out-of-distribution alarms: the tests' p-values by hand, the rolling window, the
run's reference, an exported file carrying it, and a real server's alarm, endpoint and gauges."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps
from prometheus_client.parser import text_string_to_metric_families

import imagewise
from imagewise.edge.drift import (
    DriftMonitor,
    DriftReference,
    beta_binomial_tail,
    chi2_sf,
    class_mix_p,
    fit_reference,
    normal_two_sided,
)
from imagewise.errors import UserError
from imagewise.io import atomic_write_json
from imagewise.predict.drift import DRIFT_FILE, resolve_drift, run_drift_reference
from imagewise.predict.unknown import weights_sha256

from conftest import CLASSES, run_cli, serve_process, served_copy

# --- the three tests' p-values --------------------------------------------------------------


def test_chi_square_tail_by_hand_and_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    assert chi2_sf(3.0, 2) == pytest.approx(math.exp(-1.5), rel=1e-12)  # Q(1, x/2) = e^(-x/2)
    assert chi2_sf(3.0, 4) == pytest.approx(math.exp(-1.5) * 2.5, rel=1e-12)  # (1 + x/2) e^..
    assert chi2_sf(3.841459, 1) == pytest.approx(0.05, abs=1e-7)  # 1.96^2: two-sided 5%
    assert chi2_sf(0.0, 3) == 1.0
    for df in range(1, 14):
        for x in (0.1, 1.0, 7.5, 30.0, 90.0):
            assert chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-9, abs=1e-300)


def test_beta_binomial_tail_by_hand_and_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    # a = b = 1: the share is uniform, so the count of 2 is uniform over 0, 1, 2
    assert beta_binomial_tail(2, 1.0, 1.0) == pytest.approx([1, 2 / 3, 1 / 3], rel=1e-12)
    tail = beta_binomial_tail(500, 300.5, 5700.5)
    expected = stats.betabinom.sf(np.arange(501) - 1, 500, 300.5, 5700.5)
    # scipy sums the pmf from 0 and subtracts: its far tail is only good to ~1e-12 absolute
    assert tail == pytest.approx(expected, rel=1e-6, abs=1e-11)
    far = stats.betabinom.pmf(np.arange(100, 501), 500, 300.5, 5700.5).sum()
    assert tail[100] == pytest.approx(far, rel=1e-6) and 1e-30 < far < 1e-25
    assert tail[0] == pytest.approx(1.0)


def test_normal_and_class_mix_tests_by_hand() -> None:
    assert normal_two_sided(1.959964) == pytest.approx(0.05, abs=1e-7)
    assert normal_two_sided(-1.959964) == normal_two_sided(1.959964)
    # window 30/10 against validation 20/20: expected 25/15 on each side,
    # statistic 2 * (25/25 + 25/15) = 16/3 with 1 degree of freedom
    stat, p = class_mix_p(np.array([30, 10]), np.array([20, 20]))
    assert stat == pytest.approx(16 / 3)
    assert p == pytest.approx(math.erfc(math.sqrt(8 / 3)), rel=1e-12)
    # classes expected under 5 times in a window of 40 (reference shares 1/202) share a bin:
    # 3 bins, 2 degrees of freedom, the same answer as the pooled table
    pooled = class_mix_p(np.array([20, 10, 6, 4]), np.array([100, 100, 1, 1]))
    assert pooled == pytest.approx(class_mix_p(np.array([20, 10, 10]), np.array([100, 100, 2])))
    assert class_mix_p(np.array([5, 0]), np.array([9, 0])) == (0.0, 1.0)  # one class seen


def _answers(confidence: list[float], predicted: list[int], classes: int = 3) -> tuple:
    """Logits whose softmax has this top probability on this class (the rest shared)."""
    probs = np.full((len(confidence), classes), 0.0)
    for i, (c, k) in enumerate(zip(confidence, predicted, strict=True)):
        probs[i] = (1 - c) / (classes - 1)
        probs[i, k] = c
    return np.log(probs), probs


def test_the_reference_of_a_tiny_case_by_hand() -> None:
    conf = [0.9, 0.8, 0.7, 0.6, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5]
    logits, probs = _answers(conf, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    ref = fit_reference(logits, probs, "abc")
    assert ref.class_counts == (4, 3, 3) and ref.images == 10
    assert ref.mean_confidence == pytest.approx(0.7)
    assert ref.confidence_std == pytest.approx(np.std(conf, ddof=1))
    # log-softmax logits: the energy is -logsumexp = 0 for every row, so none is above
    assert ref.ood_threshold == pytest.approx(0.0, abs=1e-6) and ref.ood_above == 0
    back = DriftReference.from_json(json.loads(json.dumps(ref.to_json())), "x", 3)
    assert back == ref
    with pytest.raises(UserError, match="does not fit this 4-class model"):
        DriftReference.from_json(ref.to_json(), "ref.json", 4)
    with pytest.raises(UserError, match="no imagewise-drift/1 drift reference"):
        DriftReference.from_json({"format": "other"}, "ref.json", 3)


# --- the rolling window ---------------------------------------------------------------------


def test_the_window_slides_and_an_alarm_starts_and_ends_once() -> None:
    rng = np.random.default_rng(0)
    logits, probs = _answers(list(rng.uniform(0.5, 1.0, 3000)), list(rng.integers(0, 3, 3000)))
    logits = logits + rng.normal(0, 1, (3000, 1))  # energies spread around -0 +- 1
    ref = fit_reference(logits, probs)
    changes: list = []
    monitor = DriftMonitor(ref, window=100, alpha=1e-3, check_every=10, on_change=changes.append)
    for start in range(0, 600, 7):  # batches of 7 in-distribution answers
        monitor.observe(logits[start : start + 7], probs[start : start + 7])
    state = monitor.state()
    assert (state.images_seen, state.images_in_window, state.checked_at) == (602, 100, 602)
    checks = {c.name: c for c in state.checks}
    assert checks["mean_confidence"].value == pytest.approx(probs[502:602].max(1).mean())
    above = (-np.logaddexp.reduce(logits[502:602], axis=1) > ref.ood_threshold).mean()
    assert checks["ood_share"].value == pytest.approx(above)
    assert changes == [] and not state.alarm
    monitor.observe(logits[:200] - 4.0, probs[:200])  # energy 4 higher: every image unusual
    (started,) = changes
    assert started.name == "ood_share" and started.alarm and started.value == 1.0
    assert started.p_value < started.threshold == pytest.approx(1e-3 / 3)
    assert monitor.state().alarm and started.since_image == 802
    monitor.observe(logits[1000:1400], probs[1000:1400])
    assert [(c.name, c.alarm) for c in changes] == [("ood_share", True), ("ood_share", False)]
    assert not monitor.state().alarm and monitor.state().checks[0].alarms == 1


def test_a_window_too_small_is_one_line() -> None:
    ref = fit_reference(*_answers([0.9, 0.8], [0, 1]))
    with pytest.raises(UserError, match="--drift-window must be from 50"):
        DriftMonitor(ref, window=10)


# --- the run's reference and an exported file ----------------------------------------------


def test_the_run_fits_its_reference_once_and_again_when_the_weights_change(
    trained_run: Path, tmp_path: Path
) -> None:
    run = served_copy(trained_run, tmp_path)
    model = imagewise.load(run)
    ref = run_drift_reference(model, run)
    assert ref is not None
    stored = json.loads((run / DRIFT_FILE).read_text())
    assert stored["format"] == "imagewise-drift/1" and stored["weights_sha256"] == weights_sha256(
        run
    )
    assert stored["images"] == ref.images == sum(stored["class_counts"]) > 0
    assert not {"path", "paths", "images_seen"} & set(stored)  # nothing about the images
    stored["weights_sha256"], stored["images"] = "0" * 64, -1  # as if fitted with other weights
    atomic_write_json(run / DRIFT_FILE, stored)
    assert run_drift_reference(model, run) == ref
    assert json.loads((run / DRIFT_FILE).read_text())["images"] == ref.images

    onnx = imagewise.export(run).path
    carried = imagewise.load(onnx).spec.drift
    assert carried is not None
    assert DriftReference.from_json(carried, str(onnx), len(CLASSES)) == ref
    from imagewise.edge import load_model

    assert resolve_drift(load_model(onnx), onnx, "on") == ref
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    (bare / "config.yaml").write_text("data:\n  source: /nowhere/at/all\n")
    (bare / DRIFT_FILE).unlink()
    assert resolve_drift(model, bare, "auto") is None  # a warning; the server runs on
    with pytest.raises(UserError, match="cannot re-open the run's data"):
        resolve_drift(model, bare, "on")


def test_a_bad_drift_window_is_one_line_and_exit_2(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["serve", str(trained_run), "--port", "0", "--drift-window", "10"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and "--drift-window" in err and "10" in err


# --- a real server --------------------------------------------------------------------------


def _png(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _post(url: str, images: list[bytes]) -> None:
    for start in range(0, len(images), 32):
        files = [("file", (f"{i}.png", b)) for i, b in enumerate(images[start : start + 32])]
        r = httpx.post(url + "/v1/predict", files=files, timeout=60)
        assert r.status_code == 200, r.text


def _gauges(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("imagewise_drift_")
    }


def test_a_real_server_alarms_on_a_shifted_stream_and_stays_quiet_in_distribution(
    trained_run: Path, folder_data: Path, tmp_path: Path
) -> None:
    run = served_copy(trained_run, tmp_path)
    model = imagewise.load(run)
    paths = sorted(p for p in folder_data.rglob("*") if p.suffix in (".png", ".jpg"))
    paths = [p for p in paths if p.name != "broken.jpg"]
    pictures = [Image.open(p).convert("RGB") for p in paths]
    # the reference from every image of the data (the tiny run's validation split holds a
    # handful), with the run's weights, as the server's fit would store it
    logits, probs = model.scores(np.stack([model.read(p) for p in pictures]))
    ref = fit_reference(logits, probs, weights_sha256(run))
    atomic_write_json(run / DRIFT_FILE, ref.to_json())
    rng = np.random.default_rng(0)
    usual = [_png(pictures[i]) for i in rng.integers(0, len(pictures), 200)]
    inverted = [_png(ImageOps.invert(pictures[i])) for i in rng.integers(0, len(pictures), 100)]
    log = tmp_path / "server.log"
    with serve_process(run, log, "--drift", "on", "--drift-window", "50") as url:
        assert httpx.get(url + "/v1/drift").json()["checked_at"] is None
        _post(url, usual)
        quiet = httpx.get(url + "/v1/drift").json()
        quiet_gauges = _gauges(url)
        _post(url, inverted)
        alarmed = httpx.get(url + "/v1/drift").json()
        alarm_gauges = _gauges(url)
        _post(url, usual)
        over = httpx.get(url + "/v1/drift").json()
    assert (quiet["window"], quiet["images_seen"], quiet["images_in_window"]) == (50, 200, 50)
    assert quiet["alarm"] is False and quiet["alpha"] == 1e-3
    assert [c["name"] for c in quiet["checks"]] == ["ood_share", "mean_confidence", "class_mix"]
    for check in quiet["checks"]:
        assert check["p_value"] >= check["threshold"] and check["alarm"] is False
        p = quiet_gauges[("imagewise_drift_pvalue", (("check", check["name"]),))]
        assert p == pytest.approx(check["p_value"])
        assert quiet_gauges[("imagewise_drift_alarm", (("check", check["name"]),))] == 0
    ood, conf, _ = quiet["checks"]
    assert ood["reference"] == pytest.approx(ref.ood_share)
    assert quiet_gauges[("imagewise_drift_ood_share", ())] == pytest.approx(ood["value"])
    assert quiet_gauges[("imagewise_drift_mean_confidence", ())] == pytest.approx(conf["value"])
    assert quiet_gauges[("imagewise_drift_window_images", ())] == 50

    assert alarmed["alarm"] is True and alarmed["images_seen"] == 300
    on = [c for c in alarmed["checks"] if c["alarm"]]
    assert on and all(c["p_value"] < c["threshold"] and c["since"] for c in on)
    for c in alarmed["checks"]:
        assert alarm_gauges[("imagewise_drift_alarm", (("check", c["name"]),))] == c["alarm"]
    assert not over["alarm"] and all(c["alarms"] >= 1 for c in over["checks"] if c in on)
    lines = log.read_text().splitlines()
    started = [line for line in lines if "drift alarm: " in line]
    ended = [line for line in lines if "drift alarm over: " in line]
    assert sorted(c["name"] for c in on) == sorted(
        line.split("drift alarm: ")[1].split(":")[0] for line in started
    )
    assert all(" of the last 50 " in line or " over the last 50 " in line for line in started)
    assert len(ended) == len(started)


def test_a_server_without_a_reference_answers_404_on_drift(
    trained_run: Path, tmp_path: Path
) -> None:
    run = served_copy(trained_run, tmp_path)
    with serve_process(run, tmp_path / "server.log", "--drift", "off", "-q") as url:
        r = httpx.get(url + "/v1/drift")
        gauges = _gauges(url)
    assert r.status_code == 404 and "drift checks are off" in r.json()["error"]
    assert gauges == {}


def test_the_references_are_known_at_start_and_alarms_are_logged_in_words(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from imagewise.edge.drift import Check, DriftMonitor, DriftReference, log_change

    ref = DriftReference.from_json(
        {"format": "imagewise-drift/1", "ood_score": "energy", "ood_threshold": -2.0,
         "ood_above": 5, "mean_confidence": 0.9, "confidence_std": 0.1,
         "class_counts": [50, 50], "images": 100},
        "test", 2,
    )  # fmt: skip
    state = DriftMonitor(ref, window=50).state()
    assert {c.name: c.reference for c in state.checks} == {
        "ood_share": 0.05, "mean_confidence": 0.9, "class_mix": 0.0,
    }  # fmt: skip
    assert all(c.value is None for c in state.checks)  # no window yet
    with caplog.at_level("WARNING", logger="imagewise"):
        log_change(Check("ood_share", 0.102, 0.05, 4.9e-6, 3.3e-4, alarm=True), 500)
        log_change(Check("class_mix", 0.118, 0.0, 0.26, 3.3e-4), 500)
    assert caplog.messages == [
        "drift alarm: ood_share: 10.2% of the last 500 images above the OOD threshold "
        "(validation 5.0%; p 4.9e-06 < 0.00033)",
        "drift alarm over: class_mix: 11.8% of the last 500 answers would have to change class "
        "to match the validation split's mix (p 0.26)",
    ]
