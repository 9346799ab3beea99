"""``imagewise compare``: runs side by side — accuracy, F1, calibration, size, speed, cost.

Accuracy, macro F1 and ECE come from each run's evaluation (``eval/metrics.json``, made when
missing); parameters and FLOPs from the model; latency is measured here on the CPU, one run after
another in the same process, so the figures are comparable with each other.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from imagewise.errors import UserError
from imagewise.evaluate.scores import Metrics
from imagewise.io import atomic_write_text
from imagewise.runtime.runs import RunFolder

log = logging.getLogger("imagewise")

COLUMNS = (
    ("name", "run"),
    ("model", "model"),
    ("accuracy", "accuracy"),  # a multi-label run's: subset accuracy (every label right)
    ("map", "mAP"),  # multi-label runs only, as micro F1
    ("micro_f1", "micro F1"),
    ("macro_f1", "macro F1"),
    ("ece", "ECE"),
    ("params", "parameters"),
    ("flops", "FLOPs"),
    ("latency_ms_batch1", "ms/image b1"),
    ("latency_ms_batch64", "ms/image b64"),
    ("train_seconds", "train s"),
)


def measure_latency(
    model: torch.nn.Module, in_chans: int, img_size: int, batch: int, budget_s: float = 2.0
) -> float:
    """Median milliseconds per image of a CPU forward pass at ``batch`` images per call."""
    x = torch.randn(batch, in_chans, img_size, img_size).contiguous(
        memory_format=torch.channels_last
    )
    model = model.eval()
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(2):  # warm-up: allocator, kernel selection
            model(x)
        start = time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - start < budget_s and len(times) < 200):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / batch


def _metrics(run: Path, data: str | None) -> Metrics:
    """The run's evaluation: the stored one when it is current (an older or damaged file is
    evaluated again), a fresh one otherwise."""
    from imagewise.evaluate.evaluation import evaluate

    stored = RunFolder.of(run).eval_dir / "metrics.json"
    if data is None and stored.is_file():
        import json

        try:
            metrics = Metrics.from_json(json.loads(stored.read_text()), str(stored), "")
        except (ValueError, UserError):
            metrics = None
        if metrics is not None and metrics.calibration is not None:
            return metrics
    log.info("evaluating %s", run)
    # Another dataset's figures must not replace the run's own eval/ files.
    return evaluate(run, data, write=data is None, report=False).metrics


def compare_runs(
    runs: list[str | Path], data: str | None = None, latency: bool = True
) -> list[dict[str, Any]]:
    """One row of figures per run, in the order given.

    Args:
        runs: run folders.
        data: evaluate every run on this dataset instead of its own test split.
        latency: measure CPU latency at batch 1 and 64 (a few seconds per run).

    Example:
        >>> rows = imagewise.compare(["runs/a", "runs/b"])  # doctest: +SKIP
        >>> [(r["name"], r["accuracy"]) for r in rows]  # doctest: +SKIP
    """
    from imagewise.models import count_flops
    from imagewise.predict.predictor import load_run

    if not runs:
        raise UserError("compare needs at least one run folder")
    names = [Path(r).name for r in runs]
    rows = []
    for run, name in zip(runs, names, strict=True):
        clf = load_run(run, device="cpu")  # checks the folder holds a run
        metrics = _metrics(Path(run), data)
        pre, meta = clf.preprocessing, clf.run_meta
        row: dict[str, Any] = {
            "name": name if names.count(name) == 1 else str(run),
            "run": str(run),
            "model": meta.model.name,
            "data": metrics.data,
            "split": metrics.split,
            "images": metrics.images,
            "accuracy": metrics.accuracy,
            "macro_f1": metrics.macro.f1,
            "ece": metrics.calibration.ece_after if metrics.calibration else None,
            "params": sum(p.numel() for p in clf.model.parameters()),
            # FLOPs and latency of the network as it answers (a multiple of the model's with --tta)
            "flops": count_flops(clf.network, pre.channels, pre.img_size),
            "train_seconds": meta.training.train_seconds,
        }
        if metrics.multilabel is not None:
            row["map"], row["micro_f1"] = metrics.multilabel.map, metrics.multilabel.micro.f1
        if latency:
            for batch in (1, 64):
                ms = measure_latency(clf.network, pre.channels, pre.img_size, batch)
                row[f"latency_ms_batch{batch}"] = ms
        rows.append(row)
    sources = {(r["data"], r["split"]) for r in rows}
    if len(sources) > 1:
        log.warning("the runs were evaluated on different data; compare with --data DATA")
    return rows


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("accuracy", "macro_f1", "map", "micro_f1") and isinstance(value, float):
        return f"{100 * value:.2f}%" if key == "accuracy" else f"{value:.4f}"
    if key == "ece":
        return f"{value:.4f}"
    if key == "params":
        return f"{value / 1e6:.3f}M"
    if key == "flops":
        return f"{value / 1e6:.1f}M"
    if key.startswith("latency"):
        return f"{value:.3f}"
    if key == "train_seconds":
        return f"{value:.0f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    cols = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
    cells = [[h for _, h in cols]] + [[_cell(k, r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    lines = []
    for n, line in enumerate(cells):
        pairs = enumerate(zip(line, widths, strict=True))
        parts = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_comparison(rows: list[dict[str, Any]], format: str = "table") -> str:
    """The rows as an aligned text table (``format_table``), CSV with a header, or JSON."""
    if format == "json":
        return json.dumps(rows, indent=2)
    if format == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().removesuffix("\n")
    return format_table(rows)


_LEFT = "#runs td:nth-child(2),#runs th:nth-child(2){text-align:left}"


def render_comparison(rows: list[dict[str, Any]]) -> str:
    """A self-contained HTML page: the sortable table and the accuracy vs latency scatter."""
    import html

    from imagewise.evaluate.plots import plot_accuracy_latency
    from imagewise.evaluate.report import CSS, JS, file_uri
    from imagewise.version import __version__

    cols = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in cols)
    body = ""
    for r in rows:
        cells = ""
        for k, _ in cols:
            v = r.get(k)
            attr = f' data-value="{v}"' if isinstance(v, int | float) else ""
            cells += f"<td{attr}>{html.escape(_cell(k, v))}</td>"
        body += f"<tr>{cells}</tr>"
    scatter = ""
    if all(r.get("latency_ms_batch1") is not None for r in rows):
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_accuracy_latency(rows, Path(tmp) / "scatter.png")
            scatter = f'<img class="plot" src="{file_uri(png)}" alt="accuracy vs latency">'
    data = sorted({f"{r['data']} ({r['split']})" for r in rows})
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>imagewise comparison</title><style>{CSS}{_LEFT}</style></head><body>"
        f"<header><h1>imagewise comparison</h1><p>{len(rows)} runs evaluated on "
        f"{html.escape(', '.join(data))}</p></header><main>"
        '<section><h2>Runs</h2><p class="muted">Accuracy, macro F1 and ECE on the evaluation '
        "data; latency is the median CPU time per image at batch 1 and batch 64, measured one "
        "run after another in the same process. Click a column to sort.</p>"
        f'<table class="sortable" id="runs"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></section>"
        f"<section><h2>Accuracy vs latency</h2>{scatter}</section></main>"
        '<footer class="muted" style="padding:0 28px 20px">written by imagewise '
        f"{html.escape(__version__)}</footer><script>{JS}</script></body></html>"
    )


def write_comparison(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """Write the comparison page (``render_comparison``) atomically to ``out``."""
    return atomic_write_text(out, render_comparison(rows))


__all__ = ["compare_runs", "format_table", "measure_latency", "render_comparison"]
