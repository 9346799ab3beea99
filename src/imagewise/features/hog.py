"""HOG features of a batch, with scikit-image (``imagewise.models.hog_svm.hog_features``).

A ``hog_svm`` run's own settings (read from its weights); any other run the settings that
``hog_svm`` would use at the run's input size (9 orientations, 2x2-cell blocks, L1-sqrt, 7 cells
across below 112 px, 14 from there on). The images are the run's size and channels, scaled to
[0, 1] float32; colour images are reduced to the mean of their channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from imagewise.models.hog_svm import HogSettings, hog_features, hog_settings


def settings_for(classifier: Any) -> HogSettings:
    """The HOG settings of a model that computes HOG itself (``hog_svm``: its weights'), else
    the defaults at the run's input size."""
    own = getattr(getattr(classifier, "model", None), "hog_settings", None)
    return own if isinstance(own, HogSettings) else hog_settings(classifier.preprocessing.img_size)


def describe(settings: HogSettings) -> str:
    """The layer name recorded for HOG features: ``hog (9 orientations, 4 px cells, ...)``."""
    return (
        f"hog ({settings.orientations} orientations, {settings.pixels_per_cell} px cells, "
        f"{settings.cells_per_block}x{settings.cells_per_block}-cell blocks, {settings.block_norm})"
    )


def hog_batch(images: torch.Tensor, settings: HogSettings) -> np.ndarray:
    """HOG descriptors (N, D) float32 of uint8 images (N, C, H, W), one ``skimage.feature.hog``
    call per image on the [0, 1] float32 image."""
    unit = images.numpy().astype(np.float32) / np.float32(255.0)
    return hog_features(unit, settings)
