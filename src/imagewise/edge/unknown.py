"""Unknown ("I don't know") answers and out-of-distribution scores, in numpy (no PyTorch).

Two separate questions about one image:

- **Is the model sure?** ``fit_min_confidence`` picks, on labelled validation answers, the
  lowest confidence threshold whose kept answers reach a target precision; below it the answer
  is ``unknown`` (``ImageModel.answers``).
- **Is the image like the training data?** An out-of-distribution score, higher for more
  unusual images: the energy score (Liu et al. 2020, ``-T * logsumexp(logits / T)``, from the
  logits alone, so an exported ONNX file has it too) or the distance to the k-th nearest
  training embedding (Sun et al. 2022, cosine distance between L2-normalized penultimate
  features; needs a run folder's ``KnnReference``).

A scorer is any ``(uint8 images (N, C, H, W), logits (N, classes)) -> scores (N,)`` callable;
``ImageModel.predict_iter(..., ood=...)`` takes one, or ``"energy"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagewise.errors import UserError
from imagewise.io import atomic_write

OOD_SCORES = ("energy", "knn", "none")
DEFAULT_TARGET_PRECISION = 0.95

OodScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def check_min_confidence(value: float, flag: str = "--min-confidence") -> float:
    """A probability in [0, 1], or one line saying what to give."""
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{flag} must be a probability from 0 to 1 (or auto), not {value:g}")
    return float(value)


def check_target_precision(value: float) -> float:
    """A target precision in (0, 1], or one line saying what to give."""
    if not 0.0 < value <= 1.0:
        raise UserError(f"--target-precision must be above 0 and at most 1, not {value:g}")
    return float(value)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The energy ``-T * logsumexp(logits / T)`` of each row: higher for unusual images.

    Args:
        logits: raw scores (N, classes), before any temperature.
        temperature: T (1 in Liu et al. 2020 and here).
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return (-temperature * lse).astype(np.float32)


def max_softmax_score(probs: np.ndarray) -> np.ndarray:
    """``1 - max probability`` (Hendrycks & Gimpel 2017's baseline): higher for unusual images."""
    return (1.0 - np.asarray(probs, dtype=np.float32).max(axis=1)).astype(np.float32)


def l2_normalized(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32; a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


class EnergyScore:
    """The energy score of a batch's logits, as an ``ood`` scorer."""

    name = "energy"

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def __call__(self, images: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return energy_score(logits, self.temperature)


@dataclass
class KnnReference:
    """L2-normalized penultimate embeddings of (a sample of) a run's training images.

    Attributes:
        embeddings: float16 (N, D), unit rows.
        k: which nearest neighbour's distance is the score.
        weights_sha256: the run weights the embeddings came from (a retrained run re-fits).
        images: how many training images the run had (``embeddings`` holds a sample).
    """

    embeddings: np.ndarray
    k: int
    weights_sha256: str
    images: int

    def __post_init__(self) -> None:
        self._reference = np.ascontiguousarray(self.embeddings, dtype=np.float32)

    def score(self, embeddings: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Cosine distance to the k-th nearest reference embedding, per row (higher: more
        unusual); ``embeddings`` (N, D) need not be normalized."""
        z = l2_normalized(embeddings)
        ref = self._reference
        if z.shape[1:] != ref.shape[1:]:
            raise UserError(
                f"the kNN reference holds {ref.shape[1]}-dimensional embeddings, these are "
                f"{z.shape[1]}-dimensional; fit the reference again"
            )
        k = min(self.k, len(ref))
        out = np.empty(len(z), dtype=np.float32)
        for start in range(0, len(z), chunk):
            sims = z[start : start + chunk] @ ref.T
            kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
            out[start : start + chunk] = 1.0 - kth
        return out

    def save(self, path: str | Path) -> Path:
        """Write the reference as ``.npz`` (atomically; no pickles)."""
        info = json.dumps(
            {"k": self.k, "weights_sha256": self.weights_sha256, "images": self.images}
        )

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=self.embeddings.astype(np.float16), info=np.array(info))

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> KnnReference:
        """Read a reference written by ``save``."""
        try:
            with np.load(path, allow_pickle=False) as data:
                info = json.loads(str(data["info"]))
                embeddings = data["embeddings"]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot read the kNN reference '{path}' ({exc}); delete it") from exc
        return cls(embeddings, int(info["k"]), str(info["weights_sha256"]), int(info["images"]))


class KnnScore:
    """The kNN distance of a batch, as an ``ood`` scorer: ``embed`` turns the batch's uint8
    images into penultimate features (the run's network)."""

    name = "knn"

    def __init__(self, reference: KnnReference, embed: Callable[[np.ndarray], np.ndarray]) -> None:
        self.reference = reference
        self.embed = embed

    def __call__(self, images: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return self.reference.score(self.embed(images))


def edge_scorer(ood: str | OodScorer | None, temperature: float = 1.0) -> OodScorer | None:
    """The scorer ``ood`` names: None or ``none`` (no score), ``energy``, or a scorer itself.

    ``knn`` needs a run folder's reference and network, which ``imagewise.predict`` provides.
    """
    if ood is None or callable(ood):
        return ood
    if ood == "none":
        return None
    if ood == "energy":
        return EnergyScore()
    if ood == "knn":
        raise UserError(
            "--ood knn needs the run folder (its training embeddings); use --ood energy "
            "with an exported model"
        )
    raise UserError(f"unknown --ood '{ood}'; choose one of {', '.join(OOD_SCORES)}")


@dataclass(frozen=True)
class ThresholdFit:
    """A ``--min-confidence`` fitted for a target precision on validation answers.

    Attributes:
        target_precision: what was asked for.
        min_confidence: the threshold: answers below it are ``unknown``.
        precision: the precision of the answers kept, on the validation images.
        coverage: the share of validation images answered (not ``unknown``).
        validation_images: how many labelled images it was fitted on.
    """

    target_precision: float
    min_confidence: float
    precision: float
    coverage: float
    validation_images: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> ThresholdFit:
        return cls(
            float(values["target_precision"]),
            float(values["min_confidence"]),
            float(values["precision"]),
            float(values["coverage"]),
            int(values["validation_images"]),
        )

    def describe(self) -> str:
        """``0.731 (precision 0.951, coverage 88.2% on 6000 validation images)``."""
        return (
            f"{self.min_confidence:.4g} (precision {self.precision:.3f} >= "
            f"{self.target_precision:g}, coverage {self.coverage:.1%} on "
            f"{self.validation_images} validation images)"
        )


def fit_min_confidence(
    confidence: np.ndarray, correct: np.ndarray, target_precision: float
) -> ThresholdFit:
    """The lowest threshold whose kept answers (confidence at or above it) reach the target.

    The threshold is the confidence of the least confident answer kept, or 0 when every
    answer may be kept; answers tied at a confidence are kept or dropped together.

    Args:
        confidence: the top calibrated probability of each validation image.
        correct: whether each top answer is right.
        target_precision: the precision the kept answers must reach, e.g. 0.95.

    Raises:
        UserError: no validation images, or no threshold reaches the target.

    Example:
        >>> fit_min_confidence(np.array([0.9, 0.8, 0.6]), np.array([1, 1, 0]), 0.9).min_confidence
        0.8
    """
    target = check_target_precision(target_precision)
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(confidence)
    if n == 0:
        raise UserError(
            "the run has no validation images to fit --min-confidence auto on; give a number"
        )
    order = np.argsort(-confidence, kind="stable")
    kept_confidence = confidence[order]
    precision = np.cumsum(correct[order]) / np.arange(1, n + 1)
    group_end = np.r_[kept_confidence[1:] != kept_confidence[:-1], True]
    good = np.flatnonzero(group_end & (precision >= target))
    if not len(good):
        best = int(np.argmax(np.where(group_end, precision, -1.0)))
        raise UserError(
            f"no confidence threshold reaches precision {target:g} on the {n} validation "
            f"images (at best {precision[best]:.3f}, answering {(best + 1) / n:.1%}); ask for a "
            "lower --target-precision"
        )
    i = int(good[-1])
    threshold = 0.0 if i == n - 1 else float(kept_confidence[i])
    return ThresholdFit(target, threshold, float(precision[i]), (i + 1) / n, n)


def exported_min_confidence(
    values: Mapping[str, Any] | None, source: str, target_precision: float | None
) -> ThresholdFit:
    """The threshold an exported model carries (its spec's ``unknown``: ``imagewise export`` of
    a run that had one fitted).

    Raises:
        UserError: the file carries none, or one fitted for another target precision.
    """
    if not isinstance(values, Mapping):
        raise UserError(
            f"'{source}' carries no fitted --min-confidence; give a number (e.g. "
            "--min-confidence 0.8), or fit one on the run (imagewise predict RUN ... "
            "--min-confidence auto) and export it again"
        )
    fit = ThresholdFit.from_json(values)
    if target_precision is not None and abs(fit.target_precision - target_precision) > 1e-9:
        raise UserError(
            f"'{source}' carries a threshold fitted for precision {fit.target_precision:g}, not "
            f"{target_precision:g}; give --target-precision {fit.target_precision:g} or a number"
        )
    return fit
