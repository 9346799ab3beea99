"""Configuration: defaults < YAML file < flags, typed, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from imagewise.config import RunConfig, apply_options, load_config_file, save_config
from imagewise.errors import UserError
from imagewise.runtime.device import cpu_has_native_bf16


def test_file_overrides_defaults_and_flags_override_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: {name: lenet5}\ntrain: {lr: 1e-3, epochs: 7, optimizer: sgd}\n"
        "data: {augment: {preset: light, hflip: true}}\n"
    )
    cfg = load_config_file(path)
    assert cfg.model.name == "lenet5" and cfg.train.epochs == 7
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML reads 1e-3 as a string; the type decides
    assert cfg.data.augment.preset == "light" and cfg.data.augment.hflip is True
    assert cfg.train.batch_size == RunConfig().train.batch_size
    apply_options(cfg, {"epochs": 3, "lr": None, "augment": "strong"})
    assert cfg.train.epochs == 3 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.data.augment.preset == "strong"


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = apply_options(RunConfig(), {"model": "vgg11", "weight_decay": 0.01, "mixup": 0.2})
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config_file(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["name"] == "vgg11"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("train: {epoch: 3}", "unknown setting 'epoch' in config.train"),
        ("train: {epochs: many}", "config.train.epochs must be a number, not 'many'"),
        ("[1, 2]", "must hold a mapping with sections data/model/train"),
    ],
)
def test_bad_config_files_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        load_config_file(path)


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(UserError, match="--epochs must be at least 1, not 0"):
        apply_options(RunConfig(), {"epochs": 0})
    with pytest.raises(UserError, match="unknown augmentation preset 'wild'"):
        apply_options(RunConfig(), {"augment": "wild"})
    with pytest.raises(UserError, match="--hflip must be true or false"):
        apply_options(RunConfig(), {"hflip": "maybe"})


def test_atomic_write_respects_umask_and_leaves_no_temp(tmp_path: Path) -> None:
    import os

    from imagewise.io import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a" / "f.txt", "hello")
    finally:
        os.umask(old)
    assert path.read_text() == "hello" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_recipe_sits_between_defaults_and_file_and_flags(tmp_path: Path) -> None:
    from imagewise.train.recipes import RECIPES
    from imagewise.train.run import _resolve_config

    path = tmp_path / "c.yaml"
    path.write_text("recipe: fast\ntrain: {batch_size: 100}\n")
    cfg, _ = _resolve_config("digits", tmp_path / "r", None, str(path), None, {"epochs": 2}, False)
    assert cfg.recipe == "fast"
    assert cfg.data.augment.preset == RECIPES["fast"]["augment"]  # from the recipe
    assert cfg.train.batch_size == 100  # the file wins over the recipe
    assert cfg.train.epochs == 2  # flags win over both
    message = "unknown recipe 'slow'; choose one of default, fast, accurate"
    with pytest.raises(UserError, match=message):
        _resolve_config("digits", tmp_path / "s", None, None, "slow", {}, False)


def test_auto_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagewise.runtime import device as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert dev.resolve_precision("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert dev.resolve_precision("auto", cpu) is None  # emulated bf16 is slower than fp32
    assert dev.resolve_precision("bf16", cpu) is torch.bfloat16  # asked for, given
    assert dev.resolve_precision("fp32", cpu) is None
    with pytest.raises(UserError, match="unknown precision 'half'"):
        dev.resolve_precision("half", cpu)


def test_auto_precision_on_a_cpu_keeps_bf16_only_when_measured_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from imagewise.edge.spec import InputContract
    from imagewise.train import build as run

    pre = InputContract(img_size=28, channels=1, mean=[0.5], std=[0.5])
    model = nn.Conv2d(1, 2, 3)
    monkeypatch.setattr(run, "measure_bf16_speedup", lambda *a: 1.3)
    assert run.measured_cpu_precision(model, pre, 64, True) is torch.bfloat16
    monkeypatch.setattr(run, "measure_bf16_speedup", lambda *a: 1 / 1.3)  # slower
    assert run.measured_cpu_precision(model, pre, 64, True) is None
    monkeypatch.setattr(run, "measure_bf16_speedup", lambda *a: 1.02)  # within the noise
    assert run.measured_cpu_precision(model, pre, 64, True) is None

    def fails(*args: object) -> float:
        raise RuntimeError("no bf16 kernel for this operator\ndetails")

    monkeypatch.setattr(run, "measure_bf16_speedup", fails)
    assert run.measured_cpu_precision(model, pre, 64, True) is None  # float32, with a warning
    assert run.measured_cpu_precision(model, pre, 64, True, measure=False) is None


@pytest.mark.skipif(
    not cpu_has_native_bf16(),
    reason="the bf16 probe runs only on CPUs with native bf16 (AVX512-BF16 or AMX)",
)
def test_the_bf16_probe_leaves_the_model_and_the_random_state_alone() -> None:
    from imagewise.models import create_model
    from imagewise.runtime.device import measure_bf16_speedup

    model = create_model("resnet9_tiny", 10, 1, 28).to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    speedup = measure_bf16_speedup(model, 8, 1, 28, channels_last=True)
    assert 0.05 < speedup < 20
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():  # batch-norm statistics included
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_glibc_keeps_freed_memory_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from imagewise.runtime.device import keep_freed_memory

    monkeypatch.setenv("IMAGEWISE_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("IMAGEWISE_KEEP_FREED_MEMORY")
    # mallopt accepted every setting (it returns 0 for a value out of range)
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected
