"""Likely label errors by confident learning: out-of-fold predicted probabilities of a quick
model, given to ``cleanlab.filter.find_label_issues`` (multi-label data: one-vs-rest logistic
regressions, given to cleanlab's multi-label mode, ``find_multilabel_issues``).

The quick model is HOG features and small thumbnails (``features``), reduced by PCA, then a
multinomial logistic regression, over k stratified folds. It was chosen by measured recall of
planted label flips on Fashion-MNIST (BENCHMARKS.md, "Data audit"): it is calibrated enough for
confident learning, and its folds take seconds where a CNN's take minutes on two cores.
``data check --features RUN|MODEL`` judges on a network's embeddings blended with it
(``imagewise.audit.embedded``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from imagewise.audit.fingerprint import Fingerprint, label_features

log = logging.getLogger("imagewise")

FOLDS = 5
PCA_DIMS = 64
DECAY = 1e-3
# cleanlab's candidates (prune_by_class) are kept when the model gives the given label at most
# this probability: on Fashion-MNIST (an 85% accurate quick model) cleanlab alone flagged 4-5x
# more images than were flipped, mostly shirts / tops / pullovers the model confuses; with this
# cut and RULED_OUT, 80% of planted flips at 67% precision (prune_by_noise_rate: 67% at 63%;
# BENCHMARKS.md).
GIVEN_MAX = 0.02
# cleanlab's per-class counts can leave out an image the model all but rules out for its label;
# at or below this probability it is flagged anyway (one more planted flip found, no false one).
RULED_OUT = 0.01
# Multi-label: cleanlab's per-label candidates, kept when the model's belief in the given yes /
# no of one label is at most this (the single-label cut). On 500-600 mosaics of scikit-learn
# digits 0-4 (a 0.97 mAP quick model) with 12-15 planted flips, six draws found 5 to 11 flips
# among 15 to 23 flagged images; a cut of 0.05 found 10-13 among 34-40, and a stronger decay
# (1e-2, cut 0.1) traded alike (tests/test_multilabel_audit.py plants such flips).
ML_FILTER = "prune_by_noise_rate"
ML_GIVEN_MAX = 0.02
MIN_PER_CLASS = 3  # below this many images in a class, out-of-fold predictions mean nothing


@dataclass
class LabelIssue:
    """An image whose given label the out-of-fold model doubts."""

    index: int  # into the scan
    given: int
    suggested: int
    given_probability: float
    suggested_probability: float


def features(prints: list[Fingerprint]) -> np.ndarray:
    """The quick model's input (N, D) float32 (``fingerprint.label_features``, computed while
    reading where it was asked for)."""
    rows = [
        p.features if p.features is not None else label_features(p.gray, p.colour) for p in prints
    ]
    return np.stack(rows).astype(np.float32)


def reduce_dims(x: np.ndarray, dims: int = PCA_DIMS, seed: int = 0) -> np.ndarray:
    """Standardize, then keep the ``dims`` main directions, found by randomized SVD on at most
    10,000 images (a full eigendecomposition of the HOG covariance took 45 s on a busy 2-core
    machine). PCA never sees a label, so the folds stay honest; it makes each fold's fit small.
    """
    from sklearn.utils.extmath import randomized_svd

    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    sample = np.random.default_rng(seed).permutation(len(x))[:10_000]
    dims = max(2, min(dims, len(x) // 10, x.shape[1]))  # ten images or more per dimension
    _, _, vt = randomized_svd(x[sample], dims, n_iter=2, random_state=seed)
    z = x @ vt.T
    return ((z - z.mean(0)) / (z.std(0) + 1e-6)).astype(np.float32)


def _fit_predict(
    x: np.ndarray, y: np.ndarray, test: np.ndarray, n_classes: int, decay: float = DECAY
) -> np.ndarray:
    """Multinomial logistic regression (L2 ``decay``), full-batch L-BFGS; probabilities of
    ``test``. Written in torch rather than scikit-learn's: the same model, 20x faster here."""
    import torch

    from imagewise.runtime.threads import kept_threads

    with kept_threads():
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        layer = torch.nn.Linear(x.shape[1], n_classes)
        opt = torch.optim.LBFGS(layer.parameters(), max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(layer(xt), yt)
            loss = loss + decay * layer.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            return torch.softmax(layer(torch.from_numpy(test)), dim=1).double().numpy()


def out_of_fold(x: np.ndarray, labels: np.ndarray, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Predicted probabilities (N, classes) for each image from a model that did not see it.

    Logs how long the remaining folds will take once the first is timed.
    """
    from sklearn.model_selection import StratifiedKFold

    n_classes = int(labels.max()) + 1
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return _held_out(
        splitter.split(x, labels), np.zeros((len(labels), n_classes)), folds,
        lambda fit, held: _fit_predict(x[fit], labels[fit], x[held], n_classes),
    )  # fmt: skip


def _held_out(
    splits: Iterable[tuple[np.ndarray, np.ndarray]],
    probs: np.ndarray,
    folds: int,
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """``probs`` filled fold by fold with ``fit_predict(fit_idx, held_idx)``; the first fold's
    time, and so the rest's, said once."""
    start = time.perf_counter()
    for k, (fit_idx, held_idx) in enumerate(splits):
        probs[held_idx] = fit_predict(fit_idx, held_idx)
        if k == 0 and folds > 1:
            took = time.perf_counter() - start
            log.info(
                "label check: fold 1 of %d took %.0fs; about %.0fs more",
                folds, took, took * (folds - 1),
            )  # fmt: skip
    return probs


Probabilities = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def find_issues(
    index: np.ndarray, prints: list[Fingerprint], labels: np.ndarray, seed: int = 0
) -> tuple[list[LabelIssue], str | None]:
    """Likely label errors among the images ``index`` (scan indices) with ``prints`` and
    ``labels``, judged on HOG features; returns the issues, most doubtful first, and why the
    check was skipped (or None).
    """

    def hog(keep: np.ndarray, dense: np.ndarray, folds: int) -> np.ndarray:
        kept = [p for p, k in zip(prints, keep, strict=True) if k]
        return out_of_fold(reduce_dims(features(kept), seed=seed), dense, folds, seed)

    return single_label_issues(index, labels, hog, "HOG features")


def single_label_issues(
    index: np.ndarray, labels: np.ndarray, probabilities: Probabilities, what: str
) -> tuple[list[LabelIssue], str | None]:
    """Likely label errors among the images ``index`` with class ``labels``, from out-of-fold
    ``probabilities(keep, dense, folds)``: the rows ``keep`` (a mask over ``index``) of the
    classes with MIN_PER_CLASS images or more, their labels renumbered 0..K-1 (``dense``),
    over ``folds`` folds. ``what`` names the features in the log.
    """
    present, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, present[counts >= MIN_PER_CLASS])
    if len(np.unique(labels[keep])) < 2:
        return [], f"needs two classes with at least {MIN_PER_CLASS} readable images each"
    # Classes with too few images sit out; the rest are renumbered 0..K-1 for cleanlab.
    names, dense = np.unique(labels[keep], return_inverse=True)
    folds = int(min(FOLDS, np.bincount(dense).min()))
    log.info("label check: %d-fold logistic regression on %s of %d images", folds, what, len(dense))
    probs = probabilities(keep, dense, folds)
    return _flagged(index[keep], names, dense, probs), None


def _flagged(
    index: np.ndarray, names: np.ndarray, dense: np.ndarray, probs: np.ndarray
) -> list[LabelIssue]:
    """cleanlab's candidates whose given label the model all but rules out (GIVEN_MAX), and
    any image at or below RULED_OUT, most doubtful first."""
    from cleanlab.filter import find_label_issues

    given = probs[np.arange(len(dense)), dense]
    # n_jobs=1: cleanlab's own pool forks this process, which holds threads (torch, BLAS,
    # logging); a forked child can wait forever on a lock one of them held (make test hung
    # there: the pool's worker stuck in SemLock, the audit waiting on it). One class at a time
    # costs milliseconds: the pruning runs on the probabilities, not on the images.
    doubted = find_label_issues(dense, probs, filter_by="prune_by_class", n_jobs=1)
    flagged = (doubted & (given <= GIVEN_MAX)) | (given <= RULED_OUT)
    issues = []
    for r in np.flatnonzero(flagged)[np.argsort(given[flagged], kind="stable")].tolist():
        best = int(probs[r].argmax())
        issues.append(
            LabelIssue(
                index=int(index[r]),
                given=int(names[dense[r]]),
                suggested=int(names[best]),
                given_probability=round(float(probs[r, dense[r]]), 4),
                suggested_probability=round(float(probs[r, best]), 4),
            )
        )
    return issues


@dataclass
class MultiLabelIssue:
    """An image of multi-label data whose label set the out-of-fold model doubts."""

    index: int  # into the scan
    given: list[int]  # class indices
    suggested: list[int]  # the labels the model gives a probability of 0.5 or more
    doubted: list[tuple[int, bool, float]]  # (class, given?, probability), most doubted first
    given_probability: float  # the model's belief in the most doubted label's given state


def _fit_predict_labels(
    x: np.ndarray, y: np.ndarray, test: np.ndarray, decay: float = DECAY
) -> np.ndarray:
    """One logistic regression per label (one-vs-rest, L2 ``decay``), fitted together by
    full-batch L-BFGS: the labels share no weight, so the sum of their losses is minimized by
    each one's own fit. Sigmoid probabilities (len(test), K)."""
    import torch

    from imagewise.runtime.threads import kept_threads

    with kept_threads():
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
        layer = torch.nn.Linear(x.shape[1], y.shape[1])
        opt = torch.optim.LBFGS(layer.parameters(), max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            # Summed over labels, averaged over images: each label's fit weighs its decay as
            # the single-label model does.
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                layer(xt), yt, reduction="sum"
            ) / len(xt)
            loss = loss + decay * layer.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            return torch.sigmoid(layer(torch.from_numpy(test))).double().numpy()


def _label_folds(rows: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k folds stratified by each image's rarest label (``data.sources.strata``); strata with
    fewer images than folds are pooled, so every stratum can be spread."""
    from sklearn.model_selection import StratifiedKFold

    from imagewise.data.sources import strata

    groups = strata(rows)
    names, counts = np.unique(groups, return_counts=True)
    groups = np.where(np.isin(groups, names[counts < folds]), -1, groups)
    if (groups == -1).sum() and (groups == -1).sum() < folds:
        groups = np.where(groups == -1, names[counts.argmax()], groups)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(rows, groups))


def out_of_fold_labels(
    x: np.ndarray, rows: np.ndarray, folds: int = FOLDS, seed: int = 0
) -> np.ndarray:
    """Per-label probabilities (N, K) for each image from one-vs-rest models that did not see
    it; ``rows`` are 0/1 (N, K)."""
    return _held_out(
        _label_folds(rows, folds, seed), np.zeros(rows.shape), folds,
        lambda fit, held: _fit_predict_labels(x[fit], rows[fit], x[held]),
    )  # fmt: skip


def find_multilabel_issues(
    index: np.ndarray,
    prints: list[Fingerprint],
    rows: np.ndarray,
    seed: int = 0,
    x: np.ndarray | None = None,
    what: str = "HOG features",
) -> tuple[list[MultiLabelIssue], str | None]:
    """Likely label errors of multi-label data (``rows`` 0/1, N x K): a label given that the
    image seems not to show, or one left out that it seems to show. cleanlab's multi-label mode
    judges each label as its own yes / no question over out-of-fold one-vs-rest probabilities;
    returns the issues, most doubtful first, and why the check was skipped (or None).

    ``x``: the models' input (N, D) in place of the reduced HOG features of ``prints`` (a
    network's embeddings, ``imagewise.audit.embedded``), named ``what`` in the log.
    """
    # cleanlab's multi-label entry point (cleanlab.filter's multi_label=True is deprecated for
    # it; both run the same per-label pruning).
    from cleanlab.multilabel_classification.filter import find_label_issues

    rows = np.asarray(rows) > 0
    positives = rows.sum(axis=0)
    # A label needs examples of both answers for its out-of-fold model to mean anything.
    negatives = len(rows) - positives
    judged = np.flatnonzero((positives >= MIN_PER_CLASS) & (negatives >= MIN_PER_CLASS))
    if len(judged) < 2:
        return [], (
            f"needs two labels with at least {MIN_PER_CLASS} readable images with and without"
        )
    sub = rows[:, judged]
    folds = int(min(FOLDS, len(rows) // MIN_PER_CLASS))
    log.info(
        "label check: %d-fold one-vs-rest logistic regression on %s of %d images",
        folds, what, len(rows),
    )  # fmt: skip
    if x is None:
        x = reduce_dims(features(prints), seed=seed)
    probs = out_of_fold_labels(x, sub.astype(np.uint8), folds, seed)
    agree = np.where(sub, probs, 1.0 - probs)  # the model's belief in each given yes / no
    given_sets = [np.flatnonzero(r).tolist() for r in sub]
    # n_jobs=1: see find_issues (a forked pool can hang on a lock another thread held).
    doubted = find_label_issues(labels=given_sets, pred_probs=probs, filter_by=ML_FILTER, n_jobs=1)
    worst = agree.min(axis=1)
    flagged = (doubted & (worst <= ML_GIVEN_MAX)) | (worst <= RULED_OUT)
    issues = []
    for r in np.flatnonzero(flagged)[np.argsort(worst[flagged], kind="stable")].tolist():
        order = np.argsort(agree[r], kind="stable")
        doubts = [
            (int(judged[k]), bool(sub[r, k]), round(float(probs[r, k]), 4))
            for k in order.tolist()
            if agree[r, k] < 0.5
        ]
        issues.append(
            MultiLabelIssue(
                index=int(index[r]),
                given=np.flatnonzero(rows[r]).tolist(),
                suggested=_suggested(rows[r], judged, probs[r]),
                doubted=doubts,
                given_probability=round(float(worst[r]), 4),
            )
        )
    return issues, None


def _suggested(given: np.ndarray, judged: np.ndarray, probs: np.ndarray) -> list[int]:
    """The label set the model would give: judged labels at probability 0.5 or more, and the
    labels it did not judge kept as given."""
    out = set(np.flatnonzero(given).tolist()) - set(judged.tolist())
    out.update(int(judged[k]) for k in np.flatnonzero(probs >= 0.5))
    return sorted(out)
