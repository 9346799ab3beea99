"""How a classifier holds up under common corruptions: ``evaluate(..., robustness=True)``.

A stratified, seeded sample of the evaluated images (2,000 by default, so the cost is bounded:
12 corruptions x 3 severities = 36 passes over it) is corrupted at the model's input size
(``corruptions.corrupt``, uint8 in and out) and classified again. Accuracy, expected
calibration error and per-class accuracy are kept per corruption and severity, with the drop
from the same images uncorrupted; ``eval/robustness.json`` (format ``imagewise-robustness/1``)
holds them, worst corruption first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagewise.evaluate.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from imagewise.runtime.calibration import expected_calibration_error

FORMAT = "imagewise-robustness/1"
DEFAULT_IMAGES = 2000
CHUNK = 256  # images corrupted at once: bounds the memory of 224-pixel float copies

Predict = Callable[[torch.Tensor], np.ndarray]  # uint8 images (N, C, H, W) -> probabilities


@dataclass
class Score:
    """Accuracy, calibration error and per-class accuracy (None: no image of the class)."""

    accuracy: float
    ece: float
    per_class_accuracy: dict[str, float | None]

    @classmethod
    def of(cls, probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> Score:
        """The score of probabilities ``probs`` (N x classes) against ``labels``."""
        correct = probs.argmax(1) == labels
        per_class = {
            name: float(correct[labels == k].mean()) if (labels == k).any() else None
            for k, name in enumerate(classes)
        }
        ece = expected_calibration_error(probs, labels)
        return cls(float(correct.mean()), float(ece), per_class)

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "ece": self.ece,
            "per_class_accuracy": self.per_class_accuracy,
        }


@dataclass
class CorruptionScore:
    """One corruption at one severity: its score and how it compares with the clean images."""

    name: str
    severity: int
    score: Score
    clean: Score

    @property
    def accuracy_drop(self) -> float:
        return self.clean.accuracy - self.score.accuracy

    def to_json(self) -> dict[str, Any]:
        c = CORRUPTIONS[self.name]
        return {
            "name": self.name,
            "severity": self.severity,
            "level": c.levels[self.severity - 1],
            "unit": c.unit,
            **self.score.to_json(),
            "accuracy_drop": self.accuracy_drop,
            "ece_change": self.score.ece - self.clean.ece,
        }


@dataclass
class Robustness:
    """Scores of a classifier on a sample of images, clean and under each corruption.

    ``example`` holds one sample image (H x W x C uint8) clean (key ``("clean", 0)``) and under
    each corruption and severity, for the report's strip.
    """

    classes: list[str]
    clean: Score
    scores: list[CorruptionScore]
    images: int
    sampled_from: int
    seed: int = 0
    example: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)
    example_class: str = ""
    weights_sha256: str = ""
    where: dict[str, str] = field(default_factory=dict)  # data, split

    def of(self, name: str) -> list[CorruptionScore]:
        """The scores of corruption ``name``, severity 1 first."""
        return [s for s in self.scores if s.name == name]

    def mean_accuracy(self, name: str) -> float:
        return float(np.mean([s.score.accuracy for s in self.of(name)]))

    def worst_first(self) -> list[str]:
        """Corruption names, lowest accuracy averaged over the severities first."""
        names = list(dict.fromkeys(s.name for s in self.scores))
        return sorted(names, key=lambda n: (self.mean_accuracy(n), n))

    @property
    def mean_accuracy_all(self) -> float:
        """Accuracy averaged over every corruption and severity."""
        return float(np.mean([s.score.accuracy for s in self.scores]))

    def to_json(self) -> dict[str, Any]:
        """What ``eval/robustness.json`` holds."""
        ordered = [s for name in self.worst_first() for s in self.of(name)]
        worst = min(ordered, key=lambda s: s.score.accuracy)  # the first of equals
        return {
            "format": FORMAT,
            "weights_sha256": self.weights_sha256,
            **self.where,
            "images": self.images,
            "sampled_from": self.sampled_from,
            "sample": f"stratified by class, seed {self.seed}",
            "severities": list(SEVERITIES),
            "clean": self.clean.to_json(),
            "corruptions": [s.to_json() for s in ordered],
            "by_corruption": [
                {
                    "name": name,
                    "mean_accuracy": self.mean_accuracy(name),
                    "mean_accuracy_drop": self.clean.accuracy - self.mean_accuracy(name),
                    "mean_ece": float(np.mean([s.score.ece for s in self.of(name)])),
                }
                for name in self.worst_first()
            ],
            "mean_accuracy": self.mean_accuracy_all,
            "mean_accuracy_drop": self.clean.accuracy - self.mean_accuracy_all,
            "worst": {"name": worst.name, "severity": worst.severity,
                      "accuracy": worst.score.accuracy},
        }  # fmt: skip

    def summary(self) -> str:
        """A few lines for the console: the sample, the clean score, the three worst."""
        lines = [
            f"robustness: {self.images:,} of {self.sampled_from:,} images (stratified sample, "
            f"seed {self.seed}), {len(self.worst_first())} corruptions x {len(SEVERITIES)} "
            f"severities; clean accuracy {self.clean.accuracy:.2%}, under corruption "
            f"{self.mean_accuracy_all:.2%} on average",
        ]
        for name in self.worst_first()[:3]:
            accs = " / ".join(f"{s.score.accuracy:.2%}" for s in self.of(name))
            lines.append(f"  {name:<15} {accs} (severity 1 / 2 / 3)")
        return "\n".join(lines)


def stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of about ``n`` of ``labels``, each class in its share; all when fewer."""
    from imagewise.data.sources import stratified_split

    if n >= len(labels):
        return np.arange(len(labels))
    return stratified_split(labels, [n / len(labels)], seed)[1]


def measure(
    predict: Predict,
    images: torch.Tensor,
    labels: np.ndarray,
    classes: list[str],
    clean_probs: np.ndarray | None = None,
    seed: int = 0,
    names: list[str] | None = None,
) -> Robustness:
    """Score ``predict`` on ``images`` (uint8) clean and under each corruption and severity.

    Args:
        predict: uint8 images (N, C, H, W) -> probabilities (N x classes).
        images: the images, at the model's input size.
        labels: their true classes.
        classes: the class names.
        clean_probs: the probabilities of the clean images when already known.
        seed: seeds the random corruptions (noise, fog).
        names: the corruptions to apply (default: all of ``CORRUPTIONS``).
    """
    clean = Score.of(predict(images) if clean_probs is None else clean_probs, labels, classes)
    result = Robustness(classes, clean, [], len(labels), len(labels), seed)
    result.example[("clean", 0)] = images[0].permute(1, 2, 0).numpy()
    result.example_class = classes[int(labels[0])]
    for name in names or list(CORRUPTIONS):
        for severity in SEVERITIES:
            probs = []
            for start in range(0, len(images), CHUNK):
                chunk = corrupt(images[start : start + CHUNK], name, severity, seed + start)
                probs.append(predict(chunk))
                if start == 0:
                    result.example[(name, severity)] = chunk[0].permute(1, 2, 0).numpy()
            score = Score.of(np.concatenate(probs), labels, classes)
            result.scores.append(CorruptionScore(name, severity, score, clean))
    return result


def classifier_predict(clf: Any, batch_size: int) -> Predict:
    """``predict`` for a loaded run: its network (TTA included) and temperature."""
    from imagewise.data.pipeline import TensorBatches
    from imagewise.data.sources import Split
    from imagewise.runtime.inference import predict_loader

    def predict(images: torch.Tensor) -> np.ndarray:
        batches = TensorBatches(Split(np.zeros(len(images), np.int64), images), batch_size)
        logits, _ = predict_loader(clf.model, batches, clf.preprocessing, clf.device, tta=clf.tta)
        return torch.softmax(logits / clf.temperature, dim=1).numpy()

    return predict


def split_images(split: Any, index: np.ndarray, pre: Any) -> torch.Tensor:
    """uint8 (N, C, H, W) images ``index`` of ``split`` as the model takes them."""
    from imagewise.data.decode import read_image

    if split.images is not None:
        return split.images[torch.from_numpy(index)]
    return torch.stack(
        [
            read_image(split.paths[i], pre.channels, pre.img_size, pre.interpolation, pre.crop_pct)
            for i in index
        ]
    )


def robustness(
    clf: Any,
    split: Any,
    probabilities: np.ndarray,
    images: int = DEFAULT_IMAGES,
    seed: int = 0,
    batch_size: int = 256,
) -> Robustness:
    """The robustness of the loaded run ``clf`` on a stratified sample of ``split``.

    Args:
        clf: the loaded classifier.
        split: the evaluated split (labels mapped onto the run's classes).
        probabilities: the evaluation's probabilities of ``split`` (the clean scores).
        images: how many images to sample (all when the split has fewer).
        seed: seeds the sample and the random corruptions.
        batch_size: images per forward pass.
    """
    index = stratified_sample(split.labels, images, seed)
    x = split_images(split, index, clf.preprocessing)
    predict = classifier_predict(clf, batch_size)
    labels = split.labels[index]
    result = measure(predict, x, labels, clf.classes, probabilities[index], seed)
    result.sampled_from = len(split)
    return result


def write_robustness(path: Path, result: Robustness) -> Path:
    """Write ``result`` as ``eval/robustness.json`` (atomically)."""
    from imagewise.io import atomic_write_json

    return atomic_write_json(path, result.to_json())


__all__ = ["Robustness", "Score", "measure", "robustness", "stratified_sample", "write_robustness"]
