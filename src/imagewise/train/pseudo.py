"""Self-training's middle step (``train --unlabelled POOL``): a trained teacher labels the pool
images it is sure of.

``imagewise.train`` trains the teacher into ``RUN/teacher`` as configured, calls
:func:`pseudo_label`, then trains the student into ``RUN`` from the same starting weights on the
labelled data plus ``RUN/pseudo_labels.csv`` (``data.add_labels``, so evaluate and ``--resume``
see the same data). Here: the teacher's calibrated probabilities on its validation split give
the lowest confidence threshold whose answers reach the target precision
(``imagewise.edge.unknown.fit_min_confidence``, as ``predict --min-confidence auto``); the pool
images whose top probability is at or above it are written with the teacher's top class as a
labels manifest (``path,label,labelled_by,probability``, ``labelled_by`` ``machine``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from imagewise.data.decode import UnreadableImageError, find_images, is_image_file, read_image
from imagewise.data.manifest import MACHINE, manifest_path, write_manifest
from imagewise.data.pipeline import make_loader
from imagewise.data.sources import Split
from imagewise.edge.spec import InputContract
from imagewise.edge.unknown import ThresholdFit, check_target_precision, fit_min_confidence
from imagewise.errors import UserError
from imagewise.runtime.inference import predict_loader
from imagewise.runtime.meta import RunMeta
from imagewise.runtime.network import load_network
from imagewise.runtime.records import PseudoLabels
from imagewise.runtime.run_data import decode_split, run_split
from imagewise.runtime.runs import RunFolder

log = logging.getLogger("imagewise")

TEACHER_FOLDER = "teacher"
PSEUDO_FILE = "pseudo_labels.csv"
CHUNK = 1024  # pool images decoded and scored at a time
DEFAULT_PSEUDO_PRECISION = 0.95
NOTHING_KEPT = 1.0  # the threshold recorded when none reaches the target (coverage 0: none kept)


def pool_images(pool: str | Path) -> list[str]:
    """The image files of an unlabelled pool: a folder (searched below) or one image.

    Raises:
        UserError: the pool does not exist or holds no image.
    """
    path = Path(pool).expanduser()
    if path.is_file() and is_image_file(path):
        return [str(path.resolve())]
    if not path.is_dir():
        raise UserError(f"--unlabelled '{pool}' is not a folder of images; check the path")
    images = [str(Path(p).resolve()) for p in find_images(path)]
    if not images:
        raise UserError(f"--unlabelled '{pool}' holds no images; point it at a folder of images")
    return images


def check_pseudo_precision(value: float) -> float:
    """``--pseudo-precision`` checked: a precision strictly between 0 and 1."""
    if not 0 < value < 1:
        raise UserError(f"--pseudo-precision must be between 0 and 1, e.g. 0.95, not {value}")
    return check_target_precision(value)


def calibrated_probabilities(
    network: torch.nn.Module, meta: RunMeta, images: torch.Tensor, device: torch.device
) -> np.ndarray:
    """The run's calibrated probabilities (softmax of logits / temperature, its test-time
    views included) for uint8 images (N, C, H, W) at its input size."""
    split = Split(np.zeros(len(images), dtype=np.int64), images=images)
    loader = make_loader(split, meta.preprocessing, 256, workers=0)
    logits, _ = predict_loader(network, loader, meta.preprocessing, device, tta=meta.tta)
    return torch.softmax(logits / meta.temperature, dim=1).numpy()


def pseudo_label(
    teacher: str | Path,
    pool: str | Path,
    images: list[str],
    target_precision: float,
    manifest: str | Path,
    device: torch.device | str = "cpu",
) -> PseudoLabels:
    """Label the pool images a trained run is sure of, into a labels manifest.

    Args:
        teacher: the teacher's run folder (trained and calibrated).
        pool: the pool as the user named it (recorded).
        images: the pool's image files (``pool_images``), labelled data already left out.
        target_precision: the precision the teacher's kept answers must reach on its validation
            images; the threshold is the lowest that does.
        manifest: the CSV to write (``path,label,labelled_by,probability``).
        device: where the teacher runs.

    Returns:
        What was done, for the student's ``meta.json``.

    Raises:
        UserError: the teacher has no validation images. Where no threshold reaches the
            target, nothing is labelled (a warning says so) and the threshold is 1.
    """
    folder, device = RunFolder.of(teacher), torch.device(device)
    meta = folder.read_meta()
    network = load_network(folder, meta).to(device)
    classes = list(meta.classes)
    fit = _fit_threshold(network, meta, folder, target_precision, device)
    kept_paths, kept_probs, read = _score_pool(network, meta, images, device)
    top = kept_probs.max(axis=1) if len(kept_probs) else np.zeros(0)
    # coverage 0: no threshold reached the target, so not even a probability of 1.0 is kept
    sure = top >= fit.min_confidence if fit.coverage > 0 else np.zeros(len(top), dtype=bool)
    rows = [
        (path, classes[int(p.argmax())], float(t))
        for path, p, t, ok in zip(kept_paths, kept_probs, top, sure, strict=True)
        if ok
    ]
    write_manifest(
        manifest,
        [
            {"path": manifest_path(path, manifest), "label": label, "labelled_by": MACHINE,
             "probability": probability}
            for path, label, probability in rows
        ],
        ("path", "label", "labelled_by", "probability"),
    )  # fmt: skip
    record = PseudoLabels(
        teacher=TEACHER_FOLDER if folder.path.name == TEACHER_FOLDER else str(folder.path),
        pool=str(pool),
        manifest=Path(manifest).name,
        pool_images=len(images),
        unreadable=len(images) - read,
        labelled=len(rows),
        share=len(rows) / len(images) if images else 0.0,
        threshold=fit.min_confidence,
        target_precision=fit.target_precision,
        val_precision=fit.precision,
        val_coverage=fit.coverage,
        val_images=fit.validation_images,
    )
    return record


def _fit_threshold(
    network: torch.nn.Module, meta: RunMeta, folder: RunFolder, target: float,
    device: torch.device,
) -> ThresholdFit:  # fmt: skip
    """The teacher's threshold for ``target`` on its validation split (``ThresholdFit``)."""
    classes = list(meta.classes)
    part = run_split(folder.path, classes, ("val",), None, "fit the pseudo-label threshold on")
    images, labels = decode_split(part, classes, meta.preprocessing)
    probs = calibrated_probabilities(network, meta, images, device)
    return fit_or_keep_nothing(probs.max(axis=1), probs.argmax(axis=1) == labels, target)


def fit_or_keep_nothing(confidence: np.ndarray, right: np.ndarray, target: float) -> ThresholdFit:
    """``fit_min_confidence``, or where no threshold reaches ``target`` a fit that keeps nothing
    (threshold 1, coverage 0, the best precision reached), with a
    warning: a labelling loop's small, hard validation split may reach the target nowhere, and
    then the student trains on the labelled data alone rather than the run failing.

    Raises:
        UserError: no validation images.
    """
    try:
        return fit_min_confidence(confidence, right, target)
    except UserError:
        if not len(confidence):
            raise
    order = np.argsort(-np.asarray(confidence), kind="stable")
    kept_right = np.asarray(right, dtype=bool)[order]
    best = float((np.cumsum(kept_right) / np.arange(1, len(order) + 1)).max())
    log.warning(
        "the teacher reaches precision %g at no confidence threshold on its %d validation "
        "images (at best %.3f): no pool image is pseudo-labelled (a lower --pseudo-precision "
        "keeps some)", target, len(order), best,
    )  # fmt: skip
    return ThresholdFit(target, NOTHING_KEPT, best, 0.0, len(order))


def _score_pool(
    network: torch.nn.Module, meta: RunMeta, images: list[str], device: torch.device
) -> tuple[list[str], np.ndarray, int]:
    """The readable pool files, the teacher's calibrated probabilities for each, and how many
    were read; decoded ``CHUNK`` at a time at the teacher's input (unreadable files skipped)."""
    paths: list[str] = []
    probs: list[np.ndarray] = []
    for start in range(0, len(images), CHUNK):
        read, decoded = _decode_chunk(images[start : start + CHUNK], meta.preprocessing)
        if read:
            paths.extend(read)
            probs.append(calibrated_probabilities(network, meta, decoded, device))
    if len(paths) < len(images):
        log.warning("skipped %d unreadable pool image(s)", len(images) - len(paths))
    stacked = np.concatenate(probs) if probs else np.zeros((0, len(meta.classes)), np.float32)
    return paths, stacked, len(paths)


def _decode_chunk(files: list[str], pre: InputContract) -> tuple[list[str], torch.Tensor]:
    """The readable ``files`` and their uint8 images (N, C, H, W) as the model takes them."""
    read, decoded = [], []
    for file in files:
        try:
            image = read_image(file, pre.channels, pre.img_size, pre.interpolation, pre.crop_pct)
        except UnreadableImageError:
            continue
        read.append(file)
        decoded.append(image)
    return read, torch.stack(decoded) if decoded else torch.empty(0, dtype=torch.uint8)
