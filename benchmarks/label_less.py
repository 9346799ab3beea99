"""Label less (issue 31): simulated labelling on Fashion-MNIST, test accuracy against labels.

The true labels play the person who labels. Each seed starts from ``--start`` labelled images
per class drawn from a fixed pool (``--pool`` images of the train split, written once as PNGs
into ``--cache``); each round trains a run with ``imagewise.train`` on a CSV manifest of the
labelled images (``path,label,labelled_by``; validation carved from them by train's default
stratified ``--val-fraction`` 0.1, so every validation image is counted in the labels), measures
it on the test split (the official 10,000 images, or ``--test-size`` of them), and lets
``imagewise.label.selection.select`` pick the next ``--batch`` pool images from that run's
calibrated probabilities and embeddings (near-copies of labelled images skipped), until
``--labels`` images are labelled.

``--pseudo`` trains a second run at every point (or at ``--pseudo-at`` label counts): the
same labelled images plus confident pseudo-labels of the rest of the pool
(``imagewise.train(..., unlabelled=POOL, pseudo_precision=P)``: a teacher, then the student).
It follows the labelled-only trajectory: the labelled-only run picks the next batch, so the two
variants see the same labelled images at each point.

Settings fixed for speed, none of which changes what is compared: ``--precision fp32`` (auto
times a bf16 step in every run), and each run's ``curves.png`` is not redrawn after every epoch
(``--curves`` to draw it). Writes a JSON of every point (``--json``; ``--resume`` continues
one, so a second pass can add the pseudo-labelled points), prints the table (mean and min-max
over seeds), how many labels each strategy needs to reach random selection's mean accuracy at
the most labels, and plots accuracy against labels, a panel per variant (``--plot``).

    .venv/bin/python benchmarks/label_less.py                       # labelled only, 3 seeds
    .venv/bin/python benchmarks/label_less.py --resume --pseudo --pseudo-at 100 200 400 600 1000
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STRATEGIES = ("random", "uncertainty", "diversity", "mixed")
VARIANTS = ("labelled", "pseudo")
FORMAT = "imagewise-label-less/1"


@dataclass
class Dataset:
    """The pool (uint8 N x 28 x 28, labels, PNG paths) and the test images, with class names."""

    classes: list[str]
    pool: np.ndarray
    pool_labels: np.ndarray
    pool_paths: list[Path]
    test: np.ndarray
    test_labels: np.ndarray


@dataclass
class Trajectory:
    """One strategy and seed: the pool indices in the order they were labelled, and the points
    measured (``{labels: {"labelled": {...}, "pseudo": {...}}}``)."""

    strategy: str
    seed: int
    order: list[int]
    points: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        points = [{"labels": n, **self.points[n]} for n in sorted(self.points)]
        return {"strategy": self.strategy, "seed": self.seed, "order": self.order,
                "points": points}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trajectory:
        points = {int(p["labels"]): {k: v for k, v in p.items() if k != "labels"}
                  for p in data["points"]}  # fmt: skip
        return cls(data["strategy"], int(data["seed"]), list(data["order"]), points)


# data ---------------------------------------------------------------------------------------


def load_dataset(idx_dir: Path, cache: Path, pool_size: int, test_size: int) -> Dataset:
    """Fashion-MNIST's IDX files: a fixed pool of the train split (seed 0) written once as
    PNGs into ``cache``, and the test split (all of it, or a fixed ``test_size`` subset)."""
    from imagewise.data.builtin import FASHION_CLASSES
    from imagewise.data.idx import find_idx_pairs, read_idx

    pairs = find_idx_pairs(idx_dir)
    if "train" not in pairs or "test" not in pairs:
        raise SystemExit(f"{idx_dir} lacks the train and t10k IDX files")
    train_x, train_y = (read_idx(p) for p in pairs["train"])
    test_x, test_y = (read_idx(p) for p in pairs["test"])
    k = int(train_y.max()) + 1
    classes = FASHION_CLASSES if k == len(FASHION_CLASSES) else [f"class{i}" for i in range(k)]
    rng = np.random.default_rng(0)
    pick = np.sort(rng.permutation(len(train_x))[: min(pool_size, len(train_x))])
    if 0 < test_size < len(test_x):
        keep = np.sort(rng.permutation(len(test_x))[:test_size])
        test_x, test_y = test_x[keep], test_y[keep]
    paths = write_pngs(cache.resolve() / f"pool-{len(pick)}", train_x[pick], pick)
    return Dataset(list(classes), train_x[pick], train_y[pick].astype(np.int64), paths,
                   test_x, test_y.astype(np.int64))  # fmt: skip


def write_pngs(folder: Path, images: np.ndarray, ids: np.ndarray) -> list[Path]:
    """``folder/train-ID.png`` for each image, written once (a marker file says complete)."""
    from PIL import Image

    paths = [folder / f"train-{i:05d}.png" for i in ids]
    done = folder / ".complete"
    if done.is_file():
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image, "L").save(path)
    done.write_text(f"{len(paths)}\n")
    return paths


def start_order(labels: np.ndarray, per_class: int, seed: int) -> list[int]:
    """``per_class`` pool indices of each class, drawn with ``seed``: the labels everyone has."""
    rng = np.random.default_rng(1000 + seed)
    first = [rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in np.unique(labels)]
    return sorted(int(i) for i in np.concatenate(first))


def write_labels(data: Dataset, indices: list[int], path: Path) -> Path:
    """The labelled images as the label tools write them (``imagewise.data.manifest``):
    ``path,label,labelled_by``, every label by a person (the true label)."""
    from imagewise.data.manifest import PERSON, manifest_path, write_manifest

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ({"path": manifest_path(data.pool_paths[i], path),
             "label": data.classes[data.pool_labels[i]], "labelled_by": PERSON}
            for i in indices)  # fmt: skip
    return write_manifest(path, rows)


# one point ----------------------------------------------------------------------------------


@contextmanager
def curves_drawn(draw: bool) -> Iterator[None]:
    """Without ``draw``, the run folders' ``curves.png`` (redrawn after every epoch, about a
    second each on 2 busy cores: most of a 100-image run's time) is not drawn; no number
    changes. The benchmark's own process, so its module attribute is swapped back after."""
    from imagewise.train import curves

    original = curves.plot_curves
    if not draw:
        curves.plot_curves = lambda history, path: Path(path)
    try:
        yield
    finally:
        curves.plot_curves = original


def train_run(manifest: Path, out: Path, args: argparse.Namespace, seed: int,
              unlabelled: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """``imagewise.train`` on the manifest (plus pseudo-labels of ``unlabelled``); its numbers."""
    import imagewise

    extra: dict[str, Any] = {}
    if unlabelled is not None:
        extra = {"unlabelled": str(unlabelled), "pseudo_precision": args.pseudo_precision}
    start = time.perf_counter()
    with curves_drawn(args.curves):
        result = imagewise.train(
            str(manifest), out, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
            test_fraction=0.0, seed=seed, workers=0, show_progress=False,
            precision=args.precision, **extra,
        )  # fmt: skip
    return {"train_seconds": round(result.train_seconds, 2),
            "wall_seconds": round(time.perf_counter() - start, 2),
            "val_accuracy": round(float(result.best_val_accuracy), 4)}  # fmt: skip


def as_tensor(images: np.ndarray) -> Any:
    """uint8 (N, 28, 28) -> a uint8 tensor (N, 1, 28, 28)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images[:, None]))


def probabilities(clf: Any, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """The run's calibrated probabilities of uint8 images, columns in the run's class order."""
    import torch

    with torch.no_grad():
        return np.concatenate([clf.image_probabilities(as_tensor(images[s : s + batch])).numpy()
                               for s in range(0, len(images), batch)])  # fmt: skip


def test_accuracy(clf: Any, data: Dataset) -> float:
    """Accuracy of the run's answers on the test images (classes matched by name)."""
    column = np.array([data.classes.index(c) for c in clf.classes])
    guess = column[probabilities(clf, data.test).argmax(axis=1)]
    return float((guess == data.test_labels).mean())


def next_batch(clf: Any, data: Dataset, labelled: list[int], strategy: str, batch: int,
               seed: int) -> list[int]:  # fmt: skip
    """The next ``batch`` pool indices: ``select`` over the unlabelled pool's probabilities and
    embeddings, the labelled images' embeddings given so their near-copies are skipped."""
    from imagewise.label.selection import select
    from imagewise.runtime.embedding import Embedder

    rest = np.setdiff1d(np.arange(len(data.pool)), np.array(labelled))
    embed = Embedder(clf)
    picks = select(
        probabilities(clf, data.pool[rest]), embed(as_tensor(data.pool[rest]), 1000), batch,
        strategy, labelled=embed(as_tensor(data.pool[labelled]), 1000), seed=seed,
    )  # fmt: skip
    return [int(rest[p.index]) for p in picks]


def measure_point(data: Dataset, traj: Trajectory, n: int, args: argparse.Namespace,
                  work: Path, shared: dict[tuple[Any, ...], dict[str, Any]]) -> None:  # fmt: skip
    """Train and measure the point of ``n`` labels (and its pseudo-labelled twin with
    ``--pseudo``), extending the trajectory's order by the next batch where it ends here.
    ``shared`` keeps the measures of labelled sets already trained (every strategy's start)."""
    from imagewise.predict.predictor import load_run

    labelled = traj.order[:n]
    point = traj.points.setdefault(n, {})
    key = (traj.seed, *sorted(labelled))
    needs_pick = n < args.labels and len(traj.order) < n + args.batch
    if "labelled" not in point or needs_pick:
        done = shared.get(key)
        if done is None or (needs_pick and not done["run"].is_dir()):
            out = work / f"{traj.strategy}-s{traj.seed}-n{n}"
            shutil.rmtree(out, ignore_errors=True)
            manifest = write_labels(data, labelled, work / f"labels-{out.name}.csv")
            done = {"run": out, **train_run(manifest, out, args, traj.seed)}
            done["accuracy"] = round(test_accuracy(load_run(out, device="cpu"), data), 4)
            shared[key] = done
        point["labelled"] = {k: v for k, v in done.items() if k != "run"}
        if needs_pick:
            clf = load_run(done["run"], device="cpu")
            traj.order += next_batch(clf, data, labelled, traj.strategy, args.batch, traj.seed)
        if n > args.start * len(data.classes):  # the start picks every strategy's first batch
            shutil.rmtree(done["run"], ignore_errors=True)
    wanted = args.pseudo_at is None or n in args.pseudo_at
    if args.pseudo and wanted and "pseudo" not in point:
        point["pseudo"] = pseudo_point(data, traj, n, args, work, shared)


def pseudo_point(data: Dataset, traj: Trajectory, n: int, args: argparse.Namespace, work: Path,
                 shared: dict[tuple[Any, ...], dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The student trained on the ``n`` labelled images plus pseudo-labels of the pool folder
    (train leaves out the pool images already labelled: the same path); ``shared`` as in
    ``measure_point``. Where train refuses (no confidence threshold reaches the precision on
    the teacher's validation images), the point is the labelled-only run's, marked ``refused``:
    what the person is left with."""
    from imagewise.errors import UserError
    from imagewise.predict.predictor import load_run

    key = ("pseudo", traj.seed, *sorted(traj.order[:n]))
    if key in shared:
        return shared[key]
    out = work / f"{traj.strategy}-s{traj.seed}-n{n}-pseudo"
    shutil.rmtree(out, ignore_errors=True)
    manifest = write_labels(data, traj.order[:n], work / f"labels-{out.name}.csv")
    try:
        numbers = train_run(manifest, out, args, traj.seed, unlabelled=data.pool_paths[0].parent)
    except UserError as exc:  # no threshold reaches the precision on the teacher's validation
        shutil.rmtree(out, ignore_errors=True)
        return {**traj.points[n]["labelled"], "pseudo_labelled": 0, "refused": str(exc)}
    numbers["accuracy"] = round(test_accuracy(load_run(out, device="cpu"), data), 4)
    numbers.update(pseudo_record(out))
    shutil.rmtree(out, ignore_errors=True)
    shared[key] = numbers
    return numbers


def pseudo_record(run: Path) -> dict[str, Any]:
    """What the run's ``meta.json`` says of its pseudo-labels: the threshold fitted for the
    target precision, its validation precision, and how many pool images were labelled."""
    from imagewise.runtime.runs import RunFolder

    record = RunFolder.of(run).read_meta().pseudo_labels
    if record is None:
        return {"pseudo_labelled": 0}
    return {"threshold": round(record.threshold, 4),
            "teacher_val_precision": round(record.val_precision, 4),
            "pool_images": record.pool_images, "pseudo_labelled": record.labelled,
            "pseudo_share": round(record.share, 4)}  # fmt: skip


# the whole run ------------------------------------------------------------------------------


def schedule(args: argparse.Namespace, classes: int) -> list[int]:
    """Label counts measured: the start, then every ``--batch`` up to ``--labels``."""
    first = args.start * classes
    return list(range(first, args.labels + 1, args.batch))


def run_all(data: Dataset, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Every seed's trajectories, strategy by strategy, saving the JSON after each point."""
    points = schedule(args, len(data.classes))
    trajs = {(t["strategy"], t["seed"]): Trajectory.from_json(t) for t in results["trajectories"]}
    for seed in args.seeds:
        shared: dict[tuple[Any, ...], dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="label-less-", dir=args.work) as tmp:
            for strategy in args.strategies:
                key = (strategy, seed)
                traj = trajs.setdefault(
                    key, Trajectory(strategy, seed, start_order(data.pool_labels, args.start, seed))
                )
                for n in points:
                    started = time.perf_counter()
                    measure_point(data, traj, n, args, Path(tmp), shared)
                    save(results, trajs, args)
                    log_point(traj, n, time.perf_counter() - started)


def log_point(traj: Trajectory, n: int, seconds: float) -> None:
    """One progress line per point."""
    point = traj.points[n]
    parts = [f"{v} {point[v]['accuracy']:.4f}" for v in VARIANTS if v in point]
    print(f"{time.strftime('%H:%M:%S')} {traj.strategy:<11} seed {traj.seed} {n:>5} labels: "
          f"{', '.join(parts)} ({seconds:.0f}s)", flush=True)  # fmt: skip


def save(results: dict[str, Any], trajs: dict[tuple[str, int], Trajectory],
         args: argparse.Namespace) -> None:  # fmt: skip
    """The JSON: settings, each trajectory, the flat list of points and the summary."""
    from imagewise.io import atomic_write_json

    results["trajectories"] = [t.to_json() for t in trajs.values()]
    results["points"] = flat_points(trajs.values())
    results["summary"] = summarize(results["points"])
    results["seconds"] = round(args.seconds_before + time.perf_counter() - args.began, 1)
    atomic_write_json(args.json, results)


def flat_points(trajs: Any) -> list[dict[str, Any]]:
    """One row per strategy, seed, labels and variant."""
    rows = []
    for t in trajs:
        for n, point in sorted(t.points.items()):
            for variant in VARIANTS:
                if variant in point:
                    rows.append({"strategy": t.strategy, "seed": t.seed, "labels": n,
                                 "variant": variant, **point[variant]})  # fmt: skip
    return rows


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max test accuracy over seeds per variant, strategy and label count; and
    the fewest labels at which each reaches random selection's mean at its most labels."""
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for p in points:
        cell = table.setdefault(p["variant"], {}).setdefault(p["strategy"], {})
        cell.setdefault(str(p["labels"]), {"values": []})["values"].append(p["accuracy"])
    for strategies in table.values():
        for counts in strategies.values():
            for stats in counts.values():
                v = stats.pop("values")
                stats.update(mean=float(np.mean(v)), min=min(v), max=max(v), seeds=len(v))
    refused = [p for p in points if "refused" in p]
    return {"accuracy": table, "reach_random": reach_random(table), "refused": len(refused)}


def reach_random(table: dict[str, Any]) -> dict[str, Any]:
    """Random selection's labelled-only mean at its most labels, and for each variant and
    strategy the fewest labels whose mean accuracy reaches it (None: never)."""
    random = table.get("labelled", {}).get("random")
    if not random:
        return {}
    most = max(random, key=int)
    target = random[most]["mean"]
    reached: dict[str, dict[str, int | None]] = {}
    for variant, strategies in table.items():
        for strategy, counts in strategies.items():
            hits = [int(n) for n, s in counts.items() if s["mean"] >= target]
            reached.setdefault(variant, {})[strategy] = min(hits) if hits else None
    return {"random_labels": int(most), "random_accuracy": target, "labels_needed": reached}


# output -------------------------------------------------------------------------------------


def print_table(summary: dict[str, Any]) -> None:
    """Mean test accuracy [min-max over seeds] per label count, one column per strategy."""
    for variant, strategies in summary["accuracy"].items():
        names = [s for s in STRATEGIES if s in strategies]
        title = "labelled only" if variant == "labelled" else "with pseudo-labels"
        print(f"\ntest accuracy, {title} (mean [min-max] over seeds)")
        print(f"{'labels':>6} | " + " | ".join(f"{s:^21}" for s in names))
        counts = sorted({int(n) for s in names for n in strategies[s]})
        for n in counts:
            cells = []
            for s in names:
                c = strategies[s].get(str(n))
                cells.append(f"{c['mean']:.2%} [{c['min']:.1%}-{c['max']:.1%}]" if c else "")
            print(f"{n:>6} | " + " | ".join(f"{c:^21}" for c in cells))
    reach = summary.get("reach_random")
    if reach:
        print(f"\nrandom selection, labelled only, at {reach['random_labels']} labels: "
              f"{reach['random_accuracy']:.2%}; labels needed to reach it:")  # fmt: skip
        for variant, strategies in reach["labels_needed"].items():
            text = ", ".join(f"{s} {n if n is not None else 'never'}"
                             for s, n in strategies.items())  # fmt: skip
            print(f"  {variant}: {text}")
        print("  (at the label counts measured; the pseudo-labelled runs follow the labelled-only"
              " selection)")  # fmt: skip
    if summary.get("refused"):
        print(f"{summary['refused']} pseudo-labelled point(s) refused by train (no confidence "
              "threshold reached the precision on the teacher's validation images): counted "
              "as the labelled-only run")  # fmt: skip


COLORS = dict(zip(STRATEGIES, ("#777777", "#d62728", "#1f77b4", "#2ca02c"), strict=True))
TITLES = {"labelled": "labelled images only", "pseudo": "with pseudo-labels of the pool"}


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    """Accuracy against labels, a panel per variant (labelled only; with pseudo-labels): a
    line per strategy, the mean over seeds with a min-max band, and random selection's
    labelled-only accuracy at its most labels."""
    from matplotlib.figure import Figure

    variants = [v for v in VARIANTS if v in summary["accuracy"]]
    fig = Figure(figsize=(6 * len(variants) + 1, 5), dpi=120)
    axes = fig.subplots(1, len(variants), sharey=True, squeeze=False)[0]
    reach = summary.get("reach_random")
    for ax, variant in zip(axes, variants, strict=True):
        strategies = summary["accuracy"][variant]
        for s in (s for s in STRATEGIES if s in strategies):
            counts = sorted(strategies[s], key=int)
            x = [int(n) for n in counts]
            mean, lo, hi = ([strategies[s][n][k] for n in counts] for k in ("mean", "min", "max"))
            ax.plot(x, mean, marker="o", ms=3, color=COLORS[s], label=s)
            ax.fill_between(x, lo, hi, color=COLORS[s], alpha=0.12, linewidth=0)
        if reach:
            ax.axhline(reach["random_accuracy"], color="#777777", lw=0.8, ls=":",
                       label=f"random @ {reach['random_labels']}, labelled only")  # fmt: skip
        ax.set(xlabel="labelled images", title=TITLES[variant])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("test accuracy (mean over seeds, min-max band)")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


# command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idx-dir", type=Path, help="the Fashion-MNIST IDX files (default: found)")
    p.add_argument("--cache", type=Path, default=Path("runs/label-less-cache"),
                   help="where the pool's PNGs are written once")  # fmt: skip
    p.add_argument("--work", type=Path, default=None, help="temporary run folders (default: tmp)")
    p.add_argument("--json", type=Path, default=Path("runs/label-less.json"))
    p.add_argument("--plot", default="docs/label-less.png", help="the PNG ('': none)")
    p.add_argument("--resume", action="store_true", help="continue the points of --json")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--pool", type=int, default=10_000, help="pool images from the train split")
    p.add_argument("--test-size", type=int, default=0, help="test images (0: all 10,000)")
    p.add_argument("--start", type=int, default=10, help="labelled images per class at first")
    p.add_argument("--batch", type=int, default=100, help="labels added each round")
    p.add_argument("--labels", type=int, default=1000, help="labels at the end")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pseudo", action="store_true",
                   help="also train with pseudo-labels of the pool at every point")  # fmt: skip
    p.add_argument("--precision", default="fp32", help="fixed: auto times a step per run")
    p.add_argument("--pseudo-precision", type=float, default=0.95)
    p.add_argument(
        "--pseudo-at",
        type=int,
        nargs="+",
        metavar="LABELS",
        help="train with pseudo-labels at these label counts only (default: all)",
    )
    p.add_argument("--curves", action="store_true",
                   help="let each run draw its curves.png after every epoch (slow)")  # fmt: skip
    return p.parse_args(argv)


SETTINGS = ("pool", "test_size", "start", "batch", "labels", "model", "epochs", "batch_size",
            "pseudo_precision")  # fmt: skip


def start_results(args: argparse.Namespace) -> dict[str, Any]:
    """A new results object, or with ``--resume`` the JSON's when its settings match."""
    settings = {k: getattr(args, k) for k in SETTINGS}
    if args.resume and args.json.is_file():
        from imagewise.io import read_json

        old = read_json(args.json)
        if old.get("settings") != settings:
            raise SystemExit(f"{args.json} was made with other settings: {old.get('settings')}")
        return old
    return {"format": FORMAT, "settings": settings, "trajectories": [], "points": [],
            "pseudo_note": "the with-pseudo-labels runs follow the labelled-only selection "
                           "trajectory: the labelled-only run picks each next batch",
            "val_note": "validation is carved from the labelled images (train's default "
                        "stratified 10%) and counted in the labels"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON and the plot."""
    from imagewise.data.builtin import find_fashion_mnist

    args = parse_args(argv)
    logging.getLogger("imagewise").setLevel(logging.WARNING)
    idx_dir = args.idx_dir or find_fashion_mnist()
    if idx_dir is None:
        raise SystemExit("Fashion-MNIST not found: install dataset-fashion-mnist or --idx-dir")
    args.began = time.perf_counter()
    data = load_dataset(idx_dir, args.cache, args.pool, args.test_size)
    results = start_results(args)
    args.seconds_before = float(results.get("seconds", 0.0))
    results["test_images"] = len(data.test)
    run_all(data, args, results)
    save(
        results,
        {(t.strategy, t.seed): t for t in map(Trajectory.from_json, results["trajectories"])},
        args,
    )
    print_table(results["summary"])
    print(f"\n{results['seconds']:.0f} s in all; {args.json}")
    if args.plot:
        seeds = len({t["seed"] for t in results["trajectories"]})
        title = (f"Fashion-MNIST, {args.model} {args.epochs} epochs, pool {len(data.pool):,}, "
                 f"{seeds} seed{'s' * (seeds > 1)}")  # fmt: skip
        plot(results["summary"], Path(args.plot), title)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
