"""ONNX -> LiteRT / TensorFlow Lite (``--format tflite``): onnx2tf in an environment of its own.

The run's ONNX graph (``ExportJob.onnx_file``) is converted by onnx2tf, the maintained
ONNX -> TFLite converter, which needs TensorFlow. TensorFlow cannot live in imagewise's own
environment: PyTorch's TensorBoard writer imports it when it is installed, and training then
crashes (torch 2.14, TensorFlow 2.21); litert-torch, which converts from PyTorch directly, pins
typing-extensions below what FastAPI needs. So the conversion runs in a separate Python
(``tflite_convert.py``, which imports nothing from imagewise): ``$IMAGEWISE_TFLITE_PYTHON``, else
a virtual environment in ``~/.cache/imagewise/tflite-converter`` (``$IMAGEWISE_HOME``), made on
first use with pinned versions (``converter_python``; ``make install`` makes it too).
imagewise's side needs only ``ai-edge-litert`` (LiteRT, no TensorFlow) and ``onnx``.

What the .tflite holds, whatever the precision:

- one input ``input``: the normalized batch channels last, float32 (N, H, W, C)
  (``LAYOUT_NHWC``: onnx2tf moves TFLite graphs to NHWC), any batch size;
- two outputs, in this order and by these names: ``logits`` and ``probabilities``
  (tensor names and the ``serving_default`` signature alike; onnx2tf names them neither way, so
  they are told apart by the numbers: the probabilities are the softmax of the logits over the
  temperature);
- the export's metadata map as JSON in the flatbuffer's metadata entry ``imagewise``
  (``imagewise.edge.litert.METADATA_NAME``), read back without TensorFlow.

Precisions: float32; float16 (float16 weights, computed in float32 on CPUs); int8 (onnx2tf's
``integer_quant``: int8 weights per channel and int8 activations calibrated on the run's
training images, with float32 input and output, so callers feed and read the same tensors as the
float files).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagewise.edge.litert import INPUT_NAME, METADATA_NAME, OUTPUT_NAMES, SIGNATURE
from imagewise.edge.spec import LAYOUT_NHWC
from imagewise.errors import UserError

if TYPE_CHECKING:
    from imagewise.export.targets import ExportJob

log = logging.getLogger("imagewise")

PYTHON_VARIABLE = "IMAGEWISE_TFLITE_PYTHON"
ONNX2TF_VERSION = "1.28.8"
# The converter environment, pinned: what onnx2tf imports (tf-keras, onnx-graphsurgeon,
# sng4onnx, psutil, ai-edge-litert) and runs (onnxsim and onnxruntime, its graph simplification
# and shape inference; without them it converts fewer models). tf-keras requires the
# "tensorflow" distribution, which runs on CPUs as it is, so tensorflow-cpu would only be
# a second copy of the same files.
CONVERTER_REQUIREMENTS = (
    f"onnx2tf=={ONNX2TF_VERSION}",
    "tensorflow==2.21.0",
    "tf-keras==2.21.0",
    "onnx==1.23.2",
    "onnx-graphsurgeon==0.6.1",
    "sng4onnx==2.0.1",
    "onnxsim==0.8.1",
    "onnxruntime==1.32.0",
    "ai-edge-litert==2.3.0",
    "psutil==7.2.2",
)
CONVERTER_SIZE = "about 2.2 GB"
READY_FILE = "imagewise-converter.json"  # written last: the environment is complete
SCRIPT = Path(__file__).with_name("tflite_convert.py")

QUANTIZATION = {
    "float16": "float16 weights, computed in float32 (onnx2tf float16)",
    "int8": "int8 weights (per channel) and activations, float32 input and output "
    "(TFLite integer_quant, onnx2tf)",
}


def converter_home() -> Path:
    """Where the converter environment is made: ``$IMAGEWISE_HOME`` or ``~/.cache/imagewise``,
    then ``tflite-converter``."""
    root = os.environ.get("IMAGEWISE_HOME") or Path.home() / ".cache" / "imagewise"
    return Path(root) / "tflite-converter"


def converter_python(create: bool = True) -> Path:
    """The Python that runs onnx2tf: ``$IMAGEWISE_TFLITE_PYTHON``, else the environment in
    ``converter_home()``, made there first when it is absent or was made with other versions.

    Args:
        create: make the environment when it is not there (else a ``UserError`` saying how).

    Raises:
        UserError: ``$IMAGEWISE_TFLITE_PYTHON`` names no file, or the environment is absent
            (``create=False``) or could not be made (pip's last line).

    Example:
        >>> converter_python()  # doctest: +SKIP
        PosixPath('/home/me/.cache/imagewise/tflite-converter/bin/python')
    """
    if given := os.environ.get(PYTHON_VARIABLE):
        if not Path(given).is_file():
            raise UserError(f"{PYTHON_VARIABLE} is '{given}', which is not a file; give a Python "
                            "with onnx2tf and TensorFlow installed, or unset it")  # fmt: skip
        return Path(given)
    home = converter_home()
    if _ready(home):
        return _python_of(home)
    if not create:
        raise UserError(
            f"the TFLite converter environment is not in '{home}'; make it with: python -c "
            "'from imagewise.export.tflite import converter_python; converter_python()'"
        )
    with _locked(home.with_name(home.name + ".lock")):
        if not _ready(home):  # another process may have made it while this one waited
            _create(home)
    return _python_of(home)


def _python_of(home: Path) -> Path:
    return home / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _ready(home: Path) -> bool:
    try:
        made = json.loads((home / READY_FILE).read_text())
    except (OSError, ValueError):
        return False
    return made.get("requirements") == list(CONVERTER_REQUIREMENTS)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process at a time makes the environment (another waits, then finds it made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; one export at a time
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create(home: Path) -> None:
    """A virtual environment at ``home`` with ``CONVERTER_REQUIREMENTS``, marked ready last (a
    half-made one, interrupted, is made again from scratch next time)."""
    if home.exists() and any(home.iterdir()) and not (home / "pyvenv.cfg").is_file():
        raise UserError(
            f"'{home}' holds files but no virtual environment; move them away to let "
            "imagewise make the TFLite converter environment there"
        )
    log.warning(
        "making the TFLite converter environment in %s (once, %s: onnx2tf %s and TensorFlow, "
        "which cannot share imagewise's environment); this takes a few minutes",
        home, CONVERTER_SIZE, ONNX2TF_VERSION,
    )  # fmt: skip
    if home.exists():  # half made, or made with other versions
        shutil.rmtree(home)
    logfile = home.with_name(home.name + ".log")
    steps = [
        [sys.executable, "-m", "venv", str(home)],
        [str(_python_of(home)), "-m", "pip", "install", "--disable-pip-version-check",
         *CONVERTER_REQUIREMENTS],
    ]  # fmt: skip
    with logfile.open("w") as out:
        for step in steps:
            done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                raise UserError(
                    f"could not make the TFLite converter environment in '{home}': "
                    f"{_last_line(logfile)} (log: {logfile})"
                )
    made = {"requirements": list(CONVERTER_REQUIREMENTS), "python": sys.version.split()[0]}
    (home / READY_FILE).write_text(json.dumps(made, indent=1))
    log.warning("made the TFLite converter environment in %s", home)


def _last_line(logfile: Path) -> str:
    """The last line of a log that says something (not a blank or pip's warnings)."""
    lines = [ln.strip() for ln in logfile.read_text(errors="replace").splitlines()]
    said = [ln for ln in lines if ln and not ln.startswith(("WARNING:", "W0000", "I0000"))]
    return said[-1][:300] if said else "no output"


def write(job: ExportJob, path: Path) -> None:
    """Write the run's model as a .tflite at ``path`` (see the module): onnx2tf converts the
    ONNX graph in the converter environment, then the outputs are named and the metadata is
    written into the flatbuffer here.

    Raises:
        UserError: the converter environment cannot be made, or onnx2tf cannot convert the
            graph (its last line).
    """
    python = converter_python()
    onnx_file = job.onnx_file("float32")
    folder = job.workdir / "tflite"
    folder.mkdir()
    converted = folder / "converted.tflite"
    settings: dict[str, Any] = {
        "onnx": str(onnx_file), "folder": str(folder / "onnx2tf"), "output": str(converted),
        "precision": job.precision,
    }  # fmt: skip
    pre = job.reference.preprocessing
    images = job.calibration()
    if job.int8:
        calibration = folder / "calibration.npy"
        np.save(calibration, images.transpose(0, 2, 3, 1).astype(np.float32) / np.float32(255))
        settings.update(calibration=str(calibration), mean=list(pre.mean), std=list(pre.std))
        job.metadata["quantization_settings"] = json.dumps(
            _int8_settings(len(images)), ensure_ascii=False
        )
    _convert(python, settings, folder)
    sample = pre.normalize(images[:8]).transpose(0, 2, 3, 1)
    logits, probabilities = _outputs(converted, np.ascontiguousarray(sample), job.spec.temperature)
    job.metadata["input_layout"] = LAYOUT_NHWC
    job.metadata["quantization"] = QUANTIZATION.get(job.precision, "none")
    if not job.int8:
        job.metadata.pop("quantization_settings", None)
    _finish(converted, path, logits, probabilities, job.metadata)


def _int8_settings(images: int) -> dict[str, Any]:
    """How an INT8 .tflite was made, for its metadata and parity.json."""
    return {
        "converter": f"onnx2tf {ONNX2TF_VERSION}", "kind": "integer_quant",
        "weights": "int8, per channel", "activations": "int8, per tensor",
        "input": "float32", "output": "float32", "calibration_images": images,
    }  # fmt: skip


def _convert(python: Path, settings: dict[str, Any], folder: Path) -> None:
    """Run ``tflite_convert.py`` in the converter's Python. ``-I``: neither imagewise's
    ``PYTHONPATH`` nor the script's own folder (this package, whose ``onnx.py`` would shadow
    the onnx package) comes onto its path. onnx2tf runs ``onnxsim`` by name: the environment's
    scripts go first on ``PATH``."""
    (folder / "settings.json").write_text(json.dumps(settings))
    env = {**os.environ, "PATH": os.pathsep.join([str(python.parent), os.environ.get("PATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2"}  # fmt: skip
    logfile = folder / "onnx2tf.log"
    log.info("converting the ONNX graph with onnx2tf (%s)", python)
    with logfile.open("w") as out:
        done = subprocess.run(
            [str(python), "-I", str(SCRIPT), str(folder / "settings.json")],
            stdout=out, stderr=subprocess.STDOUT, env=env, check=False,
        )  # fmt: skip
    if done.returncode != 0 or not Path(settings["output"]).is_file():
        raise UserError(f"onnx2tf could not convert the model to TFLite: {_last_line(logfile)}")


def _outputs(converted: Path, sample: np.ndarray, temperature: float) -> tuple[int, int]:
    """The tensor indices of the converted file's logits and probabilities.

    onnx2tf names its outputs ``Identity``/``Identity_1`` (float) or ``PartitionedCall:0``/``:1``
    (INT8), in an order that differs between the two, so the names say nothing: of the two
    outputs, the probabilities are the one the softmax of the other over the temperature
    reproduces.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(converted), num_threads=1)
    details = interpreter.get_output_details()
    if len(details) != 2 or len(interpreter.get_input_details()) != 1:
        raise RuntimeError(f"onnx2tf wrote {len(details)} outputs; the graph has two")
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(sample.shape), strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, sample.astype(np.float32))
    interpreter.invoke()
    a, b = (interpreter.get_tensor(d["index"]).astype(np.float64) for d in details)
    a_first = _softmax_gap(a, b, temperature) <= _softmax_gap(b, a, temperature)
    first, second = (d["index"] for d in details)
    return (first, second) if a_first else (second, first)


def _softmax_gap(logits: np.ndarray, probabilities: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return float(np.abs(e / e.sum(axis=1, keepdims=True) - probabilities).max())


def _finish(
    converted: Path, path: Path, logits: int, probabilities: int, metadata: dict[str, str]
) -> None:
    """The converted flatbuffer with its tensors named, its outputs in order, one signature and
    the metadata entry, written to ``path`` (ai-edge-litert's flatbuffer tools: the TFLite
    schema's own Python classes)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(converted))
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].name = INPUT_NAME
    for name, index in zip(OUTPUT_NAMES, (logits, probabilities), strict=True):
        graph.tensors[index].name = name
    graph.outputs = [logits, probabilities]
    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = SIGNATURE, 0
    signature.inputs = [_tensor_map(INPUT_NAME, graph.inputs[0])]
    signature.outputs = [
        _tensor_map(n, i) for n, i in zip(OUTPUT_NAMES, graph.outputs, strict=True)
    ]
    model.signatureDefs = [signature]
    buffer = schema.BufferT()
    text = json.dumps(metadata, ensure_ascii=False).encode()
    buffer.data = np.frombuffer(text, dtype=np.uint8)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers)
    model.buffers.append(buffer)
    model.metadata = [m for m in model.metadata or [] if m.name != METADATA_NAME.encode()]
    model.metadata.append(entry)
    flatbuffer_utils.write_model(model, str(path))


def _tensor_map(name: str, index: int) -> Any:
    from ai_edge_litert import schema_py_generated as schema

    mapping = schema.TensorMapT()
    mapping.name, mapping.tensorIndex = name, index
    return mapping
