"""Which unlabelled images to label next: the scores and the strategies, on arrays alone.

Every strategy sees the model's calibrated probabilities (N, K) of the pool and its embeddings
(N, D), and returns the picked indices in order with the reason for each:

- ``uncertainty``: smallest margin between the two most probable classes first (or highest
  entropy): the images the model is least sure about.
- ``diversity``: k-means over the embeddings, one image per cluster (the one nearest its
  centre): the pool's variety, whatever the model thinks.
- ``mixed`` (the default): the most uncertain share of the pool (``CANDIDATES`` x the budget)
  clustered into ``budget`` groups, the most uncertain image of each group; then every class
  the model guesses among the candidates gets at least one pick (its most uncertain), so each
  class's uncertain region is covered. Uncertainty alone piles up near-identical doubtful
  images; diversity alone spends labels on images the model already knows.
- ``random``: a seeded draw, the baseline.

Near-duplicates (cosine similarity of the embeddings, centred on their mean, at or above
``duplicate_similarity``) of an image already labelled or already picked are skipped, in every
strategy.

Written here rather than taken from baal or scikit-activeml: both select through their own
model wrappers (baal a Monte-Carlo-dropout PyTorch loop, scikit-activeml a scikit-learn
estimator), while this needs only a trained run's probabilities and embeddings, and the reason
for each pick. k-means is scikit-learn's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("mixed", "uncertainty", "diversity", "random")
UNCERTAINTY_SCORES = ("margin", "entropy")
# mixed: the uncertain candidates clustered are this many times the budget. Measured on
# Fashion-MNIST (BENCHMARKS.md, "Label less"): with 10 the picks reached into moderately sure
# images (73.5% / 74.9% / 75.0% test accuracy at 600 / 700 / 800 labels); with 3, over two
# runs, 73.4-75.0% / 75.6-76.3% / 76.1-77.0%.
CANDIDATES = 3
# Cosine similarity of centred embeddings at which two images count as one. Measured on the
# digits demo run: a pool image's highest similarity to a distinct training image reaches 0.994
# (0.977 median), an exact copy's is 1.0000.
DUPLICATE_SIMILARITY = 0.998


@dataclass(frozen=True)
class Pick:
    """One image to label: its index in the pool, why it was picked and its scores."""

    index: int
    reason: str
    margin: float
    entropy: float
    cluster: int = -1


def margins(probs: np.ndarray) -> np.ndarray:
    """Top probability minus the second (0: a coin toss between two classes, 1: sure)."""
    top2 = -np.sort(-np.asarray(probs, np.float64), axis=1)[:, :2]
    return top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0.0)


def entropies(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row, in nats."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def uncertainty(probs: np.ndarray, score: str = "margin") -> np.ndarray:
    """Higher = less sure: 1 - margin, or the entropy."""
    if score == "entropy":
        return entropies(probs)
    return 1.0 - margins(probs)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class _Deduplicator:
    """Refuses an image whose embedding is a near-copy of one labelled or already taken."""

    def __init__(self, labelled: np.ndarray | None, threshold: float) -> None:
        self.threshold = threshold
        self.kept: list[np.ndarray] = (
            [] if labelled is None or not len(labelled) else [_unit(labelled)]
        )

    def admits(self, vector: np.ndarray) -> bool:
        v = _unit(vector[None, :])[0]
        if any(float((block @ v).max()) >= self.threshold for block in self.kept):
            return False
        self.kept.append(v[None, :])
        return True


def _kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels and centres of the rows of ``x`` (unit-normalized) into ``k`` groups."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(x)))
    model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(_unit(x))
    return model.labels_, model.cluster_centers_


def select(
    probs: np.ndarray,
    embeddings: np.ndarray,
    budget: int,
    strategy: str = "mixed",
    *,
    classes: list[str] | None = None,
    labelled: np.ndarray | None = None,
    score: str = "margin",
    duplicate_similarity: float = DUPLICATE_SIMILARITY,
    seed: int = 0,
) -> list[Pick]:
    """The ``budget`` images (at most; fewer when the pool runs out of non-duplicates) to
    label next, in the order to label them, each with its reason.

    Args:
        probs: the model's calibrated probabilities of the pool (N, K).
        embeddings: the pool's embeddings (N, D), for diversity and near-duplicates.
        budget: how many images to pick.
        strategy: ``mixed``, ``uncertainty``, ``diversity`` or ``random``.
        classes: class names, for the reasons (default: indices).
        labelled: embeddings of the images already labelled (their near-copies are skipped).
        score: ``margin`` or ``entropy`` (uncertainty and mixed).
        duplicate_similarity: cosine similarity at or above which two images are the same.
        seed: k-means and the random draw.
    """
    probs, embeddings = np.asarray(probs), np.asarray(embeddings, np.float64)
    # Centred on the pool's mean (and the labelled images'): a network's penultimate features
    # after a ReLU all point into one orthant, where any two images' cosine is high.
    known = labelled if labelled is not None and len(labelled) else embeddings[:0]
    centre = np.concatenate([embeddings, known]).mean(axis=0)
    embeddings = embeddings - centre
    labelled = None if not len(known) else np.asarray(known, np.float64) - centre
    names = classes or [str(k) for k in range(probs.shape[1])]
    margin, entropy = margins(probs), entropies(probs)
    doubt = uncertainty(probs, score)
    dedup = _Deduplicator(labelled, duplicate_similarity)
    order, reasons, cluster = _order(probs, embeddings, budget, strategy, doubt, seed)
    picks: list[Pick] = []
    for i in order:
        if len(picks) >= budget:
            break
        if not dedup.admits(embeddings[i]):
            continue
        top = np.argsort(-probs[i])[:2]
        guess = f"{names[top[0]]} {probs[i, top[0]]:.2f}"
        if len(top) > 1:
            guess += f" vs {names[top[1]]} {probs[i, top[1]]:.2f}"
        picks.append(
            Pick(int(i), f"{reasons[i]} ({guess})", float(margin[i]), float(entropy[i]),
                 int(cluster[i]))
        )  # fmt: skip
    return picks


def _order(
    probs: np.ndarray, embeddings: np.ndarray, budget: int, strategy: str, doubt: np.ndarray,
    seed: int,
) -> tuple[list[int], list[str], np.ndarray]:  # fmt: skip
    """Every pool index in the strategy's order (the later ones stand in for duplicates),
    each index's reason, and its cluster (-1 where none)."""
    n = len(probs)
    cluster = np.full(n, -1)
    reasons = [""] * n
    by_doubt = np.argsort(-doubt, kind="stable")
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(n).tolist()
        return order, ["random draw"] * n, cluster
    if strategy == "uncertainty":
        return by_doubt.tolist(), ["uncertain"] * n, cluster
    if strategy == "diversity":
        labels, centres = _kmeans(embeddings, budget, seed)
        cluster[:] = labels
        distance = np.linalg.norm(_unit(embeddings) - centres[labels], axis=1)
        first = [int(np.flatnonzero(labels == c)[np.argmin(distance[labels == c])])
                 for c in range(len(centres))]  # fmt: skip
        rest = [int(i) for i in np.argsort(distance, kind="stable") if int(i) not in set(first)]
        for i in first:
            reasons[i] = f"nearest the centre of cluster {labels[i] + 1} of {len(centres)}"
        for i in rest:
            reasons[i] = f"cluster {labels[i] + 1} of {len(centres)}"
        return first + rest, reasons, cluster
    if strategy != "mixed":
        raise ValueError(f"unknown strategy {strategy!r}")
    return _mixed(probs, embeddings, budget, doubt, seed, by_doubt, cluster, reasons)


def _make_room(picks: list[int], drop: int, guessed: np.ndarray) -> list[int]:
    """``picks`` (most uncertain first) less ``drop`` of them: the least uncertain of a class
    that keeps another pick goes first, so making room for an uncovered class uncovers none."""
    kept = list(picks)
    for _ in range(min(drop, len(kept))):
        classes = [int(guessed[i]) for i in kept]
        shared = [j for j in range(len(kept)) if classes.count(classes[j]) > 1]
        kept.pop(shared[-1] if shared else len(kept) - 1)
    return kept


def _mixed(
    probs: np.ndarray, embeddings: np.ndarray, budget: int, doubt: np.ndarray, seed: int,
    by_doubt: np.ndarray, cluster: np.ndarray, reasons: list[str],
) -> tuple[list[int], list[str], np.ndarray]:  # fmt: skip
    """Uncertain candidates, one per cluster, then one per guessed class (see the module)."""
    candidates = by_doubt[: max(budget, CANDIDATES * budget)]
    labels, _ = _kmeans(embeddings[candidates], budget, seed)
    groups = len(set(labels.tolist()))
    cluster[candidates] = labels
    first: list[int] = []
    for c in range(groups):
        members = candidates[labels == c]
        if len(members):
            best = int(members[np.argmax(doubt[members])])
            first.append(best)
            reasons[best] = f"most uncertain of cluster {c + 1} of {groups}"
    first.sort(key=lambda i: -doubt[i])
    guessed = probs.argmax(axis=1)
    covered = {int(guessed[i]) for i in first}
    extra = []  # each guessed class without a pick: its most uncertain candidate
    for k in sorted({int(guessed[i]) for i in candidates} - covered):
        members = candidates[guessed[candidates] == k]
        extra.append(int(members[np.argmax(doubt[members])]))
    extra = sorted(extra, key=lambda i: -doubt[i])[:budget]
    for i in extra:
        reasons[i] = "most uncertain of those guessed as its class"
    kept = _make_room(first, max(0, len(first) + len(extra) - budget), guessed)
    for i in set(first) - set(kept):
        reasons[i] = "uncertain"
    first = sorted(kept + extra, key=lambda i: -doubt[i])
    chosen = set(first)
    rest = [int(i) for i in by_doubt if int(i) not in chosen]
    for i in rest:
        reasons[i] = reasons[i] or "uncertain"
    return first + rest, reasons, cluster
