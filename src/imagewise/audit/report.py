"""The audit's HTML page: one self-contained file, thumbnails embedded as base64 PNG,
duplicate pairs and label issues side by side."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from imagewise.audit.result import judged_on
from imagewise.io import atomic_write_text
from imagewise.names import valid_text

if TYPE_CHECKING:
    from imagewise.audit.result import AuditResult

THUMB = 96  # thumbnail side in pixels
SHOWN = 200  # entries of one kind shown on the page (the JSON has them all)

_STYLE = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse} td,th{padding:4px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top} .pair{display:flex;gap:12px;margin:8px 0;
align-items:flex-start} figure{margin:0;font-size:12px;max-width:220px;word-break:break-all}
img{image-rendering:pixelated;border:1px solid #ccc;width:96px;height:96px;object-fit:contain}
.bad{color:#b00} pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}
"""


def _thumbnail(result: AuditResult, name: str) -> str:
    """A base64 PNG data URI of the image ``name`` (a file or SOURCE:SPLIT/INDEX), or ''."""
    try:
        img = _open(result, name)
    except Exception:  # an unreadable file has no thumbnail; the page says why instead
        return ""
    img.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _open(result: AuditResult, name: str) -> Image.Image:
    from imagewise.data.decode import load_image

    data = result.data
    if data is not None and name.startswith(f"{data.source}:") and "/" in name:
        split, index = name[len(data.source) + 1 :].rsplit("/", 1)
        arr = data.split(split).images[int(index)].numpy()  # type: ignore[index]
        return Image.fromarray(arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0)))
    return load_image(name, channels=3)


def _figure(result: AuditResult, name: str, caption: str) -> str:
    uri = _thumbnail(result, name)
    img = f'<img src="{uri}" alt="">' if uri else '<span class="bad">(no preview)</span>'
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _pairs(result: AuditResult, entries: list[dict[str, Any]], title: str) -> str:
    rows = []
    for e in entries[:SHOWN]:
        figures = "".join(
            _figure(result, p, f"{p} [{s}, {lab}]")
            for p, s, lab in zip(e["paths"], e["splits"], e["labels"], strict=True)
        )
        tags = ["across splits"] * e["cross_split"] + ["conflicting labels"] * e[
            "conflicting_labels"
        ]
        extra = f" {e['psnr_db']} dB" if "psnr_db" in e else ""
        rows.append(f'<div class="pair">{figures}<p class="bad">{", ".join(tags)}{extra}</p></div>')
    return f"<h2>{title} ({len(entries):,})</h2>" + "".join(rows)


def _verdict(e: dict[str, Any]) -> str:
    """What the model doubts about one image's label (one label, or a multi-label set)."""
    if "doubted" not in e:
        return (
            f"given <b>{html.escape(e['given'])}</b> (p={e['given_probability']:.3f})<br>"
            f"suggested <b>{html.escape(e['suggested'])}</b> (p={e['suggested_probability']:.3f})"
        )
    doubts = "<br>".join(
        f"{'given' if d['given'] else 'missing'} <b>{html.escape(d['label'])}</b> "
        f"(p={d['probability']:.3f})"
        for d in e["doubted"]
    )
    return (
        f"given <b>{html.escape(e['given'] or '(no label)')}</b><br>"
        f"suggested <b>{html.escape(e['suggested'] or '(no label)')}</b><br>{doubts}"
    )


def _labels(result: AuditResult) -> str:
    entries = result.findings["label_issues"]
    rows = [
        '<div class="pair">'
        + _figure(result, e["path"], f"{e['path']} [{e['split']}]")
        + f"<p>{_verdict(e)}</p></div>"
        for e in entries[:SHOWN]
    ]
    judged = result.label_check
    on = f" <small>judged on {html.escape(judged_on(judged))}</small>" if judged else ""
    return f"<h2>Likely label errors ({len(entries):,}){on}</h2>" + "".join(rows)


def _label_sets(result: AuditResult) -> str:
    """Multi-label data: the co-occurrence table and the most frequent pairs ('' otherwise)."""
    sets = result.label_sets
    if sets is None:
        return ""
    names = [html.escape(n) for n in sets["labels"]]
    head = "<tr><th></th>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"
    body = "".join(
        f"<tr><th>{name}</th>" + "".join(f"<td>{v:,}</td>" for v in row) + "</tr>"
        for name, row in zip(names, sets["cooccurrence"], strict=True)
    )
    pairs = _table(
        [{**p, "labels": " + ".join(p["labels"])} for p in sets["top_pairs"]],
        "Labels most often together",
        ["labels", "count", "jaccard"],
    )
    return (
        "<h2>Label co-occurrence</h2>"
        f"<p>{sets['labels_per_image']:g} labels per image on average; "
        f"{sets['no_label']:,} images with no label. A cell counts the images that carry both "
        f"labels; the diagonal, the images with the label.</p><table>{head}{body}</table>" + pairs
    )


def _table(entries: list[dict[str, Any]], title: str, columns: list[str]) -> str:
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(e.get(c, '')))}</td>" for c in columns) + "</tr>"
        for e in entries[:SHOWN]
    )
    return f"<h2>{title} ({len(entries):,})</h2><table><tr>{head}</tr>{body}</table>"


def _class_counts(result: AuditResult) -> str:
    parts = []
    for c in result.findings["class_counts"]:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:,}</td></tr>" for k, v in c["counts"].items()
        )
        if "no_label" in c:  # multi-label data
            rows += f"<tr><td><i>(no label)</i></td><td>{c['no_label']:,}</td></tr>"
        parts.append(
            f"<h3>{c['split']}: imbalance {c['imbalance_ratio']:g}x</h3><table>{rows}</table>"
        )
    return "<h2>Class counts</h2>" + "".join(parts)


def write_html(result: AuditResult, path: str | Path) -> Path:
    """Write the audit page for ``result`` to ``path`` (atomically)."""
    f = result.findings
    modes = [
        {"mode": m["mode"], "count": m["count"], "paths": ", ".join(m["paths"][:20])}
        for m in f["modes"]
    ]
    body = [
        f"<h1>Data check: {html.escape(result.source)}</h1>",
        "<pre>" + html.escape(result.summary()) + "</pre>",
        _table(f["unreadable"], "Unreadable files", ["path", "split", "label", "reason"]),
        _table(
            f["format_mismatch"],
            "Extension differs from the content",
            ["path", "extension", "format"],
        ),
        _table(f["tiny"], "Tiny images", ["path", "width", "height"]),
        _table(f["size_outliers"], "Size outliers", ["path", "width", "height", "median_pixels"]),
        _table(modes, "Colour modes", ["mode", "count", "paths"]),
        _class_counts(result),
        _label_sets(result),
        _pairs(result, f["exact_duplicates"], "Exact duplicates"),
        _pairs(result, f["near_duplicates"], "Near duplicates"),
        _labels(result),
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>imagewise data check</title><style>{_STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    return atomic_write_text(path, valid_text(page))  # names that are not UTF-8: caf\xe9.png
