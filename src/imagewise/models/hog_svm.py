"""The classical baseline: HOG features (scikit-image) and a linear SVM (scikit-learn).

``HogSVM`` is an ``nn.Module`` so that evaluation, prediction, comparison and the safetensors
weights treat it like any deep model: ``forward`` computes the HOG descriptor of each image on
the CPU with ``skimage.feature.hog``, standardizes it, and applies a linear layer holding the
SVM's ``coef_`` / ``intercept_``; the logits are the SVM decision values. Everything prediction
needs is a buffer or a parameter (HOG settings, feature mean and scale, weights), nothing is
pickled. The SVM is fitted in one pass by ``imagewise.train.classical.fit_classical``, not by
gradient descent; gradients through the HOG step are not meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imagewise.models.registry import register_model, size_error

# skimage's block normalizations, in the order their index is stored in the weights.
BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")


@dataclass(frozen=True)
class HogSettings:
    """HOG parameters: orientation bins, square cells and blocks, block normalization."""

    orientations: int
    pixels_per_cell: int
    cells_per_block: int
    block_norm: str = "L1-sqrt"

    def feature_dim(self, img_size: int) -> int:
        """Length of the HOG descriptor of one ``img_size``² image (0 when it is too small)."""
        blocks = max(0, img_size // self.pixels_per_cell - self.cells_per_block + 1)
        return blocks * blocks * self.cells_per_block**2 * self.orientations

    def as_tensor(self) -> torch.Tensor:
        """The settings as an int64 buffer, so that they travel in the safetensors weights."""
        norm = BLOCK_NORMS.index(self.block_norm)
        return torch.tensor([self.orientations, self.pixels_per_cell, self.cells_per_block, norm])

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> HogSettings:
        o, ppc, cpb, norm = (int(v) for v in t.tolist())
        return cls(o, ppc, cpb, BLOCK_NORMS[norm])


def hog_settings(img_size: int) -> HogSettings:
    """The HOG settings used at ``img_size``: 9 bins, 2x2-cell blocks, a grid fixed by the size.

    Small images get 7 cells across (4 px cells at 28 px: 1,296 features, the best of the
    settings measured on Fashion-MNIST); from 112 px on, 14 cells across (16 px cells at
    224 px: 6,084 features), fine enough for photos and still a few GB for 60k images.
    """
    cells = 7 if img_size < 112 else 14
    return HogSettings(orientations=9, pixels_per_cell=max(4, img_size // cells), cells_per_block=2)


def hog_features(images: np.ndarray, settings: HogSettings) -> np.ndarray:
    """HOG descriptors of a float batch (N, C, H, W) -> (N, D) float32, one skimage call each.

    Colour images are reduced to the mean of their channels first. skimage's ``channel_axis``
    (per pixel, the channel with the strongest gradient) was as accurate on colourized
    Fashion-MNIST (86.8% vs 86.9%) and 10-30% slower.

    Args:
        images: float array (N, C, H, W), normalized or not: gradients ignore the mean, and the
            block normalization the scale.
        settings: the HOG parameters.
    """
    from skimage.feature import hog

    kwargs = {
        "orientations": settings.orientations,
        "pixels_per_cell": (settings.pixels_per_cell,) * 2,
        "cells_per_block": (settings.cells_per_block,) * 2,
        "block_norm": settings.block_norm,
    }
    gray = images[:, 0] if images.shape[1] == 1 else images.mean(axis=1)
    out = np.empty((len(gray), settings.feature_dim(images.shape[-1])), dtype=np.float32)
    for i, img in enumerate(gray):
        out[i] = hog(img, **kwargs)
    return out


class HogSVM(nn.Module):
    """HOG descriptor -> standardization -> linear SVM, with the timm-style interface.

    ``forward_features`` returns the standardized HOG features (N, num_features); there is no
    spatial feature map, so its registry entry declares ``gradcam=False`` (and ``fit="one_pass"``,
    ``onnx_export=False``).
    """

    default_loss = "cross_entropy"  # of the decision values: what calibration and metrics use
    gradcam_layer = ""

    def __init__(self, num_classes: int, in_chans: int, img_size: int) -> None:
        super().__init__()
        settings = hog_settings(img_size)
        dim = settings.feature_dim(img_size)
        if dim < 1:
            raise size_error("hog_svm", img_size)
        self.in_chans, self.img_size = in_chans, img_size
        self.register_buffer("hog_config", settings.as_tensor())
        # An unfitted model standardizes nothing and scores zero; fit_classical fills these.
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_scale", torch.ones(dim))
        self.num_features = self.head_hidden_size = dim
        self.reset_classifier(num_classes)

    @property
    def hog_settings(self) -> HogSettings:
        """The HOG parameters the weights were fitted with (read from the buffer)."""
        return HogSettings.from_tensor(self.hog_config)

    def hog(self, x: torch.Tensor) -> torch.Tensor:
        """Raw HOG descriptors (N, num_features) of a float batch, on the model's device."""
        images = x.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(hog_features(images, self.hog_settings)).to(self.fc.weight.device)

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the training-set standardization to raw HOG descriptors."""
        return (features - self.feature_mean) / self.feature_scale

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the standardized HOG features, shape (N, num_features)."""
        return self.standardize(self.hog(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Map features to SVM decision values, or return them as they are when ``pre_logits``."""
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the SVM decision values (N, num_classes) of a normalized batch (N, C, H, W)."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """Return the linear layer holding the SVM."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the SVM with a zero one for ``num_classes`` classes (fit it again)."""
        ref = self.feature_mean
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes, device=ref.device)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)


@register_model(
    "hog_svm",
    family="classical",
    description="HOG + linear SVM (fitted in one pass; FLOPs count the SVM only)",
    fit="one_pass",  # by imagewise.train.classical, not by the loop
    onnx_export=False,  # HOG runs in scikit-image, outside the graph
    gradcam=False,  # no spatial feature map to weigh
)
def hog_svm(num_classes: int, in_chans: int, img_size: int, pretrained: bool = False) -> nn.Module:
    """Build the HOG + linear SVM baseline; ``imagewise train`` fits it with ``fit_classical``."""
    return HogSVM(num_classes, in_chans, img_size)
