"""What only the model's author can say: intended use, what is out of scope, limitations,
licence, authors. Given as keywords (the flags of ``imagewise card``) or in a YAML file
(``--card-yaml``), keywords winning; the card shows them as the author's words, never as
measurements. The fields given are kept in ``RUN/model_card.yaml`` (the same schema), which
later cards of the run read as their defaults, so a card written again keeps them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from imagewise.errors import UserError
from imagewise.io import atomic_write_text

TEXT_FIELDS = ("name", "intended_use", "out_of_scope", "limitations", "license", "citation")
LIST_FIELDS = ("authors", "tags", "datasets")
KEPT = "model_card.yaml"  # the run's kept fields, relative to the run folder


@dataclass(frozen=True)
class CardFields:
    """The author's fields of a model card.

    Attributes:
        name: the model's name in the card and its Hugging Face ``model-index`` (default: the
            run folder's name).
        intended_use: who should use the model, for what.
        out_of_scope: uses it was not made or checked for.
        limitations: known weaknesses the author wants readers to know.
        license: a licence identifier (Hugging Face's list, e.g. ``apache-2.0``, ``mit``).
        citation: how to cite the model or its data.
        authors: the people or team responsible.
        tags: extra Hugging Face tags.
        datasets: Hugging Face dataset ids of the training data (a built-in dataset's id is
            filled in when known).
        audit: the path of the training data's ``imagewise data check DATA --json FILE``.
    """

    name: str | None = None
    intended_use: str | None = None
    out_of_scope: str | None = None
    limitations: str | None = None
    license: str | None = None
    citation: str | None = None
    authors: tuple[str, ...] = field(default=())
    tags: tuple[str, ...] = field(default=())
    datasets: tuple[str, ...] = field(default=())
    audit: str | None = None

    def merged(self, **given: Any) -> CardFields:
        """These fields with the ``given`` ones (not None, not empty) put over them."""
        return replace(self, **_checked(given, "keyword"))

    def over(self, defaults: CardFields) -> CardFields:
        """These fields over ``defaults``, field by field (an empty field keeps the default)."""
        return defaults.merged(**asdict(self))

    def given(self) -> bool:
        return any(asdict(self).values())


def _checked(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Known fields with text (or lists of text) values; empty ones dropped."""
    known = {f.name for f in fields(CardFields)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise UserError(f"{source}: unknown card field '{key}'; use {', '.join(sorted(known))}")
        if value is None or value == "" or value == () or value == []:
            continue
        if key in LIST_FIELDS:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
                raise UserError(f"{source}: '{key}' must be a text or a list of texts")
            out[key] = tuple(items)
        elif isinstance(value, str):
            out[key] = value.strip()
        else:
            raise UserError(f"{source}: '{key}' must be text, not {type(value).__name__}")
    return out


def read_card_yaml(path: str | Path) -> CardFields:
    """The fields in a YAML file (keys as ``CardFields``' attributes, e.g. ``intended_use``).

    Example (card.yaml)::

        intended_use: Sorting catalogue photos of clothes into ten kinds.
        out_of_scope: Photos of people; medical or safety decisions.
        license: apache-2.0
        authors: [Catalogue team]
    """
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"card YAML file '{p}' does not exist")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"card YAML file '{p}' is not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise UserError(f"card YAML file '{p}' must hold a mapping such as 'intended_use: ...'")
    return CardFields(**_checked({str(k).replace("-", "_"): v for k, v in values.items()}, str(p)))


def kept_fields(run: Path) -> CardFields | None:
    """The fields an earlier card of ``run`` kept (``RUN/model_card.yaml``), or None."""
    path = run / KEPT
    return read_card_yaml(path) if path.is_file() else None


def keep_fields(run: Path, values: CardFields) -> Path:
    """Write ``values`` to ``RUN/model_card.yaml`` atomically, in ``--card-yaml``'s schema (the
    audit's path made absolute, so the next card finds it from any folder)."""
    import yaml

    if values.audit:
        values = replace(values, audit=str(Path(values.audit).expanduser().resolve()))
    kept = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(values).items() if v}
    text = yaml.safe_dump(kept, sort_keys=False, allow_unicode=True)
    return atomic_write_text(
        run / KEPT,
        "# The author's fields of this run's model card (imagewise card RUN keeps them here and\n"
        "# reads them as the defaults of the next card; flags and --card-yaml win over them).\n"
        + text,
    )
