"""Scale-out: torchrun with 2 CPU processes (gloo) matches one process at the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from imagewise.runtime.runs import RunFolder

ARGS = ["digits", "--model", "tutorial_cnn", "--epochs", "3", "--augment", "none", "-q"]
# Same global batch (2 x 32 = 64), so the same learning rate and number of steps; tutorial_cnn
# has no batch norm, so the runs differ only in how each batch is split and summed.
TOLERANCE = {"val_accuracy": 0.03, "val_loss": 0.05}


def test_two_processes_match_one(tmp_path: Path) -> None:
    two, one = tmp_path / "two", tmp_path / "one"
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "imagewise", "train", *ARGS, "--batch-size", "32", "--out", str(two)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("trained tutorial_cnn for 3 epochs") == 1  # rank 0 speaks alone
    # --precision auto may time bf16 against float32 (on CPUs with bf16): the ranks take rank
    # 0's answer, and the single process is told the same precision so the runs compare.
    precision = json.loads((two / "meta.json").read_text())["precision"]
    single = subprocess.run(
        [sys.executable, "-m", "imagewise", "train", *ARGS, "--batch-size", "64",
         "--precision", precision, "--out", str(one)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    h2, h1 = RunFolder.of(two).read_history(), RunFolder.of(one).read_history()
    assert len(h2) == len(h1) == 3
    for key, tol in TOLERANCE.items():
        assert abs(h2[-1][key] - h1[-1][key]) <= tol, (key, h2[-1][key], h1[-1][key])
    assert h2[-1]["val_accuracy"] > 0.8
    assert json.loads((two / "meta.json").read_text())["processes"] == 2
    assert not list(two.glob(".*.tmp"))


SYNC_SCRIPT = """
import sys
import torch
import torch.distributed as dist
import imagewise

class SameWeights:
    # after every epoch, every rank must hold the same weights
    def on_epoch_end(self, state):
        total = sum(float(p.detach().double().sum()) for p in state.parts.model.parameters())
        sums = [None] * dist.get_world_size()
        dist.all_gather_object(sums, total)
        if rank == 0:
            print(f"epoch {state.epoch} weight sums {sums}", flush=True)
        assert max(sums) - min(sums) < 1e-6 * max(1.0, abs(sums[0])), sums

rank = int(__import__("os").environ["RANK"])
imagewise.train(
    "digits", sys.argv[1], model="tutorial_cnn", epochs=3, augment="none", freeze="2",
    unfreeze_at=2, batch_size=32, hooks=[SameWeights()], show_progress=False,
)
"""


def test_progressive_unfreezing_under_torchrun(tmp_path: Path) -> None:
    # DDP reduces the gradients of the parameters that trained when it was built; those that
    # --unfreeze-at frees later must be among them, or the processes drift apart silently.
    script, out = tmp_path / "sync.py", tmp_path / "prog"
    script.write_text(SYNC_SCRIPT)
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("weight sums") == 3
    assert len(RunFolder.of(out).read_history()) == 3
    record = json.loads((out / "meta.json").read_text())["transfer"]
    assert record["mode"] == "2" and record["unfreeze_at"] == 2
