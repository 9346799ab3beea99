"""Multi-label evaluation: scores by hand and against scikit-learn, per-label calibration
error, the precision-recall curves and the report section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from imagewise.errors import UserError
from imagewise.evaluate.multilabel import (
    binary_calibration_error,
    plot_pr_curves,
    score_multilabel,
)
from imagewise.evaluate.multilabel_report import label_errors, multilabel_section
from imagewise.evaluate.scores import MultilabelScores

# 4 images x 3 labels, worked out by hand below; image 2 carries no label
PROBS = np.array(
    [
        [0.9, 0.2, 0.6],
        [0.8, 0.7, 0.1],
        [0.3, 0.4, 0.7],
        [0.1, 0.6, 0.2],
    ]
)
TARGETS = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0], [0, 1, 1]], dtype=np.uint8)
THRESHOLDS = [0.5, 0.65, 0.5]
NAMES = ["cat", "dog", "car"]
# predicted (p >= threshold): [1,0,1], [1,1,0], [0,0,1], [0,0,0]


@pytest.fixture(scope="module")
def tiny() -> MultilabelScores:
    return score_multilabel(PROBS, TARGETS, THRESHOLDS, NAMES)


def test_scores_of_a_hand_worked_example(tiny: MultilabelScores) -> None:
    cat, dog, car = (tiny.per_label[n] for n in NAMES)
    # cat: TP 2; dog: TP 1, FN 1; car: TP 1, FP 1 (image 2), FN 1 (image 3)
    assert (cat.precision, cat.recall, cat.f1) == pytest.approx((1, 1, 1))
    assert (dog.precision, dog.recall, dog.f1) == pytest.approx((1, 0.5, 2 / 3))
    assert (car.precision, car.recall, car.f1) == pytest.approx((0.5, 0.5, 0.5))
    assert [(s.support, s.predicted) for s in (cat, dog, car)] == [(2, 2), (2, 1), (2, 2)]
    assert [s.threshold for s in (cat, dog, car)] == THRESHOLDS
    # micro: TP 4, FP 1, FN 2
    assert (tiny.micro.precision, tiny.micro.recall, tiny.micro.f1) == pytest.approx(
        (0.8, 2 / 3, 8 / 11)
    )
    assert (tiny.macro.precision, tiny.macro.recall, tiny.macro.f1) == pytest.approx(
        (2.5 / 3, 2 / 3, 13 / 18)
    )
    # car's ranking 0.7 (no), 0.6 (yes), 0.2 (yes), 0.1 (no): AP = 0.5 * 1/2 + 0.5 * 2/3
    assert (cat.ap, dog.ap, car.ap) == pytest.approx((1.0, 1.0, 7 / 12))
    assert tiny.map == pytest.approx(31 / 36)
    assert tiny.subset_accuracy == pytest.approx(0.5)  # images 0 and 1 exactly right
    assert tiny.hamming_loss == pytest.approx(3 / 12)
    assert (tiny.no_true_label, tiny.no_predicted_label) == (1, 1)
    # at 0.5 dog is right on image 3 too: micro TP 5, FP 1, FN 1; macro (1 + 1 + 0.5) / 3
    assert (tiny.f1_at_half.micro, tiny.f1_at_half.macro) == pytest.approx((5 / 6, 5 / 6))
    # every probability alone in its bin: the mean gap to 0/1
    assert (cat.ece, dog.ece, car.ece) == pytest.approx((0.7 / 4, 1.3 / 4, 2.0 / 4))


def test_binary_calibration_error_by_hand() -> None:
    # 0.9 and 0.92 share the bin (13/15, 14/15]: mean 0.91, one of two positive
    p, y = np.array([0.9, 0.92, 0.1]), np.array([1, 0, 0])
    assert binary_calibration_error(p, y) == pytest.approx((2 * 0.41 + 0.1) / 3)
    # a probability of exactly 0 goes to the first bin, with 0.05
    assert binary_calibration_error(np.array([0.0, 0.05]), np.array([0, 1])) == pytest.approx(0.475)
    assert binary_calibration_error(p, y, bins=1) == pytest.approx(abs(1.92 / 3 - 1 / 3))


def test_scores_equal_scikit_learn_on_random_data() -> None:
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        hamming_loss,
        precision_score,
        recall_score,
    )

    rng = np.random.default_rng(7)
    y = (rng.random((300, 6)) < [0.5, 0.3, 0.1, 0.05, 0.4, 0.0]).astype(np.uint8)
    probs = np.clip(0.35 * y + rng.random(y.shape) * 0.7, 0, 1)
    t = rng.uniform(0.3, 0.7, size=6)
    names = [f"l{i}" for i in range(6)]
    s = score_multilabel(probs, y, t, names)
    pred = (probs >= t).astype(int)
    for avg, got in (("micro", s.micro), ("macro", s.macro)):
        assert got.f1 == pytest.approx(f1_score(y, pred, average=avg, zero_division=0))
        assert got.precision == pytest.approx(
            precision_score(y, pred, average=avg, zero_division=0)
        )
        assert got.recall == pytest.approx(recall_score(y, pred, average=avg, zero_division=0))
    half = (probs >= 0.5).astype(int)
    assert s.f1_at_half.micro == pytest.approx(f1_score(y, half, average="micro"))
    assert s.f1_at_half.macro == pytest.approx(f1_score(y, half, average="macro", zero_division=0))
    assert s.hamming_loss == pytest.approx(hamming_loss(y, pred))
    assert s.subset_accuracy == pytest.approx(accuracy_score(y, pred))
    aps = [average_precision_score(y[:, k], probs[:, k]) for k in range(5)]
    assert [s.per_label[n].ap for n in names[:5]] == pytest.approx(aps)
    assert s.per_label["l5"].ap is None  # no image carries l5: no AP, and out of the mean
    assert s.map == pytest.approx(np.mean(aps))
    assert s.no_true_label == int((y.sum(1) == 0).sum()) > 0
    assert 0 < s.micro.f1 < 1 and s.map > 0.5


def test_scores_round_trip_through_json_and_summarize(tiny: MultilabelScores) -> None:
    text = json.dumps(tiny.to_json())
    back = MultilabelScores.from_json(json.loads(text), "metrics.json", "multilabel")
    assert back == tiny
    assert json.loads(text)["per_label"]["dog"]["f1"] == pytest.approx(2 / 3)
    lines = tiny.summary().splitlines()
    assert lines[0] == "4 images, 3 labels (multi-label)"
    assert "mAP 0.8611" in lines[1] and "micro F1 0.7273" in lines[1]
    assert "subset accuracy 50.00%" in lines[2] and "Hamming loss 0.2500" in lines[2]
    assert lines[3].startswith("lowest F1: car 0.500") and lines[3].index("dog") < lines[3].index(
        "cat"
    )


def test_a_threshold_per_label_is_required() -> None:
    with pytest.raises(UserError, match="3 thresholds, one per label, not 2"):
        score_multilabel(PROBS, TARGETS, [0.5, 0.5], NAMES)
    with pytest.raises(UserError, match=r"shape \(images, 3 labels\)"):
        score_multilabel(PROBS[:, :2], TARGETS[:, :2], THRESHOLDS, NAMES)


def test_label_errors_pick_the_worst_labels_confident_mistakes(tiny: MultilabelScores) -> None:
    # car: image 2 predicted (0.7) without the label, image 3 missed (0.2); dog: image 3 (0.6)
    # missed; cat has no error
    assert label_errors(tiny, PROBS, TARGETS) == [(2, "car", [2], [3]), (1, "dog", [], [3])]
    assert label_errors(tiny, PROBS, TARGETS, labels=1) == [(2, "car", [2], [3])]


def test_pr_curves_are_written_as_a_png(tmp_path: Path) -> None:
    out = plot_pr_curves(PROBS, TARGETS, NAMES, tmp_path / "pr.png", thresholds=THRESHOLDS)
    data = out.read_bytes()
    assert out == tmp_path / "pr.png" and data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > height > 100  # three panels side by side


def test_section_holds_the_per_label_rows_and_the_curves(
    tiny: MultilabelScores, tmp_path: Path
) -> None:
    png = plot_pr_curves(PROBS, TARGETS, NAMES, tmp_path / "pr.png", thresholds=THRESHOLDS)
    page = multilabel_section(tiny, PROBS, TARGETS, pr_curves=png)
    rows = dict(re.findall(r"<tr><td>(\w+)</td>(.*?)</tr>", page))
    cells = {k: re.findall(r">([-\d.]+)</td>", v) for k, v in rows.items()}
    # support, predicted, precision, recall, F1, AP, ECE, threshold
    assert cells["dog"] == ["2", "1", "1.000", "0.500", "0.667", "1.000", "0.3250", "0.650"]
    assert cells["car"] == ["2", "2", "0.500", "0.500", "0.500", "0.583", "0.5000", "0.500"]
    assert "<b>0.8611</b><span>mAP</span>" in page
    assert "<b>50.00%</b><span>subset accuracy</span>" in page
    assert 'alt="precision-recall curves"' in page and "data:image/png;base64," in page
    assert "Example errors" not in page  # no classifier given: no gallery


def test_metric_values_keep_the_single_label_shape() -> None:
    from sklearn.metrics import log_loss

    from imagewise.evaluate.multilabel import multilabel_metric_values, sigmoid
    from imagewise.evaluate.scores import Metrics

    logits = np.log(PROBS / (1 - PROBS))  # sigmoid(logits) == PROBS
    values = multilabel_metric_values(2 * logits, TARGETS, 2.0, THRESHOLDS, NAMES)
    values.update(split="test", data="tiny.csv")
    m = Metrics.from_json(values, "the evaluation", "")
    expected = score_multilabel(PROBS, TARGETS, THRESHOLDS, NAMES)
    assert m.multilabel is not None and m.multilabel.map == pytest.approx(expected.map)
    for name in NAMES:  # sigmoid(logit(p)) is p up to rounding
        got, want = m.multilabel.per_label[name], expected.per_label[name]
        assert (got.f1, got.ap, got.ece) == pytest.approx((want.f1, want.ap, want.ece))
    assert m.accuracy == pytest.approx(0.5) and m.confusion_matrix == []
    assert m.per_class["dog"].f1 == pytest.approx(2 / 3) and m.per_class["dog"].support == 2
    assert m.log_loss == pytest.approx(log_loss(TARGETS.ravel(), PROBS.ravel()))
    assert m.calibration is not None and m.calibration.temperature == 2.0
    assert m.calibration.ece_after == pytest.approx((0.7 + 1.3 + 2.0) / 12)
    raw = sigmoid(2 * logits)  # before the temperature
    assert m.calibration.nll_before == pytest.approx(log_loss(TARGETS.ravel(), raw.ravel()))
    text = m.summary()
    assert "lowest F1: car 0.500" in text and "mean per-label ECE" in text
    assert "confusion" not in text


def make_mosaics(root: Path, n: int = 320) -> Path:
    """2x2 mosaics of scikit-learn digits (32 x 32 PNG) and a manifest ``path,labels``: an
    image carries ``d0`` .. ``d3`` for each of those digits among its tiles (the digits 4-9
    are background, so some images carry none)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,labels"]
    for i in range(n):
        picks = rng.integers(0, len(digits.target), size=4)
        tiles = [np.kron(digits.images[j], np.ones((2, 2))) * 15 for j in picks]
        mosaic = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]]).astype(np.uint8)
        Image.fromarray(mosaic, "L").save(root / f"{i:03d}.png")
        present = sorted({int(digits.target[j]) for j in picks if digits.target[j] < 4})
        lines.append(f"{i:03d}.png," + "|".join(f"d{d}" for d in present))
    (root / "mosaics.csv").write_text("\n".join(lines) + "\n")
    return root / "mosaics.csv"


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import imagewise.cli

    base = tmp_path_factory.mktemp("multilabel")
    manifest = make_mosaics(base / "mosaics")
    out = base / "run"
    args = f"train {manifest} --task multilabel --model resnet9p_tiny --epochs 2 --out {out}"
    assert imagewise.cli.main([*args.split(), "-q", "--batch-size", "32"]) == 0
    return out


def test_evaluate_a_multilabel_run_end_to_end(
    multilabel_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    import imagewise
    from imagewise.config import load_config_file
    from imagewise.data.sources import resolve_source

    from conftest import run_cli

    code, out, err = run_cli(["evaluate", str(multilabel_run)], capsys)
    assert code == 0, err
    assert "(multi-label)" in out and "mAP" in out and "lowest F1:" in out
    eval_dir = multilabel_run / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert (eval_dir / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not (eval_dir / "confusion_matrix.png").exists()
    # the same figures from the loaded classifier's own probabilities on the test split
    cfg = load_config_file(multilabel_run / "config.yaml").data
    data = resolve_source(
        cfg.source, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, task="multilabel"
    )
    clf = imagewise.load(multilabel_run)
    assert clf.spec.multilabel and clf.spec.thresholds is not None
    with torch.no_grad():
        probs = clf.probabilities(clf.preprocess(data.test.paths)).numpy()
    classes = list(clf.classes)
    targets = np.asarray(data.test.labels)[:, [data.classes.index(c) for c in classes]]
    want = score_multilabel(probs, targets, clf.spec.label_thresholds(), classes)
    got = metrics["multilabel"]
    assert metrics["images"] == got["images"] == len(data.test.paths) == want.images
    assert metrics["accuracy"] == pytest.approx(want.subset_accuracy, abs=1e-6)
    assert metrics["confusion_matrix"] == [] and metrics["top_k_accuracy"] == {}
    for key in ("map", "subset_accuracy", "hamming_loss"):
        assert got[key] == pytest.approx(getattr(want, key), abs=1e-5), key
    assert got["micro"]["f1"] == pytest.approx(want.micro.f1, abs=1e-5)
    assert got["macro"]["f1"] == pytest.approx(want.macro.f1, abs=1e-5)
    for name in classes:
        row, expected = got["per_label"][name], want.per_label[name]
        assert row["threshold"] == pytest.approx(expected.threshold)
        assert (row["f1"], row["support"]) == (
            pytest.approx(expected.f1, abs=1e-5),
            expected.support,
        )
    assert 0 < got["map"] <= 1 and 0 <= got["hamming_loss"] < 1
    page = (eval_dir / "report.html").read_text()
    assert 'id="per-label"' in page and 'id="confusion"' not in page
    for name in classes:
        assert f'<tr><td>{name}</td><td data-value="{want.per_label[name].support}">' in page
    assert "Example errors" in page and 'alt="Grad-CAM of d' in page


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--coverage", "0.9"], "--coverage builds prediction sets of one class per image"),
        (["--robustness"], "--robustness scores single-label runs only"),
        (["--slice-by", "site"], "--slice-by scores single-label runs only"),
    ],
)
def test_single_label_measures_are_refused_for_a_multilabel_run(
    multilabel_run: Path, capsys: pytest.CaptureFixture[str], flag: list[str], message: str
) -> None:
    from conftest import run_cli

    code, _, err = run_cli(["evaluate", str(multilabel_run), *flag], capsys)
    assert code == 2 and message in err


def test_other_data_with_class_columns_in_another_order_is_mapped_by_name(
    multilabel_run: Path, tmp_path: Path
) -> None:
    import shutil

    import imagewise

    source = multilabel_run.parent / "mosaics"
    rows = (source / "mosaics.csv").read_text().splitlines()[1:13]
    order = ["d3", "d1", "d0", "d2"]  # the run's classes are d0..d3
    lines = ["path," + ",".join(order)]
    for row in rows:
        name, labels = row.split(",")
        shutil.copy(source / name, tmp_path / name)
        lines.append(name + "," + ",".join("1" if c in labels.split("|") else "0" for c in order))
    (tmp_path / "other.csv").write_text("\n".join(lines) + "\n")
    ev = imagewise.evaluate(multilabel_run, data=str(tmp_path / "other.csv"), write=False)
    classes = list(ev.classes)
    expected = np.array(
        [[c in row.split(",")[1].split("|") for c in classes] for row in rows], dtype=np.uint8
    )
    assert classes == ["d0", "d1", "d2", "d3"] and ev.multilabel
    assert np.array_equal(ev.labels, expected) and expected.sum() > 0
    assert ev.metrics.multilabel is not None and ev.metrics.multilabel.images == 12


def test_top_losses_of_a_multilabel_evaluation_name_label_sets(tiny: MultilabelScores) -> None:
    from imagewise.evaluate.result import Evaluation
    from imagewise.evaluate.scores import Metrics, Scores

    m = Metrics(4, 0.5, {}, 0.0, {}, Scores(0, 0, 0), Scores(0, 0, 0), [], multilabel=tiny)
    ev = Evaluation(m, NAMES, TARGETS, PROBS, thresholds=np.array(THRESHOLDS))
    worst = ev.top_losses(1)[0]
    # image 3 (dog, car; predicted none): loss mean(-log .9, -log .6, -log .2)
    assert (worst["index"], worst["true"], worst["predicted"]) == (3, "dog|car", "")
    assert worst["loss"] == pytest.approx(-(np.log(0.9) + np.log(0.6) + np.log(0.2)) / 3)
    assert worst["confidence"] == pytest.approx(0.9 * 0.4 * 0.8)
    assert ev.predictions.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0]]
