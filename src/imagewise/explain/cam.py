"""Class activation maps with the ``grad-cam`` package, and their overlay on the image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from imagewise.edge.spec import Capabilities
from imagewise.errors import UserError
from imagewise.explain.layers import find_target_layer, named_target_layer, require_map

if TYPE_CHECKING:
    from PIL import Image

# Method name -> class name in pytorch_grad_cam.
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "eigencam": "EigenCAM",
}


def check_method(method: str) -> str:
    """Return ``method`` if it is a known CAM method, else raise a UserError listing them."""
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    return method


def require_network(
    model: object, name: str | None = None, capabilities: Capabilities | None = None
) -> None:
    """Refuse models Grad-CAM cannot explain: those whose run declares no Grad-CAM
    (``capabilities.gradcam``: a classical model has no feature map) and non-torch models."""
    declined = capabilities is not None and not capabilities.gradcam
    if declined or not isinstance(model, torch.nn.Module):
        name = name or getattr(model, "name", None) or type(model).__name__
        raise UserError(f"Grad-CAM needs a neural network; '{name}' is a classical model")


def cam_maps(
    model: torch.nn.Module,
    batch: torch.Tensor,
    targets: Sequence[int] | None = None,
    method: str = "gradcam",
    layer: str | None = None,
) -> np.ndarray:
    """Heat maps of where ``model`` looks to score each image's target class.

    The model runs in eval mode; its mode, ``requires_grad`` flags and hooks are as before
    afterwards. Gradients flow from the input, so frozen models work too.

    Args:
        model: a CNN or Vision Transformer (e.g. ``imagewise.load(run).model``).
        batch: a normalized float batch (N, C, H, W), as ``Classifier.preprocess`` makes.
        targets: a class index per image; ``None`` explains each image's predicted class.
        method: ``gradcam``, ``gradcam++``, ``hirescam`` or ``eigencam``.
        layer: the dotted name of the layer to look at; default: ``find_target_layer``.

    Returns:
        float32 maps (N, H, W) in [0, 1] at the input size.

    Example:
        >>> clf = imagewise.load("runs/digits")  # doctest: +SKIP
        >>> maps = cam_maps(clf.model, clf.preprocess(["seven.png"]))  # doctest: +SKIP
    """
    require_network(model)
    check_method(method)
    if batch.ndim != 4:
        raise UserError(f"cam_maps needs a batch (N, C, H, W), not shape {tuple(batch.shape)}")
    if targets is not None and len(targets) != len(batch):
        raise UserError(f"got {len(targets)} targets for {len(batch)} images")
    if layer:
        _, module, reshape = named_target_layer(model, layer)
    else:
        _, module, reshape = find_target_layer(model, batch[:1])
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = getattr(pytorch_grad_cam, METHODS[method])
    cam_targets = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]

    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in grads:  # only the activations' gradients are needed, not the weights'
            p.requires_grad_(False)
        x = batch.detach().clone().float().requires_grad_(True)
        with (
            torch.enable_grad(),
            cam_class(model, [module], reshape_transform=reshape or require_map) as cam,
        ):
            try:
                maps = cam(input_tensor=x, targets=cam_targets)
            except IndexError as exc:  # the CAM's __exit__ would swallow it
                raise RuntimeError(f"Grad-CAM failed: {exc}") from exc
    finally:
        for p, flag in grads.items():
            p.requires_grad_(flag)
        for m, training in modes.items():
            m.training = training
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(maps, 0.0, 1.0)


def _to_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 (H, W), (H, W, C) or (C, H, W), C in 1 or 3 -> float RGB (H, W, 3) in [0, 1]."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    elif arr.ndim == 3 and isinstance(image, torch.Tensor) and arr.shape[0] in (1, 3):
        arr = arr.transpose(1, 2, 0)  # tensors are channels-first
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise UserError(
            f"overlay needs an image (H, W), (H, W, C) or (C, H, W) with 1 or 3 channels, "
            f"not shape {tuple(arr.shape)}"
        )
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    scale = 255.0 if arr.dtype == np.uint8 or arr.max() > 1 else 1.0
    return np.clip(arr.astype(np.float32) / scale, 0.0, 1.0)


def overlay(image: np.ndarray | torch.Tensor, cam: np.ndarray, min_size: int = 224) -> Image.Image:
    """The heat map ``cam`` over ``image`` in the jet colormap, as an RGB picture.

    Small images are enlarged (whole-pixel nearest for the image, bilinear for the map) so the
    shorter side is at least ``min_size`` pixels.

    Args:
        image: uint8 (H, W), (H, W, C) or (C, H, W), with 1 (grayscale) or 3 channels.
        cam: a float map (h, w) in [0, 1], e.g. one of ``cam_maps``; resized to the image.
        min_size: the smallest shorter side of the result, in pixels.

    Example:
        >>> overlay(clf._read("seven.png"), maps[0]).save("seven.cam.png")  # doctest: +SKIP
    """
    import cv2
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = _to_hwc(image)
    h, w = rgb.shape[:2]
    factor = max(1, math.ceil(min_size / min(h, w)))
    if factor > 1:
        rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32).squeeze())
    if cam.ndim != 2:
        raise UserError(f"overlay needs one map (H, W), not shape {tuple(cam.shape)}")
    cam = cv2.resize(cam, (w * factor, h * factor), interpolation=cv2.INTER_LINEAR)
    picture = show_cam_on_image(rgb, np.clip(cam, 0.0, 1.0), use_rgb=True)
    return Image.fromarray(picture, "RGB")
