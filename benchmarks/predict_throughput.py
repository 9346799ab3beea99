"""Images per second of ``imagewise predict RUN FOLDER`` against the model on ready tensors.

A folder of JPEG photos (made once: random crops of scikit-learn's two sample photographs,
256-400 px a side, flipped and tinted, quality 85-92, so decoding and resizing to 224 px are
real work) is predicted by the command as a user runs it (``--format csv --out``, the whole
process, start-up included), and the same model scores already decoded uint8 batches of the
same size (``ImageModel.scores``: normalization, forward, softmax; no reading). Both for the run
folder (PyTorch) and its ONNX export (ONNX Runtime).

The machine may be busy with other work, whose load drifts: each round measures the ready rate,
then the jobs, then the ready rate again, and each job is compared with the mean of the two
ready rates around it; medians over rounds. Besides images per second, the CPU time per image
(all threads; for the command, the child process's) compares the work done whatever the load.

``--jobs modes`` compares, in this process on a subset (``--subset``), ``imagewise.edge.stream``
reading in its threads while the model runs (``overlap``) with reading in the calling thread
between batches (``sequential``).

``--jobs video``: a clip (``--video`` frames, made once from the same photos: 30 fps, 640x360,
H.264) predicted by ``imagewise predict RUN clip.mp4``, every frame and ``--stride 5``.

    .venv/bin/python benchmarks/predict_throughput.py --run runs/r18 --images 10000 --repeats 3
    .venv/bin/python benchmarks/predict_throughput.py --jobs modes,video --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL

import numpy as np
from foundation import machine  # benchmarks/foundation.py: cores and CPU model
from PIL import Image

BIN = Path(sys.executable).parent / "imagewise"


def sample_photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


def make_photos(root: Path, count: int) -> list[Path]:
    """``count`` JPEGs, 256-400 px a side, from random crops of two real photographs; once."""
    marker = root / f".complete-{count}"
    paths = [root / f"d{i // 1000:02d}" / f"{i:05d}.jpg" for i in range(count)]
    if marker.exists():
        return paths
    rng = np.random.default_rng(0)
    photos = sample_photos()
    for i, path in enumerate(paths):
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        ch, cw = rng.integers(160, h + 1), rng.integers(160, w + 1)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = src[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        tint = rng.uniform(0.8, 1.2, size=3)
        crop = np.clip(crop * tint, 0, 255).astype(np.uint8)
        size = (int(rng.integers(256, 401)), int(rng.integers(256, 401)))
        img = Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC)
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=int(rng.integers(85, 93)))
    marker.touch()
    return paths


def make_video(path: Path, frames: int, size: tuple[int, int] = (640, 360)) -> Path:
    """A 30 fps H.264 clip panning over the sample photos; once."""
    if path.exists():
        return path
    import av

    photos = [Image.fromarray(p).resize((1280, 720)) for p in sample_photos()]
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            photo = photos[(i // 150) % len(photos)]
            x, y = (i * 3) % (1280 - size[0]), (i * 2) % (720 - size[1])
            frame = av.VideoFrame.from_image(photo.crop((x, y, x + size[0], y + size[1])))
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    tmp.rename(path)
    return path


def onnx_copy(run: Path, work: Path) -> Path:
    """The run exported to float32 ONNX, from a copy of the run (the original is not touched)."""
    model = work / "r18-copy" / "export" / "model.onnx"
    if model.exists():
        return model
    import imagewise

    shutil.copytree(run, work / "r18-copy", ignore=shutil.ignore_patterns("export", "tens*"))
    return Path(imagewise.export(work / "r18-copy").path)


@dataclass
class Rate:
    """Images over the wall-clock seconds and the CPU seconds (all threads) they took."""

    images: int
    wall: float
    cpu: float
    others: float = 0.0  # cores' worth of other processes' work meanwhile (the machine's load)

    @property
    def per_s(self) -> float:
        return self.images / self.wall

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.images


def machine_busy() -> float:
    """CPU seconds all processes have used (``/proc/stat``: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def our_cpu() -> float:
    """CPU seconds of this process and its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(images: int, job: Callable[[], object]) -> Rate:
    """Wall time and our CPU time of ``job``, and how busy other processes kept the cores."""
    start, cpu, busy = time.perf_counter(), our_cpu(), machine_busy()
    job()
    wall, used = time.perf_counter() - start, our_cpu() - cpu
    return Rate(images, wall, used, max(0.0, machine_busy() - busy - used) / wall)


def command(model: Path, inputs: list[str], count: int, work: Path, *flags: str) -> Rate:
    """The whole ``imagewise predict`` process (start-up included)."""
    out = work / "predictions.csv"
    args = [str(BIN), "predict", str(model), *inputs, "--format", "csv", "--out", str(out), "-q"]
    rate = timed(count, lambda: subprocess.run([*args, *flags], check=True, stdout=DEVNULL))
    rows = sum(1 for _ in out.open()) - 1
    assert rows == count * 5, (rows, count)  # top 5 of each
    return rate


class Engine:
    """One model (run folder or ONNX file) loaded once in this process, for the ready-tensor
    rate and the in-process decoding modes."""

    def __init__(self, path: Path, paths: list[Path], batch: int) -> None:
        import imagewise

        self.path = path
        self.model = imagewise.load(path)
        self.images = np.stack([self.model.read(p) for p in paths[:batch]])
        self.model.scores(self.images)  # warm-up

    def ready(self, batches: int) -> Rate:
        """Images per second of the model on ready uint8 batches (decoded before the clock)."""

        def run() -> None:
            for _ in range(batches):
                self.model.scores(self.images)

        return timed(len(self.images) * batches, run)

    def mode(self, paths: list[Path], mode: str) -> Rate:
        """The decoding modes of ``imagewise.edge.stream`` over ``paths``."""
        from imagewise.edge import stream

        threads = 0 if mode == "sequential" else None

        def run() -> None:
            batches = stream.read_ahead(
                self.model.read, paths, len(self.images), key=lambda i, p: p, threads=threads
            )
            for b in batches:
                self.model.scores(b.images)

        return timed(len(paths), run)


def paired(
    ready: Callable[[], Rate], jobs: dict[str, Callable[[], Rate]], repeats: int
) -> dict[str, dict[str, float]]:
    """Each round: the ready rate, every job, the ready rate again; each job against the mean
    of the two ready rates around it (a busy machine's load drifts). Medians over rounds."""
    seen: dict[str, dict[str, list[float]]] = {}
    for r in range(repeats):
        first = ready()
        done = {name: job() for name, job in jobs.items()}
        last = ready()
        base_rate = (first.per_s + last.per_s) / 2
        base_cpu = (first.cpu_ms + last.cpu_ms) / 2
        rows = {"ready": (first, 1.0, 1.0), **{
            name: (rate, rate.per_s / base_rate, base_cpu / rate.cpu_ms)
            for name, rate in done.items()
        }}  # fmt: skip
        for name, (rate, share, cpu_share) in rows.items():
            values = (rate.per_s, rate.cpu_ms, share, cpu_share, rate.others)
            entry = seen.setdefault(name, {k: [] for k in ("per_s", "cpu_ms", "share", "cpu",
                                                           "others")})  # fmt: skip
            for key, value in zip(entry, values, strict=True):
                entry[key].append(value)
            print(f"round {r + 1} {name:<20} {rate.per_s:7.1f}/s {rate.cpu_ms:7.1f} ms cpu/img "
                  f"{share:5.0%} of ready (cpu {cpu_share:4.0%}), other processes "
                  f"{rate.others:.2f} cores", flush=True)  # fmt: skip
    return {n: {k: statistics.median(v) for k, v in e.items()} for n, e in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/r18"))
    parser.add_argument("--onnx", type=Path, help="the run's ONNX export (default: made here)")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ready-batches", type=int, default=8)
    parser.add_argument(
        "--jobs", default="folder", help="comma-separated: folder, modes, video (default folder)"
    )
    parser.add_argument("--subset", type=int, default=256, help="images per decoding-mode pass")
    parser.add_argument("--video", type=int, default=1800, help="frames of the clip")
    parser.add_argument("--work", type=Path, default=Path("/tmp/imagewise-bench/predict"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--engines", default="PyTorch,ONNX Runtime", help="which to measure")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.work / f"jpegs-{args.images}"
    paths = make_photos(folder, args.images)
    onnx = args.onnx or onnx_copy(args.run, args.work)
    wanted = set(args.jobs.split(","))
    load = os.getloadavg()
    results: dict[str, dict[str, dict[str, float]]] = {}
    engines = {"PyTorch": args.run, "ONNX Runtime": onnx}
    for name in args.engines.split(","):
        path = engines[name]
        engine = Engine(path, paths, args.batch)
        jobs: dict[str, Callable[[], Rate]] = {}
        if "folder" in wanted:
            jobs["predict FOLDER"] = lambda p=path: command(
                p, [str(folder)], args.images, args.work, "--batch-size", str(args.batch)
            )
        if "modes" in wanted:
            for mode in ("sequential", "overlap"):
                jobs[mode] = lambda e=engine, m=mode: e.mode(paths[: args.subset], m)
        if "video" in wanted:
            clip = make_video(args.work / f"clip-{args.video}.mp4", args.video)
            for stride in (1, 5):
                jobs[f"video, stride {stride}"] = lambda p=path, s=stride, c=clip: command(
                    p, [str(c)], -(-args.video // s), args.work, "--stride", str(s)
                )
        print(f"\n{name}: {path}", flush=True)
        results[name] = paired(lambda e=engine: e.ready(args.ready_batches), jobs, args.repeats)
        del engine
    load_after = os.getloadavg()
    print(f"\n{machine()}; load average before {load}, after {load_after}")
    for name, rows in results.items():
        for job, m in rows.items():
            print(f"{name:<13} {job:<20} {m['per_s']:7.1f}/s  {m['cpu_ms']:7.1f} ms cpu/img  "
                  f"{m['share']:5.0%} of ready (cpu {m['cpu']:4.0%})  others "
                  f"{m['others']:.2f} cores")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"results": results, "load": [load, load_after]}))


if __name__ == "__main__":
    main()
