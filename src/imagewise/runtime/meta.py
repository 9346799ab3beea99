"""The run folder's metadata (``meta.json``) as a typed object: the contract between training and
every later stage.

Training writes a ``RunMeta``; evaluate, predict, explain, export and serve read one with
``RunMeta.from_json``, which first brings an older layout up to date (``migrate``, the only code
that knows older layouts) and then checks every field (``validate``), so a later stage trusts
what it holds: a run folder from elsewhere with ``img_size: 100000`` or ``classes: []`` is refused
in one line naming the file and the field, instead of allocating terabytes or answering 500s.
What a model can do (``Capabilities``) travels here too, so no stage tests a model's name.
(torchvision ``Weights.meta``; timm ``PretrainedCfg``.)

What every user of the model needs (classes, input, temperature, test-time views,
capabilities) is the run's ``ModelSpec`` (``imagewise.edge.spec``), the same object an exported
file carries; the rest (how to rebuild the network, the data, the training summary) is the run's.
The file keeps its layout: the spec's fields are written where they always were.

This module imports nothing heavy: reading a run's metadata (``--resume`` checks, ``compare``,
the CLI's messages) must not cost the seconds that importing torch and torchvision takes.

Example::

    meta = RunMeta.from_json(read_json(path), source=f"meta.json of '{folder}'")
    pre = meta.spec.input
    if meta.spec.capabilities.onnx_export: ...
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from imagewise.edge.records import Record, entry
from imagewise.edge.spec import ONE_PASS, SINGLE, Capabilities, InputContract, ModelSpec
from imagewise.errors import UserError
from imagewise.runtime.records import (
    AutoChoice,
    Calibration,
    PseudoLabels,
    Teacher,
    TrainingSummary,
    TransferRecord,
    WeightsLoad,
)

FORMAT = "imagewise-run/3"  # /2: model.capabilities added; /3: preprocessing.crop_pct
OLDER_FORMATS = ("imagewise-run/1", "imagewise-run/2")  # what migrate() reads; no key: /1

IMG_SIZE_RANGE = (8, 4096)  # training takes 8..1024; a run from elsewhere may be larger
CHANNELS_RANGE = (1, 4)
PRECISIONS = ("fp32", "bf16", "fp16")

__all__ = [
    "FORMAT",
    "ONE_PASS",
    "AutoChoice",
    "Calibration",
    "Capabilities",
    "DataSummary",
    "InputContract",
    "ModelSpec",
    "NetworkSpec",
    "PseudoLabels",
    "RunMeta",
    "Teacher",
    "TrainingSummary",
    "TransferRecord",
    "WeightsLoad",
    "migrate",
    "validate",
]

ConfigReader = Callable[[], "bool | dict[str, Any]"]
"""Reads ``train.tta`` from the run's config.yaml: asked only for runs whose meta.json predates
the ``tta`` entry."""


_COUNT = {"must": lambda n: n >= 0, "why": "a whole number, 0 or more"}


@dataclass
class NetworkSpec(Record):
    """Enough to rebuild the network: ``create_model(name, num_classes, **kwargs)``."""

    name: str = entry(must=bool, why="a model name")
    kwargs: dict[str, Any] = entry(why="an object of keyword arguments")
    num_classes: int = entry(must=lambda n: n >= 2, why="a whole number, 2 or more")
    parameters: int = entry(**_COUNT)


@dataclass
class DataSummary(Record):
    """Where the training data came from and how many images each split held."""

    source: str = entry(why="a string")
    kind: str = entry(why="a string")
    train_images: int = entry(**_COUNT)
    val_images: int = entry(**_COUNT)
    test_images: int = entry(**_COUNT)
    skipped_images: int = entry(**_COUNT)


@dataclass
class RunMeta:
    """The contents of a run's ``meta.json``, typed.

    ``spec`` is what every user of the model needs (``imagewise.edge.spec.ModelSpec``: classes,
    input, temperature, test-time views, capabilities, the architecture's name); ``model`` how
    to rebuild the network. Mutable on purpose: training fills ``training``, the temperature
    (``with_temperature``) and ``calibration`` in as it goes and rewrites the file. The
    records (``imagewise.runtime.records``) are typed too. ``precision`` and ``calibration`` are
    ``None`` when the run did not record them (a one-pass fit has no precision; a run stopped
    before calibration has none) and are then left out of the file, as today. ``extra`` keeps
    top-level keys this version does not know, so rewriting a file keeps them.
    """

    spec: ModelSpec
    model: NetworkSpec
    data: DataSummary
    versions: dict[str, str]
    created: str
    training: TrainingSummary = field(default_factory=TrainingSummary)
    processes: int = 1
    precision: str | None = None
    calibration: Calibration | None = None
    # Where the run started from and what it trained; None for a run from scratch with
    # everything trained.
    transfer: TransferRecord | None = None
    # Distillation: the teacher run and the loss weights; None without.
    teacher: Teacher | None = None
    # --model auto: what was chosen and why; None when a model was named.
    choice: AutoChoice | None = None
    # train --unlabelled: the teacher, the threshold and the pool images it labelled
    pseudo_labels: PseudoLabels | None = None
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    # The spec's fields that every stage reads, by their short names.
    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def preprocessing(self) -> InputContract:
        return self.spec.input

    @property
    def temperature(self) -> float:
        return self.spec.temperature

    @property
    def tta(self) -> dict[str, Any]:
        return dict(self.spec.tta)

    def with_temperature(self, temperature: float) -> None:
        """Record a fitted temperature (the spec is frozen: it is replaced)."""
        self.spec = replace(self.spec, temperature=float(temperature))

    def with_tta(self, views: dict[str, Any]) -> None:
        """Record the test-time views (a resumed run keeps those it started with)."""
        self.spec = replace(self.spec, tta=dict(views))

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

        classes = take(v, "classes")
        _check_classes(classes, source)
        spec = ModelSpec(
            classes=tuple(classes),
            input=InputContract(
                **{k: take(pre, k, "preprocessing.") for k in ("img_size", "channels")},
                mean=_as_floats(take(pre, "mean", "preprocessing.")),
                std=_as_floats(take(pre, "std", "preprocessing.")),
                interpolation=take(pre, "interpolation", "preprocessing."),
                crop_pct=_as_float(take(pre, "crop_pct", "preprocessing.")),
            ),
            temperature=_as_float(take(v, "temperature")),
            tta=take(v, "tta"),
            capabilities=Capabilities(
                **{k: take(caps, k, "model.capabilities.") for k in _CAPABILITY_KEYS}
            ),
            model=take(model, "name", "model."),
            task=v.get("task", SINGLE),
            thresholds=_thresholds(v.get("thresholds"), len(classes), source),
        )
        meta = cls(
            spec=spec,
            model=NetworkSpec.from_json(model, source, "model"),
            data=DataSummary.from_json(data, source, "data"),
            versions=take(v, "versions"),
            created=take(v, "created"),
            training=_record(TrainingSummary, take(v, "training"), source, "training"),
            processes=take(v, "processes"),
            precision=v.get("precision"),
            **{key: _record(kind, v.get(key), source, key) for key, kind in _REPORTS.items()},
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
            "classes": list(self.spec.classes),
            "model": {
                **copy.deepcopy(self.model.to_json()),
                "capabilities": self.spec.capabilities.to_json(),
            },
            "preprocessing": self.spec.input.to_json(),
            "temperature": self.spec.temperature,
            "tta": dict(self.spec.tta),
            # multi-label runs only: single-label files keep their keys
            **({"task": self.spec.task} if self.spec.multilabel else {}),
            **(
                {"thresholds": list(self.spec.thresholds)}
                if self.spec.multilabel and self.spec.thresholds is not None
                else {}
            ),
            "data": self.data.to_json(),
            "versions": dict(self.versions),
            "training": self.training.to_json(),
            "processes": self.processes,
        }
        if self.precision is not None:
            out["precision"] = self.precision
        for key in _REPORTS:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_json()
        out.update({k: copy.deepcopy(x) for k, x in self.extra.items() if k not in out})
        return out


_CAPABILITY_KEYS = ("fit", "onnx_export", "gradcam")


def _thresholds(values: Any, classes: int, source: str) -> tuple[float, ...] | None:
    """A multi-label run's per-class thresholds, checked: one number 0-1 per class."""
    if values is None:
        return None
    if not isinstance(values, list) or len(values) != classes:
        raise UserError(f"{source}: thresholds must hold one number per class ({classes})")
    return tuple(values)


_TOP_KEYS = (
    "format", "created", "classes", "model", "preprocessing", "temperature", "tta", "data",
    "versions", "training", "processes", "precision", "calibration", "transfer", "teacher",
    "choice", "task", "thresholds", "pseudo_labels",
)  # fmt: skip
# Optional objects written only when recorded, validated as JSON objects.
_REPORTS: dict[str, type[Record]] = {
    "calibration": Calibration, "transfer": TransferRecord, "teacher": Teacher,
    "choice": AutoChoice, "pseudo_labels": PseudoLabels,
}  # fmt: skip


def _record(kind: type[Record], value: Any, source: str, key: str) -> Any:
    """A record of the file (None where an optional one is absent), read and checked."""
    if value is None and kind is not TrainingSummary:
        return None
    if not _is_str_map(value):
        what = "the training summary" if kind is TrainingSummary else "or absent"
        must = f"an object ({what})" if kind is TrainingSummary else f"an object {what}"
        raise UserError(f"{source}: {key} is {_show(value)}; it must be {must}")
    return kind.from_json(value, source, key)


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


def _two_to_three(v: dict[str, Any], config_reader: ConfigReader | None) -> None:
    """imagewise-run/2 -> /3: ``preprocessing.crop_pct`` added; every earlier run resized the
    whole image (1)."""
    if isinstance(v.get("preprocessing"), dict):
        v["preprocessing"].setdefault("crop_pct", 1.0)


_STEPS: dict[str, tuple[str, Callable[[dict[str, Any], ConfigReader | None], None]]] = {
    "imagewise-run/1": ("imagewise-run/2", _one_to_two),
    "imagewise-run/2": ("imagewise-run/3", _two_to_three),
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
    for key in ("model", "data"):
        record = getattr(meta, key)
        if not isinstance(record, NetworkSpec if key == "model" else DataSummary):
            raise bad(key, record, "it must be a record")
        record.validate(source, key)
    _check_classes(list(meta.spec.classes), source)
    if len(meta.spec.classes) != meta.model.num_classes:
        raise UserError(
            f"{source}: classes has {len(meta.spec.classes)} names; it must have "
            f"model.num_classes ({meta.model.num_classes})"
        )
    why = meta.spec.input.problem(IMG_SIZE_RANGE, CHANNELS_RANGE)
    if why is not None:
        raise UserError(f"{source}: preprocessing.{why}")
    why = meta.spec.problem(IMG_SIZE_RANGE, CHANNELS_RANGE)
    if why is not None:
        raise UserError(f"{source}: {'model.' if why.startswith('capabilities') else ''}{why}")
    if meta.spec.model != meta.model.name:
        raise bad(
            "model.name", meta.model.name, f"it must name the spec's model {meta.spec.model!r}"
        )
    _check_tta(meta.spec.tta, meta.spec.input.img_size, bad)
    if not _is_str_map(meta.versions) or not all(
        isinstance(x, str) for x in meta.versions.values()
    ):
        raise bad("versions", meta.versions, "it must map package names to version strings")
    for key, kind in {"training": TrainingSummary, **_REPORTS}.items():
        value = getattr(meta, key)
        if value is not None and not isinstance(value, kind):
            raise bad(key, value, f"it must be a {kind.__name__} record")
        if value is not None:
            value.validate(source, key)
    if not (_is_int(meta.processes) and meta.processes >= 1):
        raise bad("processes", meta.processes, "it must be a whole number, 1 or more")
    if meta.precision is not None and meta.precision not in PRECISIONS:
        raise bad("precision", meta.precision, f"it must be one of {', '.join(PRECISIONS)}")
    if not isinstance(meta.created, str):
        raise bad("created", meta.created, "it must be a date string")
    if not _is_str_map(meta.extra):
        raise bad("extra", meta.extra, "it must be an object")


_Bad = Callable[[str, Any, str], UserError]


def _check_classes(classes: Any, source: str) -> None:
    must = "it must be a non-empty list of distinct class names"
    if not isinstance(classes, list) or not classes:
        raise UserError(f"{source}: classes is {_show(classes)}; {must}")
    for i, name in enumerate(classes):
        if not (isinstance(name, str) and name):
            raise UserError(
                f"{source}: classes[{i}] is {_show(name)}; it must be a non-empty class name"
            )
    seen: set[str] = set()
    for name in classes:
        if name in seen:
            raise UserError(
                f"{source}: classes has {_show(name)} twice; class names must be distinct"
            )
        seen.add(name)


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
