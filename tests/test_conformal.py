"""Conformal prediction sets (--coverage): the quantile and sets against hand-computed values,
coverage on held-out digits, the run folder's fit and its refit, ONNX sets equal to PyTorch's,
the exported metadata, the CLI's refusals and the server's answers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagewise
import imagewise.cli
from imagewise.data.sources import resolve_source
from imagewise.edge.conformal import (
    ConformalFit,
    PredictionSets,
    class_scores,
    conformal_quantile,
    fit_conformal,
    tie_breakers,
)
from imagewise.edge.spec import ModelSpec
from imagewise.errors import UserError
from imagewise.predict.conformal import CONFORMAL_FILE, run_conformal

from conftest import CLASSES


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared run: these tests write conformal.json and exports into it."""
    dest = tmp_path / "run"
    dest.mkdir()
    for name in ("config.yaml", "meta.json", "model.safetensors"):
        shutil.copy(trained_run / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5 on 16 px digits, two epochs (about 83% accurate: sets of more than one class)."""
    out = tmp_path_factory.mktemp("conformal") / "digits"
    args = f"train digits --model lenet5 --epochs 2 --img-size 16 --out {out} -q"
    assert imagewise.cli.main(args.split()) == 0
    return out


def images_of(folder_data: Path) -> list[str]:
    """Nine images from the run's training split: not calibration images, whose own score is a
    threshold (float rounding on either runtime could then put the class in or out)."""
    train = resolve_source(str(folder_data), 0.1, 0.1, 0).train  # split as training split it
    assert train.paths is not None
    readable = [p for p in train.paths if "broken" not in p]
    return [path for kind in CLASSES for path in [p for p in readable if f"/{kind}/" in p][:3]]


def error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = imagewise.cli.main(args)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    return captured.err.strip()


def test_the_quantile_is_the_finite_sample_one_and_infinite_when_n_is_too_small() -> None:
    scores = np.array([0.1, 0.4, 0.2, 0.3])
    assert conformal_quantile(scores, 0.5) == 0.3  # ceil(5 * 0.5) = 3rd smallest
    assert conformal_quantile(scores, 0.4) == 0.2  # ceil(5 * 0.4) = 2nd: not rounded up past 2
    assert conformal_quantile(scores, 0.8) == 0.4  # ceil(5 * 0.8) = 4th
    assert math.isinf(conformal_quantile(scores, 0.81))  # ceil(4.05) = 5 > n
    # the k-th smallest is numpy's inverted_cdf quantile at level k / n, k = ceil((n+1)(1-alpha))
    # (method="higher", which some implementations use, can take the next order statistic)
    rng = np.random.default_rng(0)
    many = rng.random(997)
    for c in (0.5, 0.9, 0.95, 0.99):
        level = math.ceil((len(many) + 1) * c) / len(many)
        assert conformal_quantile(many, c) == np.quantile(many, level, method="inverted_cdf")


def test_scores_and_sets_on_a_hand_computed_case() -> None:
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    assert class_scores(p, "lac").round(6).tolist() == [[0.5, 0.7, 0.8], [0.9, 0.4, 0.7]]
    assert class_scores(p, "aps").round(6).tolist() == [[0.5, 0.8, 1.0], [1.0, 0.6, 0.9]]
    u = np.array([0.5, 0.0])  # randomized: the class's own mass times u
    assert class_scores(p, "aps", u).round(6).tolist() == [[0.25, 0.65, 0.9], [0.9, 0.0, 0.6]]
    # RAPS: + 0.1 per rank past k_reg = 1
    raps = class_scores(p, "raps", None, penalty=0.1, k_reg=1)
    assert raps.round(6).tolist() == [[0.5, 0.9, 1.2], [1.2, 0.6, 1.0]]
    # calibration: true classes 0, 1, 2 of three images, LAC scores 0.5, 0.4, 0.7 -> at 0.5 the
    # ceil(4 * 0.5) = 2nd smallest is 0.5
    cal = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.1, 0.6, 0.3]])
    fit = fit_conformal(cal, np.array([0, 1, 2]), score="lac", coverages=[0.5, 0.74])
    assert fit.thresholds == {"0.5": 0.5, "0.74": 0.7}
    assert PredictionSets(fit, 0.5)(None, p) == [[0], [1]]
    assert PredictionSets(fit, 0.74)(None, p) == [[0, 1], [1, 2]]  # best first
    # one image per class: enough for 0.5 (ceil(2 * 0.5) = 1st), too few for 0.74 (needs 3):
    # then each class is in every set
    assert fit.class_thresholds["0.5"] == [0.5, 0.4, 0.7]
    assert fit.class_thresholds["0.74"] == [None, None, None]
    assert fit.too_few(0.5) == [] and fit.too_few(0.74) == [0, 1, 2]
    assert PredictionSets(fit, 0.74, per_class=True)(None, p) == [[0, 1, 2], [1, 2, 0]]
    with pytest.raises(UserError, match=r"no conformal threshold fitted for coverage 0\.9 "):
        PredictionSets(fit, 0.9)
    # LAC at a low coverage: the second image's scores 0.9, 0.4, 0.7 are all above 0.35, so its
    # set is empty; non_empty keeps its top class (1) and changes nothing else
    low = fit_conformal(cal, np.array([0, 1, 2]), score="lac", coverages=[0.25])
    assert low.thresholds == {"0.25": 0.4} and PredictionSets(low, 0.25)(None, p) == [[], [1]]
    p2 = np.array([[0.5, 0.3, 0.2], [0.05, 0.55, 0.4]])
    assert PredictionSets(low, 0.25)(None, p2) == [[], []]
    assert PredictionSets(low, 0.25, non_empty=True)(None, p2) == [[0], [1]]


def test_the_tie_breakers_are_uniform_and_a_function_of_the_pixels() -> None:
    images = np.random.default_rng(0).integers(0, 256, (4000, 1, 8, 8), dtype=np.uint8)
    u = tie_breakers(images)
    assert np.array_equal(u, tie_breakers(images.copy()))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 330  # 400 expected per bin


def test_sets_cover_held_out_digits_at_the_target(digits_run: Path) -> None:
    ev = imagewise.evaluate(digits_run, coverage=0.9, gallery=0)
    figures = ev.metrics.conformal
    assert figures is not None and ev.prediction_sets is not None
    sets, labels = ev.prediction_sets, ev.labels
    held = sets[np.arange(len(labels)), labels]
    assert figures.coverage == pytest.approx(held.mean(), abs=1e-6)
    assert figures.mean_set_size == pytest.approx(sets.sum(1).mean(), abs=1e-6)
    # 179 test images: 0.9 +- 2.5 standard errors of the test and calibration draws
    assert abs(figures.coverage - 0.9) < 0.06
    assert 1.0 < figures.mean_set_size < 4.0  # not the trivial all-classes sets
    assert ev.accuracy < figures.coverage  # the sets hold more than the top class alone
    written = json.loads((digits_run / "eval" / "metrics.json").read_text())["conformal"]
    assert written["coverage"] == figures.coverage and written["calibration_images"] > 150
    assert written["per_class_coverage"]["3"] == pytest.approx(held[labels == 3].mean(), abs=1e-6)
    assert 'id="sets"' in (digits_run / "eval" / "report.html").read_text()
    per_class = imagewise.evaluate(digits_run, coverage=0.9, coverage_per_class=True, write=False)
    assert per_class.metrics.conformal is not None
    assert min(per_class.metrics.conformal.per_class_coverage.values()) >= 0.8
    assert figures.empty_sets == pytest.approx((sets.sum(1) == 0).mean(), abs=1e-6)
    kept = imagewise.evaluate(digits_run, coverage=0.6, non_empty_sets=True, write=False)
    assert kept.metrics.conformal is not None and kept.metrics.conformal.non_empty
    assert kept.prediction_sets is not None and kept.prediction_sets.sum(1).min() == 1
    assert kept.metrics.conformal.empty_sets == 0.0
    # every set holds the top class, so the coverage is at least the top-1 accuracy
    assert kept.metrics.conformal.coverage >= kept.accuracy
    exact = imagewise.evaluate(digits_run, coverage=0.6, write=False).metrics.conformal
    assert exact is not None and exact.empty_sets > 0 and exact.coverage < kept.accuracy


def test_the_fit_is_kept_and_refitted_when_the_weights_change(run: Path, folder_data: Path) -> None:
    model = imagewise.load(run)
    fit = run_conformal(model, run, 0.925)
    stored = json.loads((run / CONFORMAL_FILE).read_text())
    assert stored["format"] == "imagewise-conformal/1" and stored["score"] == "raps"
    assert {"0.5", "0.9", "0.99", "0.925"} <= set(stored["thresholds"])
    assert stored["calibration_images"] == fit.calibration_images > 0
    before = (run / CONFORMAL_FILE).read_text()
    run_conformal(model, run, 0.9)
    assert (run / CONFORMAL_FILE).read_text() == before  # reused
    stale = {**stored, "weights_sha256": "0" * 64, "thresholds": {"0.9": 0.123}}
    (run / CONFORMAL_FILE).write_text(json.dumps(stale))
    refit = run_conformal(model, run, 0.9)
    again = json.loads((run / CONFORMAL_FILE).read_text())
    assert again["weights_sha256"] == stored["weights_sha256"]
    assert refit.thresholds["0.9"] == fit.thresholds["0.9"] != 0.123


def test_onnx_sets_equal_pytorch_sets_and_the_spec_carries_the_fit(
    run: Path, folder_data: Path
) -> None:
    images = images_of(folder_data)
    onnx_file = imagewise.export(run, out=run / "export" / "model.onnx").path  # fits at export
    carried = imagewise.load(onnx_file).spec.conformal
    assert (
        carried == ConformalFit.from_json(json.loads((run / CONFORMAL_FILE).read_text())).to_json()
    )
    sizes = set()
    for coverage in (0.5, 0.8, 0.95, 0.99):
        for per_class in (False, True):
            ask = dict(coverage=coverage, coverage_per_class=per_class, ood="none")
            torch_sets = [p.prediction_set for p in imagewise.predict(run, images, **ask)]
            onnx_sets = [p.prediction_set for p in imagewise.predict(onnx_file, images, **ask)]
            assert torch_sets == onnx_sets
            sizes |= {len(s or []) for s in torch_sets}
    assert len(sizes) > 1  # the coverages gave sets of different sizes
    spec = imagewise.load(onnx_file).spec
    props = spec.to_metadata()
    assert ModelSpec.from_metadata(props, "m.onnx").conformal == spec.conformal
    broken = {**props, "conformal": json.dumps({**json.loads(props["conformal"]), "score": "x"})}
    with pytest.raises(UserError) as err:
        ModelSpec.from_metadata(broken, "m.onnx")
    assert str(err.value) == (
        "'m.onnx' has broken metadata: conformal score must be one of raps, aps, lac; "
        "re-export it with 'imagewise export RUN'"
    )


def test_predict_writes_sets_and_refuses_bad_coverage_in_one_line(
    run: Path, folder_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = images_of(folder_data)[0]
    base = ["predict", str(run), image, "--ood", "none", "--coverage", "0.99"]
    assert imagewise.cli.main([*base, "--format", "json"]) == 0
    (answer,) = json.loads(capsys.readouterr().out)
    assert answer["prediction_set"][0] == answer["top_k"][0]["class"]
    assert answer["set_probabilities"][0] == answer["top_k"][0]["probability"]
    assert imagewise.cli.main([*base, "--format", "csv", "--top-k", "2"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].endswith(",prediction_set")
    assert rows[1].endswith("," + "|".join(answer["prediction_set"]))
    assert imagewise.cli.main(base) == 0
    assert "set {" + ", ".join(answer["prediction_set"]) + "}" in capsys.readouterr().out

    assert error_line(["predict", str(run), image, "--coverage", "1.5"], capsys) == (
        "error: --coverage must be a probability above 0 and below 1 (e.g. 0.9), not 1.5"
    )
    assert error_line(["evaluate", str(run), "--coverage", "0"], capsys).startswith(
        "error: --coverage must be a probability above 0"
    )
    assert error_line(["predict", str(run), image, "--coverage-per-class"], capsys) == (
        "error: --coverage-per-class goes with --coverage P (e.g. --coverage 0.9)"
    )
    assert error_line(["evaluate", str(run), "--non-empty-sets"], capsys) == (
        "error: --non-empty-sets goes with --coverage P (e.g. --coverage 0.9)"
    )
    plain = tmp_path / "plain.onnx"
    imagewise.export(run, out=plain)
    spec_props = imagewise.load(plain).spec
    assert spec_props.conformal is not None  # fitted at export, so strip it to test the refusal
    import onnx

    model = onnx.load(plain)
    kept = [p for p in model.metadata_props if p.key != "conformal"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, plain)
    assert error_line(["predict", str(plain), image, "--coverage", "0.9"], capsys) == (
        f"error: '{plain}' carries no conformal thresholds; export it again from its run "
        "folder (imagewise export RUN fits them), or predict with the run folder"
    )


def test_the_server_answers_sets_and_names_the_coverage(run: Path, folder_data: Path) -> None:
    from fastapi.testclient import TestClient

    from imagewise.predict.conformal import resolve_sets
    from imagewise.serve import ServeSettings, create_app

    model = imagewise.load(run)
    sets = resolve_sets(model, run, 0.95)
    app = create_app(model, ServeSettings(), sets=sets)
    image = images_of(folder_data)[3]
    expected = imagewise.predict(run, image, coverage=0.95, ood="none")[0]
    with TestClient(app) as client:
        info = client.get("/v1/info").json()
        assert (info["coverage"], info["coverage_per_class"], info["conformal_score"]) == (
            0.95, False, "raps",
        )  # fmt: skip
        with open(image, "rb") as f:
            answer = client.post("/v1/predict", files={"file": ("a.png", f, "image/png")}).json()
    (got,) = answer["predictions"]
    assert got["prediction_set"] == expected.prediction_set
    assert got["set_probabilities"] == pytest.approx(expected.set_probabilities, abs=1e-6)
    assert Image.open(image).size  # the image the answer is for was readable


def test_predict_says_why_a_set_is_empty(caplog: pytest.LogCaptureFixture) -> None:
    from imagewise.cli.predict import _say_empty_sets
    from imagewise.edge.results import Prediction

    preds = [Prediction("a.png", ["x"], [0.99]), Prediction("b.png", ["y"], [0.6])]
    preds[0].prediction_set, preds[1].prediction_set = [], ["y", "x"]
    with caplog.at_level("WARNING", logger="imagewise"):
        _say_empty_sets(preds, 0.9)
    assert caplog.messages == [
        "1 of 2 prediction sets are empty: at coverage 0.9 these confident answers are the ones "
        "the guarantee may let go (exact coverage); --non-empty-sets keeps the top class in "
        "every set"
    ]
