"""``imagewise card``: the run's model card (MODEL_CARD.md, model_card.html) from its evidence."""

from __future__ import annotations

import argparse
from typing import Any

from imagewise.cli.options import NewVerb, add_device, add_run

# The author's fields, as flags: (flag, CardFields attribute, help).
FIELD_FLAGS = (
    ("--name", "name", "the model's name in the card (default: the run folder's name)"),
    ("--intended-use", "intended_use", "who should use the model, for what"),
    ("--out-of-scope", "out_of_scope", "uses the model was not made or checked for"),
    ("--limitations", "limitations", "known weaknesses readers should know"),
    ("--license", "license", "licence id for the Hugging Face header, e.g. apache-2.0"),
    ("--citation", "citation", "how to cite the model or its data"),
)


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(
        verbs,
        "card",
        "write RUN/MODEL_CARD.md and RUN/model_card.html from the run's evidence (metrics, "
        "calibration, coverage, robustness, slices, export checks) and the fields you give",
    )
    add_run(p)
    for flag, dest, help_text in FIELD_FLAGS:
        p.add_argument(flag, dest=dest, metavar="TEXT", help=help_text)
    p.add_argument(
        "--author",
        dest="authors",
        action="append",
        metavar="NAME",
        help="an author (repeat for several)",
    )
    p.add_argument(
        "--tag",
        dest="tags",
        action="append",
        metavar="TAG",
        help="an extra Hugging Face tag (repeat for several)",
    )
    p.add_argument(
        "--dataset-id",
        dest="datasets",
        action="append",
        metavar="ID",
        help="the Hugging Face id of the training data (repeat for several)",
    )
    p.add_argument(
        "--card-yaml",
        metavar="FILE",
        help="a YAML file with these fields (intended_use: ..., license: ...); flags win over it. "
        "The fields given are kept in RUN/model_card.yaml for the next card",
    )
    p.add_argument(
        "--audit",
        metavar="FILE",
        help="the JSON of 'imagewise data check DATA --json FILE' (kept for the next card)",
    )
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="run imagewise evaluate RUN first when eval/metrics.json is missing",
    )
    add_device(p)
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.card import card

    fields = {dest: getattr(args, dest) for _, dest, _ in FIELD_FLAGS}
    result = card(
        args.run,
        audit=args.audit,
        card_yaml=args.card_yaml,
        evaluate=args.evaluate,
        device=args.device,
        authors=args.authors,
        tags=args.tags,
        datasets=args.datasets,
        **fields,
    )
    print(result.summary())
    return 0
