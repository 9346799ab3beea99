"""torch.compile: on where it pays (CUDA by default), and eager again where compiling fails."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch._dynamo.exc import TorchDynamoException

import imagewise
from imagewise.errors import UserError
from imagewise.train.compile import CompiledWithFallback, unwrap, wants_compile

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_compiles_on_gpus_only() -> None:
    assert [wants_compile("auto", d) for d in (CPU, CUDA)] == [False, True]
    assert wants_compile("on", CPU) and not wants_compile("off", CUDA)
    with pytest.raises(UserError, match="unknown compile setting 'fast'; choose auto, on, off"):
        wants_compile("fast", CPU)


def test_compile_off_in_a_config_file_is_a_setting_not_a_boolean(tmp_path: Path) -> None:
    from imagewise.config import load_config_file

    path = tmp_path / "run.yaml"
    path.write_text("train: {compile: off, precision: fp32}\n")  # YAML 1.1 reads off as false
    assert load_config_file(path).train.compile == "off"
    path.write_text("train: {compile: on}\n")
    assert load_config_file(path).train.compile == "on"


def test_compiled_model_matches_eager_and_owns_no_extra_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    wrapped = CompiledWithFallback(model)
    assert isinstance(wrapped, CompiledWithFallback) and unwrap(wrapped) is model
    x = torch.randn(5, 8)
    assert torch.allclose(wrapped(x), model(x), atol=1e-5)
    assert wrapped.compiled  # compiled for real, no fallback
    assert list(wrapped.parameters()) == list(model.parameters())
    assert {k.removeprefix("module.") for k in wrapped.state_dict()} == set(model.state_dict())


class CompileError(TorchDynamoException):
    """What dynamo and inductor raise (BackendCompilerFailed, InductorError) derive from."""


def failing_compile(fn, **kwargs):
    def compiled(*args, **kw):
        raise CompileError("InductorError: no working C++ compiler found\nmore detail")

    return compiled


def test_errors_that_are_not_compiling_are_not_swallowed() -> None:
    def out_of_memory(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("out of memory")

        return compiled

    wrapped = CompiledWithFallback(nn.Linear(4, 2), compiler=out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        wrapped(torch.randn(3, 4))
    assert wrapped.compiled  # still on: the next call compiles again


def test_the_backward_graph_is_compiled_during_the_forward_call() -> None:
    """So that a backward that fails to compile fails inside the wrapper, which falls back."""
    from torch._functorch import config

    seen = []

    def spy(fn, **kwargs):
        def compiled(*args, **kw):
            seen.append(config.force_non_lazy_backward_lowering)
            return fn(*args, **kw)

        return compiled

    CompiledWithFallback(nn.Linear(4, 2), compiler=spy)(torch.randn(3, 4))
    assert seen == [True] and config.force_non_lazy_backward_lowering is False


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
