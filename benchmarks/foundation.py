"""Foundation figures: `imagewise demo` on digits, `imagewise train fashion-mnist` defaults.

Runs the real commands (as a user would), times them end to end, reads the test accuracy from
eval/metrics.json, and prints one Markdown row per job with the machine it ran on.

    .venv/bin/python benchmarks/foundation.py            # both jobs
    .venv/bin/python benchmarks/foundation.py --only demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

BIN = Path(sys.executable).parent / "imagewise"


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or model
    return f"{os.cpu_count()} cores, {model}, no GPU"


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(BIN), *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def demo(work: Path) -> dict:
    out = work / "demo"
    seconds = timed(["demo", "--out", str(out), "-q"])
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    return {"job": "imagewise demo (digits)", "seconds": seconds, "test": metrics}


def fashion(work: Path) -> dict:
    out = work / "fm"
    seconds = timed(["train", "fashion-mnist", "--out", str(out), "-q"])
    seconds += timed(["evaluate", str(out)])
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    return {
        "job": f"imagewise train fashion-mnist (default: {meta['model']['name']}, "
        f"{meta['training']['epochs_run']} epochs)",
        "seconds": seconds,
        "test": metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("demo", "fashion"))
    args = parser.parse_args()
    jobs = {"demo": demo, "fashion": fashion}
    with tempfile.TemporaryDirectory() as tmp:
        for name, job in jobs.items():
            if args.only and args.only != name:
                continue
            r = job(Path(tmp))
            t = r["test"]
            print(
                f"| {r['job']} | {t['accuracy']:.2%} on {t['images']} test images | "
                f"{r['seconds']:.0f} s wall | {machine()} | {datetime.now(UTC):%Y-%m-%d} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
