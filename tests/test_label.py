"""``imagewise label next``: the selection strategies on constructed cases, and the queue on a
real pool (new pictures of the trained run's shapes, plus copies)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import imagewise
from imagewise.errors import UserError
from imagewise.label.selection import CANDIDATES, entropies, margins, select

from conftest import CLASSES, draw, run_cli, served_copy


def _probs(margin_of: list[float]) -> np.ndarray:
    """Two-class probabilities whose margins are the given ones."""
    top = (1 + np.asarray(margin_of)) / 2
    return np.stack([top, 1 - top], axis=1)


def _spread(n: int, seed: int = 0) -> np.ndarray:
    """Embeddings far apart from each other (no two near-copies)."""
    return np.random.default_rng(seed).normal(size=(n, 16))


def test_scores() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    assert margins(probs) == pytest.approx([0.5, 0.05])
    expected = [-(p * np.log(p)).sum() for p in probs]
    assert entropies(probs) == pytest.approx(expected)


def test_uncertainty_picks_the_smallest_margins_first() -> None:
    probs = _probs([0.9, 0.1, 0.5, 0.02, 0.7])
    picks = select(probs, _spread(5), 3, "uncertainty")
    assert [p.index for p in picks] == [3, 1, 2]
    assert picks[0].margin == pytest.approx(0.02) and picks[0].reason.startswith("uncertain")
    by_entropy = select(probs, _spread(5), 2, "uncertainty", score="entropy")
    assert [p.index for p in by_entropy] == [3, 1]  # two classes: entropy orders as margin


def test_diversity_takes_one_image_per_cluster() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    blobs = np.concatenate([c + rng.normal(scale=0.1, size=(20, 3)) for c in centres])
    picks = select(_probs([0.5] * 60), blobs, 3, "diversity")
    assert sorted(p.index // 20 for p in picks) == [0, 1, 2]
    assert all("nearest the centre of cluster" in p.reason for p in picks)


def test_mixed_spreads_its_picks_over_the_uncertain_clusters() -> None:
    rng = np.random.default_rng(1)
    # blob A: the 3 most uncertain images, alike (but no near-copies); blob B: slightly less
    # uncertain; the 6 candidates of a budget of 2 (CANDIDATES x 2) are both blobs
    assert CANDIDATES == 3
    centre = np.eye(16) * 5
    a, b = (centre[k] + rng.normal(scale=0.5, size=(3, 16)) for k in (0, 1))
    sure = centre[2] + rng.normal(scale=0.5, size=(20, 16))
    margin = [0.01 + 0.001 * i for i in range(3)] + [0.1 + 0.001 * i for i in range(3)]
    probs = _probs(margin + [0.95] * 20)
    embeddings = np.concatenate([a, b, sure])
    mixed = [p.index for p in select(probs, embeddings, 2, "mixed")]
    assert sorted(i // 3 for i in mixed) == [0, 1]  # one per uncertain blob
    assert [p.index for p in select(probs, embeddings, 2, "uncertainty")] == [0, 1]  # both A


def test_mixed_covers_every_guessed_class() -> None:
    # three classes; the uncertain images are guessed as 0 or 1, one (less uncertain) as 2
    # (the 9 candidates of a budget of 3 are the whole pool)
    probs = np.array(
        [[0.50, 0.49, 0.01]] * 4 + [[0.49, 0.50, 0.01]] * 4 + [[0.05, 0.35, 0.60]]
    ) + np.linspace(0, 1e-3, 9)[:, None] * [1, -1, 0]
    picks = select(probs, _spread(9), 3, "mixed")
    guessed = {int(probs[p.index].argmax()) for p in picks}
    assert guessed == {0, 1, 2} and len(picks) == 3
    assert any("guessed as its class" in p.reason for p in picks)


def test_random_is_seeded_and_the_budget_is_honoured() -> None:
    probs = _probs(list(np.linspace(0, 1, 50)))
    first = [p.index for p in select(probs, _spread(50), 10, "random", seed=3)]
    assert first == [p.index for p in select(probs, _spread(50), 10, "random", seed=3)]
    assert first != [p.index for p in select(probs, _spread(50), 10, "random", seed=4)]
    assert len(first) == len(set(first)) == 10
    assert len(select(probs[:4], _spread(4), 10, "uncertainty")) == 4  # the pool ran out


@pytest.mark.parametrize("strategy", ["mixed", "uncertainty", "diversity", "random"])
def test_near_copies_are_never_picked(strategy: str) -> None:
    embeddings = _spread(30)
    embeddings[1] = embeddings[0] * 1.0001  # a near-copy of image 0 in the pool
    labelled = embeddings[[5, 6]] + 1e-6  # images 5 and 6 are already labelled
    probs = _probs([0.01, 0.02, *np.linspace(0.03, 0.9, 28)])
    picks = select(probs, embeddings, 30, strategy, labelled=labelled)
    chosen = {p.index for p in picks}
    assert len(chosen) == len(picks) == 27  # 30 less a copy and the two labelled
    assert not {0, 1} <= chosen and not chosen & {5, 6}


# --- a real pool -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, folder_data: Path) -> Path:
    """New pictures of the three shapes (unlabelled), two copies of one of them, a copy of a
    training image and a file that is not an image."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(7)
    for i in range(30):
        draw(CLASSES[i % 3], 32, rng, rgb=i % 2 == 0).save(root / f"new{i:02d}.png")
    shutil.copy(root / "new00.png", root / "again00.png")
    shutil.copy(root / "new00.png", root / "sub_again00.png")
    shutil.copy(next((folder_data / CLASSES[1]).glob("*.png")), root / "seen.png")
    (root / "notes.png").write_bytes(b"not an image")
    return root


def test_label_next_writes_a_queue_without_copies(
    trained_run: Path, pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "queue.csv"
    code, text, err = run_cli(
        ["label", "next", str(trained_run), str(pool), "--budget", "12", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "rank", "reason", "guess", "probability", "margin",
                             "entropy", "cluster"]  # fmt: skip
    names = [Path(r["path"]).name for r in rows]
    assert len(rows) == 12 and len(set(names)) == 12
    assert sum(n in ("new00.png", "again00.png", "sub_again00.png") for n in names) <= 1
    assert "seen.png" not in names  # a copy of a training image
    assert [int(r["rank"]) for r in rows] == list(range(1, 13))
    margins_ = [float(r["margin"]) for r in rows]
    assert all(0 <= m <= 1 for m in margins_) and all(r["reason"] for r in rows)
    assert "picked 12 of 33 pool images" in text and "skipped 1 unreadable" in text
    assert all(r["guess"] in CLASSES for r in rows)


def test_label_next_strategies_differ_and_uncertainty_is_sorted(
    trained_run: Path, pool: Path
) -> None:
    uncertain = imagewise.label_next(trained_run, pool, 8, strategy="uncertainty")
    values = [p.margin for p in uncertain.picks]
    assert values == sorted(values)
    rand = imagewise.label_next(trained_run, pool, 8, strategy="random", seed=1)
    assert [p.index for p in rand.picks] != [p.index for p in uncertain.picks]
    assert np.mean([p.margin for p in uncertain.picks]) <= np.mean([p.margin for p in rand.picks])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "0"], "--budget must be at least 1"),
        (["--budget", "5", "--duplicate-similarity", "1.5"], "--duplicate-similarity must be"),
    ],
)
def test_bad_requests_are_one_line(
    trained_run: Path, pool: Path, args: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    code, _, err = run_cli(["label", "next", str(trained_run), str(pool), *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_an_empty_pool_and_a_multilabel_run_are_refused(
    trained_run: Path, ml_run: Path, pool: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no images"):
        imagewise.label_next(trained_run, tmp_path / "empty", 3)
    with pytest.raises(UserError, match="is a multi-label run"):
        imagewise.label_next(ml_run, pool, 3)


# --- label auto: machine labels for the images the run is sure of -----------------------------


@pytest.fixture(scope="module")
def known_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-out pictures of the three shapes whose true class is in the file name."""
    root = tmp_path_factory.mktemp("known")
    rng = np.random.default_rng(11)
    for i in range(60):
        kind = CLASSES[i % 3]
        draw(kind, 32, rng, rgb=i % 2 == 0).save(root / f"{kind}_{i:02d}.png")
    return root


def test_label_auto_meets_its_precision_on_held_out_images(
    trained_run: Path, known_pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = served_copy(trained_run, tmp_path)  # the threshold is kept in the run folder
    out, rest = tmp_path / "auto.csv", tmp_path / "rest.csv"
    code, text, err = run_cli(
        ["label", "auto", str(run), str(known_pool), "--target-precision", "0.95",
         "--out", str(out), "--rest", str(rest)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    fit = json.loads((run / "unknown.json").read_text())
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "label", "labelled_by", "probability"]
    assert {r["labelled_by"] for r in rows} == {"machine"}
    assert all(float(r["probability"]) >= fit["min_confidence"] - 1e-6 for r in rows)
    truth = [Path(r["path"]).name.split("_")[0] for r in rows]
    precision = np.mean([t == r["label"] for t, r in zip(truth, rows, strict=True)])
    assert precision >= 0.95 and len(rows) >= 30, (precision, len(rows))
    left = list(csv.DictReader(rest.open()))
    assert len(rows) + len(left) == 60
    assert not {r["path"] for r in left} & {str(known_pool / r["path"]) for r in rows}
    margins_ = [float(r["margin"]) for r in left]
    assert margins_ == sorted(margins_)
    assert f"labelled {len(rows)} of 60 pool images" in text
    assert f"{fit['min_confidence']:.4g} (precision" in text


def test_label_auto_manifest_paths_are_relative_to_it(
    trained_run: Path, known_pool: Path, tmp_path: Path
) -> None:
    run = served_copy(trained_run, tmp_path)
    out = known_pool.parent / "auto-here.csv"  # beside the pool: relative paths
    auto = imagewise.label_auto(run, known_pool, target_precision=0.9, out=out)
    rows = list(csv.DictReader(out.open()))
    assert rows and all(r["path"].startswith(f"{known_pool.name}/") for r in rows)
    assert len(rows) == int(auto.kept.sum())
    assert all(known_pool.parent.joinpath(r["path"]).is_file() for r in rows)
    out.unlink()


def test_label_auto_refuses_an_unreachable_target(
    trained_run: Path, known_pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        ["label", "auto", str(trained_run), str(known_pool), "--target-precision", "1.5",
         "--out", str(tmp_path / "a.csv")],
        capsys,
    )  # fmt: skip
    assert code == 2 and "--target-precision must be above 0" in err
    assert not (tmp_path / "a.csv").exists()


# --- progress: what the labels bought ---------------------------------------------------------


def test_estimated_gain_follows_the_log_of_the_labels() -> None:
    from imagewise.label.progress import describe, estimate_gain

    entries = [
        {"labelled": n, "val_accuracy": 0.5 + 0.05 * np.log(n), "run": f"r{n}"}
        for n in (100, 200, 400)
    ]
    # exactly log-linear: the next 400 labels (400 -> 800) add 0.05 * log 2
    assert estimate_gain(entries, 400) == pytest.approx(0.05 * np.log(2))
    assert estimate_gain(entries[:1], 100) is None
    based = [{**e, "base_images": 100} for e in entries]  # the run's own images count too
    assert estimate_gain(based, 500) == pytest.approx(
        np.polyfit(np.log([200, 300, 500]), [e["val_accuracy"] for e in entries], 1)[0]
        * np.log(1000 / 500)
    )
    text = describe(entries, 400)
    assert "+3.47 points" in text and text.count("val accuracy") == 3


def test_the_pool_raises_the_threshold_until_its_expected_precision_reaches_the_target() -> None:
    from imagewise.label.auto import expected_precision_threshold

    top = np.array([0.999, 0.99, 0.97, 0.9, 0.6, 0.5])
    # validation allowed everything (0); the kept images' mean probability must reach 0.95:
    # the top three average 0.986, the top four 0.965, the top five 0.892
    assert expected_precision_threshold(top, 0.0, 0.95) == pytest.approx(0.9)
    assert expected_precision_threshold(top, 0.98, 0.95) == pytest.approx(0.98)  # never lowered
    assert expected_precision_threshold(top, 0.0, 0.9995) > top.max()  # nothing sure enough
    assert expected_precision_threshold(np.array([]), 0.3, 0.95) == 0.3
