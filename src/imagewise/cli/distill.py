"""``imagewise distill``: train a student model on a teacher run's soft targets and labels."""

from __future__ import annotations

import argparse
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
from imagewise.cli.train import print_trained
from imagewise.errors import UserError


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(
        verbs, "distill", "train a student model on a teacher run's soft targets and labels"
    )
    add_data(p)
    p.add_argument("--student", required=True, help="the student's network name (any --model)")
    p.add_argument("--out", help="run folder (default runs/DATA-STUDENT)")
    add_config(p)
    add_recipe(p)
    add_training_options(p)  # --teacher, --distill-alpha, --distill-temperature among them
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.train.distill import distill

    if not args.teacher:
        raise UserError("distill needs the teacher: --teacher RUN (a folder from imagewise train)")
    if args.model:
        raise UserError("distill names its model with --student, not --model")
    tune_process()
    result = distill(
        args.data, teacher=args.teacher, student=args.student, out=args.out,
        config_file=args.config, recipe=args.recipe, show_progress=not args.quiet,
        **training_options(args, leave_out=("model", "teacher")),
    )  # fmt: skip
    print_trained(result, f"distilled {args.teacher} into {result.model}")
    return 0
