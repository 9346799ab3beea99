"""Data read, split, decoded and measured once, for many ``train(prepared=...)`` calls.

``imagewise tune`` runs dozens of short trainings on the same images; decoding them for each
would cost more than the trials. A ``PreparedData`` is handed to ``train`` explicitly (no
hidden cache) and carries the data settings it was made with, so a trial whose settings would
decode the images differently is refused instead of silently trained on the wrong ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from imagewise.config import RunConfig
from imagewise.data.sources import ImageData, stratified_split
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError
from imagewise.runtime.records import AutoChoice

# The data settings that decide which images a run sees and how they are decoded.
DATA_KEYS = (
    "source", "img_size", "channels", "val_fraction", "test_fraction", "split_seed", "cache",
    "strict",
)  # fmt: skip


def data_key(cfg: RunConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that decide the prepared data (``DATA_KEYS``)."""
    return {name: getattr(cfg.data, name) for name in DATA_KEYS}


@dataclass(frozen=True)
class PreparedData:
    """A dataset split and decoded, its preprocessing, and what ``--model auto`` chose.

    Made by ``imagewise.train.run.prepare_data(cfg)``; never modified by a run.
    """

    data: ImageData
    preprocessing: InputContract
    key: dict[str, Any]
    choice: AutoChoice | None = None

    def take(self, cfg: RunConfig) -> tuple[ImageData, InputContract, AutoChoice | None]:
        """The data for a run configured by ``cfg``; refused when its data settings differ.

        Args:
            cfg: the run's resolved configuration.
        """
        wanted = data_key(cfg)
        changed = [k for k in DATA_KEYS if wanted[k] != self.key[k]]
        if changed:
            name = changed[0]
            raise UserError(
                f"data.{name} is {wanted[name]!r} but the prepared data was made with "
                f"{self.key[name]!r}; prepare the data again for these settings"
            )
        return self.data, self.preprocessing, self.choice

    def subset(self, images: int, seed: int = 0) -> PreparedData:
        """The same data with a stratified sample of about ``images`` training images
        (validation and test splits unchanged); itself when the training split is no larger.

        Args:
            images: training images to keep (rounded per class).
            seed: the sample's seed.
        """
        train = self.data.train
        if images < 1:
            raise UserError(f"--subset must be at least 1 image, not {images}")
        if images >= len(train):
            return self
        _, keep = stratified_split(np.asarray(train.labels), [images / len(train)], seed)
        return replace(self, data=replace(self.data, train=train.subset(keep)))
