"""``eval/report.html``: one self-contained page a person opens to judge a classifier.

Everything is inline (PNG images as data URIs, CSS, a few lines of JavaScript for sorting), so
the file can be mailed or archived and opens offline. Templates are plain f-strings: the page
is small and fixed, and a template engine would be one more dependency for no gain.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagewise.data.transforms import normalize
from imagewise.evaluate.sections import robustness_section, slices_section, split_images
from imagewise.io import atomic_write_text
from imagewise.names import valid_text
from imagewise.runtime.meta import RunMeta
from imagewise.runtime.runs import RunFolder

if TYPE_CHECKING:
    from imagewise.evaluate.result import Evaluation
    from imagewise.predict.base import Classifier

log = logging.getLogger("imagewise")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;
background:#f6f7f9;line-height:1.45}
header{background:#1d2430;color:#fff;padding:18px 28px}header h1{margin:0;font-size:1.5em}
header p{margin:4px 0 0;color:#c9d1dc}nav{padding:8px 28px;background:#e9edf2;font-size:.95em}
nav a{margin-right:14px;color:#1d4f91}main{padding:8px 28px 40px;max-width:1200px}
section{background:#fff;border-radius:8px;padding:14px 20px;margin:16px 0;
box-shadow:0 1px 3px rgba(0,0,0,.08)}h2{font-size:1.15em;margin:4px 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#f0f3f7;border-radius:6px;
padding:8px 14px;min-width:120px}.card b{display:block;font-size:1.35em}.card span{color:#5b6574;
font-size:.85em}table{border-collapse:collapse;font-size:.92em}th,td{padding:4px 10px;
border-bottom:1px solid #e3e7ec;text-align:right}th:first-child,td:first-child{text-align:left}
table.sortable th{cursor:pointer;user-select:none;background:#f0f3f7}
table.sortable th:after{content:" \\2195";color:#9aa4b1}dl.meta{display:grid;
grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}dl.meta dt{color:#5b6574}
dl.meta dd{margin:0}img.plot{max-width:100%;height:auto}.pair{display:flex;flex-wrap:wrap;gap:12px}
.pair img{max-width:min(100%,560px)}.gallery{display:grid;
grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px}.gallery figure{margin:0;
background:#f0f3f7;border-radius:6px;padding:8px}.gallery img{width:100%;height:auto;
image-rendering:pixelated}.gallery .imgs{display:flex;gap:4px}.gallery .imgs img{width:50%}
.gallery figcaption{font-size:.85em}.bad{color:#b3261e}.good{color:#1e7b34}
.muted{color:#5b6574;font-size:.9em}.src{word-break:break-all}
"""

# Click a header to sort by that column; numbers sort by their data-value.
JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var up = th.dataset.order !== 'asc';
      th.dataset.order = up ? 'asc' : 'desc';
      rows.sort(function (a, b) {
        var x = a.cells[col], y = b.cells[col];
        var vx = x.dataset.value !== undefined ? parseFloat(x.dataset.value) : x.textContent;
        var vy = y.dataset.value !== undefined ? parseFloat(y.dataset.value) : y.textContent;
        var c = (typeof vx === 'number') ? vx - vy : String(vx).localeCompare(String(vy));
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def file_uri(path: Path) -> str | None:
    return _png_uri(path.read_bytes()) if path.is_file() else None


def _pil_uri(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return _png_uri(buf.getvalue())


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _img(uri: str | None, alt: str, cls: str = "plot") -> str:
    if uri is None:
        return f'<p class="muted">{_esc(alt)}: not available</p>'
    return f'<img class="{cls}" src="{uri}" alt="{_esc(alt)}">'


def _or_unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


def _summary(ev: Evaluation, meta: RunMeta, run: Path) -> str:
    m, training = ev.metrics, meta.training
    cal = m.calibration
    assert cal is not None
    cards = [
        ("accuracy", _pct(m.accuracy)),
        *((f"top-{k}", _pct(v)) for k, v in m.top_k_accuracy.items() if k != "1"),
        ("macro F1", f"{m.macro.f1:.4f}"),
        ("weighted F1", f"{m.weighted.f1:.4f}"),
        ("log loss", f"{m.log_loss:.4f}"),
        ("ECE", f"{cal.ece_after:.4f}"),
        ("images", f"{m.images:,}"),
    ]
    if (ml := m.multilabel) is not None:  # the same figures under their multi-label names
        cards = [
            ("mAP", f"{ml.map:.4f}"),
            ("micro F1", f"{ml.micro.f1:.4f}"),
            ("macro F1", f"{ml.macro.f1:.4f}"),
            ("subset accuracy", _pct(m.accuracy)),
            ("binary log loss", f"{m.log_loss:.4f}"),
            ("mean label ECE", f"{cal.ece_after:.4f}"),
            ("images", f"{m.images:,}"),
        ]
    card_html = "".join(f'<div class="card"><b>{v}</b><span>{k}</span></div>' for k, v in cards)
    seconds = training.train_seconds
    facts = [
        ("run", str(run)),
        ("model", meta.model.name),
        ("parameters", f"{meta.model.parameters:,}"),
        ("data", m.data),
        ("evaluated on", f"{m.split} split, {m.images:,} images"),
        (
            "training data",
            f"{meta.data.train_images} train / {meta.data.val_images} validation images",
        ),
        (
            "input",
            f"{meta.preprocessing.channels} x {meta.preprocessing.img_size} x "
            f"{meta.preprocessing.img_size}",
        ),
        (
            "epochs",
            f"{_or_unknown(training.epochs_run)} of {_or_unknown(training.epochs_planned)}"
            f" (best {_or_unknown(training.best_epoch)})",
        ),
        ("training time", f"{seconds:.0f} s" if seconds is not None else "unknown"),
        ("temperature", f"{cal.temperature:.4g}"),
        ("created", meta.created),
    ]
    dl = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts)
    return (
        f'<section id="summary"><h2>Summary</h2><div class="cards">{card_html}</div>'
        f'<h2 style="margin-top:14px">Run</h2><dl class="meta">{dl}</dl></section>'
    )


def _per_class(ev: Evaluation) -> str:
    rows = []
    for name, c in ev.metrics.per_class.items():
        cells = "".join(f'<td data-value="{v}">{v:.3f}</td>' for v in (c.precision, c.recall, c.f1))
        rows.append(
            f'<tr><td>{_esc(name)}</td>{cells}<td data-value="{c.support}">{c.support}</td></tr>'
        )
    foot = "".join(
        f"<tr><td><i>{name} average</i></td>"
        + "".join(f"<td>{v:.3f}</td>" for v in (avg.precision, avg.recall, avg.f1))
        + f"<td>{ev.metrics.images}</td></tr>"
        for name, avg in (("macro", ev.metrics.macro), ("weighted", ev.metrics.weighted))
    )
    return (
        '<section id="classes"><h2>Per class</h2><p class="muted">Click a column to sort.</p>'
        '<table class="sortable" id="per-class"><thead><tr><th>class</th><th>precision</th>'
        "<th>recall</th><th>F1</th><th>support</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody><tfoot>{foot}</tfoot></table></section>"
    )


def _confused(ev: Evaluation) -> str:
    pairs = ev.metrics.most_confused
    if not pairs:
        return '<section id="confused"><h2>Most confused pairs</h2><p>No errors.</p></section>'
    support = {k: v.support for k, v in ev.metrics.per_class.items()}
    rows = "".join(
        f"<tr><td>{_esc(p.true)}</td><td>{_esc(p.predicted)}</td><td>{p.count}</td>"
        f"<td>{_pct(p.count / max(support[p.true], 1))}</td></tr>"
        for p in pairs
    )
    return (
        '<section id="confused"><h2>Most confused pairs</h2><table><thead><tr><th>true class'
        "</th><th>predicted as</th><th>images</th><th>of the true class</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def _error_gallery(ev: Evaluation, clf: Classifier, n: int) -> str:
    from PIL import Image

    worst = [e for e in ev.top_losses(len(ev.labels)) if e["true"] != e["predicted"]][:n]
    head = '<section id="errors"><h2>Worst errors</h2>'
    if not worst or ev.images is None:
        return head + "<p>No misclassified images.</p></section>"
    pre = clf.preprocessing
    worst_index = [e["index"] for e in worst]
    images = split_images(ev.images, worst_index, pre)
    predicted = [clf.classes.index(e["predicted"]) for e in worst]
    cams, note = None, "Grad-CAM of the predicted class: where the model looked."
    if not clf.capabilities.gradcam:
        note = f"No Grad-CAM: {clf.name} declares no feature map to explain."
    else:
        try:
            from imagewise.explain import cam_maps

            cams = cam_maps(clf.model, normalize(pre, images.to(clf.device)), predicted)
        except Exception as exc:  # a report without heat maps beats no report
            log.warning("Grad-CAM failed for the report: %s", exc)
            note = f"Grad-CAM not available: {exc}"
    figures = []
    for k, e in enumerate(worst):
        rgb = images[k].permute(1, 2, 0).numpy()
        rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
        scale = max(1, 160 // max(rgb.shape[:2]))
        plain = Image.fromarray(rgb).resize(
            (rgb.shape[1] * scale, rgb.shape[0] * scale), Image.Resampling.NEAREST
        )
        tiles = f'<img src="{_pil_uri(plain)}" alt="image {e["index"]}">'
        if cams is not None:
            from imagewise.explain import overlay

            tiles += f'<img src="{_pil_uri(overlay(rgb, cams[k], 160))}" alt="Grad-CAM">'
        source = e["source"] if e["source"] != str(e["index"]) else f"test image #{e['index']}"
        figures.append(
            f'<figure><div class="imgs">{tiles}</div><figcaption>'
            f'true <b class="good">{_esc(e["true"])}</b>, predicted '
            f'<b class="bad">{_esc(e["predicted"])}</b> ({_pct(e["confidence"])})<br>'
            f'loss {e["loss"]:.3f} · <span class="src">{_esc(source)}</span>'
            "</figcaption></figure>"
        )
    return (
        f'{head}<p class="muted">The {len(worst)} misclassified images with the highest loss. '
        f'{_esc(note)}</p><div class="gallery">{"".join(figures)}</div></section>'
    )


def _calibration(ev: Evaluation, eval_dir: Path) -> str:
    cal = ev.metrics.calibration
    assert cal is not None
    rows = "".join(
        f"<tr><td>{name}</td><td>{t:.4g}</td><td>{ece:.4f}</td><td>{nll:.4f}</td></tr>"
        for name, t, ece, nll in (
            ("before temperature scaling", 1.0, cal.ece_before, cal.nll_before),
            ("after temperature scaling", cal.temperature, cal.ece_after, cal.nll_after),
        )
    )
    if ev.multilabel:
        return (
            '<section id="calibration"><h2>Calibration</h2><p class="muted">The mean over the '
            f"labels of each label's calibration error ({cal.bins} equal-width bins of its "
            "probability) and the mean binary cross-entropy. One temperature for every "
            "label's sigmoid, fitted on the validation split after training; predictions use "
            "it. Each label's own error is in the per-label table.</p><table><thead><tr><th>"
            "</th><th>temperature</th><th>mean label ECE</th><th>binary NLL</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>"
        )
    return (
        '<section id="calibration"><h2>Calibration</h2><p class="muted">Expected calibration '
        f"error over {cal.bins} equal-width confidence bins. The temperature was fitted on the "
        "validation split after training; predictions use it.</p>"
        "<table><thead><tr><th></th><th>temperature</th><th>ECE</th><th>NLL</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f"{_img(file_uri(eval_dir / 'reliability.png'), 'reliability diagram')}</section>"
    )


def render_report(ev: Evaluation, clf: Classifier, run: Path, gallery: int = 24) -> str:
    """The report page as a string (see ``write_report``)."""
    from imagewise.evaluate.conformal import conformal_section

    folder = RunFolder.of(run)
    eval_dir = folder.eval_dir
    title = f"imagewise report: {folder.path.name}"
    if ev.multilabel:
        return _page(ev, clf, title, _multilabel_sections(ev, clf, folder, gallery))
    sections = [
        _summary(ev, clf.run_meta, folder.path),
        _per_class(ev),
        '<section id="confusion"><h2>Confusion matrix</h2><div class="pair">'
        + _img(file_uri(eval_dir / "confusion_matrix.png"), "confusion matrix (counts)")
        + _img(
            file_uri(eval_dir / "confusion_matrix_normalized.png"),
            "confusion matrix (normalized)",
        )
        + "</div></section>",
        '<section id="curves"><h2>Training curves</h2>'
        + _img(file_uri(folder.curves), "training curves (a classical model has none)")
        + "</section>",
        _confused(ev),
        _error_gallery(ev, clf, gallery),
        _calibration(ev, eval_dir),
        conformal_section(ev.metrics.conformal),
        robustness_section(ev.robustness),
        slices_section(ev.slices),
    ]
    nav = _nav(
        (
            ("summary", "summary"),
            ("classes", "per class"),
            ("confusion", "confusion"),
            ("curves", "curves"),
            ("confused", "confused pairs"),
            ("errors", "worst errors"),
            ("calibration", "calibration"),
            *([("sets", "prediction sets")] if ev.metrics.conformal else []),
            *((("robustness", "robustness"),) if ev.robustness is not None else ()),
            *((("slices", "slices"),) if ev.slices is not None else ()),
        )
    )
    return _page(ev, clf, title, (sections, nav))


def _multilabel_sections(
    ev: Evaluation, clf: Classifier, folder: RunFolder, gallery: int
) -> tuple[list[str], str]:
    """A multi-label run's sections (the multi-label scores in place of the per-class table,
    the confusion matrix and the worst errors) and the navigation to them."""
    from imagewise.evaluate.multilabel_report import multilabel_section

    assert ev.metrics.multilabel is not None
    per_kind = max(1, min(3, gallery // 6))  # --gallery 24: 3 labels x (3 + 3) images
    sections = [
        _summary(ev, clf.run_meta, folder.path),
        multilabel_section(
            ev.metrics.multilabel,
            ev.probabilities,
            ev.labels,
            pr_curves=folder.eval_dir / "pr_curves.png",
            clf=clf if gallery else None,
            images=ev.images,
            sources=ev.sources,
            per_kind=per_kind,
        ),
        '<section id="curves"><h2>Training curves</h2>'
        + _img(file_uri(folder.curves), "training curves")
        + "</section>",
        _calibration(ev, folder.eval_dir),
    ]
    nav = _nav(
        (
            ("summary", "summary"),
            ("multilabel", "per label"),
            *((("label-errors", "example errors"),) if gallery else ()),
            ("curves", "curves"),
            ("calibration", "calibration"),
        )
    )
    return sections, nav


def _nav(links: tuple[tuple[str, str], ...]) -> str:
    """The report's navigation bar: (section anchor, label) pairs."""
    return "".join(f'<a href="#{anchor}">{label}</a>' for anchor, label in links)


def _page(ev: Evaluation, clf: Classifier, title: str, parts: tuple[list[str], str]) -> str:
    from imagewise.version import __version__

    sections, nav = parts
    headline = (
        f"mAP {ev.metrics.multilabel.map:.4f}"
        if ev.metrics.multilabel is not None
        else f"accuracy {_pct(ev.accuracy)}"
    )
    written = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><p>{_esc(clf.name)} on "
        f"{_esc(ev.metrics.data)} · {headline}</p></header>"
        f"<nav>{nav}</nav><main>{''.join(sections)}</main>"
        f'<footer class="muted" style="padding:0 28px 20px">written by imagewise '
        f"{_esc(__version__)} at {written}</footer>"
        f"<script>{JS}</script></body></html>"
    )


def write_report(run: str | Path, ev: Evaluation, clf: Classifier, gallery: int = 24) -> Path:
    """Write ``RUN/eval/report.html`` from an evaluation whose plots are already in ``eval/``.

    Args:
        run: the run folder.
        ev: the result of ``imagewise.evaluate`` (with its images).
        clf: the loaded classifier (for Grad-CAM of the worst errors).
        gallery: how many of the worst errors to show.
    """
    page = render_report(ev, clf, Path(run), gallery)
    # valid_text: an image name that is not UTF-8 is shown as caf\xe9.png, as UTF-8
    return atomic_write_text(RunFolder.of(run).eval_dir / "report.html", valid_text(page))


__all__ = ["render_report", "write_report"]
