"""``imagewise evaluate``: measure a run on held-out images; writes RUN/eval/."""

from __future__ import annotations

import argparse
from typing import Any

from imagewise.cli.options import (
    NewVerb,
    add_batch_size,
    add_coverage_options,
    add_device,
    add_run,
    checked_coverage,
)
from imagewise.errors import UserError


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(verbs, "evaluate", "measure a run on held-out images; writes RUN/eval/")
    add_run(p)
    p.add_argument("data", nargs="?", help="other data to evaluate on (default: the test split)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    add_batch_size(p, default=256)
    add_device(p)
    p.add_argument("--gallery", type=int, default=24, help="worst errors in the report (24)")
    p.add_argument("--no-report", action="store_true", help="skip eval/report.html")
    add_coverage_options(p)
    p.add_argument(
        "--robustness",
        action="store_true",
        help="also score the images under 12 common corruptions at 3 severities "
        "(eval/robustness.json and a report section)",
    )
    p.add_argument(
        "--robustness-images",
        type=int,
        metavar="N",
        help="images in the robustness sample (stratified, seeded; 2000); implies --robustness",
    )
    p.add_argument(
        "--slice-by",
        metavar="COLUMN",
        help="a CSV manifest's extra column (site, camera, ...): metrics per value of it "
        "(eval/slices.json and a report section)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.evaluate import evaluate

    if args.gallery < 0:
        raise UserError(f"--gallery must be 0 or more, not {args.gallery}")
    checked_coverage(args)
    sample = args.robustness_images  # given alone, it asks for the robustness scores too
    ev = evaluate(
        args.run, args.data, split=args.split, batch_size=args.batch_size, device=args.device,
        report=not args.no_report, gallery=args.gallery, coverage=args.coverage,
        coverage_per_class=args.coverage_per_class, non_empty_sets=args.non_empty_sets,
        slice_by=args.slice_by,
        robustness=args.robustness or sample is not None,
        robustness_images=2000 if sample is None else sample,
    )  # fmt: skip
    print(ev.summary())
    return 0
