"""The label check on a network's embeddings: ``data check --features RUN|MODEL``.

The images are embedded by a trained run's network (its penultimate layer, through
``imagewise.runtime.embedding.Embedder``) or by a pretrained network (a model name whose
ImageNet weights are here, e.g. ``tf_efficientnet_lite0`` from its weight package), each image
read at the network's own input size and preprocessing. A multinomial logistic regression
(scikit-learn) on the standardized embeddings gives out-of-fold probabilities over stratified
folds (``cross_val_predict``); for single-label data they are blended with the HOG judge's
(``blend``, the same folds), and cleanlab's ``find_label_issues`` with the cuts of
``imagewise.audit.labels`` flags the images, as the HOG check does. Multi-label data is judged
on the embeddings alone (one-vs-rest, ``labels.find_multilabel_issues``).

Measured on 3,068 Fashion-MNIST PNGs with 48 planted flips (``benchmarks/label_check.py``;
BENCHMARKS.md has the table and the times):

- Alone, neither judge meets 80% recall at 70% precision: HOG found 46 of the 48 among 84
  flagged (55% precision); pretrained ``tf_efficientnet_lite0`` embeddings (a linear probe
  87.7% accurate, HOG's 85.1%) found 40 among 72 on another sample of the same size, where HOG
  found 46 among 90. Blended, 41 among 54 there, and 42 among 49 on the benchmark's folder:
  the two err on different images.
- Memorising: a run trained on the flipped folder itself (resnet9p_tiny, 10 epochs, 91%
  validation accuracy; 2,454 of the images in its training split, 41 of the 48 flips among
  them) fits the flipped labels. Its embeddings make the given labels look best explained with
  no HOG at all, and found 37 among 47 (31 of the 41 flips it trained on, 6 of the 7 it did
  not). With the weight chosen on the 614 images it did not train on (``blend``'s ``unseen``),
  a retrained twin found 38 among 44 (again 31 of 41, and 7 of 7). A run trained on as many
  other images found 42 among 57 (43 among 55 for its first training). So a run's own images
  are judged with the weight chosen on its held-out ones, and the findings say how many images
  it trained on (``trained_on``, and a note): a pretrained network or a run on other images is
  the better judge.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagewise.audit import labels
from imagewise.audit.result import judged_on
from imagewise.audit.scan import Scan
from imagewise.data.sources import SPLITS, ImageData
from imagewise.errors import UserError

log = logging.getLogger("imagewise")

# The logistic regression's L2 penalty per image on standardized embeddings: scikit-learn's C
# is 1 / (2 * DECAY * images fitted), so the prior weighs as much against each image's loss on
# 96 images as on 3,000 (a fixed C of 0.01 was best on 3,068 Fashion-MNIST images, of 0.003 to
# 1, but on 96 drawn shapes left the flips at 1-8% for their given label, above GIVEN_MAX).
DECAY = 0.02
# How much of the HOG judge's probabilities go into the blend (``blend``): chosen per dataset.
HOG_WEIGHTS = (0.0, 0.25, 0.5, 0.75)
CHOOSERS = 30  # images the weight is chosen on, at least
BATCH = 64  # images read and embedded at a time: 64 RGB images at 224 px are 9.6 MB of uint8
# What the findings say when the run judging the labels was trained on the images it judges.
MEMORISED = (
    "its embeddings may have memorised their labels, wrong ones included, and so hide them; "
    "judge with a pretrained model (--features tf_efficientnet_lite0) or a run trained on "
    "other images"
)


@dataclass
class EmbeddingFeatures:
    """A network that embeds images for the label check, and what it is.

    ``model`` answers ``forward_features`` / ``forward_head(pre_logits=True)`` (or has a
    ``get_classifier``), ``preprocessing`` is its input contract (size, channels, mean / std,
    interpolation, centre crop), as ``Embedder`` expects of a classifier.
    """

    kind: str  # "run" or "pretrained"
    name: str  # the run folder or the model name, as given
    architecture: str  # the network's model name
    model: Any = field(repr=False)
    preprocessing: Any = field(repr=False)
    weights: str = ""  # where the pretrained weights came from

    def describe(self) -> dict[str, Any]:
        """What the findings say about the features (``label_check`` in the JSON report)."""
        return {
            "features": "embeddings+hog",  # multi-label data: "embeddings" (see find_issues)
            "source": self.kind,
            "name": self.name,
            "model": self.architecture,
            "img_size": int(self.preprocessing.img_size),
            **({"weights": self.weights} if self.weights else {}),
        }

    def label(self) -> str:
        """One phrase for the console and the log (``result.judged_on``)."""
        return judged_on(self.describe())


def open_features(value: str, device: str = "cpu") -> EmbeddingFeatures:
    """The network ``--features`` names: a run folder written by ``imagewise train``, or a model
    name with pretrained weights (installed, cached, or downloaded when the hub answers).

    Raises:
        UserError: ``value`` is neither, or the run cannot give embeddings (an exported file,
            a HOG + SVM run), or the weights cannot be had.
    """
    if os.path.isdir(value):
        return _run_features(value, device)
    from imagewise.models.weights import known_pretrained

    if not known_pretrained(value):
        raise UserError(
            f"--features '{value}' is neither a run folder nor a model with pretrained weights; "
            f"give a run folder from imagewise train or a name such as {_example_models()} "
            "(imagewise models lists them)"
        )
    return _pretrained_features(value, device)


def _example_models() -> str:
    """Models whose pretrained weights are on this machine (or the usual one when none is)."""
    from imagewise.models.weights import WEIGHT_PACKAGES, package_weights

    here = [arch for arch in WEIGHT_PACKAGES if package_weights(arch) is not None]
    return ", ".join(here[:2]) or "tf_efficientnet_lite0"


def _run_features(run: str, device: str) -> EmbeddingFeatures:
    from imagewise.predict.predictor import load_run
    from imagewise.runtime.embedding import network_of

    if not (Path(run) / "meta.json").is_file():
        raise UserError(
            f"--features '{run}' is a folder but not an imagewise run (no meta.json); give a "
            "run folder from imagewise train or a pretrained model's name"
        )
    clf = load_run(run, device)
    if clf.run_meta.spec.capabilities.fit != "gradient":
        raise UserError(
            f"--features: '{run}' holds a {clf.name} fit, not a network; its embeddings do not "
            "exist (give a run of a network, or a pretrained model's name)"
        )
    return EmbeddingFeatures("run", run, clf.name, network_of(clf), clf.preprocessing)


def _pretrained_features(name: str, device: str) -> EmbeddingFeatures:
    import torch

    from imagewise.edge.spec import InputContract
    from imagewise.models.factory import create_model
    from imagewise.models.weights import load_into, pretrained_weights, weights_preprocessing
    from imagewise.runtime.device import resolve_device

    try:
        source = pretrained_weights(name)
    except UserError as exc:  # its advice (--weights FILE) is train's; say what is here
        raise UserError(
            f"--features '{name}': {str(exc).split(';')[0]}; models whose weights are on this "
            f"machine: {_example_models()}"
        ) from exc
    pre = weights_preprocessing(name)
    model = create_model(name, num_classes=2, in_chans=3, img_size=int(pre["img_size"]))
    load_into(model, source)  # the classifier starts new: only the layers before it are used
    model = model.to(resolve_device(device)).to(memory_format=torch.channels_last).eval()
    contract = InputContract(
        img_size=int(pre["img_size"]), channels=3, mean=tuple(pre["mean"]),
        std=tuple(pre["std"]), interpolation=str(pre["interpolation"]),
        crop_pct=float(pre["crop_pct"]),
    )  # fmt: skip
    return EmbeddingFeatures("pretrained", name, name, model, contract, source.where)


def _batches(
    features: EmbeddingFeatures, data: ImageData, scan: Scan, index: np.ndarray
) -> Iterator[Any]:
    """uint8 (n, C, H, W) tensors of the images ``index`` (scan indices, readable), BATCH at a
    time, at the network's size: files decoded as prediction decodes them (its interpolation
    and centre crop), in-memory images resized by the embedder."""
    import torch

    from imagewise.edge.images import image_array, load_image
    from imagewise.features.collection import match_channels

    pre = features.preprocessing
    where = _positions(data)
    for start in range(0, len(index), BATCH):
        chunk = index[start : start + BATCH].tolist()
        if scan.in_memory:
            arrays = [data.split(where[i][0]).images[where[i][1]] for i in chunk]  # type: ignore[index]
            yield match_channels(torch.stack(arrays), pre.channels)
        else:
            arrays = [
                image_array(load_image(scan.names[i], pre.channels, pre.img_size,
                                       pre.interpolation, pre.crop_pct))
                for i in chunk
            ]  # fmt: skip
            yield torch.from_numpy(np.stack(arrays))


def _positions(data: ImageData) -> list[tuple[str, int]]:
    """(split, position in it) of each scan index: scans list the splits in ``SPLITS`` order."""
    return [(s, k) for s in SPLITS for k in range(len(data.split(s)))]


def embed(
    features: EmbeddingFeatures, data: ImageData, scan: Scan, index: np.ndarray,
    show_progress: bool = False,
) -> np.ndarray:  # fmt: skip
    """float32 (len(index), D) embeddings of the scan's images ``index``."""
    from tqdm.auto import tqdm

    from imagewise.runtime.embedding import Embedder
    from imagewise.runtime.threads import kept_threads

    embedder = Embedder(features)
    out = []
    bar = tqdm(total=len(index), desc="embedding", unit="img", disable=not show_progress)
    with bar, kept_threads():
        for images in _batches(features, data, scan, index):
            out.append(embedder(images, BATCH))
            bar.update(len(images))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def out_of_fold(x: np.ndarray, labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Predicted probabilities (N, classes) of each image from a logistic regression fitted on
    the other folds (stratified), on embeddings standardized within each fold's fit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from imagewise.runtime.threads import kept_threads

    fitted = len(labels) * (folds - 1) / folds
    regression = LogisticRegression(C=1 / (2 * DECAY * fitted), max_iter=500)
    model = make_pipeline(StandardScaler(), regression)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with kept_threads():
        return cross_val_predict(model, x, labels, cv=splitter, method="predict_proba")


def trained_on(features: EmbeddingFeatures, scan: Scan, index: np.ndarray) -> np.ndarray | None:
    """Which of the images ``index`` the run was trained on (its training split's files), a
    mask, or None when that cannot be told (a pretrained network, images held in memory, or
    the run's data no longer where its config says)."""
    if features.kind != "run" or scan.in_memory:
        return None
    from imagewise.runtime.run_data import run_split

    try:
        part = run_split(Path(features.name), scan.classes, ("train",), None, "compare")
    except UserError:
        return None
    fitted = {os.path.realpath(p) for p in part.split.paths or []}
    return np.array([os.path.realpath(scan.names[i]) in fitted for i in index.tolist()], bool)


def find_issues(
    features: EmbeddingFeatures, data: ImageData, scan: Scan, index: np.ndarray, seed: int = 0,
    show_progress: bool = False, info: dict[str, Any] | None = None,
) -> tuple[list[Any], str | None]:  # fmt: skip
    """Likely label errors among the images ``index`` (scan indices), judged on ``features``'
    embeddings: single-label issues (``labels.LabelIssue``) or, for multi-label data,
    ``labels.MultiLabelIssue``; returns them, most doubtful first, and why the check was
    skipped (or None). ``info`` gets ``trained_on`` (how many of the images the run was
    trained on, when that can be told) and ``hog_weight`` (``blend``)."""
    info = {} if info is None else info
    fitted = trained_on(features, scan, index)
    if fitted is not None:
        info["trained_on"] = int(fitted.sum())
    x = embed(features, data, scan, index, show_progress)
    what = features.label()
    if scan.multilabel:
        return labels.find_multilabel_issues(
            index, scan.prints(index), scan.labels[index], seed, x=labels.reduce_dims(x, seed=seed),
            what=what,
        )  # fmt: skip
    prints = scan.prints(index)

    def blended(keep: np.ndarray, dense: np.ndarray, folds: int) -> np.ndarray:
        # The same folds for both (StratifiedKFold on the same labels and seed).
        kept = [p for p, k in zip(prints, keep, strict=True) if k]
        hog = labels.out_of_fold(labels.reduce_dims(labels.features(kept), seed=seed), dense,
                                 folds, seed)  # fmt: skip
        unseen = None if fitted is None else ~fitted[keep]
        probs, info["hog_weight"] = blend(hog, out_of_fold(x[keep], dense, folds, seed), dense,
                                          unseen)  # fmt: skip
        return probs

    return labels.single_label_issues(index, scan.labels[index], blended, what)


def blend(
    hog: np.ndarray, net: np.ndarray, given: np.ndarray, unseen: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """``w * hog + (1 - w) * net`` with the weight ``w`` of HOG_WEIGHTS whose out-of-fold
    probabilities explain the given labels best (the lowest mean log loss), and ``w``.

    Two judges that see different things err on different images: averaged, each one's
    confident mistakes are tempered by the other. The weight follows the data (where HOG sees
    little, the network's judgement counts more); the flips are few, so the given labels
    choose it nearly as the true ones would. But a run's network that was trained on the
    images has fitted their given labels, wrong ones included, and looks better on them than
    it is: then only the ``unseen`` rows (those it was not trained on) choose, and with fewer
    than CHOOSERS of them the weight is 0.5.
    """
    rows = np.arange(len(given)) if unseen is None else np.flatnonzero(unseen)
    if len(rows) < CHOOSERS:
        return 0.5 * (hog + net), 0.5

    def loss(w: float) -> float:
        p = (w * hog[rows] + (1 - w) * net[rows])[np.arange(len(rows)), given[rows]]
        return float(-np.log(np.clip(p, 1e-12, 1)).mean())

    best = min(HOG_WEIGHTS, key=loss)
    return best * hog + (1 - best) * net, float(best)
