"""The run folder's metadata (``meta.json``) as a typed object: the contract between training and
every later stage.

Training writes a ``RunMeta``; evaluate, predict, explain, export and serve read one with
``RunMeta.from_json``, which first brings an older layout up to date (``migrate``, the only code
that knows older layouts) and then checks every field (``validate``), so a later stage trusts
what it holds: a run folder from elsewhere with ``img_size: 100000`` or ``classes: []`` is refused
in one line naming the file and the field, instead of allocating terabytes or answering 500s.
What a model can do (``Capabilities``) travels here too, so no stage tests a model's name.
(torchvision ``Weights.meta``; timm ``PretrainedCfg``.)

This module imports nothing heavy: reading a run's metadata (``--resume`` checks, ``compare``,
the CLI's messages) must not cost the seconds that importing torch and torchvision takes. That is
why preprocessing is held as ``PreprocessingSpec`` (the same five fields as
``imagewise.data.transforms.Preprocessing``, which imports torch) with ``to_preprocessing()``.

Example::

    meta = RunMeta.from_json(read_json(path), source=f"meta.json of '{folder}'")
    pre = meta.preprocessing.to_preprocessing()
    if meta.model.capabilities.onnx_export: ...
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from imagewise.errors import UserError

if TYPE_CHECKING:
    from imagewise.data.transforms import Preprocessing

FORMAT = "imagewise-run/2"  # /2: model.capabilities added
OLDER_FORMATS = ("imagewise-run/1",)  # what migrate() reads; files with no format key are /1

IMG_SIZE_RANGE = (8, 4096)  # training takes 8..1024; a run from elsewhere may be larger
CHANNELS_RANGE = (1, 4)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PRECISIONS = ("fp32", "bf16", "fp16")
FITS = ("gradient", "one_pass")

ConfigReader = Callable[[], "bool | dict[str, Any]"]
"""Reads ``train.tta`` from the run's config.yaml: asked only for runs whose meta.json predates
the ``tta`` entry."""


@dataclass(frozen=True)
class Capabilities:
    """What a model supports, declared on its registry entry and carried in ``meta.json``.

    ``fit``: ``gradient`` (the training loop) or ``one_pass`` (one fit, no epochs, no resume).
    ``onnx_export``: its graph exports to ONNX / TorchScript. ``gradcam``: it is differentiable
    down to a convolutional feature map, so Grad-CAM can explain it.
    """

    fit: Literal["gradient", "one_pass"] = "gradient"
    onnx_export: bool = True
    gradcam: bool = True

    @classmethod
    def of(cls, declared: object) -> Capabilities:
        """The capabilities an object declares (a registry entry or a model), by its attributes
        ``fit`` / ``onnx_export`` / ``gradcam``; a missing one keeps its default. Duck-typed so
        this module needs no import of the model registry (and of torch)."""
        default = cls()
        return cls(
            fit=getattr(declared, "fit", default.fit),
            onnx_export=getattr(declared, "onnx_export", default.onnx_export),
            gradcam=getattr(declared, "gradcam", default.gradcam),
        )

    def to_json(self) -> dict[str, Any]:
        return {"fit": self.fit, "onnx_export": self.onnx_export, "gradcam": self.gradcam}


ONE_PASS = Capabilities(fit="one_pass", onnx_export=False, gradcam=False)


@dataclass(frozen=True)
class ModelSpec:
    """Enough to rebuild the network: ``create_model(name, num_classes, **kwargs)``."""

    name: str
    kwargs: dict[str, Any]
    num_classes: int
    parameters: int
    capabilities: Capabilities = Capabilities()


@dataclass(frozen=True)
class PreprocessingSpec:
    """What the model expects of its input; ``to_preprocessing()`` gives the torch-side object."""

    img_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        # lists (as Preprocessing and JSON hold them) become tuples: a frozen spec stays frozen
        for name in ("mean", "std"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def of(cls, pre: Preprocessing) -> PreprocessingSpec:
        return cls(pre.img_size, pre.channels, tuple(pre.mean), tuple(pre.std), pre.interpolation)

    def to_preprocessing(self) -> Preprocessing:
        from imagewise.data.transforms import Preprocessing

        return Preprocessing(
            self.img_size, self.channels, list(self.mean), list(self.std), self.interpolation
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "img_size": self.img_size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


@dataclass(frozen=True)
class DataSummary:
    """Where the training data came from and how many images each split held."""

    source: str
    kind: str
    train_images: int
    val_images: int
    test_images: int
    skipped_images: int

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "train_images": self.train_images,
            "val_images": self.val_images,
            "test_images": self.test_images,
            "skipped_images": self.skipped_images,
        }


@dataclass
class RunMeta:
    """The contents of a run's ``meta.json``, typed.

    Mutable on purpose: training fills ``training``, ``temperature`` and ``calibration`` in as it
    goes and rewrites the file. ``training`` stays a free-form summary (``epochs_run``,
    ``best_epoch``, ..., ``classical`` for a one-pass fit): it is reported, never acted on.
    ``tta`` is ``{}`` or ``{"mirror": bool, "shift": pixels}`` (``imagewise.runtime.tta``).
    ``precision`` and ``calibration`` are ``None`` when the run did not record them (a one-pass
    fit has no precision; a run stopped before calibration has none) and are then left out of
    the file, as today. ``extra`` keeps top-level keys this version does not know, so rewriting
    a file keeps them.
    """

    classes: list[str]
    model: ModelSpec
    preprocessing: PreprocessingSpec
    data: DataSummary
    versions: dict[str, str]
    created: str
    temperature: float = 1.0
    tta: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    processes: int = 1
    precision: str | None = None
    calibration: dict[str, Any] | None = None
    # Where the run started from and what it trained (weights source, what was loaded, adapted
    # and left new, freeze mode, trainable / frozen counts); None for a run from scratch with
    # everything trained.
    transfer: dict[str, Any] | None = None
    # Distillation: the teacher run (path, model, classes) and the loss weights; None without.
    teacher: dict[str, Any] | None = None
    # --model auto: what was chosen (model, size, epochs) and why; None when a model was named.
    choice: dict[str, Any] | None = None
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(
        cls,
        values: Mapping[str, Any],
        *,
        source: str = "meta.json",
        config_reader: ConfigReader | None = None,
    ) -> RunMeta:
        """Read a parsed ``meta.json`` of any release: migrate it, then validate every field.

        Args:
            values: the parsed JSON object.
            source: how messages name the file, e.g. ``meta.json of 'runs/x'``.
            config_reader: returns the run config's ``train.tta``; asked only for runs written
                before meta.json carried ``tta`` (without one, such a run has no TTA).

        Raises:
            UserError: one line naming ``source``, the field and what it must be.
        """
        if not isinstance(values, Mapping):
            raise UserError(f"{source}: holds {_show(values)}; it must be a JSON object")
        v = migrate(values, config_reader, source=source)  # a deep copy: nothing shared
        model, pre, data = (_section(v, key, source) for key in ("model", "preprocessing", "data"))
        caps = _section(model, "capabilities", source, "model.")

        def take(section: Mapping[str, Any], key: str, prefix: str = "") -> Any:
            if key not in section:
                raise UserError(f"{source}: {prefix}{key} is missing; rewrite it or retrain")
            return section[key]

        meta = cls(
            classes=_as_list(take(v, "classes")),
            model=ModelSpec(
                name=take(model, "name", "model."),
                kwargs=take(model, "kwargs", "model."),
                num_classes=take(model, "num_classes", "model."),
                parameters=take(model, "parameters", "model."),
                capabilities=Capabilities(
                    fit=take(caps, "fit", "model.capabilities."),
                    onnx_export=take(caps, "onnx_export", "model.capabilities."),
                    gradcam=take(caps, "gradcam", "model.capabilities."),
                ),
            ),
            preprocessing=PreprocessingSpec(
                img_size=take(pre, "img_size", "preprocessing."),
                channels=take(pre, "channels", "preprocessing."),
                mean=_as_floats(take(pre, "mean", "preprocessing.")),
                std=_as_floats(take(pre, "std", "preprocessing.")),
                interpolation=take(pre, "interpolation", "preprocessing."),
            ),
            data=DataSummary(**{k: take(data, k, "data.") for k in _DATA_KEYS}),
            versions=take(v, "versions"),
            created=take(v, "created"),
            temperature=_as_float(take(v, "temperature")),
            tta=take(v, "tta"),
            training=take(v, "training"),
            processes=take(v, "processes"),
            precision=v.get("precision"),
            calibration=v.get("calibration"),
            transfer=v.get("transfer"),
            teacher=v.get("teacher"),
            choice=v.get("choice"),
            format=v["format"],
            extra={k: x for k, x in v.items() if k not in _TOP_KEYS},
        )
        validate(meta, source)
        return meta

    def to_json(self) -> dict[str, Any]:
        """What ``meta.json`` holds: the keys and their order of today's files, ``format``
        ``FORMAT``; ``precision`` and ``calibration`` only when recorded."""
        out: dict[str, Any] = {
            "format": self.format,
            "created": self.created,
            "classes": list(self.classes),
            "model": {
                "name": self.model.name,
                "kwargs": copy.deepcopy(self.model.kwargs),
                "num_classes": self.model.num_classes,
                "parameters": self.model.parameters,
                "capabilities": self.model.capabilities.to_json(),
            },
            "preprocessing": self.preprocessing.to_json(),
            "temperature": self.temperature,
            "tta": dict(self.tta),
            "data": self.data.to_json(),
            "versions": dict(self.versions),
            "training": copy.deepcopy(self.training),
            "processes": self.processes,
        }
        if self.precision is not None:
            out["precision"] = self.precision
        for key in _REPORTS:
            if getattr(self, key) is not None:
                out[key] = copy.deepcopy(getattr(self, key))
        out.update({k: copy.deepcopy(x) for k, x in self.extra.items() if k not in out})
        return out


_DATA_KEYS = ("source", "kind", "train_images", "val_images", "test_images", "skipped_images")
_TOP_KEYS = (
    "format", "created", "classes", "model", "preprocessing", "temperature", "tta", "data",
    "versions", "training", "processes", "precision", "calibration", "transfer", "teacher",
    "choice",
)  # fmt: skip
# Optional objects written only when recorded, validated as JSON objects.
_REPORTS = ("calibration", "transfer", "teacher", "choice")


# ---------------------------------------------------------------- migration (older layouts)


def migrate(
    values: Mapping[str, Any],
    config_reader: ConfigReader | None = None,
    *,
    source: str = "meta.json",
) -> dict[str, Any]:
    """``values`` (a parsed meta.json of any release) in the layout of ``FORMAT``; a new dict.

    The only place that knows older layouts. It fills in what older files lack and converts
    what they wrote differently; it checks nothing beyond the format (``validate`` does), and
    leaves alone what it cannot make sense of, for ``validate`` to name.

    Args:
        values: the parsed JSON object.
        config_reader: returns config.yaml's ``train.tta``, for runs from before meta.json
            carried ``tta``.
        source: how a message names the file.

    Raises:
        UserError: the format is unknown, or newer than this imagewise reads.
    """
    out = copy.deepcopy(dict(values))
    fmt = out.get("format", OLDER_FORMATS[0])  # the first files had no format key
    while fmt != FORMAT:
        if fmt not in _STEPS:
            raise UserError(f"{source}: {_format_refusal(fmt)}")
        fmt, step = _STEPS[fmt]
        step(out, config_reader)
    out["format"] = FORMAT
    return out


def _one_to_two(v: dict[str, Any], config_reader: ConfigReader | None) -> None:
    """imagewise-run/1 -> /2: ``model.capabilities`` added, and /1's own gaps filled: early
    files had no ``tta`` (config.yaml's ``train.tta`` held it, ``true`` meaning the mirror alone)
    and may lack ``temperature``, ``processes``, ``interpolation``, ``kwargs``, ``parameters``."""
    if "tta" not in v:
        v["tta"] = config_reader() if config_reader is not None else {}
    v["tta"] = _views(v["tta"])
    v.setdefault("temperature", 1.0)
    v.setdefault("processes", 1)
    v.setdefault("created", "")
    v.setdefault("versions", {})
    v.setdefault("training", {})
    pre, model, training = v.get("preprocessing"), v.get("model"), v.get("training")
    if isinstance(pre, dict):
        pre.setdefault("interpolation", "bilinear")
    if isinstance(model, dict):
        model.setdefault("kwargs", {})
        model.setdefault("parameters", 0)
        if isinstance(v.get("classes"), list):
            model.setdefault("num_classes", len(v["classes"]))
        # The one place that knows a model by its name: /1 files did not record what a model
        # can do, and hog_svm, the only one-pass model then, was told by its name or by the
        # "classical" entry its fit left in the training summary. Every later reader asks
        # model.capabilities instead.
        one_pass = model.get("name") == "hog_svm" or (
            isinstance(training, dict) and "classical" in training
        )
        model.setdefault("capabilities", (ONE_PASS if one_pass else Capabilities()).to_json())


_STEPS: dict[str, tuple[str, Callable[[dict[str, Any], ConfigReader | None], None]]] = {
    "imagewise-run/1": ("imagewise-run/2", _one_to_two),
}


def _views(value: Any) -> Any:
    """An old ``tta`` entry as views: ``true`` was the mirror alone, ``false`` none, and a views
    dict may lack a key; anything else is returned for ``validate`` to name. (The same reading
    as ``imagewise.runtime.tta.tta_views``, which imports torch.)"""
    if value is True:
        return {"mirror": True, "shift": 0}
    if value is False or value is None or value == {}:
        return {}
    if isinstance(value, dict) and set(value) <= {"mirror", "shift"}:
        views = {"mirror": value.get("mirror", False), "shift": value.get("shift", 0)}
        return {} if views == {"mirror": False, "shift": 0} else views
    return value


def _format_refusal(fmt: Any) -> str:
    known = ", ".join(_show(f) for f in (*OLDER_FORMATS, FORMAT))
    match = re.fullmatch(r"imagewise-run/(\d+)", fmt) if isinstance(fmt, str) else None
    if match and int(match[1]) > int(FORMAT.rsplit("/", 1)[1]):
        return (
            f"format is {_show(fmt)}, written by a newer imagewise (this one reads up to "
            f"{_show(FORMAT)}); upgrade imagewise to use this run"
        )
    return f"format is {_show(fmt)}; it must be one of {known}"


# ---------------------------------------------------------------- validation


def validate(meta: RunMeta, source: str = "meta.json") -> None:
    """Check every field of ``meta``; raise one ``UserError`` line for the first bad one.

    ``from_json`` calls it on load; a writer may call it before writing. Bounds: ``img_size``
    8..4096, ``channels`` 1..4 with as many ``mean`` / ``std`` values, ``std`` > 0, everything
    finite, 2 or more distinct non-empty class names matching ``model.num_classes``,
    ``temperature`` > 0, a TTA shift smaller than the image.
    """

    def bad(name: str, value: Any, must: str) -> UserError:
        return UserError(f"{source}: {name} is {_show(value)}; {must}")

    if meta.format != FORMAT:
        raise UserError(f"{source}: {_format_refusal(meta.format)}")
    _check_model(meta.model, bad)
    _check_classes(meta.classes, meta.model.num_classes, source, bad)
    _check_preprocessing(meta.preprocessing, bad)
    t = meta.temperature
    if not (_is_number(t) and math.isfinite(t) and t > 0):
        raise bad("temperature", t, "it must be a finite number above 0")
    _check_tta(meta.tta, meta.preprocessing.img_size, bad)
    d = meta.data
    for name in ("source", "kind"):
        if not isinstance(getattr(d, name), str):
            raise bad(f"data.{name}", getattr(d, name), "it must be a string")
    for name in _DATA_KEYS[2:]:
        if not (_is_int(getattr(d, name)) and getattr(d, name) >= 0):
            raise bad(f"data.{name}", getattr(d, name), "it must be a whole number, 0 or more")
    if not _is_str_map(meta.versions) or not all(
        isinstance(x, str) for x in meta.versions.values()
    ):
        raise bad("versions", meta.versions, "it must map package names to version strings")
    if not _is_str_map(meta.training):
        raise bad("training", meta.training, "it must be an object (the training summary)")
    for key in _REPORTS:
        value = getattr(meta, key)
        if value is not None and not _is_str_map(value):
            raise bad(key, value, "it must be an object or absent")
    if not (_is_int(meta.processes) and meta.processes >= 1):
        raise bad("processes", meta.processes, "it must be a whole number, 1 or more")
    if meta.precision is not None and meta.precision not in PRECISIONS:
        raise bad("precision", meta.precision, f"it must be one of {', '.join(PRECISIONS)}")
    if not isinstance(meta.created, str):
        raise bad("created", meta.created, "it must be a date string")
    if not _is_str_map(meta.extra):
        raise bad("extra", meta.extra, "it must be an object")


_Bad = Callable[[str, Any, str], UserError]


def _check_model(m: ModelSpec, bad: _Bad) -> None:
    if not (isinstance(m.name, str) and m.name):
        raise bad("model.name", m.name, "it must be a model name")
    if not _is_str_map(m.kwargs):
        raise bad("model.kwargs", m.kwargs, "it must be an object of keyword arguments")
    if not (_is_int(m.num_classes) and m.num_classes >= 2):
        raise bad("model.num_classes", m.num_classes, "it must be a whole number, 2 or more")
    if not (_is_int(m.parameters) and m.parameters >= 0):
        raise bad("model.parameters", m.parameters, "it must be a whole number, 0 or more")
    c = m.capabilities
    if c.fit not in FITS:
        raise bad("model.capabilities.fit", c.fit, f"it must be one of {', '.join(FITS)}")
    for name in ("onnx_export", "gradcam"):
        if not isinstance(getattr(c, name), bool):
            raise bad(f"model.capabilities.{name}", getattr(c, name), "it must be true or false")


def _check_classes(classes: Any, num_classes: int, source: str, bad: _Bad) -> None:
    must = "it must be a non-empty list of distinct class names"
    if not isinstance(classes, list) or not classes:
        raise bad("classes", classes, must)
    for i, name in enumerate(classes):
        if not (isinstance(name, str) and name):
            raise bad(f"classes[{i}]", name, "it must be a non-empty class name")
    seen: set[str] = set()
    for name in classes:
        if name in seen:
            raise UserError(
                f"{source}: classes has {_show(name)} twice; class names must be distinct"
            )
        seen.add(name)
    if len(classes) != num_classes:
        raise UserError(
            f"{source}: classes has {len(classes)} names; it must have model.num_classes "
            f"({num_classes})"
        )


def _check_preprocessing(p: PreprocessingSpec, bad: _Bad) -> None:
    lo, hi = IMG_SIZE_RANGE
    if not (_is_int(p.img_size) and lo <= p.img_size <= hi):
        raise bad("preprocessing.img_size", p.img_size, f"it must be between {lo} and {hi}")
    lo, hi = CHANNELS_RANGE
    if not (_is_int(p.channels) and lo <= p.channels <= hi):
        raise bad("preprocessing.channels", p.channels, f"it must be between {lo} and {hi}")
    for name in ("mean", "std"):
        values = getattr(p, name)
        if not isinstance(values, tuple) or len(values) != p.channels:
            raise bad(
                f"preprocessing.{name}", values,
                f"it must hold one number per channel ({p.channels})",
            )  # fmt: skip
        for i, x in enumerate(values):
            if not (_is_number(x) and math.isfinite(x)) or (name == "std" and x <= 0):
                must = "it must be a finite number" + (" above 0" if name == "std" else "")
                raise bad(f"preprocessing.{name}[{i}]", x, must)
    if p.interpolation not in INTERPOLATIONS:
        raise bad(
            "preprocessing.interpolation", p.interpolation,
            f"it must be one of {', '.join(INTERPOLATIONS)}",
        )  # fmt: skip


def _check_tta(views: Any, img_size: int, bad: _Bad) -> None:
    must = '{} or {"mirror": true|false, "shift": pixels}'
    if views == {}:
        return
    if not isinstance(views, dict) or set(views) != {"mirror", "shift"}:
        raise bad("tta", views, f"it must be {must}")
    if not isinstance(views["mirror"], bool):
        raise bad("tta.mirror", views["mirror"], "it must be true or false")
    shift = views["shift"]
    if not (_is_int(shift) and 0 <= shift < img_size):
        raise bad("tta.shift", shift, f"it must be a whole number from 0 to {img_size - 1}")
    if not views["mirror"] and shift == 0:
        raise bad("tta", views, "a run without test-time views records {}")


# ---------------------------------------------------------------- small helpers


def _section(v: Mapping[str, Any], key: str, source: str, prefix: str = "") -> Mapping[str, Any]:
    if key not in v:
        raise UserError(f"{source}: {prefix}{key} is missing; rewrite it or retrain")
    if not isinstance(v[key], Mapping):
        raise UserError(f"{source}: {prefix}{key} is {_show(v[key])}; it must be an object")
    return v[key]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_str_map(x: Any) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) for k in x)


def _as_float(x: Any) -> Any:
    """A JSON number as float (``1`` and ``1.0`` are the same temperature); else as it is."""
    return float(x) if _is_number(x) else x


def _as_floats(x: Any) -> Any:
    return tuple(_as_float(e) for e in x) if isinstance(x, list | tuple) else x


def _as_list(x: Any) -> Any:
    return list(x) if isinstance(x, list | tuple) else x


def _show(value: Any) -> str:
    """A value as the file writes it (JSON: ``true``, ``"32"``, ``NaN``), short, on one line."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # not JSON (a writer's mistake): Python's spelling
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
