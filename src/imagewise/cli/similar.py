"""``imagewise similar``: the images most similar to each query, from a saved index."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from imagewise.cli.options import NewVerb, add_batch_size, add_device, add_output_format, add_run
from imagewise.cli.predict import expanded

log = logging.getLogger("imagewise")


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(
        verbs,
        "similar",
        "find the images most similar to each query (cosine similarity of the run's embeddings); "
        "the index of the collection is built once, saved and reused",
    )
    add_run(p)
    p.add_argument("queries", nargs="+", metavar="QUERY", help="image files, folders or globs")
    p.add_argument(
        "--index",
        required=True,
        metavar="DATA|INDEX_DIR",
        help="an index folder, or the data to search (a dataset, a folder of images or a quoted "
        "glob; its index is saved in RUN/index/ and rebuilt when the files or the weights change)",
    )
    p.add_argument("--k", type=int, default=10, help="matches per query (default 10)")
    add_output_format(
        p,
        ("table", "json", "html"),
        default=None,
        help_text="table, json or html (a contact sheet of thumbnails); default: from --out's "
        "extension (.html, .json), else table",
    )
    p.add_argument("--out", help="write the result to this file instead of printing")
    p.add_argument("--save-index", metavar="DIR", help="where to save the index built from DATA")
    p.add_argument("--split", choices=("train", "val", "test", "all"), help="as in features")
    p.add_argument("--layer", help="a named layer instead of the penultimate one")
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "exact", "faiss"),
        help="auto (default): exact search below 200k images, FAISS above when installed",
    )
    add_batch_size(p, default=256, help_text="images per batch (default 256)")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.features import similar

    if args.out:
        from imagewise.features.extraction import check_output
        from imagewise.io import refuse_overwriting

        check_output(args.out, None, "--out")
        refuse_overwriting(args.out, [args.run, *expanded(args.queries)])
    suffix = os.path.splitext(args.out or "")[1].lower()
    fmt = args.format or {".html": "html", ".htm": "html", ".json": "json"}.get(suffix, "table")
    result = similar(
        args.run, args.queries, args.index, k=args.k, save_index=args.save_index, split=args.split,
        layer=args.layer, backend=args.backend, batch_size=args.batch_size, device=args.device,
        show_progress=not args.quiet,
    )  # fmt: skip
    info = result.index_info
    how = f"built in {result.build_seconds:.1f}s" if result.built else "reused"
    log.info("index %s: %d images, %s, %s", result.index, info["count"], info["backend"], how)
    if args.out:
        result.write(args.out, fmt)
        n = len(result.queries)
        print(f"wrote {n} quer{'y' if n == 1 else 'ies'} x {args.k} matches to {args.out}")
    else:
        print(result.format(fmt))
    return 0
