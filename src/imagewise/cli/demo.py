"""``imagewise demo``: the main job end to end on the built-in digits."""

from __future__ import annotations

import argparse
from typing import Any

from imagewise.cli.options import NewVerb
from imagewise.cli.process import tune_process


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(verbs, "demo", "the main job end to end on the built-in digits")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.demo import run_demo
    from imagewise.io import check_output_dir

    check_output_dir(args.out)
    tune_process()
    run_demo(args.out, epochs=args.epochs, show_progress=not args.quiet)
    return 0
