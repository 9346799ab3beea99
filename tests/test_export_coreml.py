"""Export to Core ML (``model.mlpackage``): float32 and float16 ML Programs converted and their
spec checked, the metadata inside, and parity recorded as not run (Core ML runs on Apple
systems only), never claimed."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

import imagewise
import imagewise.cli
from imagewise.export.coreml import MAX_BATCH, check_package
from test_export import copy_run, parity_of

from conftest import CLASSES, run_cli

ct = pytest.importorskip("coremltools")

CHECKED = (
    "spec checked: ML Program (spec version 6, {} compute), input 'input' float32 (1-64, 3, 32, "
    "32), outputs logits, probabilities, 17 metadata keys equal to the export's"
)


@pytest.fixture(scope="module")
def coreml_run(
    trained_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    """A copy of the trained run with model.mlpackage (by the CLI, whose output is returned)
    and model.fp16.mlpackage (by the library) in RUN/export."""
    run = copy_run(trained_run, tmp_path_factory.mktemp("coreml") / "run")
    out = io.StringIO()  # capsys is per test; the fixture is per module
    with contextlib.redirect_stdout(out):
        assert imagewise.cli.main(["export", str(run), "--format", "coreml"]) == 0
    result = imagewise.export(run, "coreml", precision="float16")
    assert result.path == run / "export" / "model.fp16.mlpackage" and result.passed
    return run, out.getvalue().splitlines()


def spec_of(package: Path) -> object:
    return ct.utils.load_spec(str(package))


def test_package_and_parity_say_not_run(coreml_run: tuple[Path, list[str]]) -> None:
    run, _ = coreml_run
    package = run / "export" / "model.mlpackage"
    assert (package / "Manifest.json").is_file()
    assert (package / "Data" / "com.apple.CoreML" / "model.mlmodel").is_file()
    parity = parity_of(run, "model.mlpackage")
    size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
    assert parity["file"] == str(package) and parity["bytes"] == size
    assert (parity["format"], parity["precision"]) == ("coreml", "float32")
    assert parity["runtime"] == "not run on this OS" and parity["images"] == 0
    assert parity["checked"] == CHECKED.format("float32")
    claims = {"top1_agreement", "max_abs_probability_difference", "accuracy_exported",
              "accuracy_pytorch", "accuracy_drop", "gates"}  # fmt: skip
    assert claims.isdisjoint(parity)
    assert sorted(p.name for p in (run / "export").iterdir()) == [
        "model.fp16.mlpackage",
        "model.mlpackage",
        "parity.json",
    ]  # fmt: skip  (check.txt stayed in the temporary folder)


def test_cli_summary_says_not_run(coreml_run: tuple[Path, list[str]]) -> None:
    run, lines = coreml_run
    package = run / "export" / "model.mlpackage"
    mb = parity_of(run, "model.mlpackage")["bytes"] / 1e6
    assert lines == [
        f"wrote {package} ({mb:.2f} MB; coreml); {CHECKED.format('float32')}",
        "not run against PyTorch: its runtime is not run on this OS; figures: "
        f"{run / 'export' / 'parity.json'}",
    ]  # no "checked on N images", no agreement, and no "next: imagewise predict" for a folder


def test_spec_input_outputs_and_metadata(
    coreml_run: tuple[Path, list[str]], trained_run: Path
) -> None:
    run, _ = coreml_run
    meta = json.loads((trained_run / "meta.json").read_text())
    spec = spec_of(run / "export" / "model.mlpackage")
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion == 6
    (inp,) = spec.description.input
    array = inp.type.multiArrayType
    assert (
        inp.name == "input" and array.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    )
    ranges = [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]
    assert ranges == [(1, MAX_BATCH), (3, 3), (32, 32), (32, 32)]
    assert [o.name for o in spec.description.output] == ["logits", "probabilities"]
    props = {
        k: v for k, v in spec.description.metadata.userDefined.items()
        if not k.startswith("com.github.apple.coremltools.")
    }  # fmt: skip
    assert json.loads(props["classes"]) == meta["classes"] == list(CLASSES)
    pre = meta["preprocessing"]
    assert int(props["img_size"]) == pre["img_size"] and int(props["channels"]) == 3
    assert json.loads(props["mean"]) == pre["mean"] and json.loads(props["std"]) == pre["std"]
    assert float(props["temperature"]) == meta["temperature"]
    assert props["model"] == "resnet9_tiny" and props["quantization"] == "none"
    assert props["input_layout"] == "NCHW float32 normalized"
    assert props["imagewise_version"] == imagewise.__version__
    assert spec.description.metadata.author == f"imagewise {imagewise.__version__}"
    assert spec.description.metadata.shortDescription.startswith(
        "resnet9_tiny classifier of 32 px images into "
    )
    assert f"std {props['std']}" in inp.shortDescription
    # The same map as the float16 package, and as check_package compares.
    fp16 = spec_of(run / "export" / "model.fp16.mlpackage")
    assert {
        k: v for k, v in fp16.description.metadata.userDefined.items()
        if not k.startswith("com.github.apple.coremltools.")
    } == props  # fmt: skip


def test_float16_package(coreml_run: tuple[Path, list[str]]) -> None:
    run, _ = coreml_run
    parity = parity_of(run, "model.fp16.mlpackage")
    assert parity["precision"] == "float16" and parity["runtime"] == "not run on this OS"
    assert parity["checked"] == CHECKED.format("float16")
    assert "top1_agreement" not in parity and "accuracy_drop" not in parity
    float32 = parity_of(run, "model.mlpackage")["bytes"]
    assert 0.4 < parity["bytes"] / float32 < 0.6  # weights stored in half precision


def test_check_package_refuses_a_package_that_differs(coreml_run: tuple[Path, list[str]]) -> None:
    run, _ = coreml_run
    package = run / "export" / "model.mlpackage"
    spec = spec_of(package)
    user = spec.description.metadata.userDefined
    metadata = {k: v for k, v in user.items() if not k.startswith("com.github.apple.coremltools.")}
    assert check_package(package, (3, 32, 32), "float32", metadata) == CHECKED.format("float32")
    with pytest.raises(RuntimeError, match=r"is not what was converted: \{'input'"):
        check_package(package, (3, 64, 64), "float32", metadata)
    with pytest.raises(RuntimeError, match=r"is not what was converted: \{'metadata'"):
        check_package(package, (3, 32, 32), "float32", {**metadata, "classes": '["a"]'})


def test_int8_is_refused_before_any_work(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    code, out, err = run_cli(["export", str(run), "--format", "coreml", "--int8"], capsys)
    assert (code, out) == (2, "")
    assert err.strip() == (
        "error: --int8 is not offered for --format coreml (it offers float32, float16)"
    )
    assert not (run / "export").exists()
