"""The HTML contact sheet of a similarity search: one self-contained file, no network.

Each query is a row: the query image, then its matches, best first, each with its rank,
similarity and label under it. Thumbnails are inlined as base64 (PNG up to 64 px, JPEG above,
at most 112 px a side); images with no file (built-in data in memory) are read from the data.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageOps

from imagewise.data.decode import normalize_mode
from imagewise.names import valid_text

THUMB = 112
_IN_MEMORY = re.compile(r"^(?P<source>[^:]+):(?P<split>train|val|test)/(?P<index>\d+)$")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } .meta { color: #666; margin-bottom: 20px; }
.row { display: flex; gap: 10px; align-items: flex-start; margin: 0 0 18px; padding-bottom: 14px;
       border-bottom: 1px solid #eee; overflow-x: auto; }
figure { margin: 0; width: 112px; flex: none; text-align: center; font-size: 12px; }
figure.query { border-right: 2px solid #999; padding-right: 10px; width: 120px; }
img { width: 112px; height: 112px; object-fit: contain; background: #f4f4f4;
      image-rendering: pixelated; }
figcaption { word-break: break-all; } .sim { font-weight: 600; } .label { color: #0a5; }
.missing { width: 112px; height: 112px; background: #fdd; display: grid; place-items: center; }
"""


class MatchLike(Protocol):
    """What the sheet shows of a match (``imagewise.features.Match``)."""

    rank: int
    similarity: float
    path: str
    label: str


class QueryLike(Protocol):
    """What the sheet shows of a query (``imagewise.features.QueryMatches``)."""

    query: str

    @property
    def matches(self) -> Sequence[MatchLike]: ...


class _Thumbnails:
    """Base64 thumbnails by path; in-memory names are read from their dataset once."""

    def __init__(self) -> None:
        self.cache: dict[str, str | None] = {}
        self.datasets: dict[str, object] = {}

    def __call__(self, name: str) -> str | None:
        if name not in self.cache:
            try:
                self.cache[name] = _encode(self._image(name))
            except (OSError, ValueError, SyntaxError, IndexError, KeyError):
                self.cache[name] = None
        return self.cache[name]

    def _image(self, name: str) -> Image.Image:
        found = _IN_MEMORY.match(name)
        if found and not _exists(name):
            from imagewise.data.sources import resolve_source

            source = found["source"]
            if source not in self.datasets:
                self.datasets[source] = resolve_source(source)
            split = self.datasets[source].split(found["split"])  # type: ignore[attr-defined]
            if split.images is None:
                raise KeyError(name)
            arr = split.images[int(found["index"])].numpy()
            return Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
        with Image.open(name) as opened:
            opened.load()
            img = ImageOps.exif_transpose(opened) or opened
        gray = img.mode in ("1", "L", "LA", "I", "I;16", "F")
        return normalize_mode(img, 1 if gray else 3)


def _exists(name: str) -> bool:
    return Path(name).is_file()


def _encode(img: Image.Image) -> str:
    img = img.copy()
    img.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if max(img.size) <= 64:
        img.save(buf, format="PNG", optimize=True)
        kind = "png"
    else:
        img.save(buf, format="JPEG", quality=85)
        kind = "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(src: str | None, caption: str, title: str, css: str = "") -> str:
    img = (
        f'<img src="{src}" alt="" title="{html.escape(title)}">'
        if src
        else '<div class="missing">unreadable</div>'
    )
    return f'<figure class="{css}">{img}<figcaption>{caption}</figcaption></figure>'


def contact_sheet(queries: Sequence[QueryLike], info: Mapping[str, Any]) -> str:
    """A search's ``queries`` with their matches as one HTML page with inlined thumbnails;
    ``info``: the index's ``index.json`` (``SimilarResult.format("html")`` calls it)."""
    thumbs = _Thumbnails()
    rows = []
    for q in queries:
        cells = [_figure(thumbs(q.query), f"query<br>{html.escape(_short(q.query))}", q.query,
                         "query")]  # fmt: skip
        for m in q.matches:
            caption = (
                f'#{m.rank} <span class="sim">{m.similarity:.3f}</span><br>'
                f'<span class="label">{html.escape(m.label or "-")}</span><br>'
                f"{html.escape(_short(m.path))}"
            )
            cells.append(_figure(thumbs(m.path), caption, m.path))
        rows.append(f'<div class="row">{"".join(cells)}</div>')
    meta = (
        f"{len(queries)} queries, {len(queries[0].matches) if queries else 0}"
        f" matches each, cosine similarity of {html.escape(str(info.get('layer')))} of "
        f"{html.escape(str(info.get('model')))} ({html.escape(str(info.get('run')))}); index of "
        f"{info.get('count')} images from {html.escape(str(info.get('data')))}, "
        f"backend {html.escape(str(info.get('backend')))}"
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>imagewise similar</title><style>{_STYLE}</style></head><body>"
        f'<h1>Similar images</h1><div class="meta">{meta}</div>{"".join(rows)}</body></html>\n'
    )
    return valid_text(page)  # names that are not UTF-8 shown as caf\xe9.png


def _short(path: str, keep: int = 2) -> str:
    """The last ``keep`` parts of a path (``circle/003.png``)."""
    parts = re.split(r"[/\\]", path)
    return "/".join(parts[-keep:])
