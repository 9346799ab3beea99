"""Export to ONNX and TorchScript: the files, their metadata, the parity check and its gates,
INT8, raw-uint8 input, OpenCV as a second ONNX runtime, and prediction from exported files."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

import imagewise
import imagewise.cli
from imagewise.data.sources import resolve_source
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError
from imagewise.export import ExportResult
from imagewise.export.onnx import ExportModule
from imagewise.export.quantize import PORTABLE
from imagewise.predict import BaseClassifier, Classifier
from imagewise.predict.exported import OnnxClassifier

from conftest import CLASSES, run_cli

HOG_REFUSAL = (
    "holds a hog_svm model, which declares no ONNX or TorchScript graph (a classical model "
    "computes its features outside tensor operations); use the run folder itself with "
    "imagewise predict or imagewise.load"
)


def copy_run(run: Path, dest: Path) -> Path:
    """The run's files in a folder of the test's own, so exports never touch the shared run."""
    dest.mkdir(parents=True)
    for name in ("config.yaml", "meta.json", "model.safetensors"):
        shutil.copy(run / name, dest / name)
    return dest


def val_images(folder_data: Path) -> list[str]:
    """The readable validation files of the trained run, split as training split them."""
    raw = resolve_source(str(folder_data), 0.1, 0.1, 0)
    assert raw.val.paths is not None
    return [p for p in raw.val.paths if "broken" not in p]


def parity_of(run: Path, name: str = "model.onnx") -> dict:
    """parity.json's record of the file ``name`` of the run's export folder."""
    record = json.loads((run / "export" / "parity.json").read_text())
    assert record["format"] == "imagewise-parity/1"
    return record["files"][name]


def some_images(folder_data: Path) -> list[str]:
    """Two files per class: PNG and JPEG, RGB and grayscale."""
    return [str(folder_data / c / name) for c in CLASSES for name in ("000.jpg", "001.png")]


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained run with RUN/export/model.onnx written by the CLI."""
    run = copy_run(trained_run, tmp_path_factory.mktemp("export") / "run")
    assert imagewise.cli.main(["export", str(run), "-q"]) == 0
    return run


def test_onnx_export_writes_the_model_and_parity(exported: Path, folder_data: Path) -> None:
    parity = parity_of(exported)
    model_file = exported / "export" / "model.onnx"
    assert parity["file"] == str(model_file) and parity["bytes"] == model_file.stat().st_size
    assert (parity["format"], parity["int8"], parity["raw_input"]) == ("onnx", False, False)
    assert parity["data"] == str(folder_data) and parity["split"] == "val"
    assert parity["images"] == len(val_images(folder_data)) >= 5
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_probability_difference"] < 1e-5
    assert parity["accuracy_exported"] == parity["accuracy_pytorch"] >= 0.8
    assert parity["accuracy_drop"] == 0.0
    assert parity["gates"] == {"min_top1_agreement": 0.999}
    assert parity["passed"] is True and parity["failure"] is None

    graph = onnx.load(str(model_file))
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [o.name for o in graph.graph.output] == ["logits", "probabilities"]
    (inp,) = graph.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_metadata_round_trip(exported: Path, trained_run: Path) -> None:
    meta = json.loads((trained_run / "meta.json").read_text())
    graph = onnx.load(str(exported / "export" / "model.onnx"))
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["classes"]) == meta["classes"] == list(CLASSES)
    pre = meta["preprocessing"]
    assert int(props["img_size"]) == pre["img_size"] and int(props["channels"]) == 3
    assert json.loads(props["mean"]) == pre["mean"] and json.loads(props["std"]) == pre["std"]
    assert float(props["temperature"]) == meta["temperature"]  # 1.0 when validation was all right
    assert props["imagewise_version"] == imagewise.__version__
    assert props["input_layout"] == "NCHW float32 normalized"
    assert props["model"] == "resnet9_tiny" and props["quantization"] == "none"

    clf = imagewise.load(exported / "export" / "model.onnx")
    run = imagewise.load(trained_run)
    assert isinstance(clf, OnnxClassifier) and isinstance(clf, BaseClassifier)
    assert clf.classes == run.classes and clf.temperature == run.temperature
    assert clf.preprocessing == run.preprocessing == InputContract(**pre)
    assert clf.spec.model == clf.name == "resnet9_tiny"
    # The file carries the run's fits that a run folder keeps in files of its own.
    assert clf.spec.conformal is not None and clf.spec.drift is not None
    assert dataclasses.replace(clf.spec, conformal=None, drift=None) == run.spec
    # The dynamic batch axis: 1 image and 5 images, same numbers as PyTorch.
    for n in (1, 5):
        batch = torch.randn(n, 3, 32, 32)
        assert torch.allclose(clf.logits(batch), run.logits(batch), atol=1e-5)
        probs = clf.probabilities(batch)
        assert probs.shape == (n, 3) and torch.allclose(probs, run.probabilities(batch), atol=1e-6)


def test_predict_on_onnx_equals_predict_on_the_run(
    exported: Path, folder_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = some_images(folder_data)
    onnx_file = str(exported / "export" / "model.onnx")
    outputs = {}
    for model in (str(exported), onnx_file):
        code, table, err = run_cli(["predict", model, *images, "--top-k", "3"], capsys)
        assert code == 0, err
        code, js, err = run_cli(["predict", model, *images, "--format", "json"], capsys)
        assert code == 0, err
        outputs[model] = table, json.loads(js)
    (run_table, run_json), (onnx_table, onnx_json) = outputs.values()
    assert onnx_table == run_table and len(run_table.splitlines()) == len(images) + 1
    assert [p["source"] for p in onnx_json] == images
    for a, b in zip(run_json, onnx_json, strict=True):
        assert [k["class"] for k in a["top_k"]] == [k["class"] for k in b["top_k"]]
        probs = [
            (k["probability"], m["probability"])
            for k, m in zip(a["top_k"], b["top_k"], strict=True)
        ]
        assert all(abs(x - y) <= 2e-6 for x, y in probs)
    # The API agrees with the command line.
    preds = imagewise.predict(onnx_file, images, top_k=1)
    assert [p.label for p in preds] == [p["top_k"][0]["class"] for p in onnx_json]


def test_raw_input_graph_takes_uint8_nhwc_and_agrees(
    exported: Path, folder_data: Path, tmp_path: Path
) -> None:
    run = copy_run(exported, tmp_path / "run")
    result = imagewise.export(run, raw_input=True, out=tmp_path / "raw.onnx")
    assert result.path == tmp_path / "raw.onnx" and result.passed
    assert result.parity["raw_input"] is True and result.parity["top1_agreement"] == 1.0
    graph = onnx.load(str(result.path))
    (inp,) = graph.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]  # NHWC
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["input_layout"] == "NHWC uint8"

    raw = imagewise.load(result.path)
    fp32 = imagewise.load(exported / "export" / "model.onnx")
    assert isinstance(raw, OnnxClassifier) and raw.raw_input and not fp32.raw_input
    files = val_images(folder_data)
    raw_preds, fp32_preds = raw.predict(files, top_k=3), fp32.predict(files, top_k=3)
    assert [p.classes for p in raw_preds] == [p.classes for p in fp32_preds]
    for a, b in zip(raw_preds, fp32_preds, strict=True):
        assert np.allclose(a.probabilities, b.probabilities, atol=1e-5)
    # probabilities() takes the usual normalized batch on raw models too (turned back to pixels).
    batch = fp32.preprocess(files)
    assert torch.allclose(raw.probabilities(batch), fp32.probabilities(batch), atol=1e-5)
    # The graph fed directly: uint8 pixels in NHWC order.
    pixels = torch.stack([raw._read(f) for f in files]).permute(0, 2, 3, 1).numpy()
    _, probs = raw.session.run(None, {"input": pixels})
    assert (probs.argmax(1) == fp32.probabilities(batch).argmax(1).numpy()).all()
    assert parity_of(run, result.path.name)["file"] == str(result.path)


@pytest.fixture(scope="module")
def int8_export(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """A copy of the exported run with RUN/export/model.int8.onnx written by the library."""
    return imagewise.export(copy_run(exported, tmp_path_factory.mktemp("int8") / "run"), int8=True)


def test_int8_export_passes_its_gate(exported: Path, int8_export: ExportResult) -> None:
    result, run = int8_export, int8_export.path.parent.parent
    assert result.path == run / "export" / "model.int8.onnx" and result.path.is_file()
    parity = parity_of(run, "model.int8.onnx")
    assert parity == result.parity and parity["int8"] is True and parity["passed"] is True
    assert parity["gates"] == {"max_accuracy_drop": 0.01, "max_int16_pair_sum": 32767}
    assert parity["accuracy_drop"] <= 0.01 and parity["int16_pair_sum_max"] <= 32640
    assert parity["quantization"] == PORTABLE.describe()
    assert parity["top1_agreement"] >= 0.8 and parity["max_abs_probability_difference"] < 0.2
    graph = onnx.load(str(result.path))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Softmax"} <= ops
    weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in weights) > 100_000  # the conv weights are int8
    fp32_size = (exported / "export" / "model.onnx").stat().st_size
    assert result.path.stat().st_size < 0.4 * fp32_size
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["classes"]) == list(CLASSES)
    assert props["quantization"].startswith("int8 static QDQ (ONNX Runtime), uint8 activations")
    assert "7-bit per-channel (reduce_range); safe on every CPU" in props["quantization"]
    settings = json.loads(props["quantization_settings"])
    assert settings["activation_type"] == "uint8" and settings["weight_type"] == "int8"
    assert settings["reduce_range"] is True and settings["per_channel"] is True
    assert (settings["calibration"], settings["percentile"]) == ("percentile", 99.999)
    assert settings["weight_range"] == [-64, 64] and settings["pair_sum_bound"] == 32640
    assert settings["safe_on"].startswith("every CPU: x86-64 with or without VNNI")
    clf = imagewise.load(result.path)
    assert clf.classes == list(CLASSES) and clf.file_metadata["quantization"].startswith("int8")
    assert json.loads(clf.file_metadata["quantization_settings"]) == settings
    assert "quantization_settings" not in {
        p.key for p in onnx.load(str(exported / "export" / "model.onnx")).metadata_props
    }


def int8_weights(graph: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every int8 weight feeding a Conv / Gemm / MatMul through a DequantizeLinear, by node."""
    inits = {t.name: t for t in graph.initializer}
    producer = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    weights = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and node.input[1] in producer:
            stored = inits[producer[node.input[1]].input[0]]
            assert stored.data_type == onnx.TensorProto.INT8, node.name
            weights[node.name] = onnx.numpy_helper.to_array(stored)
    return weights


def test_int8_weights_fit_int16_pair_sums_on_every_cpu(int8_export: ExportResult) -> None:
    """Issue 16: CPUs without VNNI add u8 x s8 products in pairs into a saturating int16
    (VPMADDUBSW). Read from the file itself: no pair of (activation <= 255) x weight can pass
    32767, so those CPUs compute what this one does, whatever the data."""
    graph = onnx.load(str(int8_export.path)).graph
    weights = int8_weights(graph)
    assert len(weights) >= 5 and any(n.op_type == "Gemm" for n in graph.node if n.name in weights)
    for name, w in weights.items():
        worst = 255 * np.abs(w.astype(np.int64)).max() * 2
        assert worst <= 32767, f"{name}: a pair reaches {worst}"
        assert np.abs(w).max() >= 60, name  # 7 bits used, not fewer: no accuracy thrown away
    assert 2 * 255 * 127 > 32767 and 2 * 255 * 64 <= 32767  # why 8-bit weights could not stay


def test_emulated_vpmaddubsw_saturates_8_bit_weights_only() -> None:
    """The non-VNNI kernel's arithmetic (pairs summed into int16, saturating) emulated in NumPy:
    full 8-bit weights lose the sum on bright pixels, 7-bit weights never do."""
    from imagewise.export.quantize import pair_saturating_dot

    a = np.array([[255, 255, 200, 10]], np.uint8)  # two bright pixels, then a dim pair
    w8 = np.array([[127, 120, -127, 3]], np.int8).T
    exact = a.astype(np.int64) @ w8.astype(np.int64)
    assert exact[0, 0] == 255 * 247 - 200 * 127 + 30
    assert pair_saturating_dot(a, w8)[0, 0] == 32767 - 200 * 127 + 30 != exact[0, 0]
    w7 = np.array([[64, 64, -64, 3]], np.int8).T
    assert pair_saturating_dot(a, w7)[0, 0] == (a.astype(np.int64) @ w7.astype(np.int64))[0, 0]
    rng = np.random.default_rng(0)  # every u8 x 7-bit product pair fits, at random too
    a, w = rng.integers(0, 256, (64, 576), np.uint8), rng.integers(-64, 65, (576, 32), np.int8)
    assert np.array_equal(pair_saturating_dot(a, w), a.astype(np.int64) @ w.astype(np.int64))


def test_failed_check_exits_2_and_keeps_no_model(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    run = copy_run(trained_run, tmp_path / "run")
    forward = ExportModule.forward

    def corrupted(self: ExportModule, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = forward(self, x)
        return -logits, torch.softmax(-logits, dim=1)  # the least likely class wins

    monkeypatch.setattr(ExportModule, "forward", corrupted)
    code, out, err = run_cli(["export", str(run)], capsys)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    export_dir = run / "export"
    assert line.startswith("error: the exported model failed its check on ")
    assert "val images: top-1 agreement with PyTorch is 0.00%, below 99.9%" in line
    assert "; nothing was written in place of model.onnx" in line
    assert sorted(p.name for p in export_dir.iterdir()) == ["parity.json"]  # nothing left behind
    parity = parity_of(run)
    assert parity["passed"] is False and parity["top1_agreement"] == 0.0
    assert parity["failure"].startswith("top-1 agreement with PyTorch is 0.00%")
    assert parity["accuracy_exported"] < parity["accuracy_pytorch"]
    # A later export that passes writes the file and replaces the record.
    monkeypatch.setattr(ExportModule, "forward", forward)
    assert run_cli(["export", str(run), "-q"], capsys)[0] == 0
    assert (export_dir / "model.onnx").is_file()
    assert parity_of(run)["passed"] is True


def export_int8_with(
    quantizer: Callable[..., None], run: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str, str]:  # fmt: skip
    """``imagewise export RUN --int8`` with ``quantizer`` in place of ``quantize_int8``."""
    from imagewise.export import quantize

    monkeypatch.setattr(quantize, "quantize_int8", quantizer)
    return run_cli(["export", str(run), "--int8"], capsys)


def test_int8_gate_refuses_a_quantizer_that_loses_accuracy(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A quantizer that spoils the classifier's weights: refused by the 1-point gate, with the
    figures and settings in parity.json, and the user's earlier INT8 file left as it was."""
    from imagewise.export.quantize import quantize_int8

    run = copy_run(trained_run, tmp_path / "run")
    earlier = run / "export" / "model.int8.onnx"
    earlier.parent.mkdir()
    earlier.write_bytes(b"an INT8 file from an earlier export")

    def spoiled(fp32: Path, out: Path, *args: object, **kwargs: object) -> None:
        quantize_int8(fp32, out, *args, **kwargs)
        graph = onnx.load(str(out))
        for init in graph.graph.initializer:
            if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 2:  # the classifier
                w = onnx.numpy_helper.to_array(init)
                init.CopyFrom(onnx.numpy_helper.from_array(-w, init.name))  # likeliest -> least
        onnx.save(graph, str(out))

    code, out, err = export_int8_with(spoiled, run, monkeypatch, capsys)
    assert code == 2 and out == ""  # nothing from the quantizer's own prints
    (line,) = err.strip().splitlines()
    assert line.startswith("error: the exported model failed its check on ")
    assert "points below PyTorch's" in line and "(allowed: 1)" in line
    assert "nothing was written in place of model.int8.onnx" in line
    assert earlier.read_bytes() == b"an INT8 file from an earlier export"
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["model.int8.onnx", "parity.json"]
    parity = parity_of(run, "model.int8.onnx")
    assert parity["passed"] is False and parity["accuracy_drop"] > 0.01
    assert parity["gates"] == {"max_accuracy_drop": 0.01, "max_int16_pair_sum": 32767}
    assert parity["quantization"]["reduce_range"] is True


def test_int8_gate_refuses_8_bit_weights_that_saturate_without_vnni(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The settings before issue 16 pass on this CPU's accuracy and are refused all the same:
    the file would compute differently on CPUs without VNNI."""
    from imagewise.export.quantize import VNNI_ONLY, quantize_int8

    def eight_bit(*args: object, **kwargs: object) -> None:
        quantize_int8(*args[:4], settings=VNNI_ONLY)  # type: ignore[arg-type]

    run = copy_run(trained_run, tmp_path / "run")
    code, out, err = export_int8_with(eight_bit, run, monkeypatch, capsys)
    assert code == 2 and out == ""
    assert "saturate int16 on CPUs without VNNI (allowed: 64)" in err
    assert not (run / "export" / "model.int8.onnx").exists()
    parity = parity_of(run, "model.int8.onnx")
    assert parity["passed"] is False and parity["int16_pair_sum_max"] > 32767


def test_unusable_out_is_refused_before_any_work(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    run = copy_run(trained_run, tmp_path / "run")
    folder = tmp_path / "models.onnx"  # a folder, even with a model's suffix
    (folder / "keep").mkdir(parents=True)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the path was checked")

    from imagewise.predict import predictor

    monkeypatch.setattr(predictor, "load_run", no_work)
    refusals = {
        str(folder): f"error: cannot write the model to '{folder}': it is a folder; give --out "
        f"a file name, e.g. --out {folder / 'model.int8.onnx'}",
        str(a_file / "model.onnx"): f"error: cannot write '{a_file / 'model.onnx'}': "
        f"'{a_file}' is a file, not a folder",
        str(a_file / "sub" / "m.onnx"): f"error: cannot write '{a_file / 'sub' / 'm.onnx'}': "
        f"'{a_file}' is a file, not a folder",
    }
    for out, message in refusals.items():
        code, stdout, err = run_cli(["export", str(run), "--int8", "--out", out], capsys)
        assert (code, stdout, err.strip()) == (2, "", message)
    with pytest.raises(UserError, match="is a file, not a folder"):
        imagewise.export(run, format="torchscript", out=a_file / "model.pt")
    assert a_file.read_text() == "mine" and [p.name for p in folder.iterdir()] == ["keep"]
    assert not (run / "export").exists()


def test_opencv_dnn_reads_the_graph_and_agrees(exported: Path, folder_data: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    model_file = str(exported / "export" / "model.onnx")
    net = cv2.dnn.readNetFromONNX(model_file)
    clf = imagewise.load(model_file)
    files = val_images(folder_data) + some_images(folder_data)
    batch = clf.preprocess(files)
    net.setInput(batch.numpy())
    logits, probs = net.forward(["logits", "probabilities"])
    ort_logits, ort_probs = clf.logits(batch), clf.probabilities(batch)
    assert logits.shape == (len(files), 3)
    assert (logits.argmax(1) == ort_logits.argmax(1).numpy()).all()
    assert np.allclose(logits, ort_logits.numpy(), atol=1e-4)
    assert np.allclose(probs, ort_probs.numpy(), atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip(
    exported: Path, folder_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(exported, tmp_path / "run")
    code, out, err = run_cli(["export", str(run), "--format", "torchscript"], capsys)
    assert code == 0, err
    model_file = run / "export" / "model.pt"
    assert out.startswith(f"wrote {model_file} (") and "; torchscript)" in out
    parity = parity_of(run, "model.pt")
    assert parity["format"] == "torchscript" and parity["passed"] is True
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_probability_difference"] < 1e-5
    extra = {"imagewise.json": ""}
    torch.jit.load(str(model_file), _extra_files=extra)
    props = json.loads(extra["imagewise.json"])
    assert json.loads(props["classes"]) == list(CLASSES) and props["model"] == "resnet9_tiny"

    clf = imagewise.load(model_file)
    run_clf = imagewise.load(run)
    assert isinstance(clf, Classifier) and clf.classes == run_clf.classes
    assert clf.preprocessing == run_clf.preprocessing and clf.temperature == run_clf.temperature
    batch = torch.randn(4, 3, 32, 32)
    assert torch.allclose(clf.logits(batch), run_clf.logits(batch), atol=1e-5)
    images = some_images(folder_data)
    pt_out = run_cli(["predict", str(model_file), *images], capsys)[1]
    assert pt_out == run_cli(["predict", str(run), *images], capsys)[1]


def test_tta_run_answers_with_the_mirror_mean_everywhere(trained_run: Path, tmp_path: Path) -> None:
    """A run with tta on: predict, the ONNX graph and TorchScript all average image and mirror."""
    run = copy_run(trained_run, tmp_path / "run")
    meta = json.loads((run / "meta.json").read_text())
    meta = {**meta, "format": "imagewise-run/1"}  # as the release before views wrote it
    del meta["model"]["capabilities"]
    (run / "meta.json").write_text(json.dumps({**meta, "tta": True}))
    clf, plain = imagewise.load(run), imagewise.load(trained_run)
    assert isinstance(clf, Classifier) and plain.tta == {}
    assert clf.tta == {"mirror": True, "shift": 0}  # `true`, as runs wrote it before views
    batch = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        mean = (plain.model(batch) + plain.model(batch.flip(3))) / 2
    expected = torch.softmax(mean / clf.temperature, dim=1)
    assert torch.allclose(clf.probabilities(batch), expected, atol=1e-6)
    assert torch.allclose(clf.logits(batch), mean, atol=1e-5)
    assert not torch.allclose(clf.logits(batch), plain.logits(batch), atol=1e-3)

    onnx_file = imagewise.export(run).path
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert props["test_time_augmentation"] == "mirror mean (in the graph)"
    exported = imagewise.load(onnx_file)
    assert torch.allclose(exported.probabilities(batch), expected, atol=1e-5)
    ts = imagewise.load(imagewise.export(run, format="torchscript").path)
    assert torch.allclose(ts.probabilities(batch), expected, atol=1e-5)

    # a run written before meta.json carried the flag: its config decides
    (run / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "tta"}))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["tta"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert imagewise.load(run).tta == {"mirror": True, "shift": 0}


def test_shift_and_mirror_views_agree_in_pytorch_and_onnx(
    trained_run: Path, tmp_path: Path
) -> None:
    """The 10-view mean (mirror x 1 px shifts) is the same arithmetic in predict and ONNX."""
    run = copy_run(trained_run, tmp_path / "run")
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "tta": {"mirror": True, "shift": 1}}))
    clf, plain = imagewise.load(run), imagewise.load(trained_run)
    batch = torch.randn(4, 3, 32, 32)
    pre = clf.preprocessing
    black = torch.tensor([-m / s for m, s in zip(pre.mean, pre.std, strict=True)]).view(1, 3, 1, 1)

    def pad(image: torch.Tensor, sides: tuple[int, ...]) -> torch.Tensor:
        return torch.nn.functional.pad(image - black, sides) + black  # the gap is black

    views = []
    for image in (batch, batch.flip(3)):
        views += [
            image,
            pad(image, (1, 0, 0, 0))[..., :, :32],
            pad(image, (0, 1, 0, 0))[..., :, 1:],
            pad(image, (0, 0, 1, 0))[..., :32, :],
            pad(image, (0, 0, 0, 1))[..., 1:, :],
        ]
    with torch.no_grad():
        mean = torch.stack([plain.model(v) for v in views]).mean(0)
    assert torch.allclose(clf.logits(batch), mean, atol=1e-5)
    onnx_file = imagewise.export(run).path
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert props["test_time_augmentation"] == "mean of 10 views: mirror, 1 px shifts (in the graph)"
    expected = torch.softmax(mean / clf.temperature, dim=1)
    assert torch.allclose(imagewise.load(onnx_file).probabilities(batch), expected, atol=1e-5)


@pytest.fixture(scope="module")
def hog_run(folder_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hog") / "run"
    args = ["train", str(folder_data), "--model", "hog_svm", "--out", str(out), "-q"]
    assert imagewise.cli.main(args) == 0
    return out


def test_hog_svm_is_refused(hog_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("onnx", "torchscript"):
        code, out, err = run_cli(["export", str(hog_run), "--format", fmt], capsys)
        assert code == 2 and out == ""
        assert err.strip() == f"error: '{hog_run}' {HOG_REFUSAL}"
    assert not (hog_run / "export").exists()


def test_requests_that_cannot_be_met(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    errors = {
        ("--format", "torchscript", "--int8"): "error: --int8 is not offered for --format "
        "torchscript (it offers float32)",
        ("--format", "torchscript", "--raw-input"): "error: --raw-input is for ONNX exports; "
        "leave it out with --format torchscript",
        ("--precision", "float16"): "error: --precision float16 is not offered for --format "
        "onnx (it offers float32, int8)",
        ("--int8", "--precision", "float16"): "error: --int8 and --precision float16 disagree; "
        "give one of them",
        ("--out", str(tmp_path / "model.bin")): "error: --out must end in '.onnx' for --format "
        f"onnx, not '{tmp_path / 'model.bin'}'",
    }
    for flags, message in errors.items():
        code, _, err = run_cli(["export", str(exported), *flags], capsys)
        assert code == 2 and err.strip() == message
    code, _, err = run_cli(["export", str(tmp_path / "nothing")], capsys)
    missing = f"error: run folder '{tmp_path / 'nothing'}' does not exist; check the path"
    assert code == 2 and err.strip() == missing

    # Exported files go to predict, not to the stages that need the run folder.
    onnx_file = exported / "export" / "model.onnx"
    code, _, err = run_cli(["evaluate", str(onnx_file)], capsys)
    assert code == 2 and err.strip() == (
        f"error: '{onnx_file}' is an exported model; this needs the run folder it was exported from"
    )
    with pytest.raises(UserError, match=r"model file '.*missing\.onnx' does not exist"):
        imagewise.load(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="ONNX models run on the CPU here"):
        imagewise.load(onnx_file, device="cuda")
    # An ONNX file without imagewise's metadata is named as such.
    graph = onnx.load(str(onnx_file))
    del graph.metadata_props[:]
    onnx.save(graph, str(tmp_path / "plain.onnx"))
    with pytest.raises(UserError, match=r"has no imagewise metadata \(classes, img_size"):
        imagewise.load(tmp_path / "plain.onnx")


def test_export_follows_the_runs_data_config(exported: Path, tmp_path: Path) -> None:
    """With no validation split the check falls back to the test split, as the config says."""
    run = copy_run(exported, tmp_path / "run")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["val_fraction"] = 0.0
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = imagewise.export(run)
    assert result.parity["split"] == "test" and result.parity["images"] >= 5
    assert result.passed


def test_calibration_batches_are_made_even() -> None:
    from imagewise.export.quantize import even_batches

    batches = [np.full((32, 1, 2, 2), i, np.float32) for i in range(9)] + [np.zeros((12, 1, 2, 2))]
    even = even_batches(batches)  # 300 images: batches of 30, every image once, in order
    assert {b.shape[0] for b in even} == {30} and len(even) == 10
    assert np.array_equal(np.concatenate(even), np.concatenate(batches))
    assert [b.shape[0] for b in even_batches([np.zeros((37, 3))])] == [1] * 37  # prime count


def test_several_formats_at_once_each_with_its_record(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--format onnx torchscript``: both files written and checked, one parity record each,
    and an earlier flat parity.json (before records per file) kept as its file's record."""
    run = copy_run(exported, tmp_path / "run")
    (run / "export").mkdir()
    (run / "export" / "parity.json").write_text(json.dumps({"file": "x/model.int8.onnx", "a": 1}))
    code, out, err = run_cli(["export", str(run), "--format", "onnx", "torchscript"], capsys)
    assert code == 0, err
    assert out.count("wrote ") == 2 and out.count("by ONNX Runtime") == 1
    assert "by PyTorch (TorchScript)" in out
    record = json.loads((run / "export" / "parity.json").read_text())
    assert sorted(record["files"]) == ["model.int8.onnx", "model.onnx", "model.pt"]
    assert record["files"]["model.int8.onnx"] == {"file": "x/model.int8.onnx", "a": 1}
    assert record["latest"] == "model.pt"
    assert parity_of(run, "model.pt")["runtime"] == "PyTorch (TorchScript)"
    assert parity_of(run)["runtime"] == "ONNX Runtime"
    code, _, err = run_cli(
        ["export", str(run), "--format", "onnx", "torchscript", "--out", str(tmp_path / "a.onnx")],
        capsys,
    )
    assert code == 2 and err.strip() == (
        f"error: with several formats --out is a folder, not '{tmp_path / 'a.onnx'}'"
    )


def test_a_missing_converter_or_runtime_is_named_in_one_line(
    exported: Path, folder_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Each target's extra installs alone; without it, one line names it, before any work,
    for export (the converter) and for predict (the runtime)."""
    import importlib.util

    find_spec = importlib.util.find_spec
    absent = {"openvino", "executorch", "coremltools", "ai_edge_litert"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in absent else find_spec(name, *a),
    )
    run = copy_run(exported, tmp_path / "run")
    for fmt, extra in (("openvino", "openvino"), ("executorch", "executorch"),
                       ("coreml", "coreml")):  # fmt: skip
        code, out, err = run_cli(["export", str(run), "--format", fmt], capsys)
        assert code == 2 and out == ""
        package = {"coreml": "coremltools"}.get(fmt, fmt)
        assert err.strip() == (
            f"error: --format {fmt} needs {package}, which is not installed: "
            f'pip install "imagewise[{extra}]"'
        )
    assert not (run / "export").exists()  # refused before any work
    for suffix, name, extra in ((".xml", "OpenVINO", "openvino"), (".pte", "ExecuTorch",
                                "executorch"), (".tflite", "LiteRT", "litert")):  # fmt: skip
        model = tmp_path / f"model{suffix}"
        model.write_bytes(b"not looked at: the runtime is missing")
        code, out, err = run_cli(["predict", str(model), some_images(folder_data)[0]], capsys)
        assert code == 2 and err.strip() == (
            f"error: {name} is not installed; it runs {suffix} files: "
            f'pip install "imagewise[{extra}]"'
        )
