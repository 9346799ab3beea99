"""Export to ExecuTorch (``.pte``, XNNPACK): float32 and INT8 files gated against PyTorch, the
metadata inside the program, the dynamic batch, prediction from the file, a refused export
leaving nothing behind, and what predicting from Python imports."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import imagewise
import imagewise.cli
from imagewise.edge.executorch import METADATA_METHOD, ExecuTorchModel, method_names, open_program
from imagewise.edge.runtimes import load_model
from imagewise.errors import UserError
from imagewise.export.executorch import INT8_SETTINGS, MAX_BATCH
from imagewise.export.graph import ExportModule
from test_export import copy_run, parity_of, some_images

from conftest import CLASSES, run_cli

pytest.importorskip("executorch")


@pytest.fixture(scope="module")
def pte_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained run with model.pte (by the CLI) and model.int8.pte (by the
    library) in RUN/export."""
    run = copy_run(trained_run, tmp_path_factory.mktemp("executorch") / "run")
    assert imagewise.cli.main(["export", str(run), "--format", "executorch", "-q"]) == 0
    assert imagewise.export(run, "executorch", int8=True).passed
    return run


def test_float32_pte_passes_its_gate(pte_run: Path) -> None:
    path = pte_run / "export" / "model.pte"
    parity = parity_of(pte_run, "model.pte")
    assert parity["file"] == str(path) and parity["bytes"] == path.stat().st_size
    assert (parity["format"], parity["precision"], parity["runtime"]) == (
        "executorch", "float32", "ExecuTorch"
    )  # fmt: skip
    assert parity["split"] == "val" and parity["images"] >= 5
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_probability_difference"] < 1e-5
    assert parity["accuracy_exported"] == parity["accuracy_pytorch"] >= 0.8
    assert parity["gates"] == {"min_top1_agreement": 0.999} and parity["passed"] is True
    assert path.read_bytes()[4:8] == b"ET12"  # the ExecuTorch program's flatbuffer identifier
    assert sorted(p.name for p in (pte_run / "export").iterdir()) == [
        "model.int8.pte",
        "model.pte",
        "parity.json",
    ]  # fmt: skip  (no sidecar: the metadata is inside)


def test_int8_pte_passes_its_gate(pte_run: Path) -> None:
    path = pte_run / "export" / "model.int8.pte"
    parity = parity_of(pte_run, "model.int8.pte")
    assert (parity["precision"], parity["int8"], parity["passed"]) == ("int8", True, True)
    assert parity["gates"] == {"max_accuracy_drop": 0.01}
    assert parity["accuracy_drop"] <= 0.01 and parity["top1_agreement"] >= 0.8
    assert 0 < parity["max_abs_probability_difference"] < 0.2  # really quantized, not float
    assert parity["quantization"] == INT8_SETTINGS
    assert path.stat().st_size < 0.4 * (pte_run / "export" / "model.pte").stat().st_size


def test_metadata_round_trip(pte_run: Path, trained_run: Path) -> None:
    meta = json.loads((trained_run / "meta.json").read_text())
    run = imagewise.load(trained_run)
    model = ExecuTorchModel(pte_run / "export" / "model.pte")
    props = model.file_metadata
    assert json.loads(props["classes"]) == meta["classes"] == list(CLASSES)
    pre = meta["preprocessing"]
    assert int(props["img_size"]) == pre["img_size"] and int(props["channels"]) == 3
    assert json.loads(props["mean"]) == pre["mean"] and json.loads(props["std"]) == pre["std"]
    assert float(props["temperature"]) == meta["temperature"]
    assert props["imagewise_version"] == imagewise.__version__
    assert props["input_layout"] == "NCHW float32 normalized"
    assert props["model"] == "resnet9_tiny" and props["quantization"] == "none"
    assert model.max_batch == MAX_BATCH and model.spec.conformal and model.spec.drift
    assert replace(model.spec, conformal=None, drift=None) == run.spec  # + the carried fits
    program = open_program(pte_run / "export" / "model.pte")
    assert sorted(method_names(program)) == ["forward", METADATA_METHOD]
    (stored,) = program.load_method(METADATA_METHOD)([])  # the JSON's bytes, a uint8 tensor
    assert stored.dtype == torch.uint8 and json.loads(stored.numpy().tobytes()) == props

    int8 = ExecuTorchModel(pte_run / "export" / "model.int8.pte").file_metadata
    assert {k: v for k, v in int8.items() if not k.startswith("quantization")} == {
        k: v for k, v in props.items() if k != "quantization"
    }
    assert int8["quantization"].startswith("int8 static PT2E (ExecuTorch XNNPACKQuantizer)")
    assert json.loads(int8["quantization_settings"]) == INT8_SETTINGS


def test_dynamic_batch_equals_pytorch(pte_run: Path, trained_run: Path) -> None:
    """1, 64 (the planned bound) and 70 images (two runs) answer as PyTorch does."""
    model = load_model(pte_run / "export" / "model.pte")
    run = imagewise.load(trained_run)
    images = np.random.default_rng(0).integers(0, 256, (70, 3, 32, 32), np.uint8)
    for n in (1, 64, 70):
        logits, probs = model.scores(images[:n])
        batch = torch.from_numpy(model.spec.input.normalize(images[:n]))
        assert logits.shape == probs.shape == (n, 3) and logits.dtype == np.float32
        assert np.allclose(logits, run.logits(batch).numpy(), atol=1e-4)
        assert np.allclose(probs, run.probabilities(batch).numpy(), atol=1e-5)


def test_predict_on_pte_equals_predict_on_the_run(
    pte_run: Path, folder_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = some_images(folder_data)
    answers = []
    for model in (str(pte_run), str(pte_run / "export" / "model.pte")):
        code, out, err = run_cli(["predict", model, *images, "--format", "json"], capsys)
        assert code == 0, err
        answers.append(json.loads(out))
    on_run, on_pte = answers
    assert [p["source"] for p in on_pte] == images
    for a, b in zip(on_run, on_pte, strict=True):
        assert [k["class"] for k in a["top_k"]] == [k["class"] for k in b["top_k"]]
        for x, y in zip(a["top_k"], b["top_k"], strict=True):
            assert abs(x["probability"] - y["probability"]) <= 1e-5


def test_failed_check_leaves_no_pte(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    run = copy_run(trained_run, tmp_path / "run")
    forward = ExportModule.forward

    def corrupted(self: ExportModule, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = forward(self, x)
        return -logits, torch.softmax(-logits, dim=1)  # the least likely class wins

    monkeypatch.setattr(ExportModule, "forward", corrupted)
    code, out, err = run_cli(["export", str(run), "--format", "executorch"], capsys)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: the exported model failed its check on ")
    assert "val images: top-1 agreement with PyTorch is 0.00%, below 99.9%" in line
    assert line.endswith(f"nothing was written in place of model.pte (figures: {run}/export/"
                         "parity.json)")  # fmt: skip
    assert sorted(p.name for p in (run / "export").iterdir()) == ["parity.json"]
    parity = parity_of(run, "model.pte")
    assert parity["passed"] is False and parity["top1_agreement"] == 0.0
    assert parity["runtime"] == "ExecuTorch"


def test_files_that_are_not_imagewise_programs(tmp_path: Path) -> None:
    from executorch.exir import to_edge

    garbage = tmp_path / "garbage.pte"
    garbage.write_bytes(b"not a program")
    with pytest.raises(UserError) as err:
        load_model(garbage)
    assert str(err.value) == (
        f"cannot load ExecuTorch program '{garbage}' (Failed to load program, error: 0x:12); "
        "give a .pte written by 'imagewise export RUN --format executorch'"
    )
    linear = torch.export.export(torch.nn.Linear(4, 3).eval(), (torch.randn(2, 4),))
    bare = tmp_path / "bare.pte"  # a real program, written without imagewise's metadata
    bare.write_bytes(to_edge(linear).to_executorch().buffer)
    with pytest.raises(UserError) as err:
        load_model(bare)
    assert str(err.value) == (
        f"'{bare}' has no imagewise metadata (no '{METADATA_METHOD}' method); give a model "
        "written by 'imagewise export RUN --format executorch'"
    )
    broken = tmp_path / "broken.pte"  # the method is there; its bytes are not JSON
    not_json = {METADATA_METHOD: torch.tensor(list(b"classes"), dtype=torch.uint8)}
    broken.write_bytes(to_edge(linear, constant_methods=not_json).to_executorch().buffer)
    with pytest.raises(UserError) as err:
        load_model(broken)
    assert str(err.value) == (
        f"'{broken}' has broken metadata: {METADATA_METHOD} is not a JSON object; re-export it "
        "with 'imagewise export RUN'"
    )


# Which module imports torch first, and what else a prediction from a .pte loads.
IMPORTS = """
import json, sys
first = []

class FirstImporter:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not first:
            frame = sys._getframe(1)
            while frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
                frame = frame.f_back
            first.append(frame.f_globals["__name__"])
        return None

sys.meta_path.insert(0, FirstImporter())
import imagewise.edge.executorch
on_import = sorted(m for m in ("torch", "executorch") if m in sys.modules)
import imagewise
import imagewise.cli
preds = imagewise.predict(sys.argv[1], sys.argv[2:], top_k=2)
heavy = ("torch", "torchvision", "timm", "matplotlib", "onnx", "sklearn", "torchao", "sympy",
         "executorch.exir", "coremltools")
print(json.dumps({"on_import": on_import, "first": first, "labels": [p.label for p in preds],
                  "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_what_predicting_from_python_imports(pte_run: Path, folder_data: Path) -> None:
    """ExecuTorch's Python extension takes torch tensors only, so torch is imported, by
    imagewise.edge.executorch when a file is opened (not on import); ExecuTorch's compiler
    (executorch.exir, torchao, sympy), timm and the rest are not."""
    images = some_images(folder_data)
    pte = pte_run / "export" / "model.int8.pte"
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS, str(pte), *images], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["on_import"] == []
    assert seen["first"] == ["imagewise.edge.executorch"]
    assert seen["loaded"] == ["torch"]
    assert seen["labels"] == [p.label for p in load_model(pte).predict(images)]
