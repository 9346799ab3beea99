"""The ``imagewise`` command line: parse arguments, call one library function, print.

Each verb is a module of this package holding its ``add_parser`` and its handler ``run``;
``VERBS`` below is the table the parser is built from; ``options`` declares the options several
verbs share, ``process`` what the process does around a verb. Bad input ends with one line on
stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn

from imagewise.cli import (
    card,
    compare,
    data,
    demo,
    distill,
    evaluate,
    explain,
    export,
    features,
    label,
    models,
    predict,
    serve,
    similar,
    train,
    tune,
)
from imagewise.cli.options import NewVerb
from imagewise.cli.process import run_verb, stop_on_sigterm

# Each verb's --help example, by verb (and action); imagewise --help lists them in this order.
EXAMPLES = {
    "demo": "imagewise demo",
    "data fetch": "imagewise data fetch fashion-mnist",
    "data check": "imagewise data check photos/ --json audit.json --html audit.html "
    "--write-clean clean.csv   # then: imagewise train clean.csv",
    "label next": "imagewise label next runs/fm unlabelled/ --budget 100 --out queue.csv",
    "label serve": "imagewise label serve data/ --queue queue.csv --run runs/fm --out labels.csv",
    "label auto": "imagewise label auto runs/fm unlabelled/ --target-precision 0.98 --out "
    "auto.csv --rest queue.csv",
    "label retrain": "imagewise label retrain runs/fm labels.csv   # trains runs/fm-retrain",
    "models": "imagewise models --img-size 28 --channels 1",
    "train": "imagewise train fashion-mnist --model resnet9_slim --epochs 10 --out runs/fm",
    "distill": "imagewise distill fashion-mnist --teacher runs/fm --student tutorial_cnn "
    "--epochs 10 --out runs/fm-small",
    "tune": "imagewise tune fashion-mnist --model tutorial_cnn --epochs 4 --trials 20 "
    "--subset 10000 --out runs/fm-tune   # then: imagewise train fashion-mnist --config "
    "runs/fm-tune/best.yaml",
    "evaluate": "imagewise evaluate runs/fm   # then open runs/fm/eval/report.html",
    "compare": "imagewise compare runs/fm runs/fm-hog --out compare.html",
    "predict": "imagewise predict runs/fm photos/ 'more/*.png' --top-k 3 --format csv",
    "explain": "imagewise explain runs/fm photos/shoe.png --method gradcam++ --class Sneaker",
    "export": "imagewise export runs/fm --int8   # then: imagewise predict "
    "runs/fm/export/model.int8.onnx photos/",
    "serve": "imagewise serve runs/fm --port 8000   # then open http://127.0.0.1:8000/",
    "features": "imagewise features runs/fm fashion-mnist --split test --out fm-test.npz "
    "--map fm-test.png",
    "similar": "imagewise similar runs/fm shoe.png --index photos/ --k 10 --format html "
    "--out similar.html",
    "card": "imagewise card runs/fm --intended-use 'sorting catalogue photos' --license "
    "apache-2.0   # then open runs/fm/model_card.html",
}


class Verb(NamedTuple):
    """A verb of the command line: the function that adds its parser, and its handler."""

    add_parser: Callable[[Any, NewVerb], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]


# The verbs in the order ``imagewise --help`` lists them.
VERBS = (
    Verb(demo.add_parser, demo.run),
    Verb(data.add_parser, data.run),
    Verb(label.add_parser, label.run),
    Verb(models.add_parser, models.run),
    Verb(train.add_parser, train.run),
    Verb(distill.add_parser, distill.run),
    Verb(tune.add_parser, tune.run),
    Verb(evaluate.add_parser, evaluate.run),
    Verb(compare.add_parser, compare.run),
    Verb(predict.add_parser, predict.run),
    Verb(export.add_parser, export.run),
    Verb(card.add_parser, card.run),
    Verb(explain.add_parser, explain.run),
    Verb(serve.add_parser, serve.run),
    Verb(features.add_parser, features.run),
    Verb(similar.add_parser, similar.run),
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to look, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``imagewise`` parser: the common flags, then one sub-parser per verb in ``VERBS``."""
    import imagewise

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")

    def new_verb(verbs: Any, name: str, help_text: str, example: str | None = None) -> Any:
        return verbs.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=f"example:\n  {EXAMPLES[example or name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    parser = Parser(
        prog="imagewise",
        parents=[common],
        description="Image classification: train, evaluate and use classifiers.",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagewise {imagewise.__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        verb.add_parser(verbs, new_verb).set_defaults(func=verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imagewise`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    quiet = "-q" in argv or "--quiet" in argv
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with stop_on_sigterm() as stopped_by:
        return run_verb(args, debug, main_rank, stopped_by)
