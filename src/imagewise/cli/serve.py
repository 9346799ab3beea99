"""``imagewise serve``: an HTTP API and web page over a run folder or an ONNX file."""

from __future__ import annotations

import argparse
import os
from typing import Any

from imagewise.cli.options import (
    NewVerb,
    add_coverage_options,
    add_device,
    add_unknown_options,
    checked_coverage,
)


def add_parser(verbs: Any, new_verb: NewVerb) -> argparse.ArgumentParser:
    p = new_verb(verbs, "serve", "HTTP API and web page over a run folder or an ONNX file")
    p.add_argument("model", metavar="RUN|ONNX", help="run folder or .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port, printed)"
    )
    p.add_argument(
        "--token",
        default=os.environ.get("IMAGEWISE_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' (default: $IMAGEWISE_TOKEN; none)",
    )
    _add_batching_and_limits(p)
    p.add_argument("--top-k", type=int, default=5, help="default classes per image (5)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="compute threads (default: torch's; ONNX files: the CPUs this process may use)",
    )
    add_device(p, "cpu, cuda or auto (run folders)")
    add_unknown_options(p, ood_default="none")  # existing clients see no new fields
    _add_drift(p)
    add_coverage_options(p)
    return p


def _add_batching_and_limits(p: argparse.ArgumentParser) -> None:
    """How requests are batched, and what a request may send before it is refused."""
    p.add_argument("--max-batch", type=int, default=32, help="images per model call (32)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long a batch waits to fill (0: those that came while the model ran)",
    )
    p.add_argument("--no-batching", action="store_true", help="one image per model call")
    p.add_argument("--queue-size", type=int, default=256, help="images waiting before 503 (256)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before 504 (30)")
    p.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds to send a request body, plus 1 s per 500 bytes received (10); then 408",
    )
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request (20 MB)")
    p.add_argument("--max-images", type=int, default=32, help="images per request (32)")
    p.add_argument(
        "--max-megapixels", type=float, default=50.0, help="largest image (50 megapixels)"
    )
    p.add_argument(
        "--max-request-megapixels",
        type=float,
        default=None,
        help="decoded pixels of one request's images in all (default: twice --max-megapixels)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds to send a request's headers (10); then 408 and the connection is closed",
    )
    p.add_argument(
        "--max-header-kb", type=float, default=64.0, help="largest request head (64 KiB); then 431"
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="open connections (1000); past it the one idle longest is closed",
    )
    p.add_argument(
        "--keep-alive", type=float, default=5.0, help="seconds an idle connection stays open (5)"
    )


def _add_drift(p: argparse.ArgumentParser) -> None:
    """Drift and out-of-distribution alarms over the latest answers."""
    p.add_argument(
        "--drift",
        default="auto",
        choices=("auto", "on", "off"),
        help="drift and out-of-distribution alarms over the latest answers against the "
        "validation split (GET /v1/drift, imagewise_drift_* metrics, a log line when an alarm "
        "starts and ends); auto: when a reference can be had (a run folder fits it once on its "
        "validation images and keeps it in RUN/drift_reference.json; an export carries it); "
        "on: the same, or fail; off (default auto)",
    )
    p.add_argument(
        "--drift-window",
        type=int,
        default=500,
        metavar="N",
        help="images each drift check looks at, the latest (default 500)",
    )


def run(args: argparse.Namespace) -> int:
    from imagewise.serve import serve

    checked_coverage(args)
    serve(
        args.model,
        host=args.host,
        port=args.port,
        token=args.token,
        batching=not args.no_batching,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        timeout_s=args.timeout,
        body_timeout_s=args.body_timeout,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_images=args.max_images,
        max_pixels=int(args.max_megapixels * 1_000_000),
        max_request_pixels=(
            None
            if args.max_request_megapixels is None
            else int(args.max_request_megapixels * 1_000_000)
        ),
        header_timeout_s=args.header_timeout,
        max_header_bytes=int(args.max_header_kb * 1024),
        max_connections=args.max_connections,
        keep_alive_s=args.keep_alive,
        top_k=args.top_k,
        threads=args.threads,
        device=args.device,
        access_log=not args.quiet,
        min_confidence=args.min_confidence,
        target_precision=args.target_precision,
        ood=args.ood,
        drift=args.drift,
        drift_window=args.drift_window,
        coverage=args.coverage,
        coverage_per_class=args.coverage_per_class,
        non_empty_sets=args.non_empty_sets,
    )
    return 0
