"""Conformal prediction sets, in numpy (no PyTorch): for each image, the classes that hold the
true class with a chosen probability (split conformal, Vovk et al. 2005; Angelopoulos & Bates
2021's tutorial).

A conformity score says how badly a class fits an image (higher: worse). On labelled
calibration images (the run's validation split, which the weights never trained on) the score
of the true class is computed; its finite-sample quantile at level ``ceil((n+1) c) / n`` is the
threshold, and an image's set holds every class whose score is at or below it. When the
calibration and new images are exchangeable, the set holds the true class with probability at
least ``c`` (the coverage).

Scores (``SCORES``):

- ``lac``: ``1 - p(class)`` (Sadinle et al. 2019): smallest sets on average, not adaptive.
- ``aps``: the probability mass of the classes ranked at or above the class (Romano et al.
  2020): sets grow with the model's doubt.
- ``raps``: APS plus ``penalty * max(0, rank - k_reg)`` (Angelopoulos et al. 2021): APS with
  the long tail of unlikely classes kept out.

APS and RAPS are discrete in the rank; without randomization they over-cover (the class on the
boundary is always included). ``randomized`` replaces the boundary class's own mass ``p`` by
``u * p`` with ``u`` in [0, 1) drawn from a hash of the image's uint8 pixels
(``tie_breakers``): the same image always gets the same ``u``, so a set is deterministic and
an exported ONNX file answers the same set as the run's PyTorch network, while ``u`` is uniform
over images, which is what the coverage guarantee needs.

A set may be empty. When the model's top class alone is right more often than the coverage
asked (93% accuracy, 90% asked), an exact coverage needs some images to get no class at all:
the confident answers the guarantee can let go. ``non_empty`` keeps the top class in every
set instead; the coverage is then at least the model's top-1 accuracy (over-covering, never
under).

Example::

    fit = fit_conformal(val_probs, val_labels, val_u)
    sets = PredictionSets(fit, coverage=0.9)(images, probs)   # [[3, 6], [1], ...]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imagewise.errors import UserError

FORMAT = "imagewise-conformal/1"
SCORES = ("raps", "aps", "lac")
DEFAULT_SCORE = "raps"  # BENCHMARKS.md "Conformal prediction sets": within 1 point, small sets
RAPS_PENALTY = 0.01  # lambda of Angelopoulos et al. 2021 (their ImageNet default is 0.01-0.1)
RAPS_K_REG = 2  # classes ranked past this pay the penalty
# Coverages every fit stores a threshold for (so an exported file answers any of them).
COVERAGE_GRID = tuple(round(0.50 + 0.01 * i, 2) for i in range(50))
_EPS = 1e-9  # (n + 1) * c is an integer in exact arithmetic more often than in floats


def check_coverage(value: float, flag: str = "--coverage") -> float:
    """A coverage strictly between 0 and 1, or one line saying what to give."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise UserError(f"{flag} must be a probability above 0 and below 1 (e.g. 0.9), not {value}")
    return float(value)


def check_coverage_request(
    coverage: float | None, per_class: bool = False, non_empty: bool = False
) -> float | None:
    """``--coverage``, ``--coverage-per-class`` and ``--non-empty-sets`` as asked: the coverage
    checked, or None when none is asked (then neither of the others may be)."""
    if coverage is None:
        for flag, given in (("--coverage-per-class", per_class), ("--non-empty-sets", non_empty)):
            if given:
                raise UserError(f"{flag} goes with --coverage P (e.g. --coverage 0.9)")
        return None
    return check_coverage(coverage)


def check_score(score: str) -> str:
    if score not in SCORES:
        raise UserError(f"unknown conformal score '{score}'; choose one of {', '.join(SCORES)}")
    return score


def coverage_key(coverage: float) -> str:
    """How a coverage names its thresholds in JSON: ``0.9``, ``0.95``, ``0.925``."""
    return f"{round(float(coverage), 6):g}"


def tie_breakers(images: np.ndarray) -> np.ndarray:
    """A number in [0, 1) per image (N, ...), from a hash (BLAKE2b) of its uint8 pixels: the
    randomization of APS / RAPS, the same for the same pixels on every runtime."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    out = np.empty(len(images), dtype=np.float64)
    for i, image in enumerate(images):
        digest = hashlib.blake2b(image.tobytes(), digest_size=8).digest()
        out[i] = (int.from_bytes(digest, "little") >> 11) / float(1 << 53)
    return out


def class_scores(
    probs: np.ndarray,
    score: str,
    u: np.ndarray | None = None,
    penalty: float = RAPS_PENALTY,
    k_reg: int = RAPS_K_REG,
) -> np.ndarray:
    """The conformity score (N, classes) each class would have as the image's label.

    Args:
        probs: calibrated probabilities (N, classes).
        score: ``lac``, ``aps`` or ``raps``.
        u: per-image tie-breakers in [0, 1) (``tie_breakers``) for randomized APS / RAPS;
            None: not randomized (the class's whole mass counts).
        penalty, k_reg: RAPS's lambda and k_reg.

    Example:
        >>> class_scores(np.array([[0.5, 0.3, 0.2]]), "aps").round(3).tolist()
        [[0.5, 0.8, 1.0]]
    """
    p = np.asarray(probs, dtype=np.float64)
    if check_score(score) == "lac":
        return 1.0 - p
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    before = np.cumsum(sorted_p, axis=1) - sorted_p
    own = sorted_p if u is None else np.asarray(u, np.float64)[:, None] * sorted_p
    ranked = before + own
    if score == "raps":
        rank = np.arange(1, p.shape[1] + 1, dtype=np.float64)
        ranked = ranked + penalty * np.maximum(0.0, rank - k_reg)
    out = np.empty_like(ranked)
    np.put_along_axis(out, order, ranked, axis=1)
    return out


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The threshold for ``coverage`` from calibration scores: the ``ceil((n+1) c)``-th smallest
    score (numpy's ``inverted_cdf`` quantile at level ``ceil((n+1) c) / n``), or ``inf`` when
    ``n`` is too small for the level (then every class is in every set).

    Example:
        >>> conformal_quantile(np.array([0.1, 0.4, 0.2, 0.3]), 0.6)  # ceil(5 * 0.6) = 3rd
        0.3
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = math.ceil((len(s) + 1) * coverage - _EPS)
    return float(s[k - 1]) if 1 <= k <= len(s) else math.inf


def needed_images(coverage: float) -> int:
    """The fewest calibration images with which ``coverage`` has a finite threshold."""
    return math.ceil(coverage / (1.0 - coverage) - _EPS)


@dataclass(frozen=True)
class ConformalFit:
    """Thresholds fitted on calibration images, for many coverages.

    Attributes:
        score: ``raps``, ``aps`` or ``lac``.
        randomized: APS / RAPS with the pixel-hash tie-breaker (``tie_breakers``).
        penalty, k_reg: RAPS's lambda and k_reg.
        class_counts: calibration images per class.
        thresholds: coverage key (``coverage_key``) -> the marginal threshold (None: infinite,
            every class in every set).
        class_thresholds: coverage key -> one threshold per class (class-conditional, Mondrian:
            each class's own calibration images; None where a class has too few).
    """

    score: str
    randomized: bool
    penalty: float
    k_reg: int
    class_counts: tuple[int, ...]
    thresholds: Mapping[str, float | None] = field(default_factory=dict)
    class_thresholds: Mapping[str, list[float | None]] = field(default_factory=dict)

    @property
    def calibration_images(self) -> int:
        return int(sum(self.class_counts))

    @property
    def coverages(self) -> list[float]:
        return sorted(float(k) for k in self.thresholds)

    def scores(self, images: np.ndarray | None, probs: np.ndarray) -> np.ndarray:
        """Each class's conformity score (N, classes) for uint8 images and their probabilities
        (the images give the tie-breakers; None only for an unrandomized fit)."""
        u = None
        if self.randomized and self.score != "lac":
            if images is None:
                raise ValueError("a randomized conformal score needs the images' pixels")
            u = tie_breakers(images)
        return class_scores(probs, self.score, u, self.penalty, self.k_reg)

    def threshold(self, coverage: float, per_class: bool = False) -> np.ndarray:
        """The thresholds (classes,) for ``coverage`` (marginal: the same for every class);
        ``inf`` where a class has too few calibration images.

        Raises:
            UserError: the fit holds no threshold for this coverage.
        """
        key = coverage_key(coverage)
        table = self.class_thresholds if per_class else self.thresholds
        if key not in table:
            raise UserError(
                f"no conformal threshold fitted for coverage {key} (fitted: "
                f"{describe_coverages(self.coverages)}); refit on the run folder or pick one"
            )
        values = table[key] if per_class else [table[key]] * len(self.class_counts)
        return np.array([math.inf if v is None else v for v in values], dtype=np.float64)

    def too_few(self, coverage: float) -> list[int]:
        """The classes whose own calibration images are too few for ``coverage`` (each of them
        is then in every class-conditional set)."""
        return [i for i, n in enumerate(self.class_counts) if n < needed_images(coverage)]

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "randomized": self.randomized,
            "penalty": self.penalty,
            "k_reg": self.k_reg,
            "class_counts": list(self.class_counts),
            "thresholds": dict(self.thresholds),
            "class_thresholds": {k: list(v) for k, v in self.class_thresholds.items()},
        }

    @classmethod
    def from_json(cls, values: Any) -> ConformalFit:
        """A fit from its JSON form.

        Raises:
            ValueError: one line naming the first field that is missing or wrong.
        """
        if not isinstance(values, Mapping):
            raise ValueError("must be an object")
        for key in ("score", "randomized", "penalty", "k_reg", "class_counts", "thresholds"):
            if key not in values:
                raise ValueError(f"has no {key}")
        if values["score"] not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}")
        counts = values["class_counts"]
        if not isinstance(counts, list) or not all(_is_count(n) for n in counts):
            raise ValueError("class_counts must be a list of whole numbers")
        thresholds = _threshold_table(values["thresholds"], "thresholds", None)
        per_class = _threshold_table(values.get("class_thresholds", {}), "class_thresholds",
                                     len(counts))  # fmt: skip
        if not isinstance(values["randomized"], bool) or not _is_number(values["penalty"]):
            raise ValueError("randomized must be true or false and penalty a number")
        if not _is_count(values["k_reg"]):
            raise ValueError("k_reg must be a whole number")
        return cls(values["score"], values["randomized"], float(values["penalty"]),
                   int(values["k_reg"]), tuple(counts), thresholds, per_class)  # fmt: skip


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _threshold_table(table: Any, name: str, classes: int | None) -> dict[str, Any]:
    """A ``{coverage: threshold}`` (``classes`` None) or ``{coverage: [threshold per class]}``
    table, checked: coverages in (0, 1), thresholds numbers or null."""
    if not isinstance(table, Mapping):
        raise ValueError(f"{name} must be an object")
    for key, value in table.items():
        try:
            check_coverage(float(key))
        except (ValueError, UserError):
            raise ValueError(f"{name} has a key {key!r} that is not a coverage") from None
        values = [value] if classes is None else value
        if classes is not None and (not isinstance(value, list) or len(value) != classes):
            raise ValueError(f"{name}[{key}] must hold one threshold per class ({classes})")
        if not all(v is None or _is_number(v) for v in values):
            raise ValueError(f"{name}[{key}] must be a number or null")
    return dict(table)


def describe_coverages(coverages: Sequence[float]) -> str:
    """``0.5-0.99 and 0.925`` for the grid plus extras, else the list."""
    grid = set(COVERAGE_GRID)
    extra = [c for c in coverages if c not in grid]
    on_grid = len(coverages) - len(extra) == len(grid)
    words = ([f"{COVERAGE_GRID[0]:g}-{COVERAGE_GRID[-1]:g} in steps of 0.01"] if on_grid else
             [f"{c:g}" for c in coverages if c in grid])  # fmt: skip
    return ", ".join(words + [f"{c:g}" for c in extra]) or "none"


def fit_conformal(
    probs: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray | None = None,
    score: str = DEFAULT_SCORE,
    randomized: bool = True,
    coverages: Sequence[float] = COVERAGE_GRID,
) -> ConformalFit:
    """Thresholds from labelled calibration images, marginal and per class, for each coverage.

    Args:
        probs: calibrated probabilities (N, classes) of the calibration images.
        labels: their true classes (N,).
        images: their uint8 pixels (N, C, H, W), for the tie-breakers of a randomized score
            (``tie_breakers``), or precomputed tie-breakers (N,) in [0, 1).
        score: ``raps`` (default), ``aps`` or ``lac``.
        randomized: APS / RAPS with the tie-breakers (ignored for LAC).
        coverages: the coverages to store thresholds for (default 0.50 to 0.99).

    Raises:
        UserError: no calibration images.

    Example:
        >>> p = np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.5, 0.4, 0.1]])
        >>> fit_conformal(p, np.array([0, 1, 1]), score="lac", coverages=[0.5]).thresholds
        {'0.5': 0.4}
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        raise UserError("no calibration images to fit conformal prediction sets on")
    randomized = randomized and check_score(score) != "lac"
    u = None
    if randomized:
        if images is None:
            raise ValueError("a randomized conformal score needs the images or tie-breakers")
        u = images if np.ndim(images) == 1 else tie_breakers(images)
    true = class_scores(probs, score, u)[np.arange(len(labels)), labels]
    classes = probs.shape[1]
    thresholds: dict[str, float | None] = {}
    per_class: dict[str, list[float | None]] = {}
    for c in sorted({check_coverage(float(c)) for c in coverages}):
        thresholds[coverage_key(c)] = _finite(conformal_quantile(true, c))
        per_class[coverage_key(c)] = [
            _finite(conformal_quantile(true[labels == k], c)) for k in range(classes)
        ]
    counts = tuple(int(n) for n in np.bincount(labels, minlength=classes))
    return ConformalFit(score, randomized, RAPS_PENALTY, RAPS_K_REG, counts, thresholds, per_class)


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x


def sets_from_scores(scores: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Boolean sets (N, classes): the classes whose score is at or below their threshold."""
    return np.asarray(scores) <= np.asarray(thresholds)[None, :]


class PredictionSets:
    """``(uint8 images (N, C, H, W), probabilities (N, classes)) -> sets``: each image's set as
    class indices, best first, for one coverage (marginal or per class).

    Example::

        sets = PredictionSets(fit, 0.9, per_class=True)
        sets(images, probs)    # [[3, 6], [1], [0, 6, 2]]
    """

    def __init__(
        self, fit: ConformalFit, coverage: float, per_class: bool = False, non_empty: bool = False
    ) -> None:
        self.fit = fit
        self.coverage = check_coverage(coverage)
        self.per_class = per_class
        self.non_empty = non_empty
        self.thresholds = fit.threshold(self.coverage, per_class)

    def members(self, images: np.ndarray | None, probs: np.ndarray) -> np.ndarray:
        """The sets as booleans (N, classes)."""
        return self.from_scores(self.fit.scores(images, probs), probs)

    def from_scores(self, scores: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """The sets as booleans (N, classes) from the images' conformity scores: the classes at
        or below their threshold, and the top class too when ``non_empty``."""
        member = sets_from_scores(scores, probs, self.thresholds)
        if self.non_empty and len(member):
            member[np.arange(len(member)), np.argmax(probs, axis=1)] = True
        return member

    def __call__(self, images: np.ndarray | None, probs: np.ndarray) -> list[list[int]]:
        member = self.members(images, probs)
        order = np.argsort(-np.asarray(probs), axis=1, kind="stable")
        return [[int(k) for k in row if m[k]] for row, m in zip(order, member, strict=True)]

    def describe(self) -> str:
        """``coverage 0.9 (raps, per class)``."""
        kind = "per class" if self.per_class else "marginal"
        never_empty = ", never empty" if self.non_empty else ""
        return f"coverage {self.coverage:g} ({self.fit.score}, {kind}{never_empty})"
