"""What a CPU without VNNI computes from our INT8 files: ONNX Runtime's u8 x s8 kernels emulated.

x86-64 CPUs without VNNI (AVX2; AVX-512 before Cascade Lake) multiply uint8 activations by int8
weights with VPMADDUBSW, which adds each pair of adjacent products into a saturating int16
(issue 16). This machine has VNNI, so ONNX Runtime cannot show it here; this script computes it.
For each run: the float export, then INT8 with 8-bit weights (the settings before issue 16,
``VNNI_ONLY``) and with 7-bit weights (``PORTABLE``, now the default), same calibration images.
Each file is run by ONNX's reference evaluator with its quantized convolutions and matrix
products done in integers on the stored uint8 / int8 values: once exact (what VNNI and ARM
compute), once with the pair sums clipped to int16 (``pair_saturating_dot``'s arithmetic, K in
ONNX Runtime's im2col order: kernel row, kernel column, channel). Printed: the share of pair sums
that saturate, per layer, and the accuracy of each on the run's test images, against PyTorch
and against ONNX Runtime on this CPU (which checks the emulator: its exact mode must agree).

    .venv/bin/python benchmarks/int8_saturation.py --run runs/fm-fast runs/r18 --images 2000 200
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from foundation import machine  # benchmarks/foundation.py: cores and CPU model
from inference import requantized  # benchmarks/inference.py
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import imagewise
from imagewise.data.transforms import normalize
from imagewise.export import calibration_batches
from imagewise.export.quantize import INT16_MAX, PORTABLE, VNNI_ONLY
from imagewise.export.verify import run_images
from imagewise.predict.predictor import load_run

DOMAIN = "imagewise.emulate"
PAIRS_PER_STEP = 2**24  # elements of one (images, outputs, pairs, pixels) block
SATURATED: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # layer -> [saturated, pairs]


def integer_dot(cols: torch.Tensor, w: torch.Tensor, saturate: bool, layer: str) -> torch.Tensor:
    """sum_k cols[n, k, l] * w[o, k] -> (N, O, L) in int64; pairs (k, k+1) clipped to int16."""
    if not saturate:
        return torch.einsum("nkl,ok->nol", cols.double(), w.double()).round().long()
    if cols.shape[1] % 2:  # the kernels pad K with zeros
        cols, w = F.pad(cols, (0, 0, 0, 1)), F.pad(w, (0, 1))
    ce, co, we, wo = cols[:, 0::2], cols[:, 1::2], w[:, 0::2], w[:, 1::2]
    n, half, pixels = ce.shape
    step = max(1, PAIRS_PER_STEP // (n * w.shape[0] * pixels))
    acc = torch.zeros(n, w.shape[0], pixels, dtype=torch.int64)
    for j in range(0, half, step):
        pairs = (ce[:, None, j : j + step] * we[None, :, j : j + step, None]
                 + co[:, None, j : j + step] * wo[None, :, j : j + step, None])  # fmt: skip
        clipped = pairs.clamp(-INT16_MAX - 1, INT16_MAX)
        acc += clipped.sum(2, dtype=torch.int64)
        SATURATED[layer][0] += int((clipped != pairs).sum())
        SATURATED[layer][1] += pairs.numel()
    return acc


def dequantized(acc: torch.Tensor, x_scale: Any, x_zp: Any, wq: torch.Tensor, w_scale: Any
                ) -> torch.Tensor:  # fmt: skip
    """(acc - zp_x * sum_k w) * s_x * s_w: the float the integer kernel hands on (no bias)."""
    corrected = acc - int(x_zp) * wq.sum(1, dtype=torch.int64)[None, :, None]
    scale = float(x_scale) * torch.from_numpy(np.asarray(w_scale, np.float64)).reshape(1, -1, 1)
    return corrected.double() * scale


class IntConv(OpRun):
    """Conv on the stored integers: uint8 input (padded with its zero point), int8 weights."""

    op_domain = DOMAIN

    def _run(
        self,
        xq,
        xs,
        xzp,
        wq,
        ws,
        bias=None,
        saturate=0,
        layer="",
        pads=None,
        strides=None,
        dilations=None,
        group=1,
        kernel_shape=None,
        **_,
    ):  # type: ignore[no-untyped-def]
        assert group in (1, None), "grouped convolutions run other kernels (no pair sums)"
        x = torch.from_numpy(xq.astype(np.int32))
        w = torch.from_numpy(wq.astype(np.int32))
        out_c, in_c, kh, kw = w.shape
        p = list(pads or [0, 0, 0, 0])
        x = F.pad(x, (p[1], p[3], p[0], p[2]), value=int(xzp))
        stride, dilation = tuple(strides or (1, 1)), tuple(dilations or (1, 1))
        cols = F.unfold(x.double(), (kh, kw), dilation=dilation, stride=stride).long().int()
        n, _, pixels = cols.shape  # K as (kernel row, kernel column, channel), like im2col NHWC
        cols = cols.view(n, in_c, kh * kw, pixels).transpose(1, 2).reshape(n, -1, pixels)
        w = w.view(out_c, in_c, kh * kw).transpose(1, 2).reshape(out_c, -1)
        y = dequantized(integer_dot(cols, w, bool(saturate), layer), xs, xzp, w, ws)
        if bias is not None:
            y = y + torch.from_numpy(np.asarray(bias, np.float64)).reshape(1, -1, 1)
        h = (xq.shape[2] + p[0] + p[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        return (y.reshape(n, out_c, h, -1).float().numpy(),)


class IntGemm(OpRun):
    """Gemm / MatMul on the stored integers; weights as (outputs, K)."""

    op_domain = DOMAIN

    def _run(
        self,
        xq,
        xs,
        xzp,
        wq,
        ws,
        bias=None,
        saturate=0,
        layer="",
        transB=0,
        alpha=1.0,
        beta=1.0,
        transA=0,
        **_,
    ):  # type: ignore[no-untyped-def]
        assert not transA and alpha == 1.0 and beta == 1.0
        w = torch.from_numpy((wq if transB else wq.T).astype(np.int32))
        cols = torch.from_numpy(xq.astype(np.int32))[:, :, None]  # (N, K, 1)
        y = dequantized(integer_dot(cols, w, bool(saturate), layer), xs, xzp, w, ws)[..., 0]
        if bias is not None:
            y = y + torch.from_numpy(np.asarray(bias, np.float64))
        return (y.float().numpy(),)


def emulated(path: Path, saturate: bool) -> onnx.ModelProto:
    """The QDQ graph with each quantized Conv / Gemm / MatMul replaced by IntConv / IntGemm."""
    graph = onnx.load(str(path))
    producer = {n.output[0]: n for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    inits = {t.name: t for t in graph.graph.initializer}
    for node in graph.graph.node:
        x_dq, w_dq = (producer.get(name) for name in [*node.input, "", ""][:2])
        if node.op_type not in ("Conv", "Gemm", "MatMul") or x_dq is None or w_dq is None:
            continue
        inputs = [*x_dq.input[:3], *w_dq.input[:2], *node.input[2:]]
        shape = list(inits[w_dq.input[0]].dims)
        layer = f"{node.name} {'x'.join(map(str, shape))}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMul":
            attrs = {"transB": 0}
        kind = "IntConv" if node.op_type == "Conv" else "IntGemm"
        new = onnx.helper.make_node(kind, inputs, list(node.output), name=node.name,
                                    domain=DOMAIN, saturate=int(saturate), layer=layer,
                                    **attrs)  # fmt: skip
        node.CopyFrom(new)
    graph.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    for opset in graph.opset_import:  # the reference evaluator implements QuantizeLinear >= 19
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 21)
    return graph


def accuracy(graph: onnx.ModelProto, batches: list[np.ndarray], labels: np.ndarray
             ) -> tuple[float, np.ndarray]:  # fmt: skip
    evaluator = ReferenceEvaluator(graph, new_ops=[IntConv, IntGemm])
    top = np.concatenate([evaluator.run(["logits"], {"input": b})[0].argmax(1) for b in batches])
    return float((top == labels).mean()), top


def saturation_summary() -> str:
    rows = sorted(SATURATED.items(), key=lambda kv: -kv[1][0] / max(kv[1][1], 1))
    worst = ", ".join(f"{name} {s / t:.3%}" for name, (s, t) in rows[:3] if s)
    total_s, total = sum(s for s, _ in SATURATED.values()), sum(t for _, t in SATURATED.values())
    return f"{total_s / max(total, 1):.4%} of pair sums saturate ({worst or 'none'})"


def study(run: Path, work: Path, limit: int) -> list[str]:
    copy = work / "run"
    copy.mkdir(parents=True)
    for name in ("config.yaml", "meta.json", "model.safetensors"):
        shutil.copy(run / name, copy / name)
    fp32 = imagewise.export(copy).path
    reference = load_run(copy)
    calib = calibration_batches(copy, reference, raw_input=False)
    images, labels, split, _ = run_images(copy, reference.preprocessing, reference.classes,
                                          ("test",), limit)  # fmt: skip
    batches = [normalize(reference.preprocessing, c).numpy() for c in images.split(50)]
    torch_top = np.concatenate([reference.logits(torch.from_numpy(b)).argmax(1).numpy()
                                for b in batches])  # fmt: skip
    rows = [f"{run.name}: {len(labels)} {split} images; PyTorch {np.mean(torch_top == labels):.2%}"]
    print(rows[0], flush=True)
    for label, settings in (
        ("8-bit weights (before)", VNNI_ONLY),
        ("7-bit weights (now)", PORTABLE),
    ):
        file = requantized(fp32, work / f"{settings.weight_bits}.onnx", calib, settings)
        ort = imagewise.load(file)
        ort_top = np.concatenate([ort.logits(torch.from_numpy(b)).argmax(1).numpy()
                                  for b in batches])  # fmt: skip
        exact, exact_top = accuracy(emulated(file, saturate=False), batches, labels)
        SATURATED.clear()
        sat, _ = accuracy(emulated(file, saturate=True), batches, labels)
        rows.append(
            f"  {label}: ORT here {np.mean(ort_top == labels):.2%}; emulated exact {exact:.2%} "
            f"(agrees with ORT on {np.mean(exact_top == ort_top):.2%}); emulated without VNNI "
            f"{sat:.2%} ({(exact - sat) * 100:+.2f} points); {saturation_summary()}"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, nargs="+", help="trained run folders")
    parser.add_argument("--images", type=int, nargs="+", default=[2000],
                        help="test images per run (one number, or one per run)")  # fmt: skip
    args = parser.parse_args()
    print(f"machine: {machine()}; {torch.get_num_threads()} threads\n")
    with tempfile.TemporaryDirectory(prefix="imagewise-saturation-") as tmp:
        for i, name in enumerate(args.run):
            limit = args.images[min(i, len(args.images) - 1)]
            study(Path(name), Path(tmp) / str(i), limit)


if __name__ == "__main__":
    main()
