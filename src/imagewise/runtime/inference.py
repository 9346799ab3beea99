"""Logits over a loader: the one inference loop that evaluation, calibration and benchmarks share.

The network answers as the run does (its test-time views, ``imagewise.runtime.tta``), on
normalized batches, with the thread count following the cores other processes leave free.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from imagewise.data.transforms import normalize
from imagewise.edge.spec import InputContract
from imagewise.runtime.device import autocast
from imagewise.runtime.threads import ThreadGovernor
from imagewise.runtime.tta import with_tta


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    pre: InputContract,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    tta: object = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for every batch of ``loader``; ``tta`` (a run's views,
    see ``imagewise.runtime.tta``) averages the logits over them."""
    network = with_tta(model.eval(), tta, pre)
    all_logits, all_labels = [], []
    governor = ThreadGovernor()
    for images, labels in loader:
        if images.shape[0] == 0:
            continue
        governor.tick()
        x = _to_device(normalize(pre, images.to(device)), device, channels_last)
        with autocast(device, amp_dtype):
            logits = network(x).float()
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    governor.close()
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_labels)
