"""``imagewise models``: the built-in models with parameters, FLOPs and measured speed."""

from __future__ import annotations

import argparse
from typing import Any

from imagewise.cli.options import NewVerb, add_output_format


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(verbs, "models", "list the built-in models with parameters and FLOPs")
    p.add_argument("names", nargs="*", help="models to show (default: all built-in)")
    p.add_argument("--img-size", type=int, default=224, help="input size for FLOPs (default 224)")
    p.add_argument("--channels", type=int, default=3, help="input channels (default 3)")
    p.add_argument("--num-classes", type=int, default=10, help="classes (default 10)")
    p.add_argument(
        "--measure",
        action="store_true",
        help="also time training and inference images/s on this machine (a few steps each; "
        "refreshes the speed table --model auto uses)",
    )
    p.add_argument(
        "--check",
        metavar="NAME",
        help="classify scikit-image's photographs with NAME's ImageNet weights and their "
        "1000-class head, print the top-5 and exit 1 unless each is right: proves a mapping "
        "and its preprocessing (e.g. --check tf_efficientnet_lite0)",
    )
    p.add_argument("--weights", help="with --check: a weights file to check (any layout)")
    add_output_format(p, ("table", "json"))
    return p


def run(args: argparse.Namespace) -> int:
    import json

    from imagewise.models import describe_models
    from imagewise.models.summary import format_models
    from imagewise.runtime.threads import ThreadGovernor, kept_threads

    if args.check:
        return check_weights(args)
    with kept_threads():  # timed with the threads training would get beside other work
        pace = ThreadGovernor(interval=0.2).tick if args.measure else None
        rows = describe_models(
            args.names or None, args.channels, args.img_size, args.num_classes, args.measure, pace
        )
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(format_models(rows, args.img_size, measured=args.measure))
    if args.measure:
        print("\ntrain/s, infer/s: images per second measured just now on this machine "
              f"({args.channels}x{args.img_size}x{args.img_size}).")  # fmt: skip
    print("\npretrained: here = ImageNet weights on this machine (an installed weight package or "
          "the hub cache; --pretrained works offline), hub = downloaded on first use.")  # fmt: skip
    print("Any timm model name works too, e.g. --model convnext_nano.")
    return 0


def check_weights(args: argparse.Namespace) -> int:
    """``--check NAME``: the top-5 on known photographs; exit 1 unless each is right."""
    from imagewise.models.check import check_pretrained

    result = check_pretrained(args.check, weights=args.weights or "")
    if args.format == "json":
        import json
        from dataclasses import asdict

        print(json.dumps({**asdict(result), "passed": result.passed}, indent=2))
    else:
        print("\n".join(result.lines()))
    return 0 if result.passed else 1
