"""Data: reading images and datasets, splitting, preprocessing and augmentation."""

from imagewise.data.decode import UnreadableImageError, load_image, read_image
from imagewise.data.pipeline import make_loader, prepare
from imagewise.data.sources import ImageData, Split, resolve_source
from imagewise.data.transforms import BatchAugment
from imagewise.edge.spec import InputContract

__all__ = [
    "BatchAugment",
    "ImageData",
    "InputContract",
    "Split",
    "UnreadableImageError",
    "load_image",
    "make_loader",
    "prepare",
    "read_image",
    "resolve_source",
]
