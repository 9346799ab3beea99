"""A run's own images, re-opened: the data ``config.yaml`` names, split as training split it.

Export checks (parity, INT8 calibration) and the fitted "unknown" threshold and nearest-neighbour
reference of prediction all need the run's validation or training images exactly as training
saw them; this is the one place that re-opens them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagewise.data.sources import Split
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError


@dataclass
class RunSplit:
    """One split of a run's data: its images (labels in the model's class order), its name,
    the source as the config names it, and the resolved source and kind for decoding."""

    split: Split
    name: str
    source: str
    resolved: str
    kind: str

    def subset(self, indices: np.ndarray) -> RunSplit:
        return dataclasses.replace(self, split=self.split.subset(indices))


def run_split(
    run_dir: Path, classes: list[str], splits: tuple[str, ...], limit: int | None, purpose: str
) -> RunSplit:
    """The first non-empty split among ``splits`` of the run's data, not yet decoded.

    Args:
        run_dir: the run folder (its ``config.yaml`` names the data and the split settings).
        classes: the model's classes; labels are returned in their order.
        splits: the split names to try, in order (``("val", "test", "train")``).
        limit: at most this many images, a seeded sample (taken before decoding, so a file
            dataset decodes only these); None for all.
        purpose: what the images are for, in error messages ("check the export").


    Raises:
        UserError: the data cannot be re-opened, has classes the model does not know, or has no
            images in any of ``splits``.
    """
    from imagewise.config import load_config_file
    from imagewise.data.extra import resolve_data
    from imagewise.data.sources import labels_for

    cfg = load_config_file(run_dir / "config.yaml").data
    try:
        raw = resolve_data(cfg, run_dir)  # the source plus the run's --add-labels rows
    except UserError as exc:
        raise UserError(f"cannot re-open the run's data to {purpose}: {exc}") from exc
    unknown = sorted(set(raw.classes) - set(classes))
    if unknown:
        raise UserError(f"'{cfg.source}' now has classes the model was not trained on: {unknown}")
    name = next((s for s in splits if len(raw.split(s))), None)
    if name is None:
        raise UserError(f"'{cfg.source}' has no {' or '.join(splits)} images to {purpose}")
    chosen = raw.split(name)
    if limit is not None and len(chosen) > limit:
        pick = np.random.default_rng(0).choice(len(chosen), size=limit, replace=False)
        chosen = chosen.subset(np.sort(pick))
    labels = labels_for(chosen.labels, raw.classes, classes, raw.multilabel, cfg.source)
    split = Split(labels, chosen.images, chosen.paths)
    return RunSplit(split, name, cfg.source, raw.source, raw.kind)


def decode_split(
    part: RunSplit, classes: list[str], pre: InputContract
) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 images (N, C, img_size, img_size) as the model ``pre`` takes them, and labels, of
    a split from ``run_split``; unreadable files are skipped.

    Raises:
        UserError: no file of the split can be read.
    """
    from imagewise.config import DataConfig
    from imagewise.data.pipeline import materialize
    from imagewise.data.sources import ImageData

    empty = part.split.subset(np.array([], dtype=np.int64))
    holder: Any = ImageData(classes, part.split, empty, empty, part.resolved, part.kind)
    data_cfg = DataConfig(cache="ram", interpolation=pre.interpolation, crop_pct=pre.crop_pct)
    holder = materialize(holder, data_cfg, pre.img_size, pre.channels)
    assert holder.train.images is not None
    return holder.train.images, np.asarray(holder.train.labels)
