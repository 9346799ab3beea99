"""Transfer learning: where a run's weights start, and which of them train.

``starting_weights`` turns ``--pretrained`` / ``--weights FILE`` / ``--init-from RUN`` into a
``WeightsSource`` (``imagewise.models.weights`` loads it by name and shape). ``Freezer`` holds
the mode: ``--freeze backbone`` (a linear probe: only the classifier trains, everything else in
eval mode), ``--freeze N`` (the first N stages), ``--freeze-bn`` and ``--unfreeze-at EPOCH``
(a hook that lets everything train from that epoch). ``lr_scales`` gives ``--layer-lr-decay``.

Stages are timm's coarse parameter groups (``group_matcher``: stem, then each stage) for timm
models, and for the built-ins the top-level layers in order (``_builtin_stages``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from imagewise.config import RunConfig
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError
from imagewise.models.weights import (
    LoadReport,
    WeightsSource,
    classifier_names,
    decode_like_weights,
    file_weights,
    load_into,
    pretrained_weights,
)
from imagewise.runtime.records import TransferRecord
from imagewise.runtime.runs import RunFolder

log = logging.getLogger("imagewise")

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def starting_weights(cfg: RunConfig) -> WeightsSource | None:
    """The source named by ``--pretrained``, ``--weights`` or ``--init-from`` (None: scratch)."""
    m = cfg.model
    if m.pretrained:
        return pretrained_weights(m.name)
    if m.weights:
        return file_weights(Path(m.weights).expanduser(), "" if m.name == "auto" else m.name)
    if m.init_from:
        return run_weights(m.init_from)
    return None


def run_weights(path: str | Path) -> WeightsSource:
    """An earlier imagewise run as a source: its best weights, preprocessing and classes."""
    folder = RunFolder.of(path)
    if not folder.meta.is_file() or not folder.weights.is_file():
        raise UserError(
            f"--init-from '{path}' is not a finished imagewise run (no meta.json and "
            "model.safetensors); give a run folder written by imagewise train"
        )
    meta = folder.read_meta()
    if meta.spec.capabilities.fit != "gradient":
        raise UserError(f"--init-from: '{path}' holds a {meta.model.name} fit, not a network")
    source = file_weights(folder.weights)
    source.kind, source.where, source.model = "run", str(folder.path), meta.model.name
    source.preprocessing = meta.preprocessing.to_json()
    source.preprocessing_from = f"the run {folder.path}"
    source.classes = list(meta.classes)
    return source


def load_start(model: nn.Module, source: WeightsSource, classes: list[str]) -> LoadReport:
    """Load ``source`` into ``model``; a run's classifier is kept when its classes are the
    data's, in the same order, else it starts new like any other head."""
    same = source.classes is not None and list(source.classes) == list(classes)
    if source.kind == "run" and source.model and not same:
        log.info("--init-from: the run's classes differ from the data's; its classifier starts new")
    return load_into(model, source, keep_head=same)


# ------------------------------------------------------------------------------- the stages


def _builtin_stages(model: nn.Module, head: set[str]) -> list[list[str]]:
    """Top-level children that hold parameters, in order; a lone container (``features``) is
    opened into its own children, and a norm layer joins the layer before it."""
    units: list[tuple[str, nn.Module]] = list(model.named_children())
    while True:
        with_params = [(n, m) for n, m in units if any(True for _ in m.parameters())]
        big = [(n, m) for n, m in with_params if len(list(m.children())) >= 2]
        if len(with_params) >= 3 or not big:
            break
        name, module = max(big, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
        at = next(i for i, (n, _) in enumerate(units) if n == name)
        units[at : at + 1] = [(f"{name}.{c}", sub) for c, sub in module.named_children()]
    stages: list[list[str]] = []
    for name, module in units:
        params = [f"{name}.{p}" for p, _ in module.named_parameters()]
        params = [p for p in params if p not in head]
        if not params:
            continue
        if isinstance(module, _NORMS) and stages:
            stages[-1] += params
        else:
            stages.append(params)
    return stages


def stages(model: nn.Module) -> list[list[str]]:
    """Parameter names by stage, from the input to the last stage before the classifier."""
    head = classifier_names(model)
    matcher = getattr(model, "group_matcher", None)
    if callable(matcher):
        from timm.models._manipulate import group_parameters

        groups = group_parameters(model, matcher(coarse=True))
        found = [[n for n in names if n not in head] for _, names in sorted(groups.items())]
        return [g for g in found if g]
    return _builtin_stages(model, head)


def lr_scales(model: nn.Module, decay: float, head: float = 1.0) -> dict[str, float]:
    """Learning-rate factors by parameter name: ``--layer-lr-decay`` gives the last stage
    ``decay`` times the base rate, the one before ``decay``², down to the stem; the classifier
    learns at ``head`` times it (``head_lr_scale``)."""
    scales = {name: head for name in classifier_names(model)} if head != 1.0 else {}
    if decay >= 1.0:
        return scales
    groups = stages(model)
    scales.update(
        {name: decay ** (len(groups) - i) for i, group in enumerate(groups) for name in group}
    )
    return scales


# A new classifier on trained features learns this many times faster than the layers below
# it, divided by the model's logit scale (ResNet-9's 0.125 shrinks its updates' effect on the
# logits 8x). Measured on the Fashion-MNIST transfer study (BENCHMARKS.md): a linear probe of
# resnet9p_tiny at 20 images per class scored 26% at the base rate (1e-3), 71% at 10x, 83% at
# 30x, 85% at 100x and 80% at 300x; 10 / 0.125 = 80x.
NEW_HEAD_LR = 10.0


def head_lr_scale(model: nn.Module, report: LoadReport | None) -> float:
    """``NEW_HEAD_LR / logit_scale`` when starting weights were loaded and the classifier
    starts new; 1 otherwise (from scratch every layer is new alike)."""
    if report is None or not classifier_names(model) & set(report.new):
        return 1.0
    return NEW_HEAD_LR / float(getattr(model, "logit_scale", 1.0) or 1.0)


# ------------------------------------------------------------------------------- freezing


@dataclass
class Freezer:
    """What trains: ``freeze`` is ``none``, ``backbone`` or a number of stages; the hook lets
    everything (but frozen norms under ``freeze_bn``) train from epoch ``unfreeze_at``.

    ``set_modes`` runs after every ``model.train()``: frozen parts keep eval-mode behaviour
    (BatchNorm statistics, dropout off), so a frozen backbone computes exactly what its cached
    features hold (``imagewise.train.feature_cache``).
    """

    model: nn.Module
    freeze: str = "none"
    freeze_bn: bool = False
    unfreeze_at: int = 0
    frozen: set[str] = field(default_factory=set)
    unfrozen: bool = False
    head_lr_scale: float = 1.0  # the classifier's learning-rate factor (head_lr_scale())

    def __post_init__(self) -> None:
        if self.freeze == "backbone":
            head = classifier_names(self.model)
            if not head:
                raise UserError("--freeze backbone: this model has no separate classifier layer")
            self.frozen = {n for n, _ in self.model.named_parameters() if n not in head}
        elif self.freeze not in ("none", "0"):
            groups, count = stages(self.model), int(self.freeze)
            if count > len(groups):
                raise UserError(
                    f"--freeze {count}: this model has {len(groups)} stages before its "
                    f"classifier; give at most {len(groups)} (or backbone)"
                )
            self.frozen = {n for group in groups[:count] for n in group}
        if self.freeze_bn:
            self.frozen |= self._norm_params()
        self.apply()

    @property
    def active(self) -> bool:
        return bool(self.frozen)

    @property
    def backbone(self) -> bool:
        """Only the classifier trains, for the whole run: its input can be cached."""
        return self.freeze == "backbone" and not self.unfreeze_at

    def _norm_params(self) -> set[str]:
        return {
            f"{m_name}.{p}" if m_name else p
            for m_name, m in self.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p, _ in m.named_parameters(recurse=False)
        }

    def apply(self) -> None:
        for name, param in self.model.named_parameters():
            param.requires_grad_(name not in self.frozen)

    def set_modes(self) -> None:
        """Frozen BatchNorms keep their statistics; under a frozen backbone every layer but the
        classifier runs in eval mode (no dropout, no statistics updates)."""
        head = classifier_names(self.model)
        head_modules = {n.rsplit(".", 1)[0] for n in head}
        for name, module in self.model.named_modules():
            own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
            if self.freeze == "backbone" and not self.unfrozen:
                inside_head = any(name == h or name.startswith(h + ".") for h in head_modules)
                if not inside_head:
                    module.training = False
            elif (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                and own
                and all(p in self.frozen for p in own)
            ):
                module.training = False

    def counts(self) -> tuple[int, int]:
        """Trainable and frozen parameter counts."""
        params = list(self.model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        return trainable, sum(p.numel() for p in params) - trainable

    def describe(self) -> str:
        what = {"none": "full fine-tuning", "0": "full fine-tuning"}.get(self.freeze)
        if what is None:
            what = (
                "frozen backbone (linear probe)"
                if self.freeze == "backbone"
                else f"first {self.freeze} stage(s) frozen"
            )
        if self.freeze_bn:
            what += ", BatchNorm frozen"
        if self.unfreeze_at:
            what += f", everything trains from epoch {self.unfreeze_at}"
        return what

    def to_json(self) -> dict[str, Any]:
        trainable, frozen = self.counts()
        return {
            "mode": self.freeze,
            "freeze_bn": self.freeze_bn,
            "unfreeze_at": self.unfreeze_at,
            "trainable_parameters": trainable,
            "frozen_parameters": frozen,
        }

    # hook: called by fit
    def on_train_start(self, state: Any) -> None:
        self._maybe_unfreeze(state.epoch)  # a resumed run past the epoch

    def on_epoch_end(self, state: Any) -> None:
        self._maybe_unfreeze(state.epoch)

    def _maybe_unfreeze(self, done: int) -> None:
        if not self.unfreeze_at or self.unfrozen or done + 1 < self.unfreeze_at:
            return
        self.unfrozen = True
        self.frozen = self._norm_params() if self.freeze_bn else set()
        self.apply()
        trainable, frozen = self.counts()
        log.info(
            "epoch %d: unfrozen; %s parameters train, %s frozen",
            done + 1, f"{trainable:,}", f"{frozen:,}",
        )  # fmt: skip


# ------------------------------------------------------------------------- a run's start


def weights_before_data(cfg: RunConfig) -> WeightsSource | None:
    """The starting weights, read before the data when the model is known, so that their input
    size (unless ``--img-size`` is given) decides how the images are decoded; an earlier run
    also names the model when ``--model`` is left at auto."""
    m = cfg.model
    if m.init_from and m.name == "auto":
        source = run_weights(m.init_from)
        m.name = source.model
    elif m.name == "auto":
        return None  # chosen from the data first; loaded in start_transfer
    else:
        source = starting_weights(cfg)
    if source is not None and not cfg.data.img_size and source.preprocessing.get("img_size"):
        cfg.data.img_size = min(1024, max(8, int(source.preprocessing["img_size"])))
        log.info(
            "input size %d px from the starting weights (--img-size overrides)",
            cfg.data.img_size,
        )
    if source is not None:
        decode_like_weights(cfg.data, source.preprocessing)
    return source


@dataclass
class TransferStart:
    """What ``start_transfer`` decided: the preprocessing, the freezer, the meta record."""

    preprocessing: InputContract
    freezer: Freezer
    record: TransferRecord | None


def start_transfer(
    cfg: RunConfig,
    model: nn.Module,
    classes: list[str],
    pre: InputContract,
    source: WeightsSource | None,
    show: bool = True,
) -> TransferStart:
    """Load the starting weights into ``model``, take their mean / std / interpolation, set
    what trains, and print it all in one short block."""
    m = cfg.model
    if source is None and m.name != "auto" and (m.pretrained or m.weights):
        source = starting_weights(cfg)  # the model was chosen from the data
    report = load_start(model, source, classes) if source is not None else None
    if source is not None:
        pre = follow_weights(pre, source.preprocessing)
    followed = _followed(cfg, source, pre)
    freezer = Freezer(model, m.freeze, m.freeze_bn, m.unfreeze_at)
    freezer.head_lr_scale = head_lr_scale(model, report)
    trainable, frozen = freezer.counts()
    lines = report.lines() if report is not None else []
    if followed:
        lines.append(f"  preprocessing: {followed}")
    if source is not None or freezer.active:
        lines.append(
            f"mode: {freezer.describe()}: {trainable:,} parameters train, {frozen:,} frozen"
        )
        if freezer.head_lr_scale != 1:
            lines.append(f"the new classifier learns at {freezer.head_lr_scale:g}x the base rate")
        if cfg.train.layer_lr_decay < 1:
            lines.append(f"layer-wise learning rates: x{cfg.train.layer_lr_decay} per stage")
    if show:
        for line in lines:
            log.info("%s", line)
    record = None
    if source is not None or freezer.active or cfg.train.layer_lr_decay < 1:
        values = {
            "weights": report.to_json() if report is not None else None,
            "preprocessing_from": "weights" if source and source.preprocessing else "data",
            "preprocessing_source": source.preprocessing_from if source else "",
            "layer_lr_decay": cfg.train.layer_lr_decay,
            "head_lr_scale": freezer.head_lr_scale,
            **freezer.to_json(),
        }
        record = TransferRecord.from_json(values, "the transfer record", "transfer")
    return TransferStart(pre, freezer, record)


def _followed(cfg: RunConfig, source: WeightsSource | None, pre: InputContract) -> str:
    """The load block's line on the input: what came from the weights' side, and from where."""
    if source is None or not source.preprocessing.get("mean"):
        return ""
    theirs = source.preprocessing
    size = f"{pre.img_size} px"
    if theirs.get("img_size") and int(theirs["img_size"]) != pre.img_size:
        size += f" (--img-size; the weights' {theirs['img_size']})"
    mean = ", ".join(f"{v:.3g}" for v in pre.mean)
    std = ", ".join(f"{v:.3g}" for v in pre.std)
    line = f"{size}, {pre.interpolation}, mean [{mean}], std [{std}] from "
    line += source.preprocessing_from or source.kind
    if len(theirs["mean"]) != pre.channels:
        line += f" (their {len(theirs['mean'])} channels averaged to the data's {pre.channels})"
    theirs_crop = float(theirs.get("crop_pct") or 1.0)
    if pre.crop_pct < 1.0:
        line += f"; centre crop {pre.crop_pct:g}"
        if theirs_crop != pre.crop_pct:
            line += f" (--crop-pct; the weights' {theirs_crop:g})"
    elif theirs_crop < 1.0:
        line += f"; the whole image (--crop-pct 1; the weights' centre crop is {theirs_crop:g})"
    return line


def follow_weights(pre: InputContract, theirs: dict[str, Any]) -> InputContract:
    """``pre`` with the weights' mean / std, converted to the data's channels
    (grayscale data on RGB weights: the mean of the three; RGB data on grayscale weights: the
    one value three times). The size stays the data's: ``weights_before_data`` set it."""
    if not theirs.get("mean") or not theirs.get("std"):
        return pre

    def fit(values: list[float]) -> list[float]:
        values = [float(v) for v in values]
        if len(values) == pre.channels:
            return values
        return [sum(values) / len(values)] * pre.channels

    # the interpolation and crop are those the images were decoded with (weights_before_data
    # chose them)
    return replace(pre, mean=fit(theirs["mean"]), std=fit(theirs["std"]))
