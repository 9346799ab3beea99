"""``imagewise train``: train a classifier and write a run folder."""

from __future__ import annotations

import argparse
import os
from typing import Any

from imagewise.cli.options import (
    NewVerb,
    add_config,
    add_data,
    add_recipe,
    add_training_options,
    training_options,
)
from imagewise.cli.process import tune_process


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(verbs, "train", "train a classifier and write a run folder")
    add_data(p, nargs="?")
    p.add_argument("--out", help="run folder (default runs/DATA-MODEL)")
    add_config(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_recipe(p)
    p.add_argument(
        "--unlabelled",
        metavar="POOL",
        help="self-training: a folder of unlabelled images; a teacher trained as configured "
        "(kept in OUT/teacher) labels the pool images it is sure of (OUT/pseudo_labels.csv), "
        "and the run trains again on the data plus those",
    )
    p.add_argument(
        "--pseudo-precision",
        type=float,
        default=0.95,
        metavar="P",
        help="with --unlabelled: keep the pool images whose confidence reaches the threshold at "
        "which the teacher's answers on its validation images have this precision (default 0.95)",
    )
    add_training_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.train.run import train

    tune_process()
    result = train(
        args.data,
        args.out,
        config_file=args.config,
        recipe=args.recipe,
        resume=args.resume,
        show_progress=not args.quiet,
        unlabelled=args.unlabelled,
        pseudo_precision=args.pseudo_precision,
        **training_options(args),
    )
    print_trained(result)
    return 0


def print_trained(result: Any, what: str = "") -> None:
    """The two lines a finished training run prints (rank 0 only under torchrun)."""
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for all
        return
    print(f"{result.summary(what)}   next: imagewise evaluate {result.run}")
