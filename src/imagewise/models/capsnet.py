"""CapsNet of Sabour, Frosst and Hinton 2017, "Dynamic Routing Between Capsules".

Conv 256@9x9 -> PrimaryCaps (32 maps of 8-D capsules, 9x9 stride 2) -> DigitCaps (one 16-D
capsule per class, 3 routing-by-agreement iterations). The "logits" are capsule lengths in [0, 1],
meant for the margin loss (``default_loss = "margin"``). No reconstruction decoder. Inputs above
32 px first go through stride-2 conv-BN-ReLU layers until the map is at most 32 px.
"""

from __future__ import annotations

import torch
from torch import nn

from imagewise.errors import UserError
from imagewise.models.registry import ClassifierBase, register_model, size_error


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Shrink vectors to length ``|s|² / (1 + |s|²)`` keeping their direction."""
    sq = (s * s).sum(dim, keepdim=True)
    return s * (sq / (1.0 + sq)) / torch.sqrt(sq + eps)


class PrimaryCaps(nn.Module):
    """A conv whose output channels are grouped into ``caps_maps`` maps of ``dim``-D capsules."""

    def __init__(self, c_in: int, caps_maps: int = 32, dim: int = 8) -> None:
        super().__init__()
        self.caps_maps, self.dim = caps_maps, dim
        self.conv = nn.Conv2d(c_in, caps_maps * dim, 9, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return squashed capsules, shape (N, caps_maps * H * W, dim)."""
        y = self.conv(x)
        n, _, h, w = y.shape
        y = y.view(n, self.caps_maps, self.dim, h, w).permute(0, 1, 3, 4, 2)
        return squash(y.reshape(n, -1, self.dim))


class DigitCaps(nn.Module):
    """Fully connected capsule layer with dynamic routing."""

    def __init__(
        self, n_in: int, in_dim: int, n_out: int, out_dim: int = 16, iters: int = 3
    ) -> None:
        super().__init__()
        self.iters = iters
        self.weight = nn.Parameter(0.01 * torch.randn(n_in, n_out, out_dim, in_dim))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Route (N, n_in, in_dim) capsules to (N, n_out, out_dim) capsules."""
        u_hat = torch.einsum("iojd,nid->nioj", self.weight, u)
        u_hat_const = u_hat.detach()  # agreement updates do not backpropagate (common practice)
        b = u.new_zeros(u_hat.shape[:3])
        for _ in range(self.iters - 1):
            v = squash(torch.einsum("nio,nioj->noj", b.softmax(dim=2), u_hat_const))
            b = b + torch.einsum("nioj,noj->nio", u_hat_const, v)
        return squash(torch.einsum("nio,nioj->noj", b.softmax(dim=2), u_hat))


class CapsNet(ClassifierBase):
    """CapsNet classifier; forward returns capsule lengths (N, num_classes)."""

    default_loss = "margin"
    gradcam_layer = "primary_caps.conv"

    def __init__(
        self, num_classes: int, in_chans: int, img_size: int, routing_iters: int = 3
    ) -> None:
        super().__init__()
        if routing_iters < 1:
            raise UserError(f"capsnet: routing_iters must be at least 1, got {routing_iters}")
        stem: list[nn.Module] = []
        c, size = in_chans, img_size
        while size > 32:
            stem += [
                nn.Conv2d(c, 64, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            ]
            c, size = 64, (size + 1) // 2
        self.stem = nn.Sequential(*stem)
        self.conv1 = nn.Conv2d(c, 256, 9)
        self.act1 = nn.ReLU(inplace=True)
        self.primary_caps = PrimaryCaps(256)
        grid = (size - 8 - 9) // 2 + 1
        if grid < 1:
            raise size_error("capsnet", img_size)
        self.n_primary = 32 * grid * grid
        self.routing_iters = routing_iters
        self.reset_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the digit capsules, shape (N, num_classes, 16)."""
        x = self.act1(self.conv1(self.stem(x)))
        return self.digit_caps(self.primary_caps(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Return capsule lengths, or the flattened capsules (N, num_classes*16) if pre_logits."""
        if pre_logits:
            return x.flatten(1)
        return (x * x).sum(-1).add(1e-12).sqrt().clamp(max=1.0)

    def get_classifier(self) -> nn.Module:
        """Return the DigitCaps layer (the class-specific part)."""
        return self.digit_caps

    def reset_classifier(self, num_classes: int) -> None:
        """Rebuild the DigitCaps layer for ``num_classes`` classes."""
        old = getattr(self, "digit_caps", None)
        self.digit_caps = DigitCaps(self.n_primary, 8, num_classes, 16, self.routing_iters)
        if old is not None:
            self.digit_caps.to(old.weight.device, old.weight.dtype)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_classes * 16


@register_model("capsnet", family="capsnet", description="CapsNet, dynamic routing (Sabour 2017)")
def capsnet(
    num_classes: int, in_chans: int, img_size: int, pretrained: bool = False, routing_iters: int = 3
) -> nn.Module:
    """Build CapsNet with ``routing_iters`` routing iterations."""
    return CapsNet(num_classes, in_chans, img_size, routing_iters=routing_iters)
