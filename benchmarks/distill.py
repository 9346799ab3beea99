"""Distillation (issue 18): a small student trained with and without a teacher's soft targets,
and what the student saves at inference.

The teacher is ``imagewise train fashion-mnist --recipe accurate`` (resnet9p_tiny, 38 epochs,
answering with the mean over its test-time views); the students are ``tutorial_cnn`` trained
with the same settings, epochs and seed, once plainly (``imagewise.train``) and once with the
teacher (``imagewise.distill``). Each run is scored on the Fashion-MNIST test split with
``imagewise.evaluate``. Latency is the median time of one forward call at batch 1 and 64
(float32, ``torch.no_grad``), the models taking turns so that a busy moment on the machine hits
them alike (``measure`` from benchmarks/inference.py); the teacher is timed as one view and as
it answers (its TTA views).

    .venv/bin/python benchmarks/distill.py --work runs --epochs 10

A run folder that already holds a finished run is reused, so the steps can be run apart
(``--steps teacher``, ``--steps plain``, ...) and the long teacher trained in the background.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from foundation import machine  # benchmarks/foundation.py: cores and CPU model
from inference import eager, measure  # benchmarks/inference.py: turn-taking median timing

import imagewise
from imagewise.predict.predictor import load_run

STEPS = ("teacher", "plain", "distilled", "score", "latency")


def finished(run: Path) -> bool:
    """A run that trained to its end (calibration is the last thing written)."""
    meta = run / "meta.json"
    return meta.is_file() and json.loads(meta.read_text()).get("calibration") is not None


def train_teacher(run: Path, seed: int, epochs: int | None) -> None:
    if finished(run):
        return
    extra = {"epochs": epochs} if epochs else {}
    imagewise.train(
        "fashion-mnist", run, recipe="accurate", model="resnet9p_tiny", seed=seed, **extra
    )


def student_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The same for both students: only the teacher differs."""
    return {"epochs": args.epochs, "batch_size": 128, "augment": "standard", "seed": args.seed}


def train_students(args: argparse.Namespace, runs: dict[str, Path], step: str) -> None:
    settings = student_settings(args)
    if step == "plain" and not finished(runs["plain"]):
        imagewise.train("fashion-mnist", runs["plain"], model=args.student, **settings)
    if step == "distilled" and not finished(runs["distilled"]):
        imagewise.distill(
            "fashion-mnist", teacher=runs["teacher"], student=args.student,
            out=runs["distilled"], distill_alpha=args.alpha,
            distill_temperature=args.temperature, **settings,
        )  # fmt: skip


def score(runs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Test accuracy, parameters and training time of each run."""
    rows = {}
    for name, run in runs.items():
        ev = imagewise.evaluate(run, split="test", report=False)
        meta = json.loads((run / "meta.json").read_text())
        rows[name] = {
            "run": str(run),
            "model": meta["model"]["name"],
            "parameters": meta["model"]["parameters"],
            "test_accuracy": ev.accuracy,
            "epochs": meta["training"]["epochs_run"],
            "train_seconds": meta["training"]["train_seconds"],
            "tta_views": bool(meta.get("tta")),
        }
    return rows


def latency(runs: dict[str, Path], repeats: int, seconds: float) -> dict[str, dict[str, float]]:
    """Median milliseconds per call at batch 1 and 64: teacher (one view and its TTA views),
    the distilled student."""
    teacher, student = load_run(runs["teacher"]), load_run(runs["distilled"])
    engines = {
        "teacher (1 view)": eager(teacher.model),
        "teacher (as it answers)": eager(teacher.network),
        "student": eager(student.model),
    }
    pre = student.preprocessing
    out: dict[str, dict[str, float]] = {}
    for batch in (1, 64):
        torch.manual_seed(0)
        x = torch.randn(batch, pre.channels, pre.img_size, pre.img_size)
        for name, secs in measure(engines, x, repeats, seconds).items():
            out.setdefault(name, {})[f"batch{batch}_ms"] = secs * 1e3
            out[name][f"batch{batch}_images_per_s"] = batch / secs
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs", help="folder for the run folders (runs)")
    parser.add_argument("--student", default="tutorial_cnn")
    parser.add_argument("--epochs", type=int, default=10, help="student epochs (10)")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="(recipe: 38)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", default=",".join(STEPS), help=f"some of {','.join(STEPS)}")
    parser.add_argument("--repeats", type=int, default=7, help="latency turns per model (7)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the epochs, as the CLI
    work = Path(args.work)
    runs = {
        "teacher": work / "distill-teacher",
        "plain": work / f"distill-{args.student}-plain",
        "distilled": work / f"distill-{args.student}-distilled",
    }
    steps = args.steps.split(",")
    results: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    results["threads"] = torch.get_num_threads() if not args.threads else args.threads
    if "teacher" in steps:
        train_teacher(runs["teacher"], args.seed, args.teacher_epochs)
    for step in ("plain", "distilled"):
        if step in steps:
            train_students(args, runs, step)
    if "score" in steps:
        results["accuracy"] = score(runs)
        for name, row in results["accuracy"].items():
            print(
                f"{name:<10} {row['model']:<14} {row['parameters']:>9,} params  "
                f"test {row['test_accuracy']:.2%}  {row['train_seconds']:.0f}s"
            )
    if args.threads:  # on a busy machine, fewer threads than cores wait less on each other
        torch.set_num_threads(args.threads)
    if "latency" in steps:
        results["latency"] = latency(runs, args.repeats, 0.3)
        for name, row in results["latency"].items():
            print(
                f"{name:<24} batch 1 {row['batch1_ms']:8.2f} ms   batch 64 "
                f"{row['batch64_ms']:8.2f} ms ({row['batch64_images_per_s']:,.0f} img/s)"
            )
    results["settings"] = {
        **student_settings(args),
        "alpha": args.alpha,
        "temperature": args.temperature,
        "student": args.student,
    }
    path = work / f"distill-results-{'-'.join(steps)}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
