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
import os
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

    def __init__(self, keras: KerasContender | None) -> None:
        self.keras = keras
        self.busy: subprocess.Popen[bytes] | None = None
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
        self.switch()

    def switch(self) -> None:
        if self.busy is None:
            self.busy = subprocess.Popen([sys.executable, "-c", BUSY])
        else:
            self.stop()

    def stop(self) -> None:
        if self.busy is not None:
            self.busy.kill()
            self.busy.wait()
            self.busy = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tutorial_cnn", help="tutorial_cnn, or auto (default)")
    parser.add_argument("--rounds", type=int, default=3, help="quiet + busy epoch pairs")
    parser.add_argument("--fixed-threads", action="store_true", help="no thread governor")
    parser.add_argument("--no-keras", action="store_true")
    args = parser.parse_args()
    if args.fixed_threads:
        os.environ["IMAGEWISE_ADAPTIVE_THREADS"] = "0"

    import imagewise

    keras = None if args.no_keras else KerasContender(*fashion_arrays()[:2])
    hook = Alternate(keras)
    # The tutorial CNN with the Keras tutorial's settings; the default model with the defaults.
    settings = (
        dict(optimizer="adam", lr=LR, batch_size=BATCH, schedule="constant", warmup_epochs=0,
             label_smoothing=0.0, weight_decay=0.0, augment="none")
        if args.model == "tutorial_cnn" else {}
    )  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as tmp:
            imagewise.train(
                "fashion-mnist", Path(tmp) / "run", model=args.model, epochs=2 * args.rounds,
                val_fraction=0.0, hooks=[hook], show_progress=False, **settings,
            )  # fmt: skip
    finally:
        hook.stop()
    threads = "fixed threads" if args.fixed_threads else "thread governor"
    print(f"\n{machine()}, {datetime.now(UTC):%Y-%m-%d}, model {args.model}, imagewise {threads}")
    print("| contender | quiet s/epoch | beside one busy thread s/epoch | loaded / quiet |")
    print("|---|---|---|---|")
    for who in ("imagewise", "keras"):
        if (who, "quiet") not in hook.times:
            continue
        quiet = statistics.median(hook.times[(who, "quiet")])
        busy = statistics.median(hook.times[(who, "busy")])
        print(f"| {who} | {quiet:.2f} | {busy:.2f} | {busy / quiet:.2f}x |")


if __name__ == "__main__":
    main()
