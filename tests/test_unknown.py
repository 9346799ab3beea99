"""Unknown answers and out-of-distribution scores: --min-confidence (a number or fitted for a
target precision on the validation split), the energy and kNN scores, and their bad values."""

from __future__ import annotations

import csv
import hashlib
import io
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
from imagewise.edge.unknown import energy_score, fit_min_confidence
from imagewise.errors import UserError
from imagewise.predict.unknown import REFERENCE_FILE, UNKNOWN_FILE

from conftest import run_cli


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared run: these tests write unknown.json, the kNN reference, exports."""
    dest = tmp_path / "run"
    dest.mkdir()
    for name in ("config.yaml", "meta.json", "model.safetensors"):
        shutil.copy(trained_run / name, dest / name)
    return dest


def images_of(folder_data: Path) -> list[str]:
    return [str(folder_data / kind / "001.png") for kind in ("circle", "square", "stripes")]


def error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = imagewise.cli.main(args)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    return captured.err.strip()


def test_below_the_threshold_is_unknown_at_or_above_it_the_label(
    run: Path, folder_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = images_of(folder_data)
    preds = imagewise.predict(run, images, ood="none")
    assert all(p.unknown is None and p.ood_score is None for p in preds)
    order = sorted(range(len(preds)), key=lambda i: preds[i].confidence)
    low, high = preds[order[0]], preds[order[-1]]
    assert low.confidence < high.confidence
    threshold = repr(high.confidence)  # exactly the most confident answer's probability
    base = ["predict", str(run), *images, "--min-confidence", threshold, "--ood", "none"]

    code, out, _ = run_cli([*base, "--format", "json"], capsys)
    answers = {p["source"]: p["answer"] for p in json.loads(out)}
    assert code == 0 and answers[high.source] == high.label  # at the threshold: the label
    assert answers[low.source] == "unknown"  # below it

    code, out, _ = run_cli([*base, "--format", "csv", "--top-k", "1"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {r["source"]: r["answer"] for r in rows} == answers

    code, out, _ = run_cli(base, capsys)
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "unknown" in lines[low.source] and "unknown" not in lines[high.source]
    # the same through the API
    again = imagewise.predict(run, images, min_confidence=high.confidence, ood="none")
    assert {p.source: p.answer for p in again} == answers


def test_auto_fits_once_on_the_validation_split_keeps_it_and_refits_for_another_target(
    run: Path, folder_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = images_of(folder_data)[:1]
    code, _, _ = run_cli(["predict", str(run), *image, "--min-confidence", "auto"], capsys)
    stored = json.loads((run / UNKNOWN_FILE).read_text())
    val = resolve_source(str(folder_data), 0.1, 0.1, 0).val  # split as training split it
    assert val.paths is not None
    readable = [(p, y) for p, y in zip(val.paths, val.labels, strict=True) if "broken" not in p]
    assert code == 0 and stored["target_precision"] == 0.95
    assert stored["validation_images"] == len(readable) > 0
    assert (
        stored["weights_sha256"]
        == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    )
    # The answers it keeps on the validation images reach the target precision.
    preds = imagewise.predict(run, [p for p, _ in readable], top_k=1, ood="none")
    names = imagewise.load(run).classes
    right = np.array([p.label == names[y] for p, (_, y) in zip(preds, readable, strict=True)])
    kept = np.array([p.confidence >= stored["min_confidence"] for p in preds])
    assert kept.any() and right[kept].mean() >= 0.95
    assert stored["precision"] == pytest.approx(right[kept].mean())
    assert stored["coverage"] == pytest.approx(kept.mean())

    before = (run / UNKNOWN_FILE).read_text()
    assert run_cli(["predict", str(run), *image, "--min-confidence", "auto"], capsys)[0] == 0
    assert (run / UNKNOWN_FILE).read_text() == before  # reused, not fitted again

    args = ["predict", str(run), *image, "--min-confidence", "auto", "--target-precision", "0.5"]
    assert run_cli(args, capsys)[0] == 0
    assert json.loads((run / UNKNOWN_FILE).read_text())["target_precision"] == 0.5

    # other weights (a retrained run): fitted again
    stale = {**json.loads(before), "weights_sha256": "0" * 64}
    (run / UNKNOWN_FILE).write_text(json.dumps(stale))
    assert run_cli(["predict", str(run), *image, "--min-confidence", "auto"], capsys)[0] == 0
    refitted = json.loads((run / UNKNOWN_FILE).read_text())
    assert refitted["weights_sha256"] == stored["weights_sha256"]


def test_the_fitted_threshold_is_the_lowest_that_reaches_the_target() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 2000)
    correct = rng.uniform(size=2000) < confidence  # right as often as it is confident
    fit = fit_min_confidence(confidence, correct, 0.9)
    kept = confidence >= fit.min_confidence
    assert correct[kept].mean() >= 0.9 and fit.precision == pytest.approx(correct[kept].mean())
    assert fit.coverage == pytest.approx(kept.mean()) and 0 < fit.coverage < 1
    lower = confidence[confidence < fit.min_confidence].max()  # the next threshold down
    assert correct[confidence >= lower].mean() < 0.9
    # every answer good enough: nothing is unknown
    assert fit_min_confidence(confidence, np.ones(2000, bool), 0.99).min_confidence == 0.0
    with pytest.raises(UserError, match=r"no confidence threshold reaches precision 0\.99"):
        fit_min_confidence(confidence, np.zeros(2000, bool), 0.99)


def test_the_energy_score_is_minus_logsumexp_of_the_logits(run: Path, folder_data: Path) -> None:
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1000.0, 0.0, -5.0]])
    expected = [
        -math.log(math.exp(1) + math.exp(2) + math.exp(3)),
        -math.log(3),
        -(1000 + math.log(1 + math.exp(-1000) + math.exp(-1005))),
    ]
    assert energy_score(logits) == pytest.approx(expected, rel=1e-6)
    assert energy_score(logits, 2.0)[0] == pytest.approx(
        -2 * math.log(math.exp(0.5) + math.exp(1) + math.exp(1.5)), rel=1e-6
    )
    image = images_of(folder_data)[0]
    model = imagewise.load(run)
    raw = model.scores(model.read(image)[None])[0][0].astype(float)
    (pred,) = imagewise.predict(run, image)  # energy: the default without a kNN reference
    assert pred.ood_score == pytest.approx(-math.log(sum(math.exp(v) for v in raw)), rel=1e-5)


def test_knn_scores_a_training_image_below_noise_and_becomes_the_default(
    run: Path, folder_data: Path, tmp_path: Path
) -> None:
    noise = tmp_path / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(noise)
    train = resolve_source(str(folder_data), 0.1, 0.1, 0).train.paths[:3]
    preds = imagewise.predict(run, [*train, str(noise)], ood="knn")
    assert (run / REFERENCE_FILE).is_file()
    scores = [p.ood_score for p in preds]
    assert max(scores[:3]) < scores[3]
    assert all(0 <= s <= 2 for s in scores)  # cosine distances
    # With the reference in the run folder, the default score is kNN.
    assert [p.ood_score for p in imagewise.predict(run, [*train, str(noise)])] == scores


def test_bad_values_are_one_line(
    run: Path, folder_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = images_of(folder_data)[0]
    for value in ("1.5", "-0.1"):
        assert error_line(["predict", str(run), image, "--min-confidence", value], capsys) == (
            f"error: --min-confidence must be a probability from 0 to 1 (or auto), not {value}"
        )
    line = error_line(["predict", str(run), image, "--min-confidence", "most"], capsys)
    assert line.startswith("error: --min-confidence must be a probability from 0 to 1 or auto")
    args = ["predict", str(run), image, "--min-confidence", "auto", "--target-precision", "2"]
    assert "--target-precision must be above 0 and at most 1" in error_line(args, capsys)

    onnx_file = imagewise.export(run, out=tmp_path / "plain.onnx").path
    assert error_line(["predict", str(onnx_file), image, "--min-confidence", "auto"], capsys) == (
        f"error: '{onnx_file}' carries no fitted --min-confidence; give a number (e.g. "
        "--min-confidence 0.8), or fit one on the run (imagewise predict RUN ... "
        "--min-confidence auto) and export it again"
    )
    assert "--ood knn needs the run folder" in error_line(
        ["predict", str(onnx_file), image, "--ood", "knn"], capsys
    )


def test_an_export_carries_the_fitted_threshold(run: Path, folder_data: Path) -> None:
    image = images_of(folder_data)[0]
    imagewise.predict(run, image, min_confidence="auto", target_precision=0.9)
    fitted = json.loads((run / UNKNOWN_FILE).read_text())
    onnx_file = imagewise.export(run, out=run / "export" / "with.onnx").path
    (pred,) = imagewise.predict(onnx_file, image, min_confidence="auto")
    assert pred.unknown is (pred.confidence < fitted["min_confidence"])
    with pytest.raises(UserError, match=r"fitted for precision 0\.9, not 0\.99"):
        imagewise.predict(onnx_file, image, min_confidence="auto", target_precision=0.99)
