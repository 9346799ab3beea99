"""Training: schedules, optimizers, losses, the run folder, determinism, stopping and resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import imagewise
from imagewise.config import TrainConfig
from imagewise.errors import UserError
from imagewise.runtime.runs import RunFolder
from imagewise.train.optim import build_optimizer, lr_factor
from imagewise.train.task import ClassificationTask

FAST = {"model": "lenet5", "batch_size": 8, "augment": "none", "show_progress": False}


def test_onecycle_warms_up_then_anneals_to_zero() -> None:
    f = lr_factor(TrainConfig(epochs=4, schedule="onecycle"), steps_per_epoch=25)
    assert f(0) == pytest.approx(0.04)
    assert f(25) == pytest.approx(1.0)
    assert f(62) == pytest.approx(0.5, abs=0.02)
    assert f(99) < 0.001


def test_step_schedule_decays_by_gamma() -> None:
    cfg = TrainConfig(epochs=9, schedule="step", warmup_epochs=0, step_size=3, gamma=0.1)
    f = lr_factor(cfg, steps_per_epoch=10)
    assert [f(s) for s in (0, 29, 30, 60)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model, TrainConfig(optimizer="sgd", weight_decay=0.1, lr=0.5))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and len(decayed["params"]) == 1
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3
    assert isinstance(opt, torch.optim.SGD) and decayed["lr"] == 0.5


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_cpu_optimizers_are_fused_and_step_like_the_loop(name: str) -> None:
    # Gradients are set directly (as timm's optimizer tests do), all well away from zero:
    # gradients that are zero in exact arithmetic hold only rounding noise, which Adam's
    # normalisation turns into learning-rate-sized steps that differ between kernels and CPUs.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5))
    twin = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5))
    twin.load_state_dict(model.state_dict())
    cfg = TrainConfig(optimizer=name, lr=0.01, weight_decay=0.01)
    fused = build_optimizer(model, cfg)
    assert all(group["fused"] for group in fused.param_groups)
    plain = build_optimizer(twin, cfg)
    for group in plain.param_groups:
        group["fused"] = None
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        grads = [(torch.rand_like(p) + 0.5) * torch.randn_like(p).sign() for p in start]
        for net, opt in ((model, fused), (twin, plain)):
            for p, g in zip(net.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b, a0 in zip(model.parameters(), twin.parameters(), start, strict=True):
        assert (a - a0).abs().min() > 1e-4  # every parameter took real steps
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "margin"])
def test_losses_accept_hard_and_soft_targets(loss: str) -> None:
    task = ClassificationTask(torch.nn.Identity(), loss, num_classes=3, label_smoothing=0.1)
    good = torch.tensor([[0.95, 0.02, 0.03]])
    bad = torch.tensor([[0.02, 0.95, 0.03]])
    for target in (torch.tensor([0]), torch.tensor([[1.0, 0.0, 0.0]])):
        assert task.loss(good, target) < task.loss(bad, target)


def test_unknown_loss_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown loss 'hinge'"):
        ClassificationTask(torch.nn.Identity(), "hinge", 3)


def test_train_writes_a_complete_run_folder(folder_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = imagewise.train(str(folder_data), out, epochs=2, **FAST)
    assert result.epochs == 2 and 0 <= result.best_val_accuracy <= 1
    for name in (
        "config.yaml",
        "meta.json",
        "model.safetensors",
        "last.ckpt",
        "history.csv",
        "curves.png",
        "skipped.txt",
    ):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == ["circle", "square", "stripes"]
    assert meta["model"]["name"] == "lenet5" and meta["preprocessing"]["img_size"] == 32
    assert meta["data"]["skipped_images"] == 1 and meta["training"]["epochs_run"] == 2
    assert "broken.jpg" in (out / "skipped.txt").read_text()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 2
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss") and len(rows) == 3
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(imagewise.load(out).model.state_dict())
    with pytest.raises(UserError, match="already holds a run; choose another --out"):
        imagewise.train(str(folder_data), out, epochs=1, **FAST)


def test_same_seed_gives_the_same_run(
    folder_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bit-for-bit needs a fixed thread count and precision too: the sums a CPU kernel splits
    # over threads round differently with another count, and by default the count follows the
    # machine's load, as precision auto follows a timing (bf16 or float32).
    monkeypatch.setenv("IMAGEWISE_ADAPTIVE_THREADS", "0")
    opts = {**FAST, "epochs": 1, "seed": 3, "precision": "fp32"}
    a = imagewise.train(str(folder_data), tmp_path / "a", **opts)
    b = imagewise.train(str(folder_data), tmp_path / "b", **opts)
    ha, hb = RunFolder.of(a.run).read_history(), RunFolder.of(b.run).read_history()
    assert ha[0]["train_loss"] == hb[0]["train_loss"] and ha[0]["val_loss"] == hb[0]["val_loss"]
    wa, wb = load_file(a.run / "model.safetensors"), load_file(b.run / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_early_stopping_stops_when_nothing_improves(folder_data: Path, tmp_path: Path) -> None:
    result = imagewise.train(
        str(folder_data), tmp_path / "r", epochs=6, patience=1, lr=1e-9, **FAST
    )
    assert result.epochs == 2 and result.stop_reason == "no improvement for 1 epochs"


def test_ema_weights_are_what_is_saved(folder_data: Path, tmp_path: Path) -> None:
    result = imagewise.train(str(folder_data), tmp_path / "e", epochs=2, ema_decay=0.9, **FAST)
    saved = load_file(result.run / "model.safetensors")
    last = torch.load(result.run / "last.ckpt", weights_only=True)
    assert last["ema"] is not None
    differs = [k for k in saved if not torch.equal(saved[k], last["model"][k])]
    assert differs  # the EMA, not the raw weights


KILL_SCRIPT = """
import os, sys
import imagewise

class KillAfter:
    def on_epoch_end(self, state):
        if state.epoch == 2:
            os._exit(137)  # like SIGKILL: no cleanup, no flush

imagewise.train(sys.argv[1], sys.argv[2], epochs=4, model="lenet5", batch_size=8,
                augment="light", show_progress=False, hooks=[KillAfter()])
"""


def test_resume_after_kill_reaches_the_planned_epochs(folder_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(folder_data), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 137, proc.stderr
    ckpt = torch.load(out / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no debris
    code = subprocess.run(
        [sys.executable, "-m", "imagewise", "train", "--resume", "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert code.returncode == 0, code.stderr
    history = (out / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["training"]["epochs_run"] == 4
    predictions = imagewise.load(out).predict([next(folder_data.rglob("*.png"))])
    assert predictions[0].label in ("circle", "square", "stripes")


def test_data_folder_is_stored_as_an_absolute_path(
    folder_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder_data.parent)
    result = imagewise.train(folder_data.name, tmp_path / "abs", epochs=1, **FAST)
    saved = yaml.safe_load((result.run / "config.yaml").read_text())["data"]["source"]
    assert saved == str(folder_data.resolve())
    monkeypatch.chdir(tmp_path)
    assert imagewise.evaluate(result.run).metrics.images > 0  # works from elsewhere
    assert imagewise.load(result.run).predict(str(next(folder_data.rglob("*.png"))))[0].label


def test_tta_views_are_those_the_augmentation_taught(
    folder_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    opts = {**FAST, "epochs": 1, "tta": True}
    imagewise.train(str(folder_data), tmp_path / "light", **{**opts, "augment": "light"})
    meta = RunFolder.of(tmp_path / "light").read_meta()
    assert meta.tta == {"mirror": False, "shift": 1}  # translation, no flips
    assert imagewise.load(tmp_path / "light").tta == {"mirror": False, "shift": 1}
    with caplog.at_level("WARNING", logger="imagewise"):
        imagewise.train(str(folder_data), tmp_path / "none", **opts)  # augment none
    assert RunFolder.of(tmp_path / "none").read_meta().tta == {}
    assert "neither flips nor shifts" in caplog.text
