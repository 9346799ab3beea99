"""``--model auto --time-budget`` vs ``--recipe fast`` on Fashion-MNIST, as a user runs them.

Each run is the command line in a subprocess (wall time from start to exit, so the auto run
includes measuring its speed table: it starts from an empty cache in ``--work``), followed by
``imagewise.evaluate`` on the 10,000 official test images. Prints a Markdown table and what
``--model auto`` chose (meta.json ``choice``).

    .venv/bin/python benchmarks/auto_budget.py --budget 3m
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

IMAGEWISE = str(Path(sys.executable).with_name("imagewise"))


def run(name: str, flags: list[str], work: Path, data: str) -> dict:
    """Train with ``flags`` into ``work/name`` (a fresh speed cache), evaluate, report."""
    import imagewise

    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, IMAGEWISE_HOME=str(work / f"home-{name}"))
    shutil.rmtree(env["IMAGEWISE_HOME"], ignore_errors=True)
    cmd = [IMAGEWISE, "train", data, "--out", str(out), *flags]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    meta = json.loads((out / "meta.json").read_text())
    ev = imagewise.evaluate(out, write=False, report=False)
    return {
        "command": "imagewise train " + " ".join([data, *flags]),
        "model": meta["model"]["name"],
        "epochs": meta["training"]["epochs_run"],
        "train_seconds": meta["training"]["train_seconds"],
        "wall": wall,
        "accuracy": float(ev.accuracy),
        "choice": meta.get("choice"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="3m")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--work", type=Path, default=Path("/tmp/auto_budget"))
    parser.add_argument("--skip-fast", action="store_true", help="only the auto run")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [run("auto", ["--model", "auto", "--time-budget", args.budget], args.work, args.data)]
    if not args.skip_fast:
        rows.append(run("fast", ["--recipe", "fast"], args.work, args.data))
    print("| command | model | epochs | test accuracy | train s | wall s (whole command) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| `{r['command']}` | {r['model']} | {r['epochs']} | {r['accuracy']:.2%} | "
            f"{r['train_seconds']:.0f} | {r['wall']:.0f} |"
        )
    print("\nchoice:", json.dumps(rows[0]["choice"], indent=1))


if __name__ == "__main__":
    main()
