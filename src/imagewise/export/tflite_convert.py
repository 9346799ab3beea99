"""ONNX -> TensorFlow Lite with onnx2tf, run by the converter environment's own Python.

``imagewise.export.tflite`` runs this file as ``PYTHON -I tflite_convert.py SETTINGS.json``:
TensorFlow cannot share imagewise's environment (PyTorch's TensorBoard writer imports it, and
the process crashes), so the conversion runs in an environment of its own. Nothing here imports
imagewise, which is not installed there; the settings file says everything::

    {"onnx": "graph.float32.onnx", "folder": "onnx2tf/", "output": "converted.tflite",
     "precision": "float32" | "float16" | "int8",
     "calibration": "calibration.npy", "mean": [0.5], "std": [0.25]}   (int8 only)

``calibration``: the run's training images, float32 NHWC in [0, 1]; onnx2tf normalizes them
with ``mean`` and ``std`` itself (``(x - mean) / std``), as the graph's input expects.
The file onnx2tf wrote for ``precision`` is copied to ``output``; exit status 1 with the error's
last line on stderr when the conversion fails.
"""

import json
import shutil
import sys
from pathlib import Path

# onnx2tf writes "<onnx stem>_<kind>.tflite"; the kind each precision takes. int8:
# "integer_quant": int8 weights (per channel) and activations, float32 input and output.
KINDS = {"float32": "float32", "float16": "float16", "int8": "integer_quant"}


def convert(settings: dict) -> Path:
    """Run onnx2tf on the settings' ONNX file; the path of the .tflite for their precision."""
    import onnx2tf

    int8 = settings["precision"] == "int8"
    calibration = None
    if int8:
        # (1, 1, 1, C): broadcast over the NHWC calibration images
        mean, std = ([[[list(settings[k])]]] for k in ("mean", "std"))
        calibration = [["input", settings["calibration"], mean, std]]
    onnx2tf.convert(
        input_onnx_file_path=settings["onnx"],
        output_folder_path=settings["folder"],
        output_integer_quantized_tflite=int8,
        quant_type="per-channel",
        custom_input_op_name_np_data_path=calibration,
        non_verbose=True,
    )
    stem = Path(settings["onnx"]).stem
    return Path(settings["folder"]) / f"{stem}_{KINDS[settings['precision']]}.tflite"


def main(argv: list[str]) -> int:
    settings = json.loads(Path(argv[1]).read_text())
    try:
        written = convert(settings)
    except SystemExit as exc:  # onnx2tf calls sys.exit(1) after logging its error
        print(f"onnx2tf stopped (exit status {exc.code})", file=sys.stderr)
        return 1
    if not written.is_file():
        print(f"onnx2tf wrote no {written.name}", file=sys.stderr)
        return 1
    shutil.copyfile(written, settings["output"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
