"""``imagewise explain``: Grad-CAM heat maps of where the model looks."""

from __future__ import annotations

import argparse
from typing import Any

from imagewise.cli.options import NewVerb, add_device, add_run


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(
        verbs, "explain", "Grad-CAM heat maps of where the model looks; writes RUN/explain/"
    )
    add_run(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument(
        "--method", default="gradcam", help="gradcam (default), gradcam++, hirescam or eigencam"
    )
    p.add_argument(
        "--class",
        dest="target",
        metavar="CLASS",
        help="class to explain, name or index (default: the predicted class)",
    )
    p.add_argument(
        "--layer", metavar="NAME", help="dotted layer name (default: chosen per model family)"
    )
    p.add_argument("--out", metavar="DIR", help="folder for the heat maps (default RUN/explain)")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.explain import explain

    files = explain(
        args.run,
        args.images,
        method=args.method,
        target=args.target,
        layer=args.layer,
        out=args.out,
        device=args.device,
    )
    for path in files:
        print(path)
    folder = files[0].parent if files else args.out
    noun = "heat map" if len(files) == 1 else "heat maps"
    print(f"wrote {len(files)} {noun} to {folder} (index: {folder}/explain.json)")
    return 0
