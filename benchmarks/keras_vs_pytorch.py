"""The Keras tutorial CNN on Fashion-MNIST: imagewise vs Keras 3 (TensorFlow CPU) vs plain PyTorch.

Same model (Conv32-Pool-Conv64-Pool-Conv64-Dense64-Dropout0.5-Dense10), same hyper-parameters
(Adam, lr 1e-3, batch 64, no augmentation, no schedule, all 60,000 training images), same
number of epochs. The three are interleaved in one process, epoch by epoch: imagewise runs its
epoch, then (from an ``on_epoch_end`` hook) Keras and the plain PyTorch loop each run one, so
all three see the same machine load. Reports the median seconds per epoch, the ratios and the
test accuracy of each on the 10,000 official test images.

    .venv/bin/pip install -e '.[bench]'        # tensorflow-cpu, for this script only
    .venv/bin/python benchmarks/keras_vs_pytorch.py --epochs 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH, LR = 64, 1e-3


def fashion_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from imagewise.data.sources import resolve_source

    data = resolve_source("fashion-mnist", val_fraction=0.0)
    assert data.train.images is not None and data.test.images is not None
    return (
        data.train.images.numpy(),
        data.train.labels,
        data.test.images.numpy(),
        data.test.labels,
    )


class KerasContender:
    """The model exactly as the TensorFlow CNN tutorial writes it."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        keras.utils.set_random_seed(0)
        self.x = x.transpose(0, 2, 3, 1).astype("float32") / 255.0
        self.y = y
        self.model = keras.Sequential(
            [
                keras.Input(shape=(28, 28, 1)),
                keras.layers.Conv2D(32, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(64, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(64, 3, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dropout(0.5),
                keras.layers.Dense(10),
            ]
        )
        self.model.compile(
            optimizer=keras.optimizers.Adam(LR),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )

    def epoch(self) -> float:
        start = time.perf_counter()
        self.model.fit(self.x, self.y, batch_size=BATCH, epochs=1, verbose=0, shuffle=True)
        return time.perf_counter() - start

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        logits = self.model.predict(x.transpose(0, 2, 3, 1) / 255.0, batch_size=500, verbose=0)
        return float((logits.argmax(1) == y).mean())


class TorchContender:
    """The loop a PyTorch user writes: TensorDataset, DataLoader, NCHW float32, model.train()."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        import torch
        from torch import nn

        torch.manual_seed(0)
        self.torch = torch
        self.model = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
            nn.Linear(576, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10),
        )  # fmt: skip
        self.opt = torch.optim.Adam(self.model.parameters(), LR)
        dataset = torch.utils.data.TensorDataset(
            torch.from_numpy(x).float() / 255.0, torch.from_numpy(y)
        )
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)

    def epoch(self) -> float:
        start = time.perf_counter()
        self.model.train()
        for xb, yb in self.loader:
            loss = self.torch.nn.functional.cross_entropy(self.model(xb), yb)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        return time.perf_counter() - start

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        self.model.eval()
        with self.torch.no_grad():
            logits = self.model(self.torch.from_numpy(x).float() / 255.0)
        return float((logits.argmax(1).numpy() == y).mean())


class Interleave:
    """imagewise hook: after each imagewise epoch, one epoch of each peer."""

    def __init__(self, peers: dict[str, KerasContender | TorchContender]) -> None:
        self.peers = peers
        self.times: dict[str, list[float]] = {"imagewise": [], **{k: [] for k in peers}}

    def on_epoch_end(self, state) -> None:
        self.times["imagewise"].append(state.history[-1]["epoch_seconds"])
        for name, peer in self.peers.items():
            self.times[name].append(peer.epoch())
        row = "  ".join(f"{k} {v[-1]:.1f}s" for k, v in self.times.items())
        print(f"epoch {state.epoch}: {row}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    import imagewise
    from imagewise.runtime.device import keep_freed_memory

    keep_freed_memory()  # as the imagewise command does for its process

    x, y, x_test, y_test = fashion_arrays()
    hook = Interleave({"keras": KerasContender(x, y), "pytorch": TorchContender(x, y)})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        imagewise.train(
            "fashion-mnist", out, model="tutorial_cnn", optimizer="adam", lr=LR,
            batch_size=BATCH, epochs=args.epochs, schedule="constant", warmup_epochs=0,
            label_smoothing=0.0, weight_decay=0.0, augment="none", val_fraction=0.0,
            hooks=[hook], show_progress=False,
        )  # fmt: skip
        accuracy = {"imagewise": imagewise.evaluate(out, write=False).accuracy}
    for name, peer in hook.peers.items():
        accuracy[name] = peer.accuracy(x_test, y_test)
    median = {k: statistics.median(v) for k, v in hook.times.items()}
    print(f"\n| contender | median s/epoch | vs imagewise | test accuracy ({args.epochs} epochs) |")
    print("|---|---|---|---|")
    for name in hook.times:
        ratio = median[name] / median["imagewise"]
        print(f"| {name} | {median[name]:.2f} | {ratio:.2f}x | {accuracy[name]:.2%} |")


if __name__ == "__main__":
    main()
