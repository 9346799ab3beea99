"""Explanation: Grad-CAM heat maps of where a trained classifier looks, over the images.

The package is light: its contents load on first use (``import imagewise`` stays quick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.explain.cam import METHODS, cam_maps, check_method, overlay, require_network
    from imagewise.explain.explanation import explain, output_names, resolve_target
    from imagewise.explain.layers import find_target_layer, named_target_layer


def __getattr__(name: str) -> Any:
    if name in ("explain", "output_names", "resolve_target"):
        from imagewise.explain import explanation

        return getattr(explanation, name)
    if name in ("METHODS", "cam_maps", "check_method", "overlay", "require_network"):
        from imagewise.explain import cam

        return getattr(cam, name)
    if name in ("find_target_layer", "named_target_layer"):
        from imagewise.explain import layers

        return getattr(layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METHODS",
    "cam_maps",
    "check_method",
    "explain",
    "find_target_layer",
    "named_target_layer",
    "output_names",
    "overlay",
    "require_network",
    "resolve_target",
]
