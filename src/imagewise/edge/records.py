"""JSON records whose reading, writing and checking come from their dataclass fields.

A record declares each field once, with its type and, where the type says too little, what
else it must hold (``entry(must=..., why=...)``); ``from_json`` then reads a parsed JSON object
into it (one ``UserError`` line naming the file and the dotted field for the first value that
does not fit), ``to_json`` writes it back in field order, and keys this version does not know
are kept in ``extra`` when the record has one, so rewriting a file keeps them. A field with a
default may be missing from older files; ``omit_none`` leaves a ``None`` out of the file, as
files written before the field existed did. (pydantic does this and more, but run folders are
read where only the edge install is present, and a run's metadata must not import it.)

Example::

    @dataclass
    class Calibration(Record):
        temperature: float = entry(must=lambda t: t > 0, why="a number above 0")
        fitted_on: str | None = None

    Calibration.from_json({"temperature": 1.2}, "meta.json", "calibration")
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar

from imagewise.errors import UserError

R = TypeVar("R", bound="Record")


def entry(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    must: Callable[[Any], bool] | None = None,
    why: str = "",
    omit_none: bool = False,
    required: bool = False,
) -> Any:
    """A record field: ``must(value)`` holds for a value read (``why`` says what it must be,
    after "it must be"); ``omit_none`` leaves the field out of the file when it is None;
    ``required``: the file must hold it even though code may leave it at its default (fields
    keep the file's order, so a required one may follow one with a default)."""
    meta = {"must": must, "why": why, "omit_none": omit_none, "required": required}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Record:
    """Base of the typed records (see the module)."""

    _hints: ClassVar[dict[type, dict[str, Any]]] = {}

    @classmethod
    def from_json(cls: type[R], values: Any, source: str, where: str) -> R:
        """Read ``values`` (parsed JSON) into a record, checking every field.

        Args:
            values: the JSON object.
            source: how messages name the file, e.g. ``meta.json of 'runs/x'``.
            where: the record's dotted place in the file, e.g. ``training``.

        Raises:
            UserError: one line naming ``source``, the field and what it must be.
        """
        if not isinstance(values, Mapping):
            raise UserError(f"{source}: {where} is {show(values)}; it must be an object")
        hints = cls._type_hints()
        kwargs: dict[str, Any] = {}
        known = set()
        for f in fields(cls):
            known.add(f.name)
            if f.name == "extra":
                continue
            name = f"{where}.{f.name}" if where else f.name
            if f.name not in values:
                no_default = f.default is MISSING and f.default_factory is MISSING
                if no_default or f.metadata.get("required"):
                    raise UserError(f"{source}: {name} is missing; rewrite it or retrain")
                continue
            # a wrong type says what the field must be; an optional one's says "or null" too
            optional = type(None) in typing.get_args(hints[f.name])
            why = "" if optional else f.metadata.get("why", "")
            kwargs[f.name] = read_value(hints[f.name], values[f.name], source, name, why)
            _check(f, kwargs[f.name], source, name)
        if "extra" in known:
            kwargs["extra"] = {k: v for k, v in values.items() if k not in known}
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object, fields in declaration order, ``extra`` last."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = write_value(value)
        out.update({k: v for k, v in getattr(self, "extra", {}).items() if k not in out})
        return out

    def validate(self, source: str, where: str) -> None:
        """Check a record built in code (a writer's) as ``from_json`` checks one read."""
        type(self).from_json(self.to_json(), source, where)

    @classmethod
    def _type_hints(cls) -> dict[str, Any]:
        if cls not in Record._hints:
            Record._hints[cls] = typing.get_type_hints(cls)
        return Record._hints[cls]


def _check(f: Field[Any], value: Any, source: str, name: str) -> None:
    must = f.metadata.get("must")
    if must is not None and value is not None and not must(value):
        raise UserError(f"{source}: {name} is {show(value)}; it must be {f.metadata['why']}")


def read_value(hint: Any, value: Any, source: str, name: str, why: str = "") -> Any:
    """``value`` read as type ``hint`` (records, optionals, literals, numbers, text, flags,
    lists and objects of them); a number where a float is wanted becomes a float. A value of
    the wrong type is one line saying it must be ``why`` (default: what ``hint`` describes)."""
    wanted = hint  # what a message names: ``X or null`` for an optional X
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        hint = inner[0] if len(inner) == 1 else Any
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_json(value, source, name)
    ok, converted = _convert(hint, origin, args, value, source, name)
    if not ok:
        must = why or describe(wanted)
        raise UserError(f"{source}: {name} is {show(value)}; it must be {must}")
    return converted


def _convert(
    hint: Any, origin: Any, args: tuple[Any, ...], value: Any, source: str, name: str
) -> tuple[bool, Any]:
    if hint is Any:
        return True, value
    if origin is Literal:
        return value in args, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return is_int(value), value
    if hint is float:
        number = is_number(value) and math.isfinite(value)
        return number, float(value) if number else value
    if hint is str:
        return isinstance(value, str), value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        item = args[0] if args else Any
        return True, [read_value(item, v, source, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
            return False, value
        item = args[1] if len(args) == 2 else Any
        return True, {k: read_value(item, v, source, f"{name}.{k}") for k, v in value.items()}
    raise TypeError(f"{name}: a record field of type {hint!r} cannot be read")


def write_value(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, list | tuple):
        return [write_value(v) for v in value]
    if isinstance(value, dict):
        return {k: write_value(v) for k, v in value.items()}
    return value


def describe(hint: Any) -> str:
    """What a value of type ``hint`` is, after "it must be"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(describe(a) for a in inner) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    names = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text"}
    if hint in names:
        return names[hint]
    if origin is list:
        return "a list"
    return "an object"


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def show(value: Any) -> str:
    """A value as the file writes it (JSON: ``true``, ``"32"``, ``NaN``), short, on one line."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # not JSON (a writer's mistake): Python's spelling
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
