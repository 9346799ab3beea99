"""One-pass fits: models fitted once by their registry entry's ``fitter``, without epochs.

``fit_one_pass`` hands the fitter the training and validation splits, preprocessed as at
evaluation (``NormalizedBatches``); ``hog_svm``'s fitter (``imagewise.models.hog_svm``)
extracts HOG features and fits a linear SVM. ``write_classical_run`` then fills the run folder
with the same files a deep run has (history.csv with one row, meta.json's ``training`` summary,
its ``classical`` entry the fit's summary) except ``last.ckpt``: there is nothing to resume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch import nn

from imagewise.data.pipeline import make_loader
from imagewise.data.sources import Split
from imagewise.data.transforms import normalize
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError
from imagewise.models.registry import get_entry
from imagewise.runtime.checkpoint import save_weights
from imagewise.runtime.meta import RunMeta
from imagewise.runtime.records import TrainingSummary
from imagewise.runtime.runs import RunFolder

log = logging.getLogger("imagewise")

# At most this many bytes of float pixels per chunk handed to a one-pass fit.
CHUNK_BYTES = 16 * 1024**2


def refuse_classical(name: str, world: int, resume: bool) -> None:
    """Raise the ``UserError`` for what a classical model cannot do: torchrun, ``--resume``."""
    if world > 1:
        raise UserError(
            f"model '{name}' is fitted in one process on the CPU; run it without torchrun"
        )
    if resume:
        raise UserError(resume_refusal(name))


def resume_refusal(name: str) -> str:
    """The message for ``--resume`` on a classical run: one fit, so no ``last.ckpt``."""
    return (
        f"model '{name}' is fitted in one pass and has no last.ckpt to resume; "
        "start a new run instead"
    )


def refuse_classical_resume(folder: RunFolder) -> None:
    """Raise ``resume_refusal`` when ``folder`` holds a classical run (it has no last.ckpt)."""
    if folder.meta.is_file() and (meta := folder.read_meta_file()).spec.capabilities.fit == (
        "one_pass"
    ):
        raise UserError(resume_refusal(meta.model.name))


class NormalizedBatches:
    """A split as a one-pass fit reads it (``imagewise.models.registry.Batches``): normalized
    float32 chunks and their labels, preprocessed exactly as at evaluation (no augmentation),
    at most ``CHUNK_BYTES`` of pixels each; unreadable files are skipped."""

    def __init__(self, split: Split, pre: InputContract, workers: int = -1) -> None:
        self.split, self.pre, self.workers = split, pre, workers

    def __len__(self) -> int:
        return len(self.split)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        pre = self.pre
        chunk = max(1, min(1024, CHUNK_BYTES // (4 * pre.channels * pre.img_size**2)))
        for images, y in make_loader(self.split, pre, chunk, workers=self.workers):
            if len(y):
                yield normalize(pre, images).numpy(), y.numpy()


def fit_one_pass(
    name: str,
    model: nn.Module,
    train: Split,
    val: Split,
    pre: InputContract,
    *,
    seed: int = 0,
    workers: int = -1,
) -> dict[str, Any]:
    """Fit a one-pass model in place with its registry entry's ``fitter``; its summary.

    Args:
        name: the registered model name (its entry holds the fitter).
        model: the model ``create_model(name, ...)`` built.
        train: training images and labels.
        val: validation images and labels (may be empty).
        pre: the run's preprocessing (as at evaluation; no augmentation).
        seed: the fit's random seed.
        workers: DataLoader workers for file splits that are not in memory.

    Raises:
        UserError: ``name`` declares no one-pass fit.
    """
    entry = get_entry(name)
    if entry is None or entry.fitter is None:
        raise UserError(f"model '{name}' has no one-pass fit; it trains with the loop")
    batches = (NormalizedBatches(s, pre, workers) for s in (train, val))
    return entry.fitter(model, *batches, seed=seed)


def write_classical_run(
    folder: RunFolder, meta: RunMeta, model: nn.Module, fit: dict[str, Any]
) -> None:
    """Write the weights, a one-row history.csv and meta.json's ``training`` summary.

    The history row has the columns a deep run writes; ``lr`` is NaN (there is no learning
    rate) and the losses are the cross-entropy of the SVM decision values (multi-label: the
    binary cross-entropy of each label's, with ``val_map`` as a deep multi-label run has it).

    Args:
        folder: the run folder (already holding config.yaml).
        meta: the run's metadata from ``build_meta``; its ``training`` entry is filled in.
        model: the fitted model.
        fit: the summary returned by ``fit_one_pass``.
    """
    save_weights(model, folder.weights)
    seconds = fit["train_seconds"]
    row = {
        "epoch": 1,
        "lr": float("nan"),
        "train_loss": fit["train_loss"],
        "train_accuracy": fit["train_accuracy"],
        "val_loss": fit["val_loss"],
        "val_accuracy": fit["val_accuracy"],
        **({"val_map": fit["val_map"]} if "val_map" in fit else {}),
        "epoch_seconds": seconds,
        "images_per_second": fit["train_images"] / max(seconds, 1e-9),
    }
    folder.write_history([row])
    has_val = fit["val_images"] > 0
    multilabel = "val_map" in fit  # one SVM per label, its C picked by validation mAP
    meta.training = TrainingSummary(
        epochs_run=1,
        epochs_planned=1,
        best_epoch=1,
        best_val_accuracy=fit["val_accuracy"] if has_val else None,
        best_val_map=fit["val_map"] if has_val and multilabel else None,
        selected_by=("val_map" if multilabel else "val_accuracy") if has_val else "train_loss",
        train_seconds=seconds,
        stop_reason="classical fit",
        classical={k: v for k, v in fit.items() if not _is_nan(v)},
    )
    folder.write_meta(meta)


def _is_nan(value: Any) -> bool:
    # meta.json is strict JSON: no NaN.
    return isinstance(value, float) and math.isnan(value)
