"""``imagewise predict``: classify images, folders, globs and videos; or sort images into
per-class folders."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from imagewise.cli.options import (
    NewVerb,
    add_batch_size,
    add_coverage_options,
    add_device,
    add_output_format,
    add_unknown_options,
    checked_coverage,
)
from imagewise.errors import UserError

log = logging.getLogger("imagewise")


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(verbs, "predict", "classify images, folders, globs and videos")
    p.add_argument("run", metavar="RUN|MODEL", help="run folder, or .onnx / .pt file from export")
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image files, folders or globs; or video files (.mp4 .mov .avi .mkv .webm)",
    )  # fmt: skip
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    add_output_format(p, ("table", "csv", "json"))
    p.add_argument("--out", help="write the predictions to this file instead of printing")
    add_device(p)
    add_unknown_options(p, ood_default="auto")
    add_coverage_options(p)
    add_batch_size(p, help_text="images per forward pass (default 64; videos 32)")
    p.add_argument(
        "--sort-into", metavar="OUT",
        help="copy each image into OUT/<class>/, unsure ones (below --min-confidence, default "
        "0.5 here) into OUT/_unsure/, with OUT/predictions.csv; a multi-label model's image "
        "into each of its labels' folders (none: OUT/_none/; _unsure only with "
        "--min-confidence); never overwrites; rerun to resume after an interruption",
    )  # fmt: skip
    p.add_argument("--move", action="store_true", help="with --sort-into: move, not copy")
    p.add_argument(
        "--stride", type=int, default=1, metavar="N", help="videos: every N-th frame (default 1)"
    )
    p.add_argument(
        "--annotate", metavar="VIDEO", help="videos: write a copy with each frame's answer drawn"
    )
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.predict import format_predictions, predict
    from imagewise.predict.sharding import is_main_process
    from imagewise.predict.video import format_frames, is_video, predict_videos

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, not {args.top_k}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.move and not args.sort_into:
        raise UserError("--move goes with --sort-into OUT (it moves the images into OUT)")
    if checked_coverage(args) is not None and args.sort_into:
        raise UserError("--coverage answers prediction sets; it does not go with --sort-into")
    if args.sort_into:
        return sort_into(args)
    if args.out:
        from imagewise.io import check_output_file, refuse_overwriting

        check_output_file(args.out)
        refuse_overwriting(args.out, [args.run, *expanded(args.inputs)])
    common = dict(
        top_k=args.top_k, device=args.device, min_confidence=args.min_confidence,
        target_precision=args.target_precision, ood=args.ood,
    )  # fmt: skip
    if any(is_video(i) for i in args.inputs):
        if args.coverage is not None:
            raise UserError("--coverage is for images; give image files, folders or globs")
        frames = predict_videos(args.run, args.inputs, stride=args.stride, annotate=args.annotate,
                                batch_size=args.batch_size or 32, **common)  # fmt: skip
        text, count = format_frames(frames, args.format), len(frames)
    elif args.annotate or args.stride != 1:
        raise UserError("--stride and --annotate are for videos (.mp4 .mov .avi .mkv .webm)")
    else:
        preds = predict(args.run, args.inputs, batch_size=args.batch_size or 64,
                        coverage=args.coverage, coverage_per_class=args.coverage_per_class,
                        non_empty_sets=args.non_empty_sets, **common)  # fmt: skip
        if not is_main_process():  # under torchrun, rank 0 prints and writes for all
            return 0
        _say_empty_sets(preds, args.coverage)
        text, count = format_predictions(preds, args.format), len(preds)
    if args.out:
        from imagewise.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"wrote {count} predictions to {args.out}")
    else:
        print(text)
    if args.annotate:
        print(f"wrote {args.annotate}", file=sys.stderr)
    return 0


def sort_into(args: argparse.Namespace) -> int:
    """``--sort-into OUT``: copy (or move) each image into OUT/<class>/."""
    from imagewise.predict.sharding import refuse_under_torchrun
    from imagewise.predict.sorting import sort_images

    refuse_under_torchrun("--sort-into")
    r = sort_images(
        args.run, args.inputs, args.sort_into, move=args.move, device=args.device,
        min_confidence=args.min_confidence, target_precision=args.target_precision,
        batch_size=args.batch_size or 64,
    )  # fmt: skip
    print(r.summary())
    return 0


def expanded(inputs: list[str]) -> list[str]:
    """Inputs with their globs expanded (what an output must not overwrite)."""
    import glob

    return [found for given in inputs for found in (glob.glob(given) or [given])]


def _say_empty_sets(preds: list, coverage: float | None) -> None:
    """One note when some prediction sets are empty, so ``set {}`` is not read as a fault."""
    empty = sum(1 for p in preds if p.prediction_set == [])
    if empty:
        log.warning(
            "%d of %d prediction sets are empty: at coverage %g these confident answers are the "
            "ones the guarantee may let go (exact coverage); --non-empty-sets keeps the top class "
            "in every set", empty, len(preds), coverage,
        )  # fmt: skip
