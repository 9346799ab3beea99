"""Model size figures: parameter counts, FLOPs of one forward pass, and a table of models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from imagewise.models.factory import create_model
from imagewise.models.registry import get_entry, list_models

_aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    """FLOPs of the CPU fused attention kernel, which FlopCounterMode does not know."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOPS = {_aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


def count_parameters(model: nn.Module) -> int:
    """Return the number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, in_chans: int, img_size: int) -> int:
    """Return the FLOPs (2 per multiply-add) of one forward pass on one image.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` in eval mode under ``no_grad``:
    convolutions, matrix products and attention; element-wise ops are not counted. The model's
    train/eval mode is restored afterwards.
    """
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_chans, img_size, img_size, device=device, dtype=dtype)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as fc:
            model(x)
    finally:
        model.train(was_training)
    return int(fc.get_total_flops())


def describe_models(
    names: list[str] | None = None,
    in_chans: int = 3,
    img_size: int = 224,
    num_classes: int = 10,
    measure: bool = False,
    pace: Callable[[], object] | None = None,
) -> list[dict]:
    """Return one dict per model: name, family, params, flops, pretrained, description; with
    ``measure`` also train_images_per_s and infer_images_per_s measured on this machine.

    ``names`` defaults to all registered models; timm names work too (family "timm"). Each model
    is built (without pretrained weights) to count its parameters and FLOPs at the given size.
    ``pretrained`` says whether known pretrained weights exist (the registry entry's flag, or
    timm's for other names), ``pretrained_here`` whether they are on this machine now (an
    installed weight package or the hub cache); the architectures of installed weight packages
    are listed after the registry's models. Measuring times a few training and inference steps
    per model (``imagewise.models.speed``, which also refreshes this machine's cached speed
    table); models fitted in one pass (HOG + SVM) have no training step and get None.

    Args:
        names: models to describe (default: the registry).
        in_chans / img_size / num_classes: the input and output the models are built for.
        measure: also time training and inference here.
        pace: called before each timed step (see ``imagewise.models.speed.measure_speed``).
    """
    from imagewise.models.speed import measured_speeds
    from imagewise.models.weights import WEIGHT_PACKAGES, has_pretrained, package_weights

    if names is None:  # the registry, and the architectures whose weight packages are here
        names = list_models() + [a for a in WEIGHT_PACKAGES if package_weights(a) is not None]
    rows = []
    for name in names:
        model = create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
        entry = get_entry(name)
        row = {
            "name": name,
            "family": entry.family if entry else "timm",
            "params": count_parameters(model),
            "flops": count_flops(model, in_chans, img_size),
            "pretrained": entry.pretrained if entry else _timm_pretrained(name),
            "pretrained_here": has_pretrained(name),
            "description": entry.description if entry else "timm model",
        }
        if measure:
            speed = None
            if entry is None or entry.fit == "gradient":
                shape = (name, img_size, in_chans)
                speed = measured_speeds([shape], num_classes, refresh=True, pace=pace)[shape]
            row["train_images_per_s"] = round(speed.train, 1) if speed else None
            row["infer_images_per_s"] = round(speed.infer, 1) if speed else None
        rows.append(row)
    return rows


def format_models(rows: list[dict], img_size: int, measured: bool = False) -> str:
    """``describe_models``' rows as an aligned table: a header of two lines (FLOPs at
    ``img_size``), then one line per model; ``measured`` adds the train/s and infer/s columns."""
    speed = f" {'train/s':>8} {'infer/s':>8}" if measured else ""
    w = max(16, *(len(r["name"]) for r in rows))
    lines = [
        f"{'model':<{w}} {'family':<12} {'params':>10} {'GFLOPs':>9} {'pretrained':>10}{speed}  "
        "description",
        f"{'':<{w}} {'':<12} {'':>10} {f'@{img_size}px':>9}",
    ]
    for r in rows:
        params = f"{r['params'] / 1e6:.2f}M"
        if measured:
            speed = "".join(
                f" {r[k]:>8,.0f}" if r[k] is not None else f" {'-':>8}"
                for k in ("train_images_per_s", "infer_images_per_s")
            )
        weights = "here" if r["pretrained_here"] else ("hub" if r["pretrained"] else "-")
        lines.append(
            f"{r['name']:<{w}} {r['family']:<12} {params:>10} {r['flops'] / 1e9:>9.3f} "
            f"{weights:>10}{speed}  {r['description']}"
        )
    return "\n".join(lines)


def _timm_pretrained(name: str) -> bool:
    import timm

    bare = name.removeprefix("timm:")
    return bool(timm.list_pretrained(bare)) or bool(timm.list_pretrained(bare + ".*"))
