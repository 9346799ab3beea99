"""No silent NaN model: predict refuses it in one line, the server stays up but is not ready."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import imagewise
from imagewise.errors import UserError

from conftest import run_cli, serve_process, served_copy


def rewrite_weights(run: Path, change: Callable[[torch.Tensor], torch.Tensor]) -> Path:
    """Apply ``change`` to every floating-point tensor of the run's saved weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights = run / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata()
    tensors = {k: change(v) if v.is_floating_point() else v for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata=metadata)
    return run


@pytest.fixture(scope="module")
def nan_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run as a too-high learning rate leaves it: every weight NaN."""
    run = served_copy(trained_run, tmp_path_factory.mktemp("nan"))
    return rewrite_weights(run, lambda t: torch.full_like(t, float("nan")))


@pytest.fixture(scope="module")
def image(folder_data: Path) -> Path:
    return sorted((folder_data / "square").glob("*.png"))[0]


def test_predict_refuses_nan_weights_in_one_line(
    nan_run: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UserError) as raised:
        imagewise.predict(nan_run, [str(image)])
    message = str(raised.value)
    assert f"model '{nan_run}'" in message and "NaN or inf" in message and "--lr" in message
    code, out, err = run_cli(["predict", str(nan_run), str(image)], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "weights hold NaN or inf" in err


def test_finite_weights_whose_outputs_overflow_are_refused_too(
    trained_run: Path, tmp_path: Path, image: Path
) -> None:
    run = rewrite_weights(served_copy(trained_run, tmp_path), lambda t: t * 1e30)
    with pytest.raises(UserError, match="for a plain grey image are not finite"):
        imagewise.load(run)


def test_an_onnx_file_with_nan_initializers_is_refused(trained_run: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    good = imagewise.export(served_copy(trained_run, tmp_path)).path
    assert imagewise.load(good).classes  # the export itself is fine
    model = onnx.load(str(good))
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if np.issubdtype(values.dtype, np.floating):
            init.CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), init.name))
    bad = tmp_path / "nan.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(UserError, match=r"model '.*nan\.onnx' .*weights hold NaN or inf"):
        imagewise.load(bad)


def test_the_server_stays_up_but_is_not_ready_and_says_why_once(
    nan_run: Path, image: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with serve_process(nan_run, log, "-q", wait_for="/healthz") as url:
        ready = httpx.get(url + "/readyz")
        predicted = httpx.post(
            url + "/v1/predict", files={"file": (image.name, image.read_bytes())}
        )
        info = httpx.get(url + "/v1/info")
    for r in (ready, predicted):
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        assert "weights hold NaN or inf" in r.json()["error"] and "--lr" in r.json()["error"]
    assert ready.json()["error"].startswith("not ready: ")
    assert info.status_code == 200
    said = [line for line in log.read_text().splitlines() if "NaN or inf" in line]
    assert len(said) == 1 and said[0].startswith(f"not ready: model '{nan_run}'"), said
