"""Export to OpenVINO IR: float32, float16 and INT8 files with their parity records, the metadata
in the IR's rt_info, the gate that refuses a wrong file, and predicting and serving the .xml with
OpenVINO alone (no torch)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import imagewise
import imagewise.cli
from imagewise.edge.openvino import OpenVinoModel, read_metadata
from imagewise.edge.runtimes import load_model
from imagewise.edge.spec import LAYOUT_RAW, InputContract, ModelSpec
from imagewise.errors import UserError
from imagewise.export import openvino as ov_writer
from imagewise.export.quantize import PORTABLE
from imagewise.predict.exported import EdgeClassifier
from test_export import copy_run, parity_of, some_images, val_images

from conftest import CLASSES, run_cli, serve_process

HEAVY = ("torch", "torchvision", "timm", "matplotlib", "onnx", "sklearn", "tensorflow")
FILES = {"float32": "model.xml", "float16": "model.fp16.xml", "int8": "model.int8.xml"}


@pytest.fixture(scope="module")
def ov_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained run exported to OpenVINO three ways: float32 and INT8 by the CLI,
    float16 by the library."""
    run = copy_run(trained_run, tmp_path_factory.mktemp("openvino") / "run")
    assert imagewise.cli.main(["export", str(run), "--format", "openvino", "-q"]) == 0
    assert imagewise.cli.main(["export", str(run), "--format", "openvino", "--int8", "-q"]) == 0
    result = imagewise.export(run, "openvino", precision="float16")
    assert result.path == run / "export" / "model.fp16.xml" and result.passed
    assert (result.format, result.precision, result.int8) == ("openvino", "float16", False)
    return run


def ir_sizes(xml: Path) -> tuple[int, int]:
    return xml.stat().st_size, xml.with_suffix(".bin").stat().st_size


@pytest.mark.parametrize("precision", list(FILES))
def test_each_precision_writes_ir_and_passes_its_gate(
    precision: str, ov_run: Path, folder_data: Path
) -> None:
    xml = ov_run / "export" / FILES[precision]
    parity = parity_of(ov_run, xml.name)
    assert parity["file"] == str(xml) and parity["bytes"] == sum(ir_sizes(xml))
    assert (parity["format"], parity["precision"], parity["runtime"]) == (
        "openvino", precision, "OpenVINO",
    )  # fmt: skip
    assert parity["split"] == "val" and parity["images"] == len(val_images(folder_data)) >= 5
    assert parity["passed"] is True and parity["failure"] is None
    assert parity["accuracy_pytorch"] >= 0.8
    if precision == "float32":
        assert parity["gates"] == {"min_top1_agreement": 0.999}
        assert parity["top1_agreement"] == 1.0 and parity["max_abs_probability_difference"] < 1e-5
        assert parity["accuracy_exported"] == parity["accuracy_pytorch"]
    else:
        assert parity["gates"] == {"max_accuracy_drop": 0.01} and parity["accuracy_drop"] <= 0.01
        limit = 1e-3 if precision == "float16" else 0.2
        assert parity["max_abs_probability_difference"] < limit
    assert parity["quantization"] == (PORTABLE.describe() if precision == "int8" else None)

    model = ov.Core().read_model(str(xml))
    (inp,) = model.inputs
    assert [d.get_length() if d.is_static else None for d in inp.get_partial_shape()] == [
        None, 3, 32, 32,
    ]  # fmt: skip  # the batch stays dynamic
    assert inp.get_element_type() == ov.Type.f32
    assert [o.get_any_name() for o in model.outputs] == ["logits", "probabilities"]
    constants = [c for c in model.get_ops() if c.get_type_name() == "Constant"]
    float32_bin = ir_sizes(ov_run / "export" / FILES["float32"])[1]
    if precision == "float16":  # weights stored as float16: half the bytes
        assert ov.Type.f16 in {c.get_element_type() for c in constants}
        assert 0.45 < ir_sizes(xml)[1] / float32_bin < 0.55
    if precision == "int8":  # int8 weights, 7 bits used as the ONNX INT8 file's: every CPU
        int8 = [c.get_data() for c in constants if c.get_element_type() == ov.Type.i8]
        assert sum(w.size for w in int8) > 100_000 and 60 <= max(abs(w).max() for w in int8) <= 64
        assert ir_sizes(xml)[1] < 0.3 * float32_bin


def test_int8_ir_runs_int8_kernels_and_models_compute_in_float32(ov_run: Path) -> None:
    model = OpenVinoModel(ov_run / "export" / FILES["int8"])
    ran = {
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in model.compiled.get_runtime_model().get_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    }
    assert ran & {"u8", "i8"}, ran
    setting = model.compiled.get_property
    assert setting("INFERENCE_PRECISION_HINT") == ov.Type.f32  # never bf16, whatever the CPU
    assert (setting("PERFORMANCE_HINT"), setting("ENABLE_CPU_PINNING")) == ("LATENCY", False)
    assert setting("INFERENCE_NUM_THREADS") == len(os.sched_getaffinity(0))
    one = OpenVinoModel(ov_run / "export" / FILES["float32"], threads=1)
    assert one.compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_metadata_round_trip(ov_run: Path, trained_run: Path) -> None:
    meta = json.loads((trained_run / "meta.json").read_text())
    pre, run = meta["preprocessing"], imagewise.load(trained_run)
    for precision, name in FILES.items():
        xml = ov_run / "export" / name
        # In the file itself: <rt_info><imagewise><classes value="..."/>...
        section = ET.parse(xml).getroot().find("rt_info/imagewise")
        assert section is not None
        props = {e.tag: e.attrib["value"] for e in section}
        assert props == read_metadata(ov.Core().read_model(str(xml)))
        assert json.loads(props["classes"]) == meta["classes"] == list(CLASSES)
        assert int(props["img_size"]) == pre["img_size"] and int(props["channels"]) == 3
        assert json.loads(props["mean"]) == pre["mean"] and json.loads(props["std"]) == pre["std"]
        assert float(props["temperature"]) == meta["temperature"]
        assert props["imagewise_version"] == imagewise.__version__
        assert props["input_layout"] == "NCHW float32 normalized"
        assert props["model"] == "resnet9_tiny"
        if precision == "int8":
            assert props["quantization"].startswith("int8 static QDQ (ONNX Runtime)")
            assert json.loads(props["quantization_settings"]) == PORTABLE.describe()
        else:
            assert props["quantization"] == "none" and "quantization_settings" not in props

        edge = load_model(xml)
        assert isinstance(edge, OpenVinoModel) and edge.spec.conformal and edge.spec.drift
        assert replace(edge.spec, conformal=None, drift=None) == run.spec  # + the carried fits
        assert edge.preprocessing == InputContract(**pre) and edge.file_metadata == props
        clf = imagewise.load(xml)
        assert isinstance(clf, EdgeClassifier) and clf.classes == run.classes
        assert clf.temperature == run.temperature == meta["temperature"]
    # The dynamic batch: 1 image and 5, the float32 file's numbers are PyTorch's.
    edge = load_model(ov_run / "export" / FILES["float32"])
    rng = np.random.default_rng(0)
    for n in (1, 5):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        logits, probs = edge.scores(images)
        assert logits.dtype == probs.dtype == np.float32 and probs.shape == (n, 3)
        assert np.abs(probs - run.scores(images)[1]).max() < 1e-5
        assert np.allclose(logits, run.scores(images)[0], atol=1e-4)


def negated(source: Path) -> ov.Model:
    """The IR at ``source`` with its logits negated: the least likely class wins."""
    model = ov.Core().read_model(str(source))
    old = model.output("logits").get_node().input_value(0)  # what its Result node reads
    old.get_tensor().set_names(set())
    logits = ops.negative(old)
    probs = ops.softmax(logits, 1)
    logits.output(0).set_names({"logits"})
    probs.output(0).set_names({"probabilities"})
    return ov.Model([logits, probs], model.get_parameters(), "negated")


def test_a_failed_gate_leaves_neither_xml_nor_bin(
    ov_run: Path, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source = ov_run / "export" / FILES["float32"]

    def wrong_writer(job: object, path: Path) -> None:
        model = negated(source)
        ov_writer.set_metadata(model, job.metadata)  # type: ignore[attr-defined]
        ov.save_model(model, path)

    run = copy_run(trained_run, tmp_path / "run")
    monkeypatch.setattr(ov_writer, "write", wrong_writer)
    code, out, err = run_cli(["export", str(run), "--format", "openvino"], capsys)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: the exported model failed its check on ")
    assert "val images: top-1 agreement with PyTorch is 0.00%, below 99.9%" in line
    assert line.endswith(
        f"; nothing was written in place of model.xml (figures: {run / 'export' / 'parity.json'})"
    )
    assert sorted(p.name for p in (run / "export").iterdir()) == ["parity.json"]
    parity = parity_of(run, "model.xml")
    assert parity["passed"] is False and parity["top1_agreement"] == 0.0
    assert parity["accuracy_exported"] < parity["accuracy_pytorch"]


def test_predict_on_the_ir_equals_predict_on_the_run(
    ov_run: Path, folder_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = some_images(folder_data)
    xml = str(ov_run / "export" / FILES["float32"])
    outputs = {}
    for model in (str(ov_run), xml):
        code, table, err = run_cli(["predict", model, *images, "--top-k", "3"], capsys)
        assert code == 0, err
        code, js, err = run_cli(["predict", model, *images, "--format", "json"], capsys)
        assert code == 0, err
        outputs[model] = table, json.loads(js)
    (run_table, run_json), (ir_table, ir_json) = outputs.values()
    assert ir_table == run_table and len(run_table.splitlines()) == len(images) + 1
    assert [p["source"] for p in ir_json] == images
    for a, b in zip(run_json, ir_json, strict=True):
        assert [k["class"] for k in a["top_k"]] == [k["class"] for k in b["top_k"]]
        for k, m in zip(a["top_k"], b["top_k"], strict=True):
            assert abs(k["probability"] - m["probability"]) <= 1e-5


def test_predict_in_a_fresh_process_imports_no_torch(ov_run: Path, folder_data: Path) -> None:
    images = some_images(folder_data)[:2]
    xml = ov_run / "export" / FILES["int8"]
    cmd = [sys.executable, "-X", "importtime", "-m", "imagewise", "predict", str(xml), *images]
    done = subprocess.run([*cmd, "--format", "json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    expected = load_model(xml).predict(images)
    assert [p["top_k"][0]["class"] for p in got] == [p.label for p in expected]
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "openvino" in imported and "imagewise" in imported
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


def test_serving_the_ir_answers_like_the_run(
    ov_run: Path, folder_data: Path, tmp_path: Path
) -> None:
    xml = ov_run / "export" / FILES["float32"]
    image = Path(some_images(folder_data)[1])  # a PNG
    with serve_process(xml, tmp_path / "server.log", "-q", "--threads", "1") as url:
        info = httpx.get(url + "/v1/info", timeout=30).json()
        files = {"file": (image.name, image.read_bytes())}
        answer = httpx.post(url + "/v1/predict", params={"top_k": 2}, files=files, timeout=30)
    assert answer.status_code == 200, answer.text
    assert info["classes"] == list(CLASSES) and info["gradcam"] is False
    (got,) = answer.json()["predictions"]
    (expected,) = imagewise.load(ov_run).predict([image], top_k=2)
    assert [c["class"] for c in got["top_k"]] == expected.classes
    assert [c["probability"] for c in got["top_k"]] == pytest.approx(
        expected.probabilities, abs=1e-5
    )


def test_a_missing_openvino_is_named_in_one_line(
    ov_run: Path, folder_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    find_spec = importlib.util.find_spec

    def without_openvino(name: str, *args: object) -> object:
        return None if name.split(".")[0] == "openvino" else find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_openvino)
    run = copy_run(ov_run, tmp_path / "run")
    code, out, err = run_cli(["export", str(run), "--format", "openvino"], capsys)
    assert (code, out) == (2, "") and not (run / "export").exists()
    assert err.strip() == (
        "error: --format openvino needs openvino, which is not installed: "
        'pip install "imagewise[openvino]"'
    )
    xml = ov_run / "export" / FILES["float32"]
    code, out, err = run_cli(["predict", str(xml), some_images(folder_data)[0]], capsys)
    assert (code, out) == (2, "")
    assert err.strip() == (
        'error: OpenVINO is not installed; it runs .xml files: pip install "imagewise[openvino]"'
    )


def hand_made_ir(path: Path, metadata: dict[str, str] | None) -> Path:
    """A small IR written without imagewise: uint8 NHWC 8x8x3 in, each channel's mean as its
    class's logit."""
    pixels = ops.parameter(ov.PartialShape([-1, 8, 8, 3]), ov.Type.u8, name="input")
    logits = ops.reduce_mean(ops.convert(pixels, ov.Type.f32), np.array([1, 2]), keep_dims=False)
    probs = ops.softmax(logits, 1)
    logits.output(0).set_names({"logits"})
    probs.output(0).set_names({"probabilities"})
    model = ov.Model([logits, probs], [pixels], "hand-made")
    ov_writer.set_metadata(model, metadata or {})
    ov.save_model(model, path)
    return path


def test_a_raw_input_ir_is_fed_uint8_nhwc(tmp_path: Path) -> None:
    contract = InputContract(8, 3, (0.5,) * 3, (0.25,) * 3, layout=LAYOUT_RAW)
    spec = ModelSpec(("red", "green", "blue"), contract, temperature=2.0)
    model = OpenVinoModel(hand_made_ir(tmp_path / "raw.xml", spec.to_metadata()))
    assert model.raw_input and model.classes == ["red", "green", "blue"] and model.temperature == 2
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    logits, _ = model.scores(images)  # N, C, H, W in; the graph gets N, H, W, C
    assert np.allclose(logits, images.mean(axis=(2, 3)), atol=1e-4)


def test_files_that_are_not_imagewise_ir_are_refused_in_one_line(
    ov_run: Path, folder_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "page.xml"
    html.write_text("<html><body>not a model</body></html>")
    plain = hand_made_ir(tmp_path / "plain.xml", None)
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes((ov_run / "export" / FILES["float32"]).read_bytes())
    cases = {
        html: (
            f"'{html}' is not an OpenVINO IR model; give a model.xml written by "
            "'imagewise export RUN --format openvino'"
        ),
        plain: (
            f"'{plain}' has no imagewise metadata (classes, img_size, channels, mean, std, "
            "temperature, input_layout missing); give a model written by 'imagewise export RUN'"
        ),
        lonely: (
            f"cannot load OpenVINO model '{lonely}': its weights 'lonely.bin' are not beside it; "
            "keep the .xml and .bin files together"
        ),
    }
    for path, message in cases.items():
        with pytest.raises(UserError) as caught:
            load_model(path)
        assert str(caught.value) == message
        code, out, err = run_cli(["predict", str(path), some_images(folder_data)[0]], capsys)
        assert (code, out, err.strip()) == (2, "", f"error: {message}")
    # Metadata that disagrees with the graph: 32 px said, 8 px taken.
    contract = InputContract(32, 3, (0.5,) * 3, (0.25,) * 3, layout=LAYOUT_RAW)
    spec = ModelSpec(("red", "green", "blue"), contract)
    wrong = hand_made_ir(tmp_path / "wrong.xml", spec.to_metadata())
    with pytest.raises(UserError, match=re.escape("describe a NHWC input of [32, 32, 3]")):
        load_model(wrong)
