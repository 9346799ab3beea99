"""``imagewise label next|auto|retrain``: what to label next, machine labels for the sure
images, and training again with the labels given so far."""

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
    _add_serve(actions, new_verb)
    _add_auto(actions, new_verb)
    _add_retrain(actions, new_verb)
    return p


def _add_serve(actions: Any, new_verb: NewVerb) -> None:
    s = new_verb(
        actions,
        "serve",
        "a local labelling page: one image at a time, the guess pre-selected, one key per "
        "class; every answer written at once to a manifest train reads (your images are only "
        "read)",
        "label serve",
    )
    s.add_argument("data", help="the dataset whose classes a label may take (folder or CSV)")
    s.add_argument(
        "pool", nargs="?", help="folder (searched recursively) or glob of images to label"
    )
    s.add_argument("--queue", help="label the images of this queue (from label next), in order")
    s.add_argument(
        "--run", help="run folder: guesses for a folder's images, and the page's Retrain button"
    )
    s.add_argument(
        "--out",
        help="the manifest answers go to (default labels.csv; with --review reviewed.csv); "
        "skipped images go to OUT.state.json; run again on it to resume",
    )
    s.add_argument(
        "--review",
        metavar="FINDINGS",
        help="review the likely label errors of 'imagewise data check DATA --json FINDINGS' "
        "(keep, relabel, drop); OUT is then the whole dataset, corrected",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument(
        "--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port, printed)"
    )


def _add_auto(actions: Any, new_verb: NewVerb) -> None:
    from imagewise.label.auto import DEFAULT_TARGET

    a = new_verb(
        actions,
        "auto",
        "label the pool images the run is sure of (threshold fitted on its validation split "
        "for a target precision) as machine labels; changes no image file",
        "label auto",
    )
    a.add_argument("run", help="run folder")
    a.add_argument("pool", help="folder (searched recursively) or glob of unlabelled images")
    a.add_argument(
        "--target-precision",
        type=float,
        default=DEFAULT_TARGET,
        help=f"precision the machine labels should reach on the run's validation split "
        f"(default {DEFAULT_TARGET})",
    )
    a.add_argument(
        "--out", required=True, help="machine labels as a manifest: path,label,labelled_by,..."
    )
    a.add_argument("--rest", help="write the images left unlabelled as a queue, least sure first")


def _add_retrain(actions: Any, new_verb: NewVerb) -> None:
    r = new_verb(
        actions,
        "retrain",
        "train the run's configuration again with a labels manifest added; prints labelled so "
        "far, validation accuracy after each retrain and the gain expected from the next batch",
        "label retrain",
    )
    r.add_argument("run", help="run folder whose configuration is reused")
    r.add_argument("labels", help="labels manifest from label serve or label auto")
    r.add_argument("--out", help="new run folder (default RUN-retrain, RUN-retrain-2, ...)")
    r.add_argument(
        "--batch", type=int, default=100, help="labels per next batch, for the gain estimate"
    )


def run(args: argparse.Namespace) -> int:
    if args.label_verb == "serve":
        return _serve(args)
    if args.label_verb == "auto":
        return _auto(args)
    if args.label_verb == "retrain":
        return _retrain(args)
    from imagewise.label import label_next

    queue = label_next(
        args.run, args.pool, args.budget, strategy=args.strategy, score=args.score,
        out=args.out, duplicate_similarity=args.duplicate_similarity, seed=args.seed,
    )  # fmt: skip
    print(queue.summary())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from imagewise.label.server import label_serve

    label_serve(
        args.data, args.pool, queue=args.queue, run=args.run, out=args.out,
        review=args.review, host=args.host, port=args.port,
    )  # fmt: skip
    return 0


def _auto(args: argparse.Namespace) -> int:
    from imagewise.label.auto import label_auto

    auto = label_auto(
        args.run, args.pool, target_precision=args.target_precision, out=args.out, rest=args.rest
    )
    print(auto.summary())
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from imagewise.errors import UserError
    from imagewise.label.progress import describe, read_progress, retrain

    if args.batch < 1:
        raise UserError(f"--batch must be at least 1, not {args.batch}")
    entry = retrain(args.run, args.labels, out=args.out, show_progress=True)
    print(
        f"retrained {entry['run']} with {entry['labelled']} labels: validation accuracy "
        f"{100 * entry['val_accuracy']:.2f}%"
    )
    print(describe(read_progress(args.labels), args.batch))
    return 0
