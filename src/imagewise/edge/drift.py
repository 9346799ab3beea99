"""Drift and out-of-distribution alarms over a rolling window of answers, in numpy (no PyTorch).

A server compares the last ``window`` images it answered with the run's validation split,
on three checks, each a test with a stated false-alarm rate:

- ``ood_share``: the share of images whose energy score (``imagewise.edge.unknown``) is above
  the validation split's 95th percentile (5% there). One-sided: the window's count against
  its beta-binomial distribution given the validation count (Jeffreys prior), so the
  reference's own sampling error is counted too.
- ``mean_confidence``: the mean top (calibrated) probability. Two-sided z-test with the
  variance ``s^2 (1/window + 1/validation)``.
- ``class_mix``: the predicted-class counts. Chi-square test of homogeneity (window against
  validation counts); classes expected fewer than 5 times in a window share one bin.

Each test rejects at ``alpha / 3`` (Bonferroni): ``alpha`` is the chance that one check of an
in-distribution window raises an alarm. The window slides with every image, so consecutive
checks are strongly correlated and the alarms that start per image are far fewer than
``alpha`` per check; BENCHMARKS.md measures them per 10,000 in-distribution requests. An alarm
starts when its test rejects and ends when its p-value is back above ``RELEASE`` times the
threshold (hysteresis, so it does not flap).

Nothing about the images is kept but three numbers each (above the OOD threshold or not, top
probability, predicted class) for the last ``window`` images, in memory.

Why not scipy.stats, Evidently, alibi-detect or frouros: the exported-file server installs
numpy alone (``imagewise[runtime]``), those detectors test whole batches and bring pandas,
TensorFlow or PyTorch, and the three tails needed here are exact in a few lines (checked
against scipy.stats in tests/test_drift.py).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from imagewise.edge.unknown import energy_score
from imagewise.errors import UserError

log = logging.getLogger("imagewise")

FORMAT = "imagewise-drift/1"
CHECKS = ("ood_share", "mean_confidence", "class_mix")
OOD_QUANTILE = 0.95  # the validation images above the OOD threshold: 5%
DEFAULT_WINDOW = 500
DEFAULT_ALPHA = 1e-3  # one check's family-wise false-alarm rate (BENCHMARKS.md: serve drift)
CHECK_EVERY = 10  # images between checks
RELEASE = 100.0  # an alarm ends when its p-value rises above RELEASE x its threshold
MIN_EXPECTED = 5.0  # chi-square: classes expected fewer times in a window share one bin
MIN_WINDOW = 50


@dataclass(frozen=True)
class DriftReference:
    """What the validation split's answers look like, for the three checks.

    Attributes:
        ood_threshold: the energy score's 95th percentile on the validation images.
        ood_above: how many validation images scored above it.
        mean_confidence: their mean top probability; ``confidence_std`` its spread.
        class_counts: how many validation images the model gave each class (model order).
        images: how many validation images it was fitted on.
        weights_sha256: the run weights it was fitted with ("" when unknown).
    """

    ood_threshold: float
    ood_above: int
    mean_confidence: float
    confidence_std: float
    class_counts: tuple[int, ...]
    images: int
    weights_sha256: str = ""

    @property
    def ood_share(self) -> float:
        return self.ood_above / self.images

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "ood_score": "energy",
            "ood_threshold": self.ood_threshold,
            "ood_above": self.ood_above,
            "mean_confidence": self.mean_confidence,
            "confidence_std": self.confidence_std,
            "class_counts": list(self.class_counts),
            "images": self.images,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_json(cls, values: Mapping[str, Any], source: str, classes: int) -> DriftReference:
        """A stored reference, checked: one line naming what is wrong.

        Raises:
            UserError: another format, a missing or impossible value, or class counts that do
                not fit a model of ``classes`` classes.
        """
        if not isinstance(values, Mapping) or values.get("format") != FORMAT:
            raise UserError(f"'{source}' holds no {FORMAT} drift reference; fit it again")
        try:
            ref = cls(
                float(values["ood_threshold"]), int(values["ood_above"]),
                float(values["mean_confidence"]), float(values["confidence_std"]),
                tuple(int(c) for c in values["class_counts"]), int(values["images"]),
                str(values.get("weights_sha256", "")),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"'{source}' has a broken drift reference ({exc!r})") from None
        if (
            len(ref.class_counts) != classes
            or sum(ref.class_counts) != ref.images
            or not 0 <= ref.ood_above <= ref.images
            or not all(math.isfinite(x) for x in (ref.ood_threshold, ref.mean_confidence))
            or not ref.confidence_std >= 0
        ):
            raise UserError(
                f"'{source}' has a drift reference that does not fit this {classes}-class "
                "model; fit it again"
            )
        return ref


def answer_stats(logits: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per image: the energy score, the top probability and the predicted class."""
    probs = np.asarray(probs)
    return energy_score(logits), probs.max(axis=1).astype(np.float64), probs.argmax(axis=1)


def fit_reference(
    logits: np.ndarray, probs: np.ndarray, weights_sha256: str = ""
) -> DriftReference:
    """The reference of the validation images' logits and calibrated probabilities.

    Raises:
        UserError: fewer than two images.
    """
    if len(logits) < 2:
        raise UserError("a drift reference needs at least 2 validation images")
    energy, confidence, predicted = answer_stats(logits, probs)
    threshold = float(np.quantile(energy.astype(np.float64), OOD_QUANTILE))
    counts = np.bincount(predicted, minlength=np.shape(probs)[1])
    return DriftReference(
        ood_threshold=threshold,
        ood_above=int((energy > threshold).sum()),
        mean_confidence=float(confidence.mean()),
        confidence_std=float(confidence.std(ddof=1)),
        class_counts=tuple(int(c) for c in counts),
        images=len(logits),
        weights_sha256=weights_sha256,
    )


# --- the three tests' p-values --------------------------------------------------------------


def normal_two_sided(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square X with ``df`` (a whole number >= 1) degrees of freedom: the
    regularized upper gamma function Q(df/2, x/2), summed exactly (Abramowitz & Stegun 26.4.4-5).
    """
    if x <= 0:
        return 1.0
    h = x / 2.0
    if df % 2 == 0:  # Q = e^-h * sum_{i < df/2} h^i / i!
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= h / i
            total += term
        return min(1.0, math.exp(-h) * total)
    # odd: Q = erfc(sqrt(h)) + e^-h * sum_{i=1}^{(df-1)/2} h^(i-1/2) / Gamma(i + 1/2)
    term = math.sqrt(h) / math.gamma(1.5)
    total = term if df > 1 else 0.0
    for i in range(2, (df + 1) // 2):
        term *= h / (i - 0.5)
        total += term
    return min(1.0, math.erfc(math.sqrt(h)) + math.exp(-h) * total)


def beta_binomial_tail(n: int, a: float, b: float) -> np.ndarray:
    """``tail[k] = P(X >= k)`` for k = 0..n, X beta-binomial(n, a, b): the count of n new
    images above a threshold, given a share Beta(a, b) distributed."""

    def log_pmf(k: int) -> float:
        return (
            math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + math.lgamma(k + a) + math.lgamma(n - k + b) - math.lgamma(n + a + b)
            - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
        )  # fmt: skip

    pmf = np.exp([log_pmf(k) for k in range(n + 1)])
    return np.minimum(np.cumsum(pmf[::-1])[::-1], 1.0)


def class_mix_p(window: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity of two count vectors over the same classes: (statistic,
    p-value). Classes whose expected count in the window is under ``MIN_EXPECTED`` share one
    bin; classes neither side has are left out."""
    window = np.asarray(window, np.float64)
    reference = np.asarray(reference, np.float64)
    n, m = window.sum(), reference.sum()
    small = reference / m * n < MIN_EXPECTED
    if small.any():
        window = np.r_[window[~small], window[small].sum()]
        reference = np.r_[reference[~small], reference[small].sum()]
    keep = (window + reference) > 0
    window, reference = window[keep], reference[keep]
    if len(window) < 2:
        return 0.0, 1.0
    total = window + reference
    expected_w, expected_r = total * n / (n + m), total * m / (n + m)
    stat = float(((window - expected_w) ** 2 / expected_w).sum())
    stat += float(((reference - expected_r) ** 2 / expected_r).sum())
    return stat, chi2_sf(stat, len(window) - 1)


# --- the rolling window and its alarms ------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One check's last result: its value over the window, the reference's, the p-value, the
    threshold it is rejected below, whether its alarm is on and since when (ISO time and the
    image count then), and how many alarms it raised."""

    name: str
    value: float | None = None
    reference: float | None = None  # class_mix: 0, the distance of the validation mix to itself
    p_value: float | None = None
    threshold: float = 0.0
    alarm: bool = False
    since: str | None = None
    since_image: int | None = None
    alarms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class DriftState:
    """A snapshot of the monitor: what ``GET /v1/drift`` answers and the gauges show."""

    window: int
    images_in_window: int
    images_seen: int
    checked_at: int | None
    alpha: float
    check_every: int
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def alarm(self) -> bool:
        return any(c.alarm for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "images_in_window": self.images_in_window,
            "images_seen": self.images_seen,
            "checked_at": self.checked_at,
            "alpha": self.alpha,
            "check_every": self.check_every,
            "alarm": self.alarm,
            "checks": [c.to_json() for c in self.checks],
        }


class DriftMonitor:
    """The last ``window`` answers' statistics and the three checks' alarms (thread-safe).

    Args:
        reference: the validation split's (``fit_reference``; a run's ``drift_reference.json``
            or an exported file's ``drift`` metadata).
        window: how many of the latest images each check looks at.
        alpha: the chance that one check of an in-distribution window raises an alarm (each of
            the three tests rejects below ``alpha / 3``).
        check_every: images between checks (and before the first, the window must be full).
        on_change: called with the check when its alarm starts or ends (default: one log line).

    Example:
        >>> monitor = DriftMonitor(fit_reference(val_logits, val_probs))  # doctest: +SKIP
        >>> monitor.observe(logits, probs)  # each batch answered  # doctest: +SKIP
        >>> monitor.state().alarm  # doctest: +SKIP
        False
    """

    def __init__(
        self,
        reference: DriftReference,
        window: int = DEFAULT_WINDOW,
        alpha: float = DEFAULT_ALPHA,
        check_every: int = CHECK_EVERY,
        on_change: Callable[[Check], None] | None = None,
    ) -> None:
        check_monitor(window, alpha, check_every)
        self.reference = reference
        self.window, self.alpha, self.check_every = window, alpha, check_every
        self.threshold = alpha / len(CHECKS)
        self.release = min(RELEASE * self.threshold, 0.5)
        self.on_change = on_change or (lambda check: log_change(check, window))
        a, b = reference.ood_above + 0.5, reference.images - reference.ood_above + 0.5
        self._ood_tail = beta_binomial_tail(window, a, b)
        self._ref_counts = np.asarray(reference.class_counts, np.float64)
        self._ref_share = self._ref_counts / reference.images
        self._conf_se = reference.confidence_std * math.sqrt(1 / window + 1 / reference.images)
        self._above = np.zeros(window, bool)
        self._confidence = np.zeros(window, np.float64)
        self._predicted = np.zeros(window, np.int64)
        self._seen = 0
        self._checked_at: int | None = None
        # the references are known from the start; the values come with the first full window
        references = {"ood_share": reference.ood_share, "mean_confidence":
                      reference.mean_confidence, "class_mix": 0.0}  # fmt: skip
        self._checks = {
            name: Check(name, reference=references[name], threshold=self.threshold)
            for name in CHECKS
        }
        self._lock = threading.Lock()

    def observe(self, logits: np.ndarray, probs: np.ndarray) -> None:
        """Add a batch of answers to the window; check when ``check_every`` more came in.
        Rows that are not finite (a broken model's) are left out: the server refuses them."""
        finite = np.isfinite(logits).all(axis=1) & np.isfinite(probs).all(axis=1)
        if not finite.all():
            logits, probs = logits[finite], probs[finite]
        energy, confidence, predicted = answer_stats(logits, probs)
        above = energy > self.reference.ood_threshold
        changed = []
        with self._lock:
            n = len(above)
            keep = slice(max(0, n - self.window), n)  # a batch longer than the window
            slots = (self._seen + np.arange(n)[keep]) % self.window
            self._above[slots] = above[keep]
            self._confidence[slots] = confidence[keep]
            self._predicted[slots] = predicted[keep]
            before, self._seen = self._seen, self._seen + n
            if self._seen >= self.window and (
                self._checked_at is None
                or self._seen // self.check_every > before // self.check_every
            ):
                changed = self._check()
        for check in changed:  # outside the lock: a slow log handler holds no request
            self.on_change(check)

    def _check(self) -> list[Check]:
        """Run the three tests on the full window; the checks whose alarm started or ended."""
        self._checked_at = self._seen
        above = int(self._above.sum())
        mean = float(self._confidence.mean())
        z = (mean - self.reference.mean_confidence) / max(self._conf_se, 1e-12)
        counts = np.bincount(self._predicted, minlength=len(self._ref_counts))
        _, mix_p = class_mix_p(counts, self._ref_counts)
        # the class mix's value: the share of answers that would have to change class to
        # match the validation mix (total variation distance)
        moved = 0.5 * float(np.abs(counts / self.window - self._ref_share).sum())
        results = {
            "ood_share": (above / self.window, self.reference.ood_share, self._ood_tail[above]),
            "mean_confidence": (mean, self.reference.mean_confidence, normal_two_sided(z)),
            "class_mix": (moved, 0.0, mix_p),
        }
        changed = []
        for name, (value, ref, p) in results.items():
            old = self._checks[name]
            new = self._next(old, value, ref, p)
            self._checks[name] = new
            if new.alarm != old.alarm:
                changed.append(new)
        return changed

    def _next(self, old: Check, value: float, ref: float, p: float) -> Check:
        """The check after a test: the alarm starts below the threshold, ends above the
        release level."""
        check = replace(old, value=value, reference=ref, p_value=float(p))
        if not old.alarm and p < self.threshold:
            now = datetime.now(UTC).isoformat(timespec="seconds")
            return replace(
                check, alarm=True, since=now, since_image=self._seen, alarms=old.alarms + 1
            )
        if old.alarm and p >= self.release:
            return replace(check, alarm=False, since=None, since_image=None)
        return check

    def state(self) -> DriftState:
        """A snapshot of the window and the checks."""
        with self._lock:
            return DriftState(
                self.window, min(self._seen, self.window), self._seen, self._checked_at,
                self.alpha, self.check_every, tuple(self._checks.values()),
            )  # fmt: skip


def log_change(check: Check, window: int) -> None:
    """One log line when a check's alarm starts, one when it ends, in words:
    ``drift alarm: ood_share: 10.2% of the last 500 images above the OOD threshold (validation
    5.0%; p 4.9e-06 < 0.00033)``."""
    value, ref = check.value or 0.0, check.reference or 0.0
    what = {
        "ood_share": f"{value:.1%} of the last {window} images above the OOD threshold "
        f"(validation {ref:.1%}",
        "mean_confidence": f"mean top probability {value:.4f} over the last {window} images "
        f"(validation {ref:.4f}",
        "class_mix": f"{value:.1%} of the last {window} answers would have to change class to "
        "match the validation split's mix (",
    }[check.name]
    p = f"p {check.p_value:.2g}" + (f" < {check.threshold:.2g}" if check.alarm else "")
    sep = "" if check.name == "class_mix" else "; "
    start = "drift alarm" if check.alarm else "drift alarm over"
    log.warning("%s: %s: %s%s%s)", start, check.name, what, sep, p)


def check_monitor(window: int, alpha: float, check_every: int) -> None:
    """Refuse settings no monitor can use, in one line."""
    if not MIN_WINDOW <= window <= 1_000_000:
        raise UserError(f"--drift-window must be from {MIN_WINDOW} to 1000000 images, not {window}")
    if not 0 < alpha < 1:
        raise UserError(f"the drift alpha must be above 0 and below 1, not {alpha:g}")
    if check_every < 1:
        raise UserError(f"drift checks need check_every of at least 1, not {check_every}")
