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
