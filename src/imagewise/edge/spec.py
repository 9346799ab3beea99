"""What a trained model is to everything that uses it: one typed, torch-free contract.

``ModelSpec`` holds the class names, the input the network expects (``InputContract``: size,
channels, mean / std, resize interpolation, centre crop, tensor layout), the temperature that
calibrates its probabilities, its test-time views, a fitted ``unknown`` threshold and what the
model can do (``Capabilities``). A run folder's ``RunMeta`` embeds one; ``imagewise export``
writes it into the ONNX / TorchScript metadata (``to_metadata``) and every reader of a model file
gets it back from there (``from_metadata``); ``ImageModel`` reads nothing else. (timm
``PretrainedCfg``; torchvision ``Weights.meta``.)

Edge layer (numpy and PIL only): an ONNX file is read and run without PyTorch.

Example::

    spec = ModelSpec.from_metadata(session.get_modelmeta().custom_metadata_map, "model.onnx")
    x = spec.input.normalize(spec.input.array(Image.open("cat.jpg")))
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from imagewise.edge.images import RESAMPLING, fit_image, image_array, normalize_mode
from imagewise.errors import UserError

SPEC_FORMAT = "imagewise-model/1"

# The input the graph takes: the model's usual normalized batch, or raw pixels normalized inside.
LAYOUT_NORMALIZED = "NCHW float32 normalized"
LAYOUT_RAW = "NHWC uint8"
# The normalized batch channels-last, as TensorFlow Lite graphs take it (onnx2tf's conversion).
LAYOUT_NHWC = "NHWC float32 normalized"
LAYOUTS = (LAYOUT_NORMALIZED, LAYOUT_RAW, LAYOUT_NHWC)
# In memory only, never in a file: the inputs are cached embeddings, which take no image
# preprocessing (training a classifier on a frozen backbone's features).
LAYOUT_EMBEDDINGS = "N D float32 embeddings"
INTERPOLATIONS = tuple(RESAMPLING)
FITS = ("gradient", "one_pass")
CROP_RANGE = (0.5, 1.0)  # timm's pretrained configs use 0.75-1.0; below half is not a crop
# One class per image (softmax), or any number of labels per image (a sigmoid per class).
SINGLE, MULTILABEL = "single", "multilabel"
TASKS = (SINGLE, MULTILABEL)
TASK_WORDS = {SINGLE: "single-label", MULTILABEL: "multi-label"}  # how messages name them


@dataclass(frozen=True)
class InputContract:
    """What a model expects of its input, and the numpy side of producing it.

    ``crop_pct`` below 1 resizes the shorter side to ``img_size / crop_pct`` and keeps the
    centre ``img_size`` square (how ImageNet weights are evaluated: 0.875 for EfficientNet-Lite);
    1 squashes the whole image to the square, as every run without such weights does.
    ``layout`` is ``LAYOUT_NORMALIZED`` for a run and most exported files, ``LAYOUT_RAW`` for a
    file that takes uint8 pixels and normalizes inside its graph, ``LAYOUT_NHWC`` for a TFLite
    file (the normalized batch, channels last).
    """

    img_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    layout: str = LAYOUT_NORMALIZED

    def __post_init__(self) -> None:
        # lists (as JSON holds them) become tuples: a frozen contract stays frozen and hashable
        for name in ("mean", "std"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def fit(self, img: Image.Image) -> Image.Image:
        """A decoded image (any size, the model's mode) -> the model's square: the whole image
        squashed (``crop_pct`` 1) or its centre crop (see the class)."""
        return fit_image(img, self.img_size, self.interpolation, self.crop_pct)

    def array(self, img: Image.Image) -> np.ndarray:
        """A PIL image of any mode and size -> uint8 (C, H, W) at the model's channels and size."""
        return image_array(self.fit(normalize_mode(img, self.channels)))

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) at the model's size -> standardized float32 (N, C, H, W):
        ``(pixels / 255 - mean) / std``, as PyTorch computes it."""
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        x = images.astype(np.float32) / np.float32(255.0)
        x -= mean
        x /= std
        return x

    def to_json(self) -> dict[str, Any]:
        return {
            "img_size": self.img_size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }

    def problem(self, size_range: tuple[int, int], channels_range: tuple[int, int]) -> str | None:
        """The first field out of range as ``"name is value; it must ..."``, else None."""
        lo, hi = size_range
        if not (_is_int(self.img_size) and lo <= self.img_size <= hi):
            return f"img_size is {_show(self.img_size)}; it must be a whole number {lo}-{hi}"
        lo, hi = channels_range
        if not (_is_int(self.channels) and lo <= self.channels <= hi):
            return f"channels is {_show(self.channels)}; it must be a whole number {lo}-{hi}"
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != self.channels:
                return (
                    f"{name} is {_show(values)}; it must hold one number per channel "
                    f"({self.channels})"
                )
            for i, x in enumerate(values):
                if not (_is_number(x) and math.isfinite(x)) or (name == "std" and x <= 0):
                    must = "a finite number" + (" above 0" if name == "std" else "")
                    return f"{name}[{i}] is {_show(x)}; it must be {must}"
        if self.interpolation not in INTERPOLATIONS:
            return (
                f"interpolation is {_show(self.interpolation)}; it must be one of "
                f"{', '.join(INTERPOLATIONS)}"
            )
        lo_crop, hi_crop = CROP_RANGE
        if not (_is_number(self.crop_pct) and lo_crop <= self.crop_pct <= hi_crop):
            return f"crop_pct is {_show(self.crop_pct)}; it must be a number {lo_crop}-{hi_crop}"
        if self.layout not in LAYOUTS:
            return f"input_layout is {_show(self.layout)}; it must be one of {', '.join(LAYOUTS)}"
        return None


@dataclass(frozen=True)
class Capabilities:
    """What a model supports, declared on its registry entry and carried in its spec.

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
        ``fit`` / ``onnx_export`` / ``gradcam``; a missing one keeps its default."""
        default = cls()
        return cls(
            fit=getattr(declared, "fit", default.fit),
            onnx_export=getattr(declared, "onnx_export", default.onnx_export),
            gradcam=getattr(declared, "gradcam", default.gradcam),
        )

    def to_json(self) -> dict[str, Any]:
        return {"fit": self.fit, "onnx_export": self.onnx_export, "gradcam": self.gradcam}

    def problem(self) -> str | None:
        if self.fit not in FITS:
            return f"capabilities.fit is {_show(self.fit)}; it must be one of {', '.join(FITS)}"
        for name in ("onnx_export", "gradcam"):
            if not isinstance(getattr(self, name), bool):
                return (
                    f"capabilities.{name} is {_show(getattr(self, name))}; it must be true or false"
                )
        return None


ONE_PASS = Capabilities(fit="one_pass", onnx_export=False, gradcam=False)


@dataclass(frozen=True)
class ModelSpec:
    """A trained model's contract with everything that uses it (see the module).

    ``tta``: the test-time views applied outside the network (``{}`` or ``{"mirror": bool,
    "shift": pixels}``); an exported file averages its views inside the graph, so its spec has
    none. ``unknown``: a fitted ``--min-confidence auto`` (``imagewise.edge.unknown``), or None.
    ``drift``: the validation split's drift reference (``imagewise.edge.drift``), or None.
    ``model``: the architecture's name. ``conformal``: an exported file's fitted ``--coverage``
    thresholds (``imagewise.edge.conformal.ConformalFit.to_json``), or None (a run folder keeps
    them in ``RUN/conformal.json``). ``task``: ``single`` (one class per image: softmax) or
    ``multilabel`` (any number of labels per image: one sigmoid per class, each compared with
    its fitted ``thresholds`` entry, ``imagewise.edge.multilabel``).
    """

    classes: tuple[str, ...]
    input: InputContract
    temperature: float = 1.0
    tta: Mapping[str, Any] = field(default_factory=dict)
    unknown: Mapping[str, Any] | None = None
    capabilities: Capabilities = Capabilities()
    model: str = ""
    format: str = SPEC_FORMAT
    drift: Mapping[str, Any] | None = None
    conformal: Mapping[str, Any] | None = None
    task: str = SINGLE
    thresholds: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.classes, list):
            object.__setattr__(self, "classes", tuple(self.classes))
        if isinstance(self.thresholds, list):
            object.__setattr__(self, "thresholds", tuple(self.thresholds))

    @property
    def multilabel(self) -> bool:
        return self.task == MULTILABEL

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (float32) of logits (N, classes): the softmax over the
        temperature, or for a multi-label model each class's own sigmoid."""
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        if self.multilabel:
            return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(
                np.float32
            )  # a sigmoid that never overflows
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def label_thresholds(self) -> np.ndarray:
        """A multi-label model's per-class thresholds (0.5 each where none were fitted)."""
        if self.thresholds is None:
            return np.full(len(self.classes), 0.5)
        return np.asarray(self.thresholds, dtype=np.float64)

    def to_metadata(self) -> dict[str, str]:
        """The string map an exported file carries (ONNX ``metadata_props``): numbers and
        lists as JSON, names as plain text, so any ONNX consumer reads them."""
        pre = self.input.to_json()
        values: dict[str, Any] = {
            "classes": list(self.classes),
            **{k: pre[k] for k in ("img_size", "channels", "mean", "std", "crop_pct")},
            "temperature": float(self.temperature),
            "capabilities": self.capabilities.to_json(),
        }
        text = {
            "interpolation": self.input.interpolation,
            "input_layout": self.input.layout,
            "model": self.model,
            "model_format": self.format,
        }
        out = {k: json.dumps(v, ensure_ascii=False) for k, v in values.items()}
        if self.unknown is not None:
            out[UNKNOWN_KEY] = json.dumps(dict(self.unknown), ensure_ascii=False)
        if self.drift is not None:
            out[DRIFT_KEY] = json.dumps(dict(self.drift), ensure_ascii=False)
        if self.conformal is not None:
            out[CONFORMAL_KEY] = json.dumps(dict(self.conformal), ensure_ascii=False)
        if self.multilabel:  # single-label files keep their keys as before
            text[TASK_KEY] = self.task
            if self.thresholds is not None:
                out[THRESHOLDS_KEY] = json.dumps([float(t) for t in self.thresholds])
        return {**out, **text}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str) -> ModelSpec:
        """An exported file's string map -> its spec, older files' maps included (files before
        ``imagewise-model/1`` had no crop, capabilities or format key).

        Raises:
            UserError: in one line naming the key: the metadata is missing, is not JSON, or
                holds a value no model can have. Whether it fits the graph is ``check_graph``'s.
        """
        missing = [k for k in (*_REQUIRED_JSON, "input_layout") if k not in props]
        if missing:
            raise UserError(
                f"'{source}' has no imagewise metadata ({', '.join(missing)} missing); "
                "give a model written by 'imagewise export RUN'"
            )
        fmt = props.get("model_format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise broken_metadata(
                source, "model_format", f"is {_show(fmt)}; this imagewise reads {SPEC_FORMAT}"
            )
        v: dict[str, Any] = {}
        for key in (*_REQUIRED_JSON, *(k for k in _OPTIONAL_JSON if k in props)):
            try:
                v[key] = json.loads(props[key])
            except (ValueError, RecursionError):
                raise broken_metadata(source, key, "is not valid JSON") from None
        classes = v["classes"]
        if not isinstance(classes, list) or not classes or len(classes) > MAX_CLASSES:
            raise broken_metadata(
                source, "classes", f"must be a list of 1 to {MAX_CLASSES:,} names"
            )
        if not all(isinstance(c, str) for c in classes):
            raise broken_metadata(source, "classes", "must hold names (text)")
        if v["channels"] not in (1, 3) or isinstance(v["channels"], bool):
            raise broken_metadata(
                source, "channels", f"is {_show(v['channels'])}; it must be 1 or 3"
            )
        for key in ("mean", "std"):
            if not isinstance(v[key], list):
                raise broken_metadata(source, key, "must be a list of numbers, one per channel")
        caps = v.get("capabilities", Capabilities().to_json())
        if not isinstance(caps, dict) or set(caps) != {"fit", "onnx_export", "gradcam"}:
            raise broken_metadata(source, "capabilities", "must hold fit, onnx_export and gradcam")
        unknown = v.get(UNKNOWN_KEY)
        if unknown is not None and not isinstance(unknown, dict):
            raise broken_metadata(source, UNKNOWN_KEY, "must be an object")
        drift = v.get(DRIFT_KEY)
        if drift is not None and not isinstance(drift, dict):
            raise broken_metadata(source, DRIFT_KEY, "must be an object")
        conformal = _conformal(v.get(CONFORMAL_KEY), source)
        task, thresholds = _task(props, v.get(THRESHOLDS_KEY), len(classes), source)
        spec = cls(
            classes=tuple(classes),
            input=InputContract(
                img_size=v["img_size"],
                channels=v["channels"],
                mean=tuple(v["mean"]),
                std=tuple(v["std"]),
                interpolation=props.get("interpolation", "bilinear"),
                crop_pct=v.get("crop_pct", 1.0),
                layout=props["input_layout"],
            ),
            temperature=v["temperature"],
            unknown=unknown,
            capabilities=Capabilities(**caps),
            model=props.get("model", ""),
            drift=drift,
            conformal=conformal,
            task=task,
            thresholds=thresholds,
        )
        why = spec.problem(FILE_IMG_SIZE_RANGE, (1, 3))
        if why is not None:
            raise UserError(
                f"'{source}' has broken metadata: {why}; re-export it with 'imagewise export RUN'"
            )
        return spec

    def problem(self, size_range: tuple[int, int], channels_range: tuple[int, int]) -> str | None:
        """The first field out of range (``"name is value; it must ..."``), else None. Class
        names are the caller's to check (a run and a file word it differently)."""
        why = self.input.problem(size_range, channels_range) or self.capabilities.problem()
        if why is not None:
            return why
        t = self.temperature
        if not (_is_number(t) and math.isfinite(t) and t > 0):
            return f"temperature is {_show(t)}; it must be a finite number above 0"
        if self.task not in TASKS:
            return f"task is {_show(self.task)}; it must be one of {', '.join(TASKS)}"
        for i, x in enumerate(self.thresholds or ()):
            if not (_is_number(x) and 0.0 <= x <= 1.0):
                return f"thresholds[{i}] is {_show(x)}; it must be a number 0-1"
        return None


# The keys of an exported file's map; ``unknown`` and ``conformal`` only for runs with a fit.
UNKNOWN_KEY = "unknown"
DRIFT_KEY = "drift"  # runs exported with a drift reference (imagewise.edge.drift)
CONFORMAL_KEY = "conformal"
TASK_KEY, THRESHOLDS_KEY = "task", "thresholds"  # multi-label models only
_REQUIRED_JSON = ("classes", "img_size", "channels", "mean", "std", "temperature")
_OPTIONAL_JSON = (
    "crop_pct", "capabilities", UNKNOWN_KEY, DRIFT_KEY, CONFORMAL_KEY, THRESHOLDS_KEY,
)  # fmt: skip
JSON_KEYS = (*_REQUIRED_JSON, *_OPTIONAL_JSON)
# Bounds a file's metadata must keep: a size outside them is a damaged or hostile file, not a
# model (img_size 100000 made predict allocate 9.8 GB).
FILE_IMG_SIZE_RANGE = (8, 1024)
MAX_CLASSES = 100_000


def _task(
    props: Mapping[str, str], thresholds: Any, classes: int, source: str
) -> tuple[str, tuple[float, ...] | None]:
    """A file's task (``single`` when absent) and per-class thresholds, checked."""
    task = props.get(TASK_KEY, SINGLE)
    if task not in TASKS:
        raise broken_metadata(
            source, TASK_KEY, f"is {_show(task)}; it must be one of {', '.join(TASKS)}"
        )
    if thresholds is None:
        return task, None
    if not isinstance(thresholds, list) or len(thresholds) != classes:
        raise broken_metadata(source, THRESHOLDS_KEY, "must hold one number per class")
    return task, tuple(thresholds)


def _conformal(values: Any, source: str) -> dict[str, Any] | None:
    """A file's ``conformal`` value checked (``ConformalFit.from_json``), or None when absent;
    its class count against the graph is ``check_graph``'s (after the class names')."""
    from imagewise.edge.conformal import ConformalFit

    if values is None:
        return None
    try:
        fit = ConformalFit.from_json(values)
    except ValueError as exc:
        raise broken_metadata(source, CONFORMAL_KEY, str(exc)) from None
    return fit.to_json()


def broken_metadata(source: str, key: str, why: str) -> UserError:
    return UserError(
        f"'{source}' has broken metadata: {key} {why}; re-export it with 'imagewise export RUN'"
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _show(value: Any) -> str:
    """A value as JSON writes it (``true``, ``"32"``, ``NaN``), short, on one line."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
