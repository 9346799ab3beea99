"""The edge runtime: an exported ONNX file predicts and serves without PyTorch, gives the same
answers as the PyTorch-facing OnnxClassifier, refuses bad files in one line, and installs and
runs from ``pip install "imagewise[runtime]"`` alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

import imagewise
from imagewise.edge import OnnxModel, load_model
from imagewise.errors import UserError

from conftest import CLASSES, run_cli

REPO = Path(__file__).resolve().parent.parent
# None of these may be imported by predicting with or serving an ONNX file.
HEAVY = ("torch", "torchvision", "timm", "matplotlib", "onnx", "sklearn")


@pytest.fixture(scope="module")
def exports(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained run exported three ways: float, raw uint8 input and INT8."""
    run = tmp_path_factory.mktemp("edge") / "run"
    run.mkdir()
    for name in ("config.yaml", "meta.json", "model.safetensors"):
        shutil.copy(trained_run / name, run / name)
    return {
        "float": imagewise.export(run).path,
        "raw": imagewise.export(run, raw_input=True, out=run / "export" / "raw.onnx").path,
        "int8": imagewise.export(run, int8=True).path,
    }


@pytest.fixture(scope="module")
def images(folder_data: Path) -> list[str]:
    """Two files per class: PNG and JPEG, RGB and grayscale."""
    return [str(folder_data / c / name) for c in CLASSES for name in ("000.jpg", "001.png")]


def python(code: str, *args: str, timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter of this environment; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_predict_on_onnx_imports_no_torch(exports: dict[str, Path], images: list[str]) -> None:
    cmd = [sys.executable, "-X", "importtime", "-m", "imagewise", "predict", str(exports["float"])]
    done = subprocess.run([*cmd, *images[:2], "--format", "json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [p["source"] for p in json.loads(done.stdout)] == images[:2]
    # -X importtime names every module the process imported, one per line: "... | name".
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "onnxruntime" in imported and "imagewise" in imported
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


def test_library_predict_on_onnx_imports_no_torch(
    exports: dict[str, Path], images: list[str]
) -> None:
    code = (
        "import json, sys, imagewise\n"
        "preds = imagewise.predict(sys.argv[1], sys.argv[2:], top_k=2)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'labels': [p.label for p in preds], 'heavy': heavy}))\n"
    )
    out = json.loads(python(code, str(exports["int8"]), *images))
    assert out["heavy"] == []
    assert out["labels"] == [p.label for p in imagewise.load(exports["int8"]).predict(images)]


SERVE_ONE_REQUEST = """
import json, logging, os, re, signal, sys, threading, time, urllib.request
import imagewise.cli

model, image, out = sys.argv[1:4]
said = []

class Said(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())

def one_request():
    try:
        deadline = time.monotonic() + 60
        while not any(" at http" in s for s in said) and time.monotonic() < deadline:
            time.sleep(0.05)
        url = re.search(r" at (http://\\S+)/ ", next(s for s in said if " at http" in s))[1]
        body = open(image, "rb").read()
        request = urllib.request.Request(
            url + "/v1/predict?top_k=2", data=body, headers={"Content-Type": "image/png"}
        )
        answer = json.load(urllib.request.urlopen(request, timeout=30))
        info = json.load(urllib.request.urlopen(url + "/v1/info", timeout=30))
        heavy = [m for m in sys.argv[4:] if m in sys.modules]
        with open(out, "w") as f:
            json.dump({"answer": answer, "info": info, "heavy": heavy}, f)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)

logging.getLogger("imagewise").addHandler(Said())
threading.Thread(target=one_request, daemon=True).start()
imagewise.cli.main(["serve", model, "--port", "0", "-q", "--threads", "1"])
"""


def test_serving_an_onnx_file_imports_no_torch(
    exports: dict[str, Path], images: list[str], tmp_path: Path
) -> None:
    out, image = tmp_path / "served.json", images[1]  # a PNG, sent as the body
    subprocess.run(
        [sys.executable, "-c", SERVE_ONE_REQUEST, str(exports["float"]), image, str(out), *HEAVY],
        capture_output=True,
        timeout=120,
    )
    served = json.loads(out.read_text())
    assert served["heavy"] == []
    assert served["info"]["backend"] == "onnx" and served["info"]["gradcam"] is False
    (got,) = served["answer"]["predictions"]
    (expected,) = load_model(exports["float"]).predict([image], top_k=2)
    assert [c["class"] for c in got["top_k"]] == expected.classes
    assert [c["probability"] for c in got["top_k"]] == pytest.approx(
        expected.probabilities, abs=1e-6
    )


@pytest.mark.parametrize("kind", ["float", "raw", "int8"])
def test_edge_answers_equal_the_pytorch_onnx_classifier(
    kind: str, exports: dict[str, Path], images: list[str]
) -> None:
    edge = load_model(exports[kind])
    clf = imagewise.load(exports[kind])  # the torch API: PyTorch preprocessing, tensors in
    assert isinstance(edge, OnnxModel) and edge.raw_input == (kind == "raw")
    assert edge.classes == clf.classes and edge.temperature == clf.temperature
    assert edge.preprocessing.img_size == clf.preprocessing.img_size
    expected = clf.probabilities(clf.preprocess(images)).numpy()
    logits, probs = edge.scores(np.stack([edge.read(f) for f in images]))
    assert probs.dtype == np.float32 and probs.shape == (len(images), len(CLASSES))
    assert np.abs(probs - expected).max() <= 1e-6
    assert np.allclose(logits, clf.logits(clf.preprocess(images)).numpy(), atol=1e-5)
    for p, row in zip(edge.predict(images, top_k=3), expected, strict=True):
        assert p.classes == [CLASSES[i] for i in np.argsort(-row, kind="stable")[:3]]


def test_edge_threads_default_to_the_cpus_this_process_may_use(
    exports: dict[str, Path],
) -> None:
    def threads(model: OnnxModel) -> int:
        return model.file.session.get_session_options().intra_op_num_threads

    assert threads(load_model(exports["float"])) == len(os.sched_getaffinity(0))
    assert threads(load_model(exports["float"], threads=1)) == 1


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_a_handful_of_images_gets_a_lighter_session_with_the_same_answers(
    kind: str, exports: dict[str, Path], images: list[str]
) -> None:
    import onnxruntime as ort

    def level(model: OnnxModel) -> ort.GraphOptimizationLevel:
        return model.file.session.get_session_options().graph_optimization_level

    light, full = load_model(exports[kind], few_images=True), load_model(exports[kind])
    assert level(full) == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Float graphs skip the blocked-layout weight copies; INT8 keeps its fused integer kernels.
    expected = "ORT_ENABLE_BASIC" if kind == "float" else "ORT_ENABLE_ALL"
    assert level(light) == getattr(ort.GraphOptimizationLevel, expected)
    batch = np.stack([full.read(f) for f in images])
    assert np.abs(light.scores(batch)[1] - full.scores(batch)[1]).max() <= 1e-5


def test_bad_files_are_one_line_errors(
    exports: dict[str, Path],
    images: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import onnx
    from onnx import numpy_helper

    missing = tmp_path / "missing.onnx"
    not_onnx = tmp_path / "picture.onnx"
    not_onnx.write_bytes(Path(images[1]).read_bytes())
    bare = onnx.load(str(exports["float"]))
    del bare.metadata_props[:]
    no_meta = tmp_path / "bare.onnx"
    onnx.save(bare, str(no_meta))
    nan = onnx.load(str(exports["float"]))
    for init in nan.graph.initializer:
        values = numpy_helper.to_array(init)
        if np.issubdtype(values.dtype, np.floating):
            init.CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), init.name))
    nan_file = tmp_path / "nan.onnx"
    onnx.save(nan, str(nan_file))
    expected = {
        missing: f"model file '{missing}' does not exist; check the path",
        not_onnx: f"cannot load ONNX model '{not_onnx}': ",
        no_meta: f"'{no_meta}' has no imagewise metadata (classes, img_size, channels, mean, "
        "std, temperature, input_layout missing); give a model written by 'imagewise export RUN'",
        nan_file: f"model '{nan_file}' gives no usable answers: its scores for a plain grey image "
        "are not finite (NaN or inf); retrain it, e.g. with a lower --lr",
    }
    for path, message in expected.items():
        with pytest.raises(UserError) as raised:
            load_model(path)
        assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
        code, out, err = run_cli(["predict", str(path), images[0]], capsys)
        assert (code, out) == (2, "") and err.startswith(f"error: {message}")
        assert err.count("\n") == 1, err
    with pytest.raises(UserError, match="ONNX models run on the CPU here"):
        load_model(exports["float"], device="cuda")


@pytest.mark.install
def test_runtime_extra_alone_predicts_like_the_full_install(
    exports: dict[str, Path], images: list[str], tmp_path: Path
) -> None:
    """A fresh virtual environment (no system site packages) with only
    ``pip install "imagewise[runtime]"``: no PyTorch, the same answers. Slow (a fresh venv and
    a pip install, about a minute with pip's cache), and run in ``make test`` on purpose: it is
    the only test that the small install works."""
    source = tmp_path / "imagewise-src"  # a copy: building in the checkout would leave build/
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    bin_dir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "-q", f"{source}[runtime]"],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    torch = subprocess.run([bin_dir / "python", "-c", "import torch"], capture_output=True, env=env)
    assert torch.returncode != 0 and b"No module named 'torch'" in torch.stderr

    args = ["predict", str(exports["int8"]), *images, "--format", "json"]
    small = subprocess.run([bin_dir / "imagewise", *args], capture_output=True, text=True, env=env)
    assert small.returncode == 0, small.stderr
    full_cli = Path(sys.executable).parent / "imagewise"
    full = subprocess.run([full_cli, *args], capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    small_answers, full_answers = json.loads(small.stdout), json.loads(full.stdout)
    assert [p["source"] for p in small_answers] == [p["source"] for p in full_answers] == images
    for a, b in zip(small_answers, full_answers, strict=True):
        assert [k["class"] for k in a["top_k"]] == [k["class"] for k in b["top_k"]]
        for x, y in zip(a["top_k"], b["top_k"], strict=True):
            assert abs(x["probability"] - y["probability"]) <= 1e-5

    # A verb that needs PyTorch says which install it needs, in one line.
    train = subprocess.run(
        [bin_dir / "imagewise", "train", "digits", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert train.returncode == 2 and train.stdout == ""
    line = "error: 'imagewise train' needs the full install: pip install \"imagewise[all]\"\n"
    assert train.stderr == line


def _with_metadata(source: Path, out: Path, **changes: str) -> Path:
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    onnx.save(model, str(out))
    return out


# Each damaged key -> the start of the one line that refuses it (issue 33: these gave a 9.8 GB
# allocation, IndexError, a server answering 500 to everything, tracebacks, or silence).
BROKEN_METADATA = [
    ({"img_size": "100000"}, "img_size is 100000; it must be a whole number 8-1024"),
    ({"img_size": "-5"}, "img_size is -5; it must be a whole number 8-1024"),
    ({"classes": json.dumps(["a", "b"])}, "classes names 2 classes but the graph answers 3"),
    ({"classes": json.dumps([f"c{i}" for i in range(20)])}, "classes names 20 classes but"),
    ({"classes": "[1, 2"}, "classes is not valid JSON"),
    ({"mean": "[0.5, 0.5]"}, "mean is [0.5, 0.5]; it must hold one number per channel (3)"),
    ({"std": "[0, 0, 0]"}, "std[0] is 0; it must be a finite number above 0"),
    ({"channels": "2"}, "channels is 2; it must be 1 or 3"),
    ({"temperature": "-1"}, "temperature is -1; it must be a finite number above 0"),
    ({"crop_pct": "0.1"}, "crop_pct is 0.1; it must be a number 0.5-1.0"),
    ({"capabilities": '{"fit": 1}'}, "capabilities must hold fit, onnx_export and gradcam"),
    ({"model_format": "imagewise-model/9"}, 'model_format is "imagewise-model/9"; this'),
    ({"input_layout": "NHWC uint8"}, "input_layout says tensor(uint8), the graph takes"),
    ({"img_size": "40"}, "img_size/channels describe a NCHW input of [3, 40, 40] but"),
    ({"conformal": '{"score": "raps"}'}, "conformal "),
]


def test_conformal_counting_other_classes_is_refused(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(exports["float"])).metadata_props}
    fit = json.loads(props["conformal"])
    fit["class_counts"] = fit["class_counts"][:2]
    for table in fit.get("class_thresholds", {}).values():
        del table[2:]
    path = _with_metadata(exports["float"], tmp_path / "d.onnx", conformal=json.dumps(fit))
    with pytest.raises(UserError, match="conformal counts 2 classes; the file has 3"):
        load_model(path)


@pytest.mark.parametrize(("changes", "message"), BROKEN_METADATA)
def test_damaged_metadata_is_refused_in_one_line(
    exports: dict[str, Path],
    images: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, str],
    message: str,
) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(exports["float"])).metadata_props}
    assert props["channels"] == "3" and props["img_size"] == "32"  # what the messages assume
    path = _with_metadata(exports["float"], tmp_path / "damaged.onnx", **changes)
    with pytest.raises(UserError) as raised:
        load_model(path)
    text = str(raised.value)
    assert "\n" not in text and text.startswith(f"'{path}' has broken metadata: "), text
    assert message.split(" [")[0] in text, text
    code, out, err = run_cli(["predict", str(path), images[0]], capsys)
    assert (code, out) == (2, "") and err.count("\n") == 1 and "has broken metadata" in err


def test_an_export_of_the_previous_release_still_loads(
    exports: dict[str, Path], images: list[str], tmp_path: Path
) -> None:
    """Files written before the model spec had no crop, capabilities or format key: they
    read as the whole image resized, and answer as before."""
    import onnx

    model = onnx.load(str(exports["float"]))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["crop_pct"] == "1.0" and props["model_format"] == "imagewise-model/1"
    kept = [
        p for p in model.metadata_props if p.key not in ("crop_pct", "capabilities", "model_format")
    ]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    now, before = load_model(exports["float"]), load_model(old)
    assert before.spec.input == now.spec.input and before.spec.input.crop_pct == 1.0
    assert before.spec.capabilities == now.spec.capabilities
    assert [p.label for p in before.predict(images[:3])] == [
        p.label for p in now.predict(images[:3])
    ]


def test_serve_refuses_to_start_on_damaged_metadata(
    exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _with_metadata(exports["float"], tmp_path / "two.onnx", classes='["a", "b"]')
    code, _, err = run_cli(["serve", str(path), "--port", "0"], capsys)
    assert code == 2 and "classes names 2 classes but the graph answers 3" in err
    assert err.count("\n") == 1
