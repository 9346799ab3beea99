"""``imagewise tune``: search training settings (grid, random or TPE on Optuna)."""

from __future__ import annotations

import argparse
from typing import Any

from imagewise.cli.options import (
    NewVerb,
    add_config,
    add_data,
    add_training_options,
    training_options,
)
from imagewise.cli.process import tune_process

# Training settings tune has no flag for: train's --sampler is a config-file key here, as
# tune's own --sampler picks the search's sampler.
NOT_FLAGS = ("sampler",)


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(verbs, "tune", "search training settings (grid, random or TPE on Optuna)")
    add_data(p)
    p.add_argument(
        "--space",
        help="YAML search space (default: lr, weight decay, batch size, "
        "label smoothing, augmentation, optimizer; syntax in README.md)",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        help="finished trials the study should hold; a rerun adds what is missing (default 20)",
    )
    p.add_argument("--sampler", default="tpe", choices=("tpe", "random", "grid"))
    p.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"))
    p.add_argument("--timeout", help="start no trial after this long, e.g. 30m, 2h")
    p.add_argument(
        "--storage",
        help="SQLAlchemy URL (postgresql://user:pw@host/db) or SQLite "
        "file shared by several workers (default OUT/study.db)",
    )
    p.add_argument("--study", default="imagewise", help="study name (default imagewise)")
    p.add_argument("--out", help="output folder (default runs/tune-DATA)")
    p.add_argument("--subset", type=int, help="search on a stratified sample of N training images")
    p.add_argument(
        "--retrain-best",
        action="store_true",
        help="train the best settings on all training images at the end (OUT/final)",
    )
    p.add_argument("--keep-runs", action="store_true", help="keep every trial's run folder")
    add_config(p)
    add_training_options(p, skip=NOT_FLAGS)  # the fixed training settings
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.tune import tune

    tune_process()
    result = tune(
        args.data, args.out, trials=args.trials, space=args.space, sampler=args.sampler,
        pruner=args.pruner, timeout=args.timeout, storage=args.storage, study=args.study,
        subset=args.subset, retrain_best=args.retrain_best, keep_runs=args.keep_runs,
        config_file=args.config, **training_options(args, leave_out=NOT_FLAGS),
    )  # fmt: skip
    print("\n".join(result.summary))
    print(f"wrote {', '.join(str(p) for p in result.files.values())}")
    if "best" in result.files:
        print(f"next: imagewise train {args.data} --config {result.files['best']}")
    return 0
