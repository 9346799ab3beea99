"""``imagewise label next``: the selection strategies on constructed cases, and the queue on a
real pool (new pictures of the trained run's shapes, plus copies)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

import imagewise
from imagewise.errors import UserError
from imagewise.label.selection import entropies, margins, select

from conftest import CLASSES, draw, run_cli


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
    # blob A: the 10 most uncertain images, alike (but no near-copies); blob B: slightly less
    # uncertain
    centre = np.eye(16) * 5
    a, b = (centre[k] + rng.normal(scale=0.5, size=(10, 16)) for k in (0, 1))
    sure = centre[2] + rng.normal(scale=0.5, size=(20, 16))
    margin = [0.01 + 0.001 * i for i in range(10)] + [0.1 + 0.001 * i for i in range(10)]
    probs = _probs(margin + [0.95] * 20)
    embeddings = np.concatenate([a, b, sure])
    mixed = [p.index for p in select(probs, embeddings, 2, "mixed")]
    assert sorted(i // 10 for i in mixed) == [0, 1]  # one per uncertain blob
    assert [p.index for p in select(probs, embeddings, 2, "uncertainty")] == [0, 1]  # both A


def test_mixed_covers_every_guessed_class() -> None:
    # three classes; the uncertain images are guessed as 0 or 1, one (less uncertain) as 2
    probs = np.array(
        [[0.50, 0.49, 0.01]] * 6 + [[0.49, 0.50, 0.01]] * 6 + [[0.05, 0.35, 0.60]]
    ) + np.linspace(0, 1e-3, 13)[:, None] * [1, -1, 0]
    picks = select(probs, _spread(13), 3, "mixed")
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
