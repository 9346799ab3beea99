"""``imagewise features``: embeddings or HOG features of images, optionally a 2-D map."""

from __future__ import annotations

import argparse
from typing import Any

from imagewise.cli.options import NewVerb, add_batch_size, add_device, add_run


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(
        verbs,
        "features",
        "embeddings (penultimate or a named layer) or HOG features of images, as .npz or "
        ".parquet; optionally a 2-D map",
    )
    add_run(p)
    p.add_argument(
        "data",
        nargs="+",
        metavar="DATA",
        help="a dataset train accepts (class folders, CSV manifest, digits, fashion-mnist), or "
        "unlabelled image files, folders and globs",
    )
    p.add_argument("--out", required=True, help="features file: .npz (NumPy) or .parquet")
    p.add_argument(
        "--layer",
        help="a module's dotted name instead of the penultimate layer (the classifier's input); "
        "4-D outputs are global-average-pooled, tokens averaged",
    )
    p.add_argument(
        "--hog",
        action="store_true",
        help="HOG features (scikit-image) instead: the run's settings for a hog_svm run, else "
        "9 orientations, 2x2-cell blocks, 7 cells across (14 from 112 px)",
    )
    p.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        help="of a dataset (default: test for digits and fashion-mnist, all the files given for "
        "folders and manifests)",
    )
    p.add_argument("--map", metavar="PNG", help="also draw a 2-D map of the features, by class")
    p.add_argument(
        "--map-method",
        default="pca",
        choices=("pca", "tsne"),
        help="pca (default) or tsne (on a random 10,000 above that many images)",
    )
    add_batch_size(p, default=256, help_text="images per batch (default 256)")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.features import features

    data = args.data[0] if len(args.data) == 1 else args.data
    result = features(
        args.run, data, out=args.out, layer=args.layer, hog=args.hog, split=args.split,
        batch_size=args.batch_size, device=args.device, map_path=args.map,
        map_method=args.map_method, show_progress=not args.quiet,
    )  # fmt: skip
    print(result.summary())
    return 0
