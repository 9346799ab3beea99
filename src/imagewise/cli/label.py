"""``imagewise label next``: which unlabelled images to label next."""

from __future__ import annotations

import argparse
from typing import Any

from imagewise.cli.options import NewVerb


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    from imagewise.label.selection import DUPLICATE_SIMILARITY, STRATEGIES

    p = new_verb(verbs, "label", "label less: choose what to label next", "label next")
    actions = p.add_subparsers(dest="label_verb", metavar="ACTION", required=True)
    q = new_verb(
        actions,
        "next",
        "pick the images of an unlabelled folder whose labels would help the run most "
        "(uncertain and varied, no near-copies of labelled ones); writes a queue, changes no file",
        "label next",
    )
    q.add_argument("run", help="run folder")
    q.add_argument("pool", help="folder (searched recursively) or glob of unlabelled images")
    q.add_argument("--budget", type=int, required=True, help="how many images to pick")
    q.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="mixed",
        help="mixed (default: the most uncertain image of each cluster of uncertain images, "
        "every guessed class covered), uncertainty, diversity or random",
    )
    q.add_argument(
        "--score", choices=("margin", "entropy"), default="margin", help="what uncertain means"
    )
    q.add_argument("--out", help="write the queue as CSV here (path first, then the reason)")
    q.add_argument(
        "--duplicate-similarity",
        type=float,
        default=DUPLICATE_SIMILARITY,
        help=f"cosine similarity of embeddings that makes two images one (default "
        f"{DUPLICATE_SIMILARITY})",
    )
    q.add_argument("--seed", type=int, default=0, help="k-means and the random draw")
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.label import label_next

    queue = label_next(
        args.run, args.pool, args.budget, strategy=args.strategy, score=args.score,
        out=args.out, duplicate_similarity=args.duplicate_similarity, seed=args.seed,
    )  # fmt: skip
    print(queue.summary())
    return 0
