"""What a study leaves in its output folder: ``trials.csv``, ``best.yaml``, three plots (PNG)
and ``report.html`` holding them, self-contained.

The plots are drawn here on ``matplotlib.figure.Figure`` (as ``imagewise.figures`` does) rather
than with ``optuna.visualization.matplotlib``, which switches pyplot's style for the whole
process; the parameter importances are Optuna's (fANOVA).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path
from typing import Any

from imagewise.config import RunConfig, apply_options
from imagewise.figures import new_figure, save_figure
from imagewise.io import atomic_write_text

COLUMNS = ("number", "state", "value", "epochs", "setup_seconds", "epoch_seconds", "seconds")


def finished(study: Any) -> list[Any]:
    """The study's complete and pruned trials, by number."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False, states=states)]


def write_trials_csv(study: Any, path: Path) -> Path:
    """One row per trial (all states): number, state, value, epochs run, timings, settings."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*COLUMNS, *names, "host", "run"])
    for t in trials:
        a = t.user_attrs
        seconds = t.duration.total_seconds() if t.duration else ""
        writer.writerow([
            t.number, t.state.name.lower(), "" if t.value is None else f"{t.value:.6g}",
            a.get("epochs", ""), _num(a.get("setup_seconds")), _num(a.get("epoch_seconds")),
            _num(seconds), *[t.params.get(n, "") for n in names], a.get("host", ""),
            a.get("run", ""),
        ])  # fmt: skip
    return atomic_write_text(path, buf.getvalue())


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""


def best_config(base: RunConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The sections (data / model / train) of ``base`` with ``params`` applied, keeping only
    what differs from the defaults: a file ``imagewise train --config`` reads as is."""
    import copy

    chosen = apply_options(copy.deepcopy(base), params).to_dict()
    return _changed(chosen, RunConfig().to_dict())


def _changed(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            inner = _changed(value, defaults.get(key, {}))
            if inner:
                out[key] = inner
        elif value != defaults.get(key):
            out[key] = value
    return out


def write_best_yaml(base: RunConfig, trial: Any, path: Path, header: str) -> Path:
    """``best.yaml``: the best trial's configuration, with a comment saying where it came from."""
    import yaml

    body = yaml.safe_dump(best_config(base, trial.params), sort_keys=False)
    return atomic_write_text(path, f"# {header}\n{body}")


def plot_history(study: Any, path: Path, score: str = "validation accuracy") -> Path:
    """Every finished trial's ``score`` by trial number, and the best so far."""
    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    trials = finished(study)
    xs = [t.number for t in trials]
    ys = [_trial_value(t) for t in trials]
    pruned = [t.state.name == "PRUNED" for t in trials]
    ax.scatter(
        [x for x, p in zip(xs, pruned, strict=True) if not p],
        [y for y, p in zip(ys, pruned, strict=True) if not p],
        label="complete",
    )
    ax.scatter([x for x, p in zip(xs, pruned, strict=True) if p],
               [y for y, p in zip(ys, pruned, strict=True) if p], marker="x", c="grey",
               label="pruned (last reported)")  # fmt: skip
    best, line = -math.inf, []
    for y, p in zip(ys, pruned, strict=True):
        best = max(best, y) if not p else best
        line.append(best if best > -math.inf else math.nan)
    ax.step(xs, line, where="post", c="C3", label="best so far")
    ax.set(xlabel="trial", ylabel=score, title="Optimization history")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def _trial_value(trial: Any) -> float:
    if trial.value is not None:
        return float(trial.value)
    steps = trial.intermediate_values
    return float(max(steps.values())) if steps else math.nan


def importances(study: Any) -> dict[str, float]:
    """Optuna's fANOVA importance of each searched setting ({} with too few trials)."""
    import optuna

    complete = [t for t in finished(study) if t.state.name == "COMPLETE"]
    if len(complete) < 2 or not complete[0].params:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError, ZeroDivisionError):  # every trial alike
        return {}


def plot_importances(weights: dict[str, float], path: Path) -> Path:
    """Horizontal bars: how much each setting explains the accuracy's variation."""
    fig = new_figure(6.4, 0.5 + 0.45 * max(len(weights), 2))
    ax = fig.add_subplot()
    names = list(weights)[::-1]
    ax.barh(names, [weights[n] for n in names], color="C0")
    if not weights:
        ax.text(0.5, 0.5, "needs two or more complete trials that differ", ha="center",
                va="center", transform=ax.transAxes)  # fmt: skip
    ax.set(xlabel="importance (fANOVA)", title="Parameter importances")
    return save_figure(fig, path)


def plot_parallel(study: Any, path: Path, score: str = "validation accuracy") -> Path:
    """Parallel coordinates: one line per complete trial across its settings, coloured by
    ``score`` (log axes for settings searched on a log scale; lists evenly spaced)."""
    trials = [t for t in finished(study) if t.state.name == "COMPLETE"]
    names = sorted({n for t in trials for n in t.params})
    fig = new_figure(max(6.4, 1.3 * (len(names) + 1)), 3.8)
    ax = fig.add_subplot()
    axes = [*names, score.removeprefix("validation ")]
    columns = [_axis(trials, n) for n in names] + [_axis_values([t.value for t in trials])]
    from matplotlib import colormaps

    values = [t.value for t in trials]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    for i, t in enumerate(trials):
        shade = (t.value - lo) / (hi - lo) if hi > lo else 1.0
        ax.plot(range(len(axes)), [c[0][i] for c in columns], color=colormaps["viridis"](shade),
                alpha=0.8)  # fmt: skip
    for x, (_, labels) in enumerate(columns):
        ax.axvline(x, color="black", lw=0.6)
        for y, text in labels:
            ax.text(x + 0.03, y, text, fontsize=7, va="center")
    ax.set_xticks(range(len(axes)), axes, rotation=20)
    ax.set_yticks([])
    ax.set(title=f"Parallel coordinates (colour: {score})", xlim=(-0.2, len(axes) - 0.5))
    return save_figure(fig, path)


def _axis(trials: list[Any], name: str) -> tuple[list[float], list[tuple[float, str]]]:
    raw = [t.params.get(name) for t in trials]
    dist = next((t.distributions[name] for t in trials if name in t.distributions), None)
    if dist is None or type(dist).__name__ == "CategoricalDistribution":
        choices = list(getattr(dist, "choices", sorted({str(v) for v in raw})))
        spread = [choices.index(v) / max(len(choices) - 1, 1) if v in choices else 0.5 for v in raw]
        return spread, [(i / max(len(choices) - 1, 1), str(c)) for i, c in enumerate(choices)]
    low, high = float(dist.low), float(dist.high)
    scale = math.log if getattr(dist, "log", False) else float
    lo, hi = scale(low), scale(high)
    spread = [(scale(float(v)) - lo) / (hi - lo) if v is not None else 0.5 for v in raw]
    return spread, [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]


def _axis_values(values: list[float]) -> tuple[list[float], list[tuple[float, str]]]:
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    spread = [(v - lo) / (hi - lo) if hi > lo else 0.5 for v in values]
    return spread, [(0.0, f"{lo:.4f}"), (1.0, f"{hi:.4f}")]


def write_html(path: Path, title: str, summary: list[str], best: dict[str, Any],
               images: list[Path], table: Path) -> Path:  # fmt: skip
    """One page with the summary, the best settings, the plots (embedded) and the trial table."""
    parts = [f"<h1>{html.escape(title)}</h1>", "<pre>" + html.escape("\n".join(summary)) + "</pre>"]
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in best.items()
    )
    parts.append(f"<h2>Best settings</h2><table>{rows}</table>")
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode()
        parts.append(f'<p><img alt="{image.stem}" src="data:image/png;base64,{data}"></p>')
    with table.open() as f:
        cells = list(csv.reader(f))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0]) if cells else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells[1:]
    )
    parts.append(f"<h2>Trials</h2><table><tr>{head}</tr>{body}</table>")
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}"
    )
    meta = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
    page = f"<!doctype html><html><head>{meta}</head><body>{''.join(parts)}</body></html>\n"
    return atomic_write_text(path, page)
