"""``imagewise export``: the model as ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

import argparse
from typing import Any

from imagewise.cli.options import NewVerb, add_run


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(verbs, "export", "write the model as ONNX or TorchScript, checked against PyTorch")
    add_run(p)
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    p.add_argument(
        "--int8", action="store_true", help="INT8 quantization, calibrated on training images"
    )
    p.add_argument(
        "--raw-input",
        action="store_true",
        help="the graph takes uint8 NHWC images at the model's size and normalizes them",
    )
    p.add_argument("--out", help="model file (default RUN/export/model[.int8].onnx or model.pt)")
    return p


def run(args: argparse.Namespace) -> int:
    from imagewise.export import export

    result = export(
        args.run, format=args.format, int8=args.int8, raw_input=args.raw_input, out=args.out
    )
    print(f"{result.summary()}   next: imagewise predict {result.path} IMAGES")
    return 0
