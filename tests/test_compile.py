"""torch.compile: on where it pays (CUDA by default), and eager again where compiling fails."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import imagewise
from imagewise.errors import UserError
from imagewise.train.compile import CompiledWithFallback, maybe_compile, unwrap, wants_compile

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_compiles_on_gpus_only() -> None:
    assert [wants_compile("auto", d) for d in (CPU, CUDA)] == [False, True]
    assert wants_compile("on", CPU) and not wants_compile("off", CUDA)
    with pytest.raises(UserError, match="unknown compile setting 'fast'; choose auto, on, off"):
        wants_compile("fast", CPU)
    model = nn.Linear(3, 2)
    assert maybe_compile(model, "auto", CPU) is model


def test_compiled_model_matches_eager_and_owns_no_extra_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    wrapped = maybe_compile(model, "on", CPU)
    assert isinstance(wrapped, CompiledWithFallback) and unwrap(wrapped) is model
    x = torch.randn(5, 8)
    assert torch.allclose(wrapped(x), model(x), atol=1e-5)
    assert wrapped.compiled  # compiled for real, no fallback
    assert list(wrapped.parameters()) == list(model.parameters())
    assert {k.removeprefix("module.") for k in wrapped.state_dict()} == set(model.state_dict())


def failing_compile(fn, **kwargs):
    def compiled(*args, **kw):
        raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")

    return compiled


def test_a_failed_compile_falls_back_to_eager(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Linear(4, 2)
    wrapped = CompiledWithFallback(model, compiler=failing_compile)
    x = torch.randn(3, 4)
    with caplog.at_level(logging.WARNING, logger="imagewise"):
        out = wrapped(x)
    assert torch.equal(out, model(x)) and not wrapped.compiled
    assert caplog.messages == [
        "torch.compile failed (InductorError: no working C++ compiler found); "
        "training on without it"
    ]


def test_training_survives_a_failed_compile(
    folder_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch, "compile", failing_compile)
    options = {"model": "lenet5", "epochs": 2, "batch_size": 8, "augment": "none"}
    result = imagewise.train(
        str(folder_data), tmp_path / "run", compile="on", show_progress=False, **options
    )
    assert result.epochs == 2 and result.best_val_accuracy > 0
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert not any(k.startswith("module.") for k in weights)  # the bare model's names
