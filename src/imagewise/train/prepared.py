"""Data read, split, decoded and measured once, for many ``train(prepared=...)`` calls.

``imagewise tune`` runs dozens of short trainings on the same images; decoding them for each
would cost more than the trials. A ``PreparedData`` is handed to ``train`` explicitly and
carries the data settings it was made with. A run whose images or split differ is refused; a
run that decodes the same images otherwise (its size, channels, interpolation or centre crop,
set by a searched option or by its starting weights) gets them decoded again, once per decoding,
kept in the ``PreparedData``'s ``variants``, so that no trial trains on another's pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from imagewise.config import RunConfig
from imagewise.data.sources import ImageData, strata, stratified_split
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError
from imagewise.runtime.records import AutoChoice

log = logging.getLogger("imagewise")

# The data settings that decide how the images are decoded: a run may differ in these.
DECODING_KEYS = ("img_size", "channels", "interpolation", "crop_pct")
# ... and all those that decide which images a run sees, and how.
DATA_KEYS = (
    "source", "val_fraction", "test_fraction", "split_seed", "cache", "strict", "add_labels",
    *DECODING_KEYS,
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
    sample: tuple[int, int] | None = None  # subset(images, seed), taken again by variants
    # the same images decoded otherwise, by their DECODING_KEYS values
    variants: dict[tuple[Any, ...], PreparedData] = field(
        default_factory=dict, compare=False, repr=False
    )

    def take(
        self, cfg: RunConfig, decode: Callable[[RunConfig], PreparedData] | None = None
    ) -> tuple[ImageData, InputContract, AutoChoice | None]:
        """The data for a run configured by ``cfg``: refused when its images or split differ;
        decoded again by ``decode(cfg)`` (once, then kept) when only their decoding does.

        Args:
            cfg: the run's resolved configuration (its starting weights' decoding filled in).
            decode: prepares the data for ``cfg``; without it a decoding difference is refused.
        """
        wanted = data_key(cfg)
        changed = [k for k in DATA_KEYS if wanted[k] != self.key[k]]
        fixed = [k for k in changed if k not in DECODING_KEYS or decode is None]
        if fixed:
            name = fixed[0]
            raise UserError(
                f"data.{name} is {wanted[name]!r} but the prepared data was made with "
                f"{self.key[name]!r}; prepare the data again for these settings"
            )
        if not changed:
            return self.data, self.preprocessing, self.choice
        assert decode is not None
        decoding = tuple(wanted[k] for k in DECODING_KEYS)
        if decoding not in self.variants:
            log.info(
                "decoding the images again for this run's %s",
                ", ".join(f"{k} {wanted[k]!r} (prepared: {self.key[k]!r})" for k in changed),
            )
            made = decode(cfg)
            self.variants[decoding] = made.subset(*self.sample) if self.sample else made
        other = self.variants[decoding]
        return other.data, other.preprocessing, self.choice

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
        _, keep = stratified_split(strata(train.labels), [images / len(train)], seed)
        data = replace(self.data, train=train.subset(keep))
        return replace(self, data=data, sample=(images, seed), variants={})
