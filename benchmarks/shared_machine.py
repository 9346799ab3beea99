"""Training speed on a shared machine: quiet vs beside one busy thread, imagewise and Keras.

One Fashion-MNIST epoch at a time, alternating: quiet, then beside a separate process that
spins one thread (as a browser tab, a notebook or a second job would), then quiet again... The
imagewise run trains ``--epochs 2 * rounds``; from its ``on_epoch_end`` hook Keras (the TF
tutorial CNN, same settings as benchmarks/keras_vs_pytorch.py) runs one epoch under the same
load, then the load switches. So both see the same machine, interleaved. Reports the median
seconds per epoch quiet and loaded, and their ratio (target: loaded <= 2x quiet).

``--fixed-threads`` sets IMAGEWISE_ADAPTIVE_THREADS=0: torch keeps all its threads whatever the
load (the behaviour before the thread governor), for the before/after comparison.

    .venv/bin/pip install -e '.[bench]'        # tensorflow-cpu, for Keras only
    .venv/bin/python benchmarks/shared_machine.py --model tutorial_cnn --rounds 3
    .venv/bin/python benchmarks/shared_machine.py --model tutorial_cnn --rounds 3 --fixed-threads
    .venv/bin/python benchmarks/shared_machine.py --model auto --rounds 3 --no-keras
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from foundation import machine  # benchmarks/foundation.py: cores and CPU model
from keras_vs_pytorch import BATCH, LR, KerasContender, fashion_arrays

BUSY = "while True: pass"  # one thread, all the time


class Alternate:
    """imagewise hook: Keras runs one epoch under the load imagewise just had, then the load
    switches between quiet and one busy thread."""

    def __init__(self, keras: KerasContender | None, switch: bool = True) -> None:
        self.keras, self.switching = keras, switch
        self.busy: int | None = None  # the spinner's pid
        self.times: dict[tuple[str, str], list[float]] = {}

    def load(self) -> str:
        return "busy" if self.busy is not None else "quiet"

    def record(self, who: str, seconds: float) -> None:
        self.times.setdefault((who, self.load()), []).append(seconds)

    def on_epoch_end(self, state) -> None:
        self.record("imagewise", state.history[-1]["epoch_seconds"])
        if self.keras is not None:
            self.record("keras", self.keras.epoch())
        line = "  ".join(
            f"{w} {v[-1]:.1f}s" for (w, load), v in self.times.items() if load == self.load()
        )
        print(f"epoch {state.epoch} ({self.load()}): {line}", flush=True)
        if self.switching:
            self.switch()

    def switch(self) -> None:
        if self.busy is None:
            # Started through a shell that exits at once, so the spinner is not a child of this
            # process (as a browser or another job is not): the thread governor counts this
            # process's own children (data-loader workers) as its own work.
            launcher = subprocess.run(
                ["sh", "-c", f'{sys.executable} -c "{BUSY}" >/dev/null 2>&1 & echo $!'],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            self.busy = int(launcher.stdout.strip())
        else:
            self.stop()

    def stop(self) -> None:
        if self.busy is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.busy, signal.SIGKILL)
            self.busy = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tutorial_cnn", help="tutorial_cnn, or auto (default)")
    parser.add_argument("--rounds", type=int, default=3, help="quiet + busy epoch pairs")
    parser.add_argument("--fixed-threads", action="store_true", help="no thread governor")
    parser.add_argument("--no-keras", action="store_true")
    parser.add_argument(
        "--quiet-only", action="store_true", help="never start the busy thread (quiet speed)"
    )
    parser.add_argument(
        "--precision", default="auto", help="pin the precision (auto times bf16 at the start, "
        "which a busy moment can sway; pin it to compare runs)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.fixed_threads:
        os.environ["IMAGEWISE_ADAPTIVE_THREADS"] = "0"

    import imagewise

    try:  # what the imagewise command does for its process; a library call leaves it to us
        from imagewise.runtime.device import keep_freed_memory

        keep_freed_memory()
    except ImportError:  # code from before the runtime layer: train() did it itself
        pass
    keras = None if args.no_keras else KerasContender(*fashion_arrays()[:2])
    hook = Alternate(keras, switch=not args.quiet_only)
    # The tutorial CNN with the Keras tutorial's settings; the default model with the defaults.
    settings = (
        dict(optimizer="adam", lr=LR, batch_size=BATCH, schedule="constant", warmup_epochs=0,
             label_smoothing=0.0, weight_decay=0.0, augment="none")
        if args.model == "tutorial_cnn" else {}
    )  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            imagewise.train(
                "fashion-mnist", run, model=args.model, epochs=2 * args.rounds,
                val_fraction=0.0, precision=args.precision, hooks=[hook], show_progress=False,
                **settings,
            )  # fmt: skip
            meta = json.loads((run / "meta.json").read_text())
    finally:
        hook.stop()
    threads = "fixed threads" if args.fixed_threads else "thread governor"
    print(
        f"\n{machine()}, {datetime.now(UTC):%Y-%m-%d}, model {meta['model']['name']}, "
        f"precision {meta.get('precision')}, imagewise {threads}, code {imagewise.__file__}"
    )
    print("| contender | quiet s/epoch | beside one busy thread s/epoch | loaded / quiet |")
    print("|---|---|---|---|")
    for who in ("imagewise", "keras"):
        if (who, "quiet") not in hook.times:
            continue
        quiet = statistics.median(hook.times[(who, "quiet")])
        busy = statistics.median(hook.times.get((who, "busy"), [float("nan")]))
        print(f"| {who} | {quiet:.2f} | {busy:.2f} | {busy / quiet:.2f}x |")


if __name__ == "__main__":
    main()
