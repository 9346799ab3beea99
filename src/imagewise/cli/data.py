"""``imagewise data fetch`` and ``imagewise data check``: dataset tools."""

from __future__ import annotations

import argparse
from typing import Any

from imagewise.cli.options import FLAG_HELP, NewVerb, add_device
from imagewise.errors import UserError


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(verbs, "data", "dataset tools", "data fetch")
    actions = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    q = new_verb(actions, "fetch", "make a built-in dataset available offline", "data fetch")
    q.add_argument("name", help="digits, fashion-mnist or photos")
    c = new_verb(
        actions,
        "check",
        "find unreadable, tiny and odd images, class imbalance, exact and near duplicates "
        "within and across splits, and likely label errors; never changes your files",
        "data check",
    )
    c.add_argument("data", help="folder, CSV manifest, IDX folder, digits, fashion-mnist or photos")
    c.add_argument("--json", help="write the findings as JSON to this file")
    c.add_argument("--html", help="write a page with thumbnails to this file")
    c.add_argument(
        "--write-clean", metavar="MANIFEST", help="write a CSV manifest without the flagged images"
    )
    c.add_argument(
        "--no-label-check", action="store_true", help="skip the label-error check (the slowest)"
    )
    c.add_argument(
        "--features",
        metavar="RUN|MODEL",
        help="judge the labels on embeddings of a trained run's network or of a pretrained "
        "model (e.g. tf_efficientnet_lite0) instead of HOG features",
    )
    add_device(c, "where the --features network runs: cpu (default), cuda or auto")
    c.add_argument("--workers", type=int, default=None, help="processes (default: CPU cores)")
    c.add_argument(
        "--task", choices=("auto", "single", "multilabel"), default="auto", help=FLAG_HELP["task"]
    )
    c.add_argument("--label-separator", default="|", help=FLAG_HELP["label_separator"])
    return p


def run(args: argparse.Namespace) -> int:
    return run_fetch(args) if args.data_verb == "fetch" else run_check(args)


def run_fetch(args: argparse.Namespace) -> int:
    from imagewise.data.builtin import fetch

    print(f"{args.name} is available in {fetch(args.name)}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from imagewise.audit import check

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, not {args.workers}")
    result = check(
        args.data,
        json_path=args.json,
        html_path=args.html,
        clean_manifest=args.write_clean,
        find_label_issues=not args.no_label_check,
        workers=args.workers,
        show_progress=not args.quiet,
        task=args.task,
        label_separator=args.label_separator,
        features=args.features,
        device=args.device,
    )
    print(result.summary())
    written = (args.json, "findings"), (args.html, "page"), (args.write_clean, "clean manifest")
    for path, what in written:
        if path:
            print(f"{what}: {path}")
    return 0
