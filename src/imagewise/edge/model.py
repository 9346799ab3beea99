"""What every classifier is, without PyTorch: images in, top-k class names out.

``ImageModel`` reads images to uint8 arrays (the model's channels and size), asks its subclass
for scores (``scores``: logits and calibrated probabilities of a uint8 batch), and turns them
into ``Prediction``s. PyTorch classifiers (``imagewise.predict.base.BaseClassifier``) and ONNX
Runtime sessions (``imagewise.edge.onnx``) are both ``ImageModel``s, so prediction over files,
folders, videos and the server treat them alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imagewise.edge.images import UnreadableImageError, image_array, load_image
from imagewise.edge.multilabel import decision_confidence, label_sets
from imagewise.edge.results import Prediction
from imagewise.edge.spec import InputContract, ModelSpec
from imagewise.edge.stream import read_ahead
from imagewise.edge.unknown import OodScorer, edge_scorer
from imagewise.errors import UserError

log = logging.getLogger("imagewise")

ImageInput = Image.Image | str | Path
# (uint8 images (N, C, H, W), probabilities (N, classes)) -> each image's set, class indices
# best first: ``imagewise.edge.conformal.PredictionSets``.
SetMaker = Callable[[np.ndarray, np.ndarray], list[list[int]]]


def unreadable(exc: UnreadableImageError) -> UserError:
    """The one line for an image that cannot be read."""
    return UserError(
        f"cannot read image '{exc.path}' ({exc.reason}); give a JPEG, PNG, BMP, "
        "TIFF, WebP or GIF file"
    )


def top_k_of(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest probabilities of each row and their class indices, best first."""
    k = max(1, min(k, probs.shape[1]))
    indices = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(probs, indices, axis=1), indices


class ImageModel:
    """A classifier's shared part: reading images, top-k with class names, batched prediction.

    Subclasses implement ``scores``. Built by ``imagewise.load`` (a run folder or an exported
    file) or ``imagewise.edge.load_model`` (an exported ONNX file, without PyTorch).
    """

    def __init__(self, spec: ModelSpec, file_metadata: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        # An exported file's metadata map as written (quantization, versions, ...): what the
        # file says of itself beside the spec. Empty for a run folder.
        self.file_metadata = dict(file_metadata or {})

    @property
    def preprocessing(self) -> InputContract:
        """What the model expects of its input (``spec.input``)."""
        return self.spec.input

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def temperature(self) -> float:
        """The calibration temperature its probabilities are divided by."""
        return self.spec.temperature

    @property
    def name(self) -> str:
        """The model's name (``resnet9p_tiny``), as its spec records it."""
        return self.spec.model or type(self).__name__

    def read(self, img: ImageInput) -> np.ndarray:
        """An image file or PIL image -> uint8 (C, H, W) at the model's channels and size."""
        pre = self.spec.input
        if isinstance(img, Image.Image):
            return pre.array(img)
        try:
            return image_array(
                load_image(img, pre.channels, pre.img_size, pre.interpolation, pre.crop_pct)
            )
        except UnreadableImageError as exc:
            raise unreadable(exc) from exc

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities (float32, (N, classes)) of uint8 images
        (N, C, H, W) at the model's size."""
        raise NotImplementedError

    def answers(
        self,
        logits: np.ndarray,
        probs: np.ndarray,
        sources: Sequence[str],
        top_k: int = 5,
        min_confidence: float | None = None,
        ood_scores: np.ndarray | None = None,
        prediction_sets: Sequence[Sequence[int]] | None = None,
    ) -> list[Prediction]:
        """Scores -> top-k predictions with class names (``unknown`` below ``min_confidence``),
        with each image's out-of-distribution score when ``ood_scores`` are given and its
        conformal set when ``prediction_sets`` (class indices per image, from a
        ``imagewise.edge.conformal.PredictionSets``) are. A multi-label model's predictions
        carry their label sets (``Prediction.labels``, from the spec's thresholds)."""
        values, indices = top_k_of(probs, top_k)
        ood = [None] * len(sources) if ood_scores is None else np.asarray(ood_scores).tolist()
        sets = [None] * len(sources) if prediction_sets is None else prediction_sets
        names = self.spec.classes
        if self.spec.multilabel:
            thresholds = self.spec.label_thresholds()
            labels: Sequence[list[int] | None] = label_sets(probs, thresholds)
            # Unknown: some label undecided at min_confidence (``decision_confidence``), not
            # the top probability: a confident "no label" is an answer.
            sure = decision_confidence(probs, thresholds).tolist()
        else:
            labels, sure = [None] * len(sources), values[:, 0].tolist()
        out = []
        for row, src, val, idx, score, found, chosen, conf in zip(
            probs, sources, values.tolist(), indices.tolist(), ood, sets, labels, sure,
            strict=True,
        ):  # fmt: skip
            unknown = None if min_confidence is None else conf < min_confidence
            p = Prediction(src, [names[i] for i in idx], val, unknown, score)
            if found is not None:
                p.prediction_set = [names[i] for i in found]
                p.set_probabilities = [float(row[i]) for i in found]
            if chosen is not None:
                p.labels = [names[i] for i in chosen]
                p.label_probabilities = [float(row[i]) for i in chosen]
            out.append(p)
        return out

    def predict_iter(
        self,
        images: Iterable[ImageInput],
        top_k: int = 5,
        batch_size: int = 64,
        skippable: Callable[[str], bool] | None = None,
        min_confidence: float | None = None,
        ood: str | OodScorer | None = None,
        sets: SetMaker | None = None,
    ) -> Iterator[Prediction]:
        """Top-k predictions for image files or PIL images, in order, batch by batch; the next
        batches are decoded in threads while one runs (``imagewise.edge.stream``).

        Args:
            images: file paths or PIL images.
            top_k: classes per image.
            batch_size: images per forward pass.
            skippable: for files this returns True for, an unreadable file is skipped with a
                warning instead of failing the call (used for files found in folders).
            min_confidence: below this top probability the answer is ``unknown``.
            ood: an out-of-distribution score for each image: ``energy``, a scorer
                (``imagewise.edge.unknown``), or None.
            sets: each image's conformal prediction set (``imagewise.edge.conformal.
                PredictionSets``), or None.
        """
        for _, predictions in self.predict_batches(
            images, top_k, batch_size, skippable, min_confidence, ood=ood, sets=sets
        ):
            yield from predictions

    def predict_batches(
        self,
        images: Iterable[ImageInput],
        top_k: int = 5,
        batch_size: int = 64,
        skippable: Callable[[str], bool] | None = None,
        min_confidence: float | None = None,
        select: Callable[[int], bool] | None = None,
        ood: str | OodScorer | None = None,
        read: Callable[[Any], np.ndarray] | None = None,
        sets: SetMaker | None = None,
    ) -> Iterator[tuple[int, list[Prediction]]]:
        """``predict_iter``'s answers batch by batch, as (batch index, predictions): batch ``i``
        holds inputs ``i*batch_size`` to ``i*batch_size + batch_size - 1`` (less the skipped).

        Args:
            select: which batch indices to predict (None: all); a torchrun process takes its
                share this way (``imagewise.predict.sharding``).
            ood: as in ``predict_iter``.
            read: how an item becomes uint8 (C, H, W) (default ``self.read``; a video's frames
                are converted in the reader threads this way); the item's ``str`` names it.
            sets: as in ``predict_iter``.
        """
        scorer = edge_scorer(ood)
        items = [images] if isinstance(images, str | Path | Image.Image) else images
        batches = read_ahead(
            read or self.read, items, batch_size, key=_name, skippable=skippable, select=select
        )
        for batch in batches:
            answers = self._answer_batch(
                batch.images, batch.keys, top_k, min_confidence, scorer, sets
            )
            yield batch.index, answers

    def _answer_batch(
        self,
        images: np.ndarray,
        names: list[str],
        top_k: int,
        min_confidence: float | None,
        ood: OodScorer | None = None,
        sets: SetMaker | None = None,
    ) -> list[Prediction]:
        logits, probs = self.scores(images)
        ood_scores = None if ood is None else ood(images, logits)
        found = None if sets is None else sets(images, probs)
        return self.answers(logits, probs, names, top_k, min_confidence, ood_scores, found)

    def predict(
        self,
        images: Iterable[ImageInput],
        top_k: int = 5,
        batch_size: int = 64,
        skippable: Callable[[str], bool] | None = None,
        min_confidence: float | None = None,
        ood: str | OodScorer | None = None,
        sets: SetMaker | None = None,
    ) -> list[Prediction]:
        """Top-k predictions for image files or PIL images, in order (see ``predict_iter``)."""
        return list(
            self.predict_iter(images, top_k, batch_size, skippable, min_confidence, ood, sets)
        )


def _name(position: int, item: ImageInput) -> str:
    """What a prediction calls its image: the file, or ``<image N>`` for a PIL image."""
    return f"<image {position}>" if isinstance(item, Image.Image) else str(item)
