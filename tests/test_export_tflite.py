"""Export to LiteRT / TFLite: float32, float16 and INT8 files checked against PyTorch, their
metadata, a gate that refuses a wrong file, and prediction from them without PyTorch.

The conversion runs onnx2tf in the converter environment (``imagewise.export.tflite``, made
by ``make install``); without it these tests are skipped, saying so.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import imagewise
import imagewise.cli
from imagewise.data.sources import resolve_source
from imagewise.edge.litert import LiteRtModel, read_metadata
from imagewise.edge.runtimes import load_model
from imagewise.edge.spec import LAYOUT_NHWC
from imagewise.errors import UserError
from imagewise.export import tflite
from imagewise.export.metadata import build_metadata, file_spec
from imagewise.predict.predictor import load_run
from imagewise.version import __version__
from test_export import copy_run, parity_of, some_images

from conftest import run_cli

try:
    CONVERTER: Path | None = tflite.converter_python(create=False)
    WHY_NOT = ""
except UserError as exc:
    CONVERTER, WHY_NOT = None, str(exc)
needs_converter = pytest.mark.skipif(CONVERTER is None, reason=f"no converter: {WHY_NOT}")

NAMES = {"float32": "model.tflite", "float16": "model.fp16.tflite", "int8": "model.int8.tflite"}
HEAVY = ("torch", "torchvision", "timm", "matplotlib", "onnx", "sklearn", "tensorflow")
INT8_TEXT = (
    "int8 weights (per channel) and activations, float32 input and output "
    "(TFLite integer_quant, onnx2tf)"
)


@pytest.fixture(scope="module")
def exports(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained run exported to .tflite in each precision (the CLI for float32)."""
    run = copy_run(trained_run, tmp_path_factory.mktemp("tflite") / "run")
    assert imagewise.cli.main(["export", str(run), "--format", "tflite", "-q"]) == 0
    for precision in ("float16", "int8"):
        imagewise.export(run, "tflite", precision=precision)
    return run


def expected_metadata(run: Path, precision: str) -> dict[str, str]:
    """The map a .tflite of ``run`` must carry: the ONNX file's, channels last, its kind."""
    from imagewise.predict.conformal import fitted_conformal
    from imagewise.predict.drift import fitted_drift

    reference = load_run(run)  # with the fits the export carried (made then, kept in the run)
    spec = file_spec(
        reference.spec, False, None, fitted_drift(reference, run), fitted_conformal(run)
    )
    values = build_metadata(spec, reference.tta, False)
    values.update(input_layout=LAYOUT_NHWC, quantization=tflite.QUANTIZATION.get(precision, "none"))
    return values


def training_images(folder_data: Path) -> int:
    """How many readable training images the run has (its INT8 calibration set)."""
    raw = resolve_source(str(folder_data), 0.1, 0.1, 0)
    assert raw.train.paths is not None
    return sum("broken" not in p for p in raw.train.paths)


@needs_converter
@pytest.mark.parametrize("precision", ["float32", "float16", "int8"])
def test_each_precision_passes_its_gate(exports: Path, folder_data: Path, precision: str) -> None:
    path = exports / "export" / NAMES[precision]
    parity = parity_of(exports, NAMES[precision])
    assert parity["passed"] is True and parity["failure"] is None
    assert (parity["format"], parity["precision"], parity["runtime"]) == (
        "tflite",
        precision,
        "LiteRT",
    )
    assert parity["bytes"] == path.stat().st_size and parity["images"] > 0
    if precision == "float32":
        assert parity["gates"] == {"min_top1_agreement": 0.999}
        assert parity["top1_agreement"] == 1.0
        assert parity["max_abs_probability_difference"] < 1e-5
    else:
        assert parity["gates"] == {"max_accuracy_drop": 0.01}
        assert parity["accuracy_drop"] <= 0.01
        assert parity["max_abs_probability_difference"] < (1e-3 if precision == "float16" else 0.1)
    float32_bytes = (exports / "export" / NAMES["float32"]).stat().st_size
    # float16 weights take half the bytes, int8 a quarter (plus the graph and metadata)
    share = {"float32": 1.0, "float16": 0.5, "int8": 0.25}[precision]
    assert abs(parity["bytes"] / float32_bytes - share) < 0.05
    if precision == "int8":
        assert parity["quantization"] == {
            "converter": "onnx2tf 1.28.8", "kind": "integer_quant",
            "weights": "int8, per channel", "activations": "int8, per tensor",
            "input": "float32", "output": "float32",
            "calibration_images": training_images(folder_data),
        }  # fmt: skip
    else:
        assert parity["quantization"] is None


@needs_converter
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_metadata_round_trip_and_graph(exports: Path, precision: str) -> None:
    path = exports / "export" / NAMES[precision]
    props = read_metadata(path)
    want = expected_metadata(exports, precision)
    if precision == "int8":
        settings = parity_of(exports, NAMES[precision])["quantization"]
        want["quantization_settings"] = json.dumps(settings, ensure_ascii=False)
    assert props == want
    assert props["imagewise_version"] == __version__
    model = LiteRtModel(path, threads=1)
    spec = load_run(exports).spec
    assert model.spec.classes == spec.classes
    assert model.spec.input == replace(spec.input, layout=LAYOUT_NHWC)
    assert model.file_metadata == props
    # one input, channels last, any batch; the outputs by name, in order, and as a signature
    size, channels = spec.input.img_size, spec.input.channels
    assert model.input["name"] == "input" and model.input["dtype"] == np.float32
    assert list(model.input["shape_signature"]) == [-1, size, size, channels]
    details = model.interpreter.get_output_details()
    assert [d["name"] for d in details] == ["logits", "probabilities"]
    assert model.interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["input"], "outputs": ["logits", "probabilities"]}
    }
    # batches of any size answer alike
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, channels, size, size), dtype=np.uint8)
    logits, probs = model.scores(images)
    _, one_probs = model.scores(images[2:3])
    assert logits.shape == probs.shape == (5, len(spec.classes)) and logits.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-2)
    assert np.allclose(one_probs, probs[2:3], atol=1e-6)


@needs_converter
def test_broken_files_give_one_line(exports: Path, tmp_path: Path) -> None:
    from ai_edge_litert.tools import flatbuffer_utils

    good = exports / "export" / "model.tflite"
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    for broken in (cut, empty):
        with pytest.raises(UserError, match=r"^cannot load LiteRT model '.*': it is not a TFLite"):
            load_model(broken)
    bare = tmp_path / "bare.tflite"
    model = flatbuffer_utils.read_model(str(good))
    model.metadata = [m for m in model.metadata if m.name != b"imagewise"]
    flatbuffer_utils.write_model(model, str(bare))
    with pytest.raises(UserError) as info:
        load_model(bare)
    assert str(info.value) == (
        f"'{bare}' has no imagewise metadata (classes, img_size, channels, mean, std, "
        "temperature, input_layout missing); give a model written by 'imagewise export RUN'"
    )


def negated_classifier(source: Path, dest: Path) -> None:
    """``source`` with its last layer's weights and bias negated: the least likely class wins."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(source))
    graph = model.subgraphs[0]
    kinds = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators]
    (head,) = [op for op, k in zip(graph.operators, kinds, strict=True) if k == "FULLY_CONNECTED"]
    for index in head.inputs[1:]:
        buffer = model.buffers[graph.tensors[index].buffer]
        buffer.data = (-buffer.data.view(np.float32)).view(np.uint8)
    flatbuffer_utils.write_model(model, str(dest))


@needs_converter
def test_failed_gate_leaves_no_tflite(
    exports: Path, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A converter that answers wrongly (here: the head negated) is refused by the gate."""
    run = copy_run(trained_run, tmp_path / "run")
    good = exports / "export" / "model.tflite"

    def wrong_converter(python: Path, settings: dict[str, Any], folder: Path) -> None:
        negated_classifier(good, Path(settings["output"]))

    monkeypatch.setattr(tflite, "_convert", wrong_converter)
    code, out, err = run_cli(["export", str(run), "--format", "tflite"], capsys)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: the exported model failed its check on ")
    assert "val images: top-1 agreement with PyTorch is 0.00%, below 99.9%" in line
    assert line.endswith(f"; nothing was written in place of model.tflite (figures: "
                         f"{run / 'export' / 'parity.json'})")  # fmt: skip
    assert sorted(p.name for p in (run / "export").iterdir()) == ["parity.json"]
    parity = parity_of(run, "model.tflite")
    assert parity["passed"] is False and parity["top1_agreement"] == 0.0


@needs_converter
def test_predict_on_tflite_equals_predict_on_the_run(
    exports: Path, folder_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = some_images(folder_data)
    answers = []
    for model in (str(exports), str(exports / "export" / "model.tflite")):
        code, js, err = run_cli(["predict", model, *images, "--format", "json"], capsys)
        assert code == 0, err
        answers.append(json.loads(js))
    run_json, tflite_json = answers
    assert [p["source"] for p in tflite_json] == images
    for a, b in zip(run_json, tflite_json, strict=True):
        assert [k["class"] for k in a["top_k"]] == [k["class"] for k in b["top_k"]]
        for k, m in zip(a["top_k"], b["top_k"], strict=True):
            assert abs(k["probability"] - m["probability"]) <= 1e-5


@needs_converter
def test_predict_on_tflite_imports_no_torch(exports: Path, folder_data: Path) -> None:
    images = some_images(folder_data)
    model = exports / "export" / "model.int8.tflite"
    code = (
        "import json, sys, imagewise\n"
        "preds = imagewise.predict(sys.argv[1], sys.argv[2:], top_k=2)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'labels': [p.label for p in preds], 'heavy': heavy}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(model), *images],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert out["labels"] == [p.label for p in LiteRtModel(model).predict(images)]


def test_missing_runtime_names_the_extra(
    folder_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Both checks come before any work: the run need not even exist."""
    find_spec = importlib.util.find_spec

    def without_litert(name: str, *args: Any) -> Any:
        return None if name == "ai_edge_litert" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_litert)
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3")
    code, out, err = run_cli(["predict", str(model), *some_images(folder_data)], capsys)
    assert (code, out) == (2, "")
    missing = 'LiteRT is not installed; it runs .tflite files: pip install "imagewise[litert]"'
    assert err == f"error: {missing}\n"
    code, out, err = run_cli(["export", str(tmp_path / "run"), "--format", "tflite"], capsys)
    assert (code, out) == (2, "")
    assert err == (
        "error: --format tflite needs ai_edge_litert, which is not installed: "
        'pip install "imagewise[tflite]"\n'
    )


def test_converter_python_is_named_or_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEWISE_TFLITE_PYTHON", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(UserError) as info:
        tflite.converter_python()
    assert str(info.value) == (
        f"IMAGEWISE_TFLITE_PYTHON is '{tmp_path / 'nowhere' / 'python'}', which is not a file; "
        "give a Python with onnx2tf and TensorFlow installed, or unset it"
    )
    monkeypatch.delenv("IMAGEWISE_TFLITE_PYTHON")
    monkeypatch.setenv("IMAGEWISE_HOME", str(tmp_path))
    home = tmp_path / "tflite-converter"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"^the TFLite converter environment is not in"):
        tflite.converter_python(create=False)
    with pytest.raises(UserError) as info:  # never deletes what is not a virtual environment
        tflite.converter_python()
    assert str(info.value) == (
        f"'{home}' holds files but no virtual environment; move them away to let imagewise "
        "make the TFLite converter environment there"
    )
    assert (home / "notes.txt").read_text() == "mine"
    shutil.rmtree(home)


def test_quantized_input_and_output_are_converted_at_their_scale() -> None:
    """A full-integer file (int8 input and outputs) is fed and read as floats."""
    from imagewise.edge.litert import _dequantize, _quantize

    detail = {"dtype": np.int8, "quantization": (0.5, -1)}
    x = np.array([0.0, 1.0, -0.74, 100.0, -100.0], np.float32)
    q = _quantize(x, detail)
    assert q.dtype == np.int8 and q.tolist() == [-1, 1, -2, 127, -128]
    assert _dequantize(q, detail).tolist() == [0.0, 1.0, -0.5, 64.0, -63.5]
    plain = {"dtype": np.float32, "quantization": (0.0, 0)}
    assert _quantize(x, plain) is x and _dequantize(x, plain).dtype == np.float32
