"""Augmentation and preprocessing of uint8 batches."""

from __future__ import annotations

import torch

from imagewise.config import AugmentConfig
from imagewise.data.transforms import BatchAugment, normalize, resolve_augment
from imagewise.edge.spec import InputContract

PRE = InputContract(img_size=16, channels=1, mean=[0.5], std=[0.25])


def batch(n: int = 8) -> torch.Tensor:
    x = torch.zeros(n, 1, 16, 16, dtype=torch.uint8)
    x[:, :, 4:12, 2:6] = 255  # a bar left of centre
    return x


def test_presets_resolve_and_parts_override() -> None:
    assert resolve_augment(AugmentConfig(preset="none"))["rotation"] == 0.0
    strong = resolve_augment(AugmentConfig(preset="strong"))
    assert strong["randaugment"] is True and strong["erasing"] == 0.5
    assert resolve_augment(AugmentConfig(preset="standard", hflip=False))["hflip"] is False


def test_none_preset_is_exactly_the_preprocessing() -> None:
    aug = BatchAugment(PRE, AugmentConfig(preset="none"), num_classes=3)
    x, _ = aug(batch(), torch.zeros(8, dtype=torch.long))
    assert not aug.active
    assert torch.allclose(x, normalize(PRE, batch()))
    assert x.min() == -2.0 and x.max() == 2.0  # (0-0.5)/0.25 and (1-0.5)/0.25


def test_each_image_gets_its_own_random_transform() -> None:
    aug = BatchAugment(PRE, AugmentConfig(preset="strong"), num_classes=3, seed=1)
    x, _ = aug(batch(16), torch.zeros(16, dtype=torch.long))
    assert x.shape == (16, 1, 16, 16) and x.dtype == torch.float32
    flat = x.flatten(1)
    distinct = {tuple(row.round(decimals=3).tolist()) for row in flat}
    assert len(distinct) == 16


def test_horizontal_flip_mirrors_some_images_exactly() -> None:
    aug = BatchAugment(PRE, AugmentConfig(preset="none", hflip=True), num_classes=3, seed=0)
    x, _ = aug(batch(32), torch.zeros(32, dtype=torch.long))
    plain = normalize(PRE, batch(1))[0]
    mirrored = torch.flip(plain, dims=[2])
    same = sum(torch.allclose(img, plain, atol=1e-5) for img in x)
    flipped = sum(torch.allclose(img, mirrored, atol=1e-5) for img in x)
    assert same + flipped == 32 and 5 < flipped < 27


def test_random_erasing_sets_a_box_to_zero() -> None:
    aug = BatchAugment(PRE, AugmentConfig(preset="none", erasing=1.0), num_classes=3, seed=0)
    x, _ = aug(torch.full((8, 1, 16, 16), 255, dtype=torch.uint8), torch.zeros(8).long())
    zeros = (x == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros < 16 * 16).all()


def test_mixup_gives_soft_targets_that_sum_to_one() -> None:
    aug = BatchAugment(PRE, AugmentConfig(preset="none", mixup=0.4), num_classes=3, seed=0)
    _, y = aug(batch(), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    assert y.shape == (8, 3)
    assert torch.allclose(y.sum(1), torch.ones(8))


def test_normalize_resizes_other_sizes() -> None:
    x = normalize(PRE, torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    assert x.shape == (2, 1, 16, 16)


def test_colour_jitter_and_noise_without_geometry_stay_standardized() -> None:
    """Jitter and noise work on [0, 1] pixels; the output is standardized exactly once."""
    aug = BatchAugment(PRE, AugmentConfig(preset="none", color_jitter=0.01, noise=0.001), 3)
    x, _ = aug(batch(), torch.zeros(8, dtype=torch.long))
    plain = normalize(PRE, batch())
    assert (x - plain).abs().max() < 0.1  # tiny changes, same scale as the preprocessing
    assert x.min() < -1.5  # standardized black is -2, not clipped to [0, 1]


def test_broadcast_affine_grid_equals_torch() -> None:
    import torch.nn.functional as F

    from imagewise.data.transforms import affine_grid

    theta = torch.randn(5, 2, 3)
    ours = affine_grid(theta, 7, 9)
    reference = F.affine_grid(theta, [5, 1, 7, 9], align_corners=False)
    assert torch.allclose(ours, reference, atol=1e-5)
