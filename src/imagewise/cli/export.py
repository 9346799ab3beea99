"""``imagewise export``: the model for another runtime, each file checked against PyTorch."""

from __future__ import annotations

import argparse
from typing import Any

from imagewise.cli.options import NewVerb, add_run
from imagewise.export.targets import FORMATS, PRECISIONS


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(
        verbs, "export",
        "write the model for ONNX Runtime, OpenVINO, LiteRT, ExecuTorch, Core ML or the "
        "browser, each file checked against PyTorch",
    )  # fmt: skip
    add_run(p)
    p.add_argument(
        "--format",
        nargs="+",
        default=["onnx"],
        choices=FORMATS,
        metavar="FORMAT",
        help=f"one or more of: {', '.join(FORMATS)} (default onnx)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="float32 (default), float16 (OpenVINO, LiteRT, Core ML) or int8 (calibrated on "
        "training images)",
    )
    p.add_argument("--int8", action="store_true", help="the same as --precision int8")
    p.add_argument(
        "--raw-input",
        action="store_true",
        help="ONNX: the graph takes uint8 NHWC images at the model's size and normalizes them",
    )
    p.add_argument(
        "--out",
        help="model file or folder (default RUN/export/model[.int8].onnx, model.xml, ...); "
        "with several formats, a folder for them all",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.errors import UserError
    from imagewise.export import export_many

    if args.int8 and args.precision not in (None, "int8"):
        raise UserError(f"--int8 and --precision {args.precision} disagree; give one of them")
    precision = "int8" if args.int8 else args.precision
    results = export_many(
        args.run, args.format, precision=precision, raw_input=args.raw_input, out=args.out
    )
    for result in results:
        print(result.summary())
    # a folder (Core ML's package, the web page) is not something predict opens
    if files := [r.path for r in results if not r.path.is_dir()]:
        print(f"next: imagewise predict {files[0]} IMAGES")
    if pages := [r.path for r in results if r.format == "web"]:
        print(f"next: open {pages[0] / 'index.html'} in a browser (or serve {pages[0]})")
    return 0
