"""Typed configuration: one dataclass per concern, from defaults, then a YAML file, then flags.

The resolved configuration is written into the run folder (``config.yaml``) and into the
checkpoint, so a run can be resumed or re-evaluated without the original command line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagewise.errors import UserError

AUGMENT_PRESETS = ("none", "light", "standard", "strong")

# Field metadata of the settings ``--resume`` may change: the plan's length and where / how it
# runs, not what it computes. A new field declares it here, and the resume check follows.
RESUMABLE = {"resumable": True}


@dataclass
class AugmentConfig:
    """Augmentation: a named preset, each part of which can be set on its own (None = preset)."""

    preset: str = "auto"  # auto = from the training set's size (imagewise.train.auto)
    rotation: float | None = None  # degrees, uniform in [-r, r]
    scale: float | None = None  # zoom: scale factor uniform in [1-s, 1+s]
    translate: float | None = None  # fraction of the image size, each axis
    shear: float | None = None  # degrees
    hflip: bool | None = None
    vflip: bool | None = None
    color_jitter: float | None = None  # brightness / contrast / saturation strength
    noise: float | None = None  # std of Gaussian noise on [0, 1] pixels
    erasing: float | None = None  # probability of random erasing
    randaugment: bool | None = None
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha); 0 = off


@dataclass
class DataConfig:
    """Where the images come from and how they are shaped."""

    source: str = ""
    img_size: int = 0  # 0 = from the data (clipped to 28..224)
    channels: int = 0  # 0 = from the data (1 if every sampled image is grayscale, else 3)
    # the resize's: bilinear | bicubic | nearest ("" = the starting weights', else bilinear)
    interpolation: str = ""
    # centre crop: the square kept after the shorter side is resized to img_size / crop_pct;
    # 1 squashes the whole image (0 = the starting weights', else 1)
    crop_pct: float = 0.0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    # DataLoader workers for streamed file datasets; -1 = one per core
    workers: int = field(default=-1, metadata=RESUMABLE)
    cache: str = "auto"  # auto | ram | none: decode a file dataset once into memory when it fits
    strict: bool = False  # fail on a corrupt image instead of skipping it
    # auto (a CSV manifest with several labels per image is multi-label) | single | multilabel
    task: str = "auto"
    label_separator: str = "|"  # between a multi-label manifest's labels in one cell
    # CSV manifests of images labelled later (path,label[,split],labelled_by[,probability]),
    # added to the splits in order (imagewise.data.extra); stored as absolute paths
    add_labels: list[str] = field(default_factory=list)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    """Which network, and how it starts."""

    name: str = "auto"
    pretrained: bool = False  # the timm / torchvision hub's weights (their cache when offline)
    weights: str = ""  # a safetensors file or a state dict to start from
    init_from: str = ""  # an earlier imagewise run folder to start from
    freeze: str = "none"  # none | backbone (linear probe) | N (the first N stages)
    unfreeze_at: int = 0  # from this epoch on nothing is frozen (0 = never)
    freeze_bn: bool = False  # BatchNorm keeps its statistics and affine weights
    dropout: float | None = None
    time_budget: str = ""  # --model auto: training time to fit in, e.g. 5m, 90s, 1h


@dataclass
class TrainConfig:
    """The optimisation: loss, optimizer, schedule, stopping, hardware."""

    # None = from the training set's size, recorded resolved in config.yaml (train.auto)
    epochs: int | None = field(default=None, metadata=RESUMABLE)
    batch_size: int | None = None
    lr: float | None = None  # None = the optimizer's default, scaled with the batch size
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float | None = None  # None = the optimizer's default
    schedule: str = "onecycle"
    warmup_epochs: float | None = None  # not onecycle; warmup_steps wins when both are set
    # None = a fraction of all steps: onecycle 25%, cosine / step 5%, constant none
    warmup_steps: int | None = None
    step_size: int = 0  # step schedule: epochs between decays (0 = a third of the run)
    gamma: float = 0.1  # step schedule: decay factor
    loss: str = "auto"  # auto | cross_entropy | mse | margin | bce | asl (the last two multi-label)
    label_smoothing: float = 0.1
    class_weight: str = "none"  # none | auto (inverse class frequency in the loss)
    sampler: str = "shuffle"  # shuffle | balanced (every class drawn equally often)
    # what picks the best epoch: auto = macro F1 when the classes are imbalanced by more than
    # 3x, else accuracy | accuracy | macro_f1
    select_by: str = "auto"
    # multi-label: each label's threshold is fitted on validation for its best F1, or with a
    # target precision (0..1) for the most recall at that precision (0 = best F1)
    target_precision: float = 0.0
    patience: int = 0  # early stopping: epochs without improvement (0 = off)
    ema_decay: float = 0.0  # exponential moving average of weights (0 = off)
    grad_clip: float = 0.0
    layer_lr_decay: float = 1.0  # each stage below the head learns this factor slower (1 = off)
    # with a frozen backbone: compute its outputs once and train the head on them (auto = on)
    cache_features: str = "auto"  # auto | on | off
    feature_views: int = 1  # cached features: the plain image plus N-1 augmented views
    seed: int = 0
    device: str = field(default="auto", metadata=RESUMABLE)
    channels_last: bool = True
    # auto: bf16 (or fp16) on GPU; on CPUs with AVX512-BF16 or AMX bf16 if a timed step is
    # faster than fp32 (runtime.device.measure_bf16_speedup); else fp32
    precision: str = field(default="auto", metadata=RESUMABLE)  # auto | fp32 | bf16 | fp16
    # auto (CUDA only: measured slower on CPU) | on | off
    compile: str = field(default="auto", metadata=RESUMABLE)
    tta: bool = False  # answer with the mean over mirror / shifted views (all inference)
    # Distillation (imagewise distill): the teacher run folder ("" = none), the weight of its
    # soft targets against the labels (0..1), and their temperature (Hinton et al. 2015)
    teacher: str = ""
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0


@dataclass
class RunConfig:
    """Everything about one training run."""

    recipe: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Flat option names, shared by the command line and the Python API: name -> (section path, field).
OPTIONS: dict[str, tuple[str, str]] = {
    "model": ("model", "name"),
    **{
        name: ("model", name)
        for name in (
            "pretrained",
            "weights",
            "init_from",
            "freeze",
            "unfreeze_at",
            "freeze_bn",
            "dropout",
            "time_budget",
        )
    },
    "img_size": ("data", "img_size"),
    "channels": ("data", "channels"),
    "interpolation": ("data", "interpolation"),
    "crop_pct": ("data", "crop_pct"),
    "val_fraction": ("data", "val_fraction"),
    "test_fraction": ("data", "test_fraction"),
    "split_seed": ("data", "split_seed"),
    "workers": ("data", "workers"),
    "cache": ("data", "cache"),
    "strict": ("data", "strict"),
    "task": ("data", "task"),
    "label_separator": ("data", "label_separator"),
    "add_labels": ("data", "add_labels"),
    "augment": ("data.augment", "preset"),
    **{
        name: ("data.augment", name)
        for name in (
            "rotation",
            "scale",
            "translate",
            "shear",
            "hflip",
            "vflip",
            "color_jitter",
            "noise",
            "erasing",
            "randaugment",
            "mixup",
            "cutmix",
        )
    },
    **{f.name: ("train", f.name) for f in dataclasses.fields(TrainConfig)},
}


def _section(config: RunConfig, path: str) -> Any:
    obj: Any = config
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _coerce(value: Any, kind: str, where: str) -> Any:
    """Convert a YAML/flag value to the field's declared type (``kind`` is its annotation).

    PyYAML reads ``1e-3`` as a string, so the declared type decides, not the value's own.
    """
    if value is None:
        if "None" in kind:
            return None
        raise UserError(f"{where} must be set")
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1", "on"):
            return True
        if str(value).lower() in ("false", "no", "0", "off"):
            return False
        raise UserError(f"{where} must be true or false, not {value!r}")
    base = kind.split("|")[0].strip()
    if base.startswith("list["):  # a YAML list, a repeated flag, or one value
        items = value if isinstance(value, list | tuple) else [value]
        return [_coerce(item, base[5:-1], where) for item in items]
    if base == "str" and isinstance(value, bool):  # YAML 1.1 reads on/off as booleans
        return "on" if value else "off"
    convert = {"int": int, "float": float, "str": str}.get(base)
    if convert is None:
        return value
    try:
        if convert is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return convert(value)
    except (TypeError, ValueError):
        raise UserError(
            f"{where} must be a {'number' if base != 'str' else 'text'}, not {value!r}"
        ) from None


def _field_type(target: Any, name: str) -> str:
    return str(next(f.type for f in dataclasses.fields(target) if f.name == name))


def _merge(target: Any, values: dict[str, Any], where: str) -> None:
    names = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise UserError(f"unknown setting '{key}' in {where}; known settings: {known}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{where}.{key} must be a mapping")
            _merge(current, value, f"{where}.{key}")
        else:
            setattr(target, key, _coerce(value, _field_type(target, key), f"{where}.{key}"))


def resumable_options() -> list[str]:
    """The flat options whose field is declared ``RESUMABLE``, in ``OPTIONS`` order."""
    config = RunConfig()
    return [
        name
        for name, (section, attr) in OPTIONS.items()
        if next(
            f for f in dataclasses.fields(_section(config, section)) if f.name == attr
        ).metadata.get("resumable")
    ]


def option_type(name: str) -> str:
    """The declared type of a flat option (its dataclass field's annotation), e.g. ``int``."""
    section, attr = OPTIONS[name]
    return _field_type(_section(RunConfig(), section), attr)


def config_from_dict(values: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Build a RunConfig from nested sections (data / model / train), as in a YAML file."""
    config = base if base is not None else RunConfig()
    _merge(config, values or {}, "config")
    return config


# A config file is a few dozen settings; these bounds stop a hostile or mistaken file (a huge
# file, or a few bytes of nested YAML aliases that expand to billions of values) in milliseconds.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 10_000


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """Parse a small YAML file safely: size-limited, and refused when its aliases expand to
    more than ``MAX_CONFIG_VALUES`` values (YAML "billion laughs")."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist; check the path given to --config")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(
            f"{what} '{path}' is {path.stat().st_size:,} bytes; a config file is at most "
            f"{MAX_CONFIG_BYTES:,}"
        )
    text = path.read_bytes()
    if _bracket_depth(text) > MAX_CONFIG_DEPTH:  # PyYAML's parser recurses per level
        raise UserError(
            f"{what} '{path}' nests more than {MAX_CONFIG_DEPTH} levels deep; a config file's "
            "settings are a few levels at most"
        )
    try:
        values = yaml.safe_load(text.decode())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} '{path}' is not valid YAML: {exc}".splitlines()[0]) from exc
    except RecursionError as exc:  # indentation nesting, which the bracket count does not see
        raise UserError(
            f"{what} '{path}' nests too deeply to read; a config file's settings are a few "
            "levels at most"
        ) from exc
    if _expanded_size(values, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise UserError(
            f"{what} '{path}' expands to more than {MAX_CONFIG_VALUES:,} values (nested YAML "
            "aliases?); write the settings out plainly"
        )
    return values


MAX_CONFIG_DEPTH = 64


def _bracket_depth(text: bytes) -> int:
    """The deepest nesting of YAML flow brackets (``[[[...]]]``, ``{{...}}``) in ``text``,
    ignoring quoted strings and comments roughly (over-counting only refuses absurd files)."""
    depth = deepest = 0
    for byte in text:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth = max(0, depth - 1)
    return deepest


def _expanded_size(value: Any, limit: int) -> int:
    """How many values ``value`` holds once aliases are expanded, counting no further than
    just past ``limit`` (an alias bomb is a small graph of shared lists: never walk it all)."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return count


def load_config_file(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Read a YAML config file (sections data / model / train) over ``base`` or the defaults."""
    values = read_yaml_file(path) or {}
    if not isinstance(values, dict):
        raise UserError(f"config file '{path}' must hold a mapping with sections data/model/train")
    return config_from_dict(values, base)


def apply_options(config: RunConfig, options: dict[str, Any]) -> RunConfig:
    """Apply flat options (``lr=0.01``, ``model='resnet18'``) over a config; None means unset."""
    for name, value in options.items():
        if value is None:
            continue
        if name not in OPTIONS:
            raise UserError(f"unknown option '{name}'; known options: {', '.join(sorted(OPTIONS))}")
        section, attr = OPTIONS[name]
        target = _section(config, section)
        flag = f"--{name.replace('_', '-')}"
        setattr(target, attr, _coerce(value, _field_type(target, attr), flag))
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Reject settings that cannot work, with a message that says what to do."""
    t, d = config.train, config.data
    if t.epochs is not None and t.epochs < 1:
        raise UserError(f"--epochs must be at least 1, not {t.epochs}")
    if t.batch_size is not None and t.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {t.batch_size}")
    _refuse_non_finite(config)
    if t.lr is not None and t.lr <= 0:
        raise UserError(f"--lr must be positive, not {t.lr}")
    if config.model.dropout is not None and not 0 <= config.model.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), not {config.model.dropout}")
    if t.weight_decay is not None and t.weight_decay < 0:
        raise UserError(f"--weight-decay must be 0 or more, not {t.weight_decay}")
    if not 0 <= t.momentum < 1:
        raise UserError(f"--momentum must be in [0, 1), not {t.momentum}")
    if d.augment.preset not in (*AUGMENT_PRESETS, "auto"):
        raise UserError(
            f"unknown augmentation preset '{d.augment.preset}'; choose one of "
            + ", ".join(AUGMENT_PRESETS)
            + " or auto"
        )
    if (t.warmup_steps or 0) < 0 or (t.warmup_epochs or 0) < 0:
        raise UserError("--warmup-steps and --warmup-epochs must be 0 or more")
    if d.channels not in (0, 1, 3):
        raise UserError(f"--channels must be 1 or 3, not {d.channels}")
    if d.img_size and not 8 <= d.img_size <= 1024:
        raise UserError(f"--img-size must be between 8 and 1024, not {d.img_size}")
    if d.interpolation not in ("", "bilinear", "bicubic", "nearest"):
        raise UserError(
            f"--interpolation must be bilinear, bicubic or nearest, not {d.interpolation!r}"
        )
    if d.crop_pct and not 0.5 <= d.crop_pct <= 1:
        raise UserError(
            f"--crop-pct must be between 0.5 and 1 (1: the whole image), not {d.crop_pct:g}"
        )
    if not (0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1):
        raise UserError("--val-fraction and --test-fraction must be between 0 and 1")
    if d.val_fraction + d.test_fraction >= 0.9:
        raise UserError("--val-fraction plus --test-fraction leave too little to train on")
    if d.cache not in ("auto", "ram", "none"):
        raise UserError(f"--cache must be auto, ram or none, not {d.cache}")
    if not 0 <= t.target_precision < 1:
        raise UserError(
            f"--target-precision must be in [0, 1) (0: best F1 per label), not {t.target_precision}"
        )
    if not d.label_separator or d.label_separator in (",", '"', "\n"):
        raise UserError(
            f"--label-separator must be a character other than a comma or quote, not "
            f"{d.label_separator!r}"
        )
    if not 0 <= t.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), not {t.label_smoothing}")
    if not 0 <= t.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1), not {t.ema_decay}")
    if not 0 <= t.distill_alpha <= 1:
        raise UserError(f"--distill-alpha must be in [0, 1], not {t.distill_alpha}")
    if not t.distill_temperature > 0:
        raise UserError(f"--distill-temperature must be positive, not {t.distill_temperature}")
    for flag, value, allowed in (
        ("--class-weight", t.class_weight, ("none", "auto")),
        ("--sampler", t.sampler, ("shuffle", "balanced")),
        ("--select-by", t.select_by, ("auto", "accuracy", "macro_f1", "map")),
        ("--task", d.task, ("auto", "single", "multilabel")),
    ):
        if value not in allowed:
            raise UserError(
                f"{flag} must be {', '.join(allowed[:-1])} or {allowed[-1]}, not {value!r}"
            )
    _validate_transfer(config)


def _refuse_non_finite(config: RunConfig) -> None:
    """A NaN or infinite number anywhere in the settings (``--lr nan``, ``lr: .nan``) is one
    line: every range check below would let NaN through (all its comparisons are false)."""
    sections = [config.data, config.data.augment, config.model, config.train]
    for section in sections:
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                flag = "--" + f.name.replace("_", "-")
                raise UserError(f"{flag} must be a finite number, not {value}")


def _validate_transfer(config: RunConfig) -> None:
    m, t = config.model, config.train
    starts = [f for f, on in (("--pretrained", m.pretrained), ("--weights", m.weights),
                              ("--init-from", m.init_from)) if on]  # fmt: skip
    if len(starts) > 1:
        raise UserError(f"{' and '.join(starts)} both name starting weights; give one")
    if m.freeze not in ("none", "backbone") and not (m.freeze.isdigit()):
        raise UserError(f"--freeze must be none, backbone or a number of stages, not {m.freeze!r}")
    if m.time_budget:
        parse_time_budget(m.time_budget)
    if m.unfreeze_at < 0:
        raise UserError(f"--unfreeze-at must be an epoch number, not {m.unfreeze_at}")
    if m.unfreeze_at and m.freeze in ("none", "0"):
        raise UserError("--unfreeze-at needs something frozen first: add --freeze backbone or N")
    if not 0 < t.layer_lr_decay <= 1:
        raise UserError(f"--layer-lr-decay must be in (0, 1], not {t.layer_lr_decay}")
    if t.cache_features not in ("auto", "on", "off"):
        raise UserError(f"--cache-features must be auto, on or off, not {t.cache_features}")
    if t.feature_views < 1:
        raise UserError(f"--feature-views must be at least 1, not {t.feature_views}")


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_time_budget(text: str) -> float:
    """Seconds in a time budget such as ``90s``, ``5m``, ``1.5h`` or ``300`` (seconds).

    Raises ``UserError`` (one line) for anything else or a budget that is not positive.
    """
    value = text.strip().lower()
    scale = _UNITS.get(value[-1:], 0) if value else 0
    number = value[:-1] if scale else value
    scale = scale or 1
    try:
        seconds = float(number) * scale
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or math.isinf(seconds):
        raise UserError(f"--time-budget must be a duration such as 90s, 5m or 1h, not {text!r}")
    return seconds


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML, atomically."""
    import yaml

    from imagewise.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
