"""INT8 static quantization with ONNX Runtime, calibrated on the run's training images.

QDQ format (QuantizeLinear / DequantizeLinear pairs around float operators), which ONNX Runtime
fuses into integer kernels when it loads the model and other runtimes can still read.
Activations are unsigned 8-bit with a zero point, weights signed with one scale per output
channel: per-tensor weight scales cost about a point of accuracy on small CNNs, whose channels
differ widely in range. Only the layers that carry the arithmetic are quantized (convolutions,
matrix products, pooling, residual additions); the final scaling, division by the temperature
and softmax stay float, so the probabilities keep their resolution. Activation ranges come
from the 99.999th percentile of the calibration activations rather than their min / max: one
outlier then no longer stretches the scale of a whole tensor (measured on a resnet18 at 224 px:
min / max cost 1.1 points of accuracy, the percentile 0.6).

Weights are 7-bit (``reduce_range``: -64..64), because the file travels and the CPU that runs
it is not the one that exported it. On x86-64 without VNNI (AVX2, and AVX-512 before Cascade
Lake / Zen 4) ONNX Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW, which
adds each pair of adjacent products into a *saturating* int16: 255 * 127 * 2 = 64770 does not
fit, so full 8-bit weights lose accuracy there (issue 16: 3.15 points on a Fashion-MNIST model
that lost 0.06 on a VNNI CPU). With 7-bit weights no pair can exceed 255 * 64 * 2 = 32640 <
32767, on any CPU, by construction; VNNI CPUs (VPDPBUSD, int32 sums) and ARM run the same file
at the same speed. ONNX Runtime's quantization guide names this remedy (and U8U8, slower).
``check_int16_pairs`` reads the bound back from a written file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("imagewise")

INT16_MAX = 32767  # VPMADDUBSW's pair sums saturate beyond this
UINT8_MAX = 255  # the largest activation a uint8 tensor holds, whatever its zero point
WEIGHT_RANGES = {(8, "int8"): (-127, 127), (7, "int8"): (-64, 64)}  # ORT, symmetric
MATMUL_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the ops that run u8 x s8 products


@dataclass(frozen=True)
class Int8Settings:
    """How a float model becomes INT8; recorded in the file's metadata and in parity.json.

    The defaults (``PORTABLE``) are right on every CPU; ``VNNI_ONLY`` holds the settings used
    before issue 16 (8-bit weights), kept to measure what portability costs.
    """

    activation_type: str = "uint8"
    weight_type: str = "int8"
    weight_bits: int = 7  # 7 = ONNX Runtime's reduce_range
    per_channel: bool = True
    calibration: str = "percentile"
    percentile: float = 99.999
    format: str = "QDQ"

    @property
    def reduce_range(self) -> bool:
        return self.weight_bits == 7

    @property
    def weight_range(self) -> tuple[int, int]:
        return WEIGHT_RANGES[self.weight_bits, self.weight_type]

    @property
    def pair_sum_bound(self) -> int:
        """The largest |a1*w1 + a2*w2| a VPMADDUBSW pair can reach with these settings."""
        return 2 * UINT8_MAX * max(abs(v) for v in self.weight_range)

    @property
    def safe_on(self) -> str:
        """Which CPUs compute this file's integer products exactly, in words."""
        if self.pair_sum_bound <= INT16_MAX:
            return (
                "every CPU: x86-64 with or without VNNI (AVX2, AVX-512; u8 x s8 pair sums "
                f"<= {self.pair_sum_bound} fit int16), ARM"
            )
        return (
            "x86-64 with VNNI (AVX512-VNNI, AVX-VNNI) and ARM only; x86-64 without VNNI "
            f"saturates u8 x s8 pair sums (up to {self.pair_sum_bound} > {INT16_MAX})"
        )

    def describe(self) -> dict[str, Any]:
        """The settings as plain values, with what follows from them."""
        return {
            **asdict(self), "reduce_range": self.reduce_range,
            "weight_range": list(self.weight_range), "pair_sum_bound": self.pair_sum_bound,
            "safe_on": self.safe_on,
        }  # fmt: skip


PORTABLE = Int8Settings()
VNNI_ONLY = replace(PORTABLE, weight_bits=8)

QUANTIZED_OPS = [
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Concat", "Relu", "Clip", "Resize",
]  # fmt: skip


def _reader(batches: list[np.ndarray], input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        """Feeds the calibration batches to the calibrator, once."""

        def __init__(self) -> None:
            self.items: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.items, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self.items = iter(batches)

    return Batches()


def even_batches(batches: list[np.ndarray], largest: int = 32) -> list[np.ndarray]:
    """The same images in batches of one size (the percentile calibrator stacks its batches)."""
    images = np.concatenate(batches)
    size = max(d for d in range(1, min(largest, len(images)) + 1) if len(images) % d == 0)
    return np.split(images, len(images) // size)


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    batches: list[np.ndarray],
    input_name: str,
    settings: Int8Settings = PORTABLE,
) -> None:
    """Write the INT8 version of the float model at ``fp32_path`` to ``out_path``.

    Args:
        fp32_path: the float ONNX model.
        out_path: where the quantized model goes.
        batches: calibration inputs, each in the graph's input layout and dtype.
        input_name: the graph's input name.
        settings: ``PORTABLE`` (7-bit weights, right on every CPU) unless measuring others.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from imagewise.runtime.logs import quiet_loggers

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}

    # The percentile calibrator print()s its settings; our stdout is the user's output.
    with (
        tempfile.TemporaryDirectory(prefix="imagewise-int8-") as tmp,
        quiet_loggers("onnxruntime"),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared))
        except Exception as exc:  # symbolic shape inference does not know every op
            # ONNX's own shape inference covers the CNNs here; the symbolic pass (for
            # transformers' dynamic shapes) fails on some torch.export reshapes.
            log.debug("symbolic shape inference failed (%s); using ONNX shape inference", exc)
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out_path), _reader(even_batches(batches), input_name),
            quant_format=QuantFormat[settings.format], per_channel=settings.per_channel,
            reduce_range=settings.reduce_range, activation_type=types[settings.activation_type],
            weight_type=types[settings.weight_type], op_types_to_quantize=QUANTIZED_OPS,
            calibrate_method=CalibrationMethod[settings.calibration.capitalize()],
            extra_options={"CalibPercentile": settings.percentile},
        )  # fmt: skip


def weight_extremes(model: onnx.ModelProto) -> dict[str, int]:
    """The largest |stored integer| of each quantized weight feeding a Conv / Gemm / MatMul.

    Read from the file as written (int8 initializers behind DequantizeLinear), so it checks
    what the quantizer did, not what it was asked to do.
    """
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    dequantized = {
        n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"
    }
    extremes = {}
    for node in model.graph.node:
        if node.op_type not in MATMUL_OPS or len(node.input) < 2:
            continue
        weight = inits.get(dequantized.get(node.input[1], ""))
        if weight is not None and weight.data_type == TensorProto.INT8:
            values = numpy_helper.to_array(weight).astype(np.int64)
            extremes[node.name or weight.name] = int(np.abs(values).max())
    return extremes


def check_int16_pairs(model: onnx.ModelProto) -> tuple[int, str | None]:
    """The largest u8 x s8 pair sum the file allows, and why it is refused (``None``: it fits).

    A pair is 255 * |w1| + 255 * |w2| at worst, whatever the data: checked from the weights.
    """
    extremes = weight_extremes(model)
    if not extremes:
        return 0, "no quantized Conv / Gemm / MatMul weights found"
    name, largest = max(extremes.items(), key=lambda kv: kv[1])
    bound = 2 * UINT8_MAX * largest
    if bound > INT16_MAX:
        return bound, (
            f"weights of '{name}' reach {largest}: pairs of uint8 x int8 products up to "
            f"{bound} saturate int16 on CPUs without VNNI (allowed: "
            f"{INT16_MAX // (2 * UINT8_MAX)})"
        )
    return bound, None


def pair_saturating_dot(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a @ w`` as x86-64 without VNNI computes it for uint8 ``a`` (M, K), int8 ``w`` (K, N).

    VPMADDUBSW multiplies adjacent bytes along K and adds each pair (k, k+1) into an int16,
    saturating; VPMADDWD and the int32 accumulators then add those pairs exactly. VNNI's
    VPDPBUSD sums in int32 and equals ``a @ w``. An emulation for tests and benchmarks
    (ONNX Runtime packs K in this order for its GEMM path; its direct convolution pairs adjacent
    input channels, the same pairs whenever the channel count is even).
    """
    a, w = a.astype(np.int32), w.astype(np.int32)
    if a.shape[1] % 2:  # the kernels pad K with zeros
        a, w = np.pad(a, ((0, 0), (0, 1))), np.pad(w, ((0, 1), (0, 0)))
    pairs = a[:, 0::2, None] * w[None, 0::2, :] + a[:, 1::2, None] * w[None, 1::2, :]
    return np.clip(pairs, -INT16_MAX - 1, INT16_MAX).sum(axis=1, dtype=np.int64)
