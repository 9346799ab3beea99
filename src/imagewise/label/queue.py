"""``imagewise label next RUN POOL --budget N``: the queue of images to label next.

The run's classifier gives each pool image its calibrated probabilities and its embedding in
one pass; ``imagewise.label.selection`` picks; the queue is a CSV (``path`` first, then the
reason and the scores) written atomically. The run's training images are embedded too, so a
pool image that is a near-copy of one already labelled is not asked for again. The user's
files are only read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imagewise.errors import UserError
from imagewise.label.selection import (
    DUPLICATE_SIMILARITY,
    STRATEGIES,
    UNCERTAINTY_SCORES,
    Pick,
    select,
)

log = logging.getLogger("imagewise")

COLUMNS = ("path", "rank", "reason", "guess", "probability", "margin", "entropy", "cluster")


@dataclass
class LabelQueue:
    """The images to label next, in order, and what was read to choose them."""

    paths: list[str]
    picks: list[Pick]
    guesses: list[str]
    probabilities: list[float]
    strategy: str
    pool: int  # readable pool images
    labelled: int  # training images whose near-copies were skipped
    skipped: list[str] = field(default_factory=list)  # unreadable pool files
    out: Path | None = None

    def rows(self) -> list[list[str]]:
        """The queue's CSV rows (``COLUMNS``), best first."""
        return [
            [path, str(rank), p.reason, guess, f"{prob:.6f}", f"{p.margin:.6f}",
             f"{p.entropy:.6f}", "" if p.cluster < 0 else str(p.cluster + 1)]
            for rank, (path, p, guess, prob) in enumerate(
                zip(self.paths, self.picks, self.guesses, self.probabilities, strict=True), 1
            )
        ]  # fmt: skip

    def summary(self) -> str:
        """A few lines: how many were picked from how many, how, and where the queue is."""
        lines = [
            f"picked {len(self.picks)} of {self.pool} pool images to label next ({self.strategy}"
            f"; near-copies of {self.labelled} labelled images and of each other left out)"
        ]
        if self.picks:
            mean = float(np.mean([p.margin for p in self.picks]))
            lines.append(f"mean margin of the picks {mean:.3f} (0: a coin toss, 1: sure)")
        for path, p in list(zip(self.paths, self.picks, strict=True))[:5]:
            lines.append(f"  {path}  {p.reason}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable file(s), e.g. {self.skipped[0]}")
        if self.out is not None:
            lines.append(f"queue: {self.out}")
        return "\n".join(lines)


def label_next(
    run: str | Path,
    pool: str | Path,
    budget: int,
    *,
    strategy: str = "mixed",
    score: str = "margin",
    out: str | Path | None = None,
    duplicate_similarity: float = DUPLICATE_SIMILARITY,
    seed: int = 0,
    batch_size: int = 64,
) -> LabelQueue:
    """Pick the ``budget`` images of an unlabelled folder whose labels would help ``run`` most.

    Args:
        run: a run folder (its classifier, calibration and training images).
        pool: a folder of unlabelled images (searched recursively), or a glob.
        budget: how many images to pick.
        strategy: ``mixed`` (default), ``uncertainty``, ``diversity`` or ``random``
            (``imagewise.label.selection``).
        score: ``margin`` or ``entropy``.
        out: write the queue here as CSV (``path`` first).
        duplicate_similarity: embeddings at least this similar (cosine) are one image.
        seed: k-means and the random draw.
        batch_size: images per forward pass.

    Example:
        >>> imagewise.label_next("runs/fm", "pool/", 100, out="queue.csv")  # doctest: +SKIP
    """
    from imagewise.io import check_output_file
    from imagewise.predict.predictor import load_run

    _check(budget, strategy, score, duplicate_similarity)
    if out is not None:
        check_output_file(out, "--out")
    clf = load_run(run, device="cpu")
    if clf.spec.multilabel:
        raise UserError(
            f"'{run}' is a multi-label run; label next picks images for single-label runs"
        )
    paths, images, skipped = read_pool(clf, pool)
    probs, embeddings = _score(clf, images, batch_size)
    labelled = _labelled_embeddings(clf, Path(run), batch_size)
    picks = select(
        probs, embeddings, budget, strategy, classes=list(clf.classes), labelled=labelled,
        score=score, duplicate_similarity=duplicate_similarity, seed=seed,
    )  # fmt: skip
    top = probs.argmax(axis=1)
    queue = LabelQueue(
        paths=[paths[p.index] for p in picks],
        picks=picks,
        guesses=[clf.classes[int(top[p.index])] for p in picks],
        probabilities=[float(probs[p.index, top[p.index]]) for p in picks],
        strategy=strategy,
        pool=len(paths),
        labelled=len(labelled),
        skipped=skipped,
    )
    if out is not None:
        queue.out = _write(queue, Path(out))
    return queue


def _check(budget: int, strategy: str, score: str, similarity: float) -> None:
    if budget < 1:
        raise UserError(f"--budget must be at least 1, not {budget}")
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    if score not in UNCERTAINTY_SCORES:
        raise UserError(f"unknown score '{score}'; choose margin or entropy")
    if not 0 < similarity <= 1:
        raise UserError(f"--duplicate-similarity must be in (0, 1], not {similarity}")


def read_pool(clf: object, pool: str | Path) -> tuple[list[str], torch.Tensor, list[str]]:
    """The pool's readable images (uint8 N x C x H x W at the model's size) and their paths;
    unreadable files are skipped with a warning."""
    from imagewise.predict.inputs import expand_inputs

    found = expand_inputs([str(pool)])
    if not found:
        raise UserError(f"'{pool}' holds no images; give a folder of unlabelled images")
    paths, arrays, skipped = [], [], []
    for path in found:
        try:
            arrays.append(torch.from_numpy(clf.read(path)))  # type: ignore[attr-defined]
        except UserError:
            skipped.append(path)
            continue
        paths.append(path)
    if skipped:
        log.warning("skipped %d unreadable pool file(s), e.g. %s", len(skipped), skipped[0])
    if not paths:
        raise UserError(f"none of the {len(found)} files in '{pool}' could be read")
    return paths, torch.stack(arrays), skipped


def _score(clf: object, images: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities and penultimate embeddings of uint8 images."""
    from imagewise.runtime.embedding import Embedder

    embedder = Embedder(clf)
    probs, feats = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            probs.append(clf.image_probabilities(chunk).numpy())  # type: ignore[attr-defined]
            feats.append(embedder(chunk, batch_size))
    return np.concatenate(probs), np.concatenate(feats)


def _labelled_embeddings(clf: object, run: Path, batch_size: int) -> np.ndarray:
    """Embeddings of the run's training images (whose near-copies are not asked for)."""
    from imagewise.runtime.embedding import Embedder
    from imagewise.runtime.run_data import decode_split, run_split

    classes = list(clf.classes)  # type: ignore[attr-defined]
    try:
        part = run_split(run, classes, ("train",), None, purpose="skip labelled near-copies")
    except UserError as exc:
        log.warning("labelled images not compared: %s", exc)
        return np.zeros((0, 0), dtype=np.float32)
    images, _ = decode_split(part, classes, clf.preprocessing)  # type: ignore[attr-defined]
    return Embedder(clf)(images, max(batch_size, 256))


def _write(queue: LabelQueue, out: Path) -> Path:
    import io

    from imagewise.io import atomic_write_text
    from imagewise.names import CsvWriter

    buf = io.StringIO()
    writer = CsvWriter(buf)
    writer.writerow(COLUMNS)
    writer.writerows(queue.rows())
    return atomic_write_text(out, buf.getvalue())
