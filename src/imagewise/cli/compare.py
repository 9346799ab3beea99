"""``imagewise compare``: runs side by side (accuracy, F1, ECE, size, latency, time)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imagewise.cli.options import NewVerb, add_output_format


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(verbs, "compare", "put runs side by side: accuracy, F1, ECE, size, latency, time")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--data", help="evaluate every run on this data (default: each test split)")
    p.add_argument("--out", default="compare.html", help="HTML page (default compare.html)")
    add_output_format(p, ("table", "csv", "json"))
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.evaluate.compare import compare_runs, format_comparison, write_comparison

    rows = compare_runs(args.runs, args.data, latency=not args.no_latency)
    print(format_comparison(rows, args.format))
    print(f"wrote {write_comparison(rows, args.out)}", file=sys.stderr)
    return 0
