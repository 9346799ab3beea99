"""Multi-label data, losses, thresholds and training: the core every multi-label stage builds on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

import imagewise
from imagewise.data.sources import resolve_source, strata, stratified_split
from imagewise.edge.multilabel import fit_thresholds, label_sets, predicted_labels
from imagewise.edge.spec import MULTILABEL, InputContract, ModelSpec
from imagewise.errors import UserError
from imagewise.runtime.meta import RunMeta
from imagewise.runtime.runs import RunFolder
from imagewise.train.distillation import distillation_loss
from imagewise.train.loop import mean_average_precision
from imagewise.train.task import ClassificationTask, asymmetric_loss, label_weights


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- manifests ---------------------------------------------------------------------------


def test_labels_column_gives_a_multilabel_dataset(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "m.csv",
        "path,labels,site,split\n"
        "a.png,dog|cat,north,train\n"
        "b.png,cat,south,train\n"
        "c.png,,north,train\n"
        "d.png, bird | dog ,south,test\n",
    )
    data = resolve_source(str(csv), 0.0, 0.0)
    assert data.multilabel and data.task == MULTILABEL
    assert data.classes == ["bird", "cat", "dog"]
    assert data.train.labels.dtype == np.uint8 and data.train.labels.shape == (3, 3)
    names = [Path(p).name for p in data.train.paths]
    by_path = dict(zip(names, data.train.labels.tolist(), strict=True))
    assert by_path == {"a.png": [0, 1, 1], "b.png": [0, 1, 0], "c.png": [0, 0, 0]}
    assert data.test.labels.tolist() == [[1, 0, 1]]
    assert data.train.columns == {"site": ["north", "south", "north"]}


def test_separator_and_forced_task(tmp_path: Path) -> None:
    csv = _write(tmp_path / "m.csv", "path,label\na.png,dog;cat\nb.png,cat\n")
    single = resolve_source(str(csv), 0.0, 0.0, label_separator="|")
    assert not single.multilabel and single.classes == ["cat", "dog;cat"]
    multi = resolve_source(str(csv), 0.0, 0.0, label_separator=";")
    assert multi.multilabel and multi.classes == ["cat", "dog"]
    forced = resolve_source(str(csv), 0.0, 0.0, task="multilabel", label_separator="|")
    assert forced.multilabel and forced.classes == ["cat", "dog;cat"]


def test_zero_one_columns_in_header_order(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "m.csv",
        "path,zebra,apple,camera,split\na.png,1,0,x1,train\nb.png,1,1,x2,train\n"
        "c.png,0,0,x1,train\nd.png,0,1,x3,val\n",
    )
    data = resolve_source(str(csv), 0.0, 0.0)
    assert data.multilabel and data.classes == ["zebra", "apple"]
    assert data.train.labels.tolist() == [[1, 0], [1, 1], [0, 0]]
    assert data.val.labels.tolist() == [[0, 1]]
    assert data.train.columns == {"camera": ["x1", "x2", "x1"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,labels\na.png,dog||cat\n", "line 2: 'dog||cat' has an empty label"),
        ("path,dog,cat\na.png,1,0\nb.png,2,1\n", "line 3: column 'dog' is '2'"),
        ("path,dog,cat\na.png,1,0\nb.png,,1\n", "line 3: column 'dog' is ''"),
        ("path,labels\n,dog\n", "line 2: path and label must not be empty"),
        ("path,labels,split\na.png,dog,later\n", "line 2: unknown split 'later'"),
        ("path,site\na.png,x\n", "has no label column"),
        ("path,labels\na.png,\n", "has no labelled rows"),
    ],
)
def test_bad_rows_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    csv = _write(tmp_path / "m.csv", text)
    with pytest.raises(UserError) as info:
        resolve_source(str(csv), 0.0, 0.0)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_task_single_refuses_several_labels_and_folders_refuse_multilabel(
    tmp_path: Path,
) -> None:
    csv = _write(tmp_path / "m.csv", "path,labels\na.png,dog|cat\n")
    with pytest.raises(UserError, match="train it with --task multilabel"):
        resolve_source(str(csv), 0.0, 0.0, task="single")
    with pytest.raises(UserError, match="multi-label data comes in a CSV manifest"):
        resolve_source("digits", task="multilabel")


def test_splits_are_stratified_by_the_rarest_label() -> None:
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 1], [0, 1, 1]], dtype=np.uint8)
    # counts: label 0 on 3 images, 1 on 2, 2 on 2 -> rarest of (0, 1) is 1 (first of equals)
    assert strata(labels).tolist() == [1, 0, 3, 2, 1]
    # the split itself: every label keeps its share in the validation split, the rare one too
    rng = np.random.default_rng(0)
    rows = (rng.random((2000, 4)) < [0.5, 0.3, 0.1, 0.02]).astype(np.uint8)
    _, val = stratified_split(strata(rows), [0.2], seed=0)
    assert len(val) == pytest.approx(400, abs=8)
    share = rows[val].mean(axis=0) / rows.mean(axis=0)
    assert np.all(np.abs(share - 1) < 0.12), share


# --- losses ------------------------------------------------------------------------------


def test_bce_with_label_weights_matches_the_formula() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.8, -2.0]])
    target = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.uint8)
    weights = label_weights(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1]]))
    # label 0: present 3 of 4 -> 1/3; label 1: 1 of 4 -> 3; label 2: 1 of 4 -> 3
    assert weights.tolist() == pytest.approx([1 / 3, 3.0, 3.0])
    task = ClassificationTask(torch.nn.Identity(), "auto", 3, label_smoothing=0.1, multilabel=True)
    assert task.loss_name == "bce" and task.label_smoothing == 0.0
    task.class_weight = weights
    p = torch.sigmoid(logits)
    y = target.float()
    hand = -(weights * y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert float(task.loss(logits, target)) == pytest.approx(float(hand), rel=1e-6)


def test_asymmetric_loss_matches_the_paper() -> None:
    logits = torch.tensor([[1.5, -0.5], [0.2, -3.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.sigmoid(logits)
    p_m = (p - 0.05).clamp(min=0)
    per = y * torch.log(p) + (1 - y) * p_m**4 * torch.log(1 - p_m)
    assert float(asymmetric_loss(logits, y)) == pytest.approx(float(-per.mean()), rel=1e-6)
    # an easy absent label (p = 0.047 < the 0.05 shift) costs nothing
    assert float(asymmetric_loss(torch.tensor([[-3.0]]), torch.tensor([[0.0]]))) == 0.0


def test_losses_refuse_the_other_task() -> None:
    with pytest.raises(UserError, match="a multi-label run trains with bce, asl, margin"):
        ClassificationTask(torch.nn.Identity(), "cross_entropy", 3, multilabel=True)
    with pytest.raises(UserError, match="--loss asl is for multi-label data"):
        ClassificationTask(torch.nn.Identity(), "asl", 3)


def test_multilabel_distillation_is_a_bernoulli_kl() -> None:
    s, t = torch.tensor([[0.3, -1.0]]), torch.tensor([[2.0, 0.5]])
    q, p = torch.sigmoid(t / 2), torch.sigmoid(s / 2)
    kl = q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()
    assert float(distillation_loss(s, t, 2.0, multilabel=True)) == pytest.approx(
        float(kl.mean() * 4), rel=1e-5
    )
    assert float(distillation_loss(t, t, 2.0, multilabel=True)) == pytest.approx(0, abs=1e-7)


def test_mean_average_precision_is_sklearns() -> None:
    rng = np.random.default_rng(1)
    truth = rng.random((50, 4)) < 0.3
    truth[:, 3] = False  # a label without positives has no AP and is left out
    scores = rng.normal(size=(50, 4)) + truth
    expected = np.mean([average_precision_score(truth[:, k], scores[:, k]) for k in range(3)])
    assert mean_average_precision(scores, truth) == pytest.approx(expected)


# --- thresholds --------------------------------------------------------------------------


def test_fitted_thresholds_reach_the_best_f1_of_each_label() -> None:
    rng = np.random.default_rng(0)
    truth = (rng.random((300, 3)) < [0.5, 0.2, 0.05]).astype(np.uint8)
    probs = np.clip(truth * 0.35 + rng.random((300, 3)) * 0.65, 0, 1)
    thresholds = fit_thresholds(probs, truth)
    for k in range(3):
        best = max(f1_score(truth[:, k], probs[:, k] >= c) for c in np.unique(probs[:, k]))
        assert f1_score(truth[:, k], probs[:, k] >= thresholds[k]) == pytest.approx(best)
    precise = fit_thresholds(probs, truth, target_precision=0.9)
    for k in range(3):
        chosen = probs[:, k] >= precise[k]
        assert precision_score(truth[:, k], chosen, zero_division=0) >= 0.9
        # the most recall at that precision: one step lower falls below it
        lower = probs[:, k][probs[:, k] < precise[k]]
        if len(lower):
            more = probs[:, k] >= lower.max()
            assert precision_score(truth[:, k], more) < 0.9 or recall_score(
                truth[:, k], more
            ) == recall_score(truth[:, k], chosen)


def test_label_sets_are_most_probable_first() -> None:
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.1, 0.1], [0.5, 0.95, 0.7]])
    thresholds = np.array([0.5, 0.5, 0.65])
    assert label_sets(probs, thresholds) == [[0], [], [1, 2, 0]]  # 0.6 is below 0.65
    assert predicted_labels(probs, thresholds).tolist() == [[1, 0, 0], [0, 0, 0], [1, 1, 1]]


def test_spec_carries_task_and_thresholds_and_single_files_keep_their_keys() -> None:
    pre = InputContract(32, 1, (0.5,), (0.25,))
    spec = ModelSpec(("a", "b"), pre, 1.5, task=MULTILABEL, thresholds=(0.3, 0.7))
    props = spec.to_metadata()
    assert props["task"] == "multilabel" and json.loads(props["thresholds"]) == [0.3, 0.7]
    back = ModelSpec.from_metadata(props, "m.onnx")
    assert back.multilabel and back.thresholds == (0.3, 0.7)
    z = np.array([[3.0, -1.5]])
    assert back.probabilities(z) == pytest.approx(1 / (1 + np.exp(-z / 1.5)))
    single = ModelSpec(("a", "b"), pre, 1.5)
    assert "task" not in single.to_metadata() and "thresholds" not in single.to_metadata()
    assert single.probabilities(z).sum() == pytest.approx(1.0)
    broken = {**props, "thresholds": "[0.3]"}
    with pytest.raises(UserError, match="thresholds must hold one number per class"):
        ModelSpec.from_metadata(broken, "m.onnx")


# --- training ----------------------------------------------------------------------------


def test_a_multilabel_run_records_its_task_and_reproduces_its_thresholds(
    ml_run: Path, mosaics: Path
) -> None:
    meta = json.loads((ml_run / "meta.json").read_text())
    assert meta["task"] == "multilabel" and len(meta["thresholds"]) == 3
    assert meta["training"]["selected_by"] == "val_map"
    history = RunFolder.of(ml_run).read_history()
    best = next(h for h in history if h["epoch"] == meta["training"]["best_epoch"])
    assert best["val_map"] == max(h["val_map"] for h in history)
    assert meta["training"]["best_val_map"] == pytest.approx(best["val_map"])
    # the thresholds come back from the validation split's probabilities, and their F1 is
    # the best each label can have there
    data = resolve_source(str(mosaics))
    clf = imagewise.load(ml_run)
    images = torch.stack([torch.from_numpy(clf.read(p)) for p in data.val.paths])
    probs = clf.image_probabilities(images).numpy()
    refit = fit_thresholds(probs, data.val.labels)
    assert refit == pytest.approx(meta["thresholds"], abs=1e-5)
    chosen = predicted_labels(probs, np.array(meta["thresholds"]))
    for k in range(3):
        at = f1_score(data.val.labels[:, k], chosen[:, k])
        grid = max(
            f1_score(data.val.labels[:, k], probs[:, k] >= c) for c in np.unique(probs[:, k])
        )
        assert at == pytest.approx(grid)
    assert best["val_map"] > 0.8  # the shapes are easy: it learned


def test_runmeta_round_trip_keeps_task_and_thresholds(ml_run: Path) -> None:
    values = json.loads((ml_run / "meta.json").read_text())
    meta = RunMeta.from_json(values)
    assert meta.spec.multilabel and meta.spec.thresholds == tuple(values["thresholds"])
    assert meta.to_json() == values


def test_distilling_a_multilabel_teacher(ml_run: Path, mosaics: Path, tmp_path: Path) -> None:
    result = imagewise.distill(
        str(mosaics), ml_run, "tutorial_cnn", tmp_path / "student", epochs=2,
        show_progress=False,
    )  # fmt: skip
    meta = json.loads((result.run / "meta.json").read_text())
    assert meta["task"] == "multilabel" and meta["teacher"]["alpha"] == 0.5
    assert result.best_val_map is not None and 0 < result.best_val_map <= 1
    with pytest.raises(UserError, match="multi-label model and the data is single-label"):
        imagewise.distill(
            "digits", ml_run, "tutorial_cnn", tmp_path / "w", epochs=1, show_progress=False
        )


def test_multilabel_under_torchrun_gathers_map(mosaics: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "imagewise", "train", str(mosaics), "--model", "tutorial_cnn", "--epochs", "2",
         "--augment", "none", "--precision", "fp32", "--out", str(out), "-q"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["processes"] == 2 and meta["task"] == "multilabel"
    # the mAP both processes agreed on is the mAP of the whole validation split
    history = RunFolder.of(out).read_history()
    best = next(h for h in history if h["epoch"] == meta["training"]["best_epoch"])
    data = resolve_source(str(mosaics))
    clf = imagewise.load(out)
    images = torch.stack([torch.from_numpy(clf.read(p)) for p in data.val.paths])
    probs = clf.image_probabilities(images).numpy()
    assert best["val_map"] == pytest.approx(
        mean_average_precision(probs, data.val.labels), abs=2e-4
    )


def test_select_by_map_is_for_multilabel_data(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--select-by map is for multi-label data"):
        imagewise.train("digits", tmp_path / "r", select_by="map", epochs=1, show_progress=False)


def test_mixing_multilabel_rows_mixes_their_targets() -> None:
    from imagewise.config import AugmentConfig
    from imagewise.data.transforms import BatchAugment

    pre = InputContract(16, 1, (0.5,), (0.5,))
    torch.manual_seed(0)
    for kind in ("mixup", "cutmix"):
        augment = BatchAugment(pre, AugmentConfig(preset="none", **{kind: 1.0}), 3, seed=1)
        images = torch.randint(0, 255, (4, 1, 16, 16), dtype=torch.uint8)
        rows = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.uint8)
        x, mixed = augment(images, rows)
        assert x.shape == (4, 1, 16, 16) and mixed.shape == (4, 3)
        # each row is lam * its own + (1 - lam) * the previous image's (rolled by one); row 1
        # holds label 1 alone and its partner (row 0) not, so its label-1 entry is lam
        lam = mixed[1, 1]
        assert 0 <= float(lam) <= 1
        own, other = rows.float(), rows.float().roll(1, 0)
        assert torch.allclose(mixed, lam * own + (1 - lam) * other, atol=1e-6)


def test_explain_draws_one_heat_map_per_label(ml_run: Path, mosaics: Path, tmp_path: Path) -> None:
    from imagewise.edge.multilabel import label_sets

    images = [mosaics.parent / "0000.png", mosaics.parent / "0001.png"]
    written = imagewise.explain(ml_run, images, out=tmp_path / "ex")
    clf = imagewise.load(ml_run)
    probs = clf.probabilities(clf.preprocess(images)).numpy()
    sets = [
        s or [int(p.argmax())]
        for s, p in zip(label_sets(probs, clf.spec.label_thresholds()), probs, strict=True)
    ]
    expected = sorted(
        f"{img.stem}.{clf.classes[k]}.gradcam.png"
        for img, s in zip(images, sets, strict=True)
        for k in s
    )
    assert sorted(p.name for p in written) == expected
    records = json.loads((tmp_path / "ex" / "explain.json").read_text())["images"]
    assert [r["target"] for r in records] == [clf.classes[k] for s in sets for k in s]


def test_compare_shows_map_for_multilabel_runs(ml_run: Path) -> None:
    rows = imagewise.compare([ml_run], latency=False)
    metrics = json.loads((ml_run / "eval" / "metrics.json").read_text())["multilabel"]
    assert rows[0]["map"] == pytest.approx(metrics["map"])
    assert rows[0]["micro_f1"] == pytest.approx(metrics["micro"]["f1"])
    from imagewise.evaluate.compare import format_table

    header = format_table(rows).splitlines()[0].split()
    assert header[2:5] == ["accuracy", "mAP", "micro"]
