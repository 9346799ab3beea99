"""Prediction over videos: ``imagewise predict RUN clip.mp4 [--stride N] [--annotate out.mp4]``.

Frames are decoded with PyAV (FFmpeg) as a stream, never the whole video in memory: the
feeder of ``imagewise.edge.stream`` demuxes and decodes while reader threads turn the chosen
frames (every ``stride``-th, from frame 0) into the model's input and the previous batch runs.
Each answer is a ``FramePrediction``: source ``clip.mp4#frame=120`` plus the frame index and
its time in seconds from the first frame (CSV columns ``frame`` and ``time``, JSON keys of the
same names).

``annotate_video`` writes a copy with the answer and its probability drawn on every frame
(frames between two predicted ones carry the earlier answer): same size, same frame rate and
frame count, no audio; H.264 for .mp4 / .mov / .mkv, VP9 for .webm, MPEG-4 Part 2 for .avi;
written to a temporary file and renamed into place.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from imagewise.edge.model import ImageModel
from imagewise.edge.results import Prediction, csv_header, csv_rows, format_predictions
from imagewise.errors import UserError
from imagewise.io import write_error
from imagewise.names import CsvWriter

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})
VIDEO_BATCH = 32  # frames per forward pass: full-size frames wait in the reading queue
log = logging.getLogger("imagewise")
_CODECS = {".webm": ("libvpx-vp9", "yuv420p"), ".avi": ("mpeg4", "yuv420p")}


def is_video(path: str | Path) -> bool:
    """True for a file name with a video extension (.mp4, .mov, .avi, .mkv, .webm)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class FramePrediction(Prediction):
    """A ``Prediction`` of one video frame: ``source`` is ``clip.mp4#frame=N``.

    Attributes:
        frame: the frame's index in the video, from 0.
        time: its time in seconds from the first frame.
    """

    frame: int = 0
    time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        return {"source": out.pop("source"), "frame": self.frame, "time": self.time, **out}


@dataclass
class _Frame:
    """A decoded frame on its way to the model; ``str`` is its source, ``clip.mp4#frame=N``."""

    video: str
    index: int
    time: float
    frame: Any  # av.VideoFrame, dropped once read

    def __str__(self) -> str:
        return f"{self.video}#frame={self.index}"


def _unreadable(path: str | Path, exc: BaseException) -> UserError:
    reason = getattr(exc, "strerror", None) or str(exc).split(":")[0] or type(exc).__name__
    reason = str(reason).strip().rstrip(".").lower()
    return UserError(
        f"cannot read video '{path}' ({reason}); give an MP4, MOV, AVI, MKV or WebM file"
    )


@contextlib.contextmanager
def _opened(path: str | Path) -> Iterator[tuple[Any, Any]]:
    """The container and its first video stream; one line for a file FFmpeg cannot read."""
    import av

    if not Path(path).is_file():
        raise UserError(f"'{path}' does not exist; give image files, folders, globs or videos")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise _unreadable(path, exc) from None
    with container:
        if not container.streams.video:
            raise UserError(f"'{path}' has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's own frame threads
        yield container, stream


def video_frames(path: str | Path, stride: int = 1) -> Iterator[_Frame]:
    """Every ``stride``-th decoded frame of the video (from frame 0), as it is decoded."""
    import av

    with _opened(path) as (container, stream):
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        first, decoded = None, 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                t = frame.time if frame.time is not None else index / fps
                first = t if first is None else first
                if index % stride == 0:
                    yield _Frame(str(path), index, round(t - first, 6), frame)
        except av.FFmpegError as exc:
            raise _unreadable(path, exc) from None
        declared = int(stream.frames or 0)  # 0: the container does not say
        if decoded < declared:  # FFmpeg stops quietly at the end of a cut-off file
            log.warning(
                "'%s' ended after %d of the %d frames its header declares (truncated or "
                "damaged); the rest were not predicted", path, decoded, declared,
            )  # fmt: skip


def predict_video(
    model: ImageModel,
    path: str | Path,
    top_k: int = 5,
    stride: int = 1,
    batch_size: int = VIDEO_BATCH,
    min_confidence: float | None = None,
    ood: Any = None,
) -> Iterator[FramePrediction]:
    """Top-k predictions for every ``stride``-th frame of a video, in order, as they come.

    Args:
        model: any ``ImageModel`` (``imagewise.load``, ``imagewise.edge.load_model``).
        path: the video file.
        top_k: classes per frame.
        stride: predict frames 0, N, 2N, ...
        batch_size: frames per forward pass.
        min_confidence: below this top probability the answer is ``unknown``.
        ood: an out-of-distribution scorer, as ``ImageModel.predict_iter`` takes.

    Example:
        >>> clf = imagewise.load("runs/fm")  # doctest: +SKIP
        >>> next(predict_video(clf, "belt.mp4", stride=10)).label  # doctest: +SKIP
        'Sneaker'
    """
    if stride < 1:
        raise UserError(f"--stride must be at least 1, not {stride}")
    times: dict[str, tuple[int, float]] = {}

    def read(item: _Frame) -> Any:
        times[str(item)] = (item.index, item.time)
        image = item.frame.to_image()  # RGB, full size; the model's own resize follows
        item.frame = None  # the decoded frame is not kept once read
        return model.read(image)

    items = video_frames(path, stride)
    batches = model.predict_batches(
        items, top_k, batch_size, min_confidence=min_confidence, ood=ood, read=read
    )
    try:
        for _, predictions in batches:
            for p in predictions:
                index, time = times.pop(p.source)
                yield FramePrediction(p.source, p.classes, p.probabilities, p.unknown,
                                      p.ood_score, frame=index, time=time)  # fmt: skip
    finally:
        batches.close()  # stops the feeder thread, which runs ``items``
        with contextlib.suppress(ValueError):  # still running after its grace time
            items.close()


def format_frames(predictions: Sequence[FramePrediction], fmt: str = "table") -> str:
    """Frame predictions as a table, CSV (``frame`` and ``time`` after ``source``) or JSON."""
    if fmt == "csv":
        header = csv_header(predictions)
        buf = io.StringIO()
        writer = CsvWriter(buf)  # a name's "\r" quoted
        writer.writerow([header[0], "frame", "time", *header[1:]])
        for p in predictions:
            for row in csv_rows([p], header):
                writer.writerow([row[0], str(p.frame), f"{p.time:.3f}", *row[1:]])
        return buf.getvalue().rstrip("\n")
    if fmt == "table":
        shown = [
            Prediction(
                f"{p.source} ({p.time:.2f} s)", p.classes, p.probabilities, p.unknown, p.ood_score
            )
            for p in predictions
        ]
        return format_predictions(shown, "table")
    return format_predictions(predictions, fmt)


def annotate_video(
    path: str | Path, predictions: Sequence[FramePrediction], out: str | Path
) -> Path:
    """A copy of the video with each frame's answer (the latest predicted frame's) drawn on it.

    Args:
        path: the source video.
        predictions: its frame predictions, in frame order (any stride).
        out: the annotated video (.mp4, .mov, .mkv, .webm or .avi); written atomically.

    Returns:
        ``out``.
    """
    out = Path(out)
    check_annotate_target(path, out)
    starts = [p.frame for p in predictions]
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    try:
        frames = _write_annotated(path, tmp, lambda i: predictions[bisect.bisect(starts, i) - 1])
        os.replace(tmp, out)
    except OSError as exc:  # a full disk, no permission, a read-only disk: one line
        if (error := write_error(out, exc)) is None:
            raise
        raise error from exc
    finally:
        tmp.unlink(missing_ok=True)
    if not frames:
        raise UserError(f"'{path}' has no frames to annotate")
    return out


def check_annotate_target(video: str | Path, out: str | Path) -> None:
    """Refuse, before any work, an annotation target that is not a video file name or is the
    input video itself."""
    from imagewise.io import check_output_file

    out = check_output_file(out, "--annotate")
    if not is_video(out):
        raise UserError(
            f"--annotate '{out}' needs a video extension: .mp4, .mov, .mkv, .webm or .avi"
        )
    if out.exists() and Path(video).exists() and out.samefile(video):
        raise UserError("--annotate must name a new file, not the input video")


def _write_annotated(path: str | Path, tmp: Path, answer_of: Any) -> int:
    """Decode, draw and encode every frame; the number of frames written."""
    import av

    codec, pix_fmt = _CODECS.get(tmp.suffix.lower(), ("libx264", "yuv420p"))
    count = 0
    with _opened(path) as (container, stream):
        width, height = stream.codec_context.width, stream.codec_context.height
        if codec == "libx264" and (width % 2 or height % 2):
            pix_fmt = "yuv444p"  # 4:2:0 needs even sizes
        fps = stream.average_rate or stream.guessed_rate or 25
        font = ImageFont.load_default(size=max(12, height // 18))
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(tmp), "w") as output:
            encoder = output.add_stream(codec, rate=fps)
            encoder.width, encoder.height, encoder.pix_fmt = width, height, pix_fmt
            try:
                for count, frame in enumerate(container.decode(stream), 1):
                    image = _draw(frame.to_image(), answer_of(count - 1), font)
                    output.mux(encoder.encode(av.VideoFrame.from_image(image)))
            except av.FFmpegError as exc:
                if write_error(tmp, exc) is not None:
                    raise  # writing failed, not reading: annotate_video says so
                raise _unreadable(path, exc) from None
            output.mux(encoder.encode())
    return count


def _draw(image: Image.Image, p: Prediction, font: Any) -> Image.Image:
    """The answer and its probability on a dark band at the top left."""
    text = f"{p.answer} ({p.confidence:.0%})"
    draw = ImageDraw.Draw(image)
    pad = max(2, font.size // 4)
    box = draw.textbbox((pad, pad), text, font=font)
    draw.rectangle((0, 0, box[2] + pad, box[3] + pad), fill=(0, 0, 0))
    draw.text((pad, pad), text, font=font, fill=(255, 255, 255))
    return image


def predict_videos(
    run: str | Path,
    videos: list[str] | str,
    top_k: int = 5,
    stride: int = 1,
    annotate: str | Path | None = None,
    device: str = "cpu",
    min_confidence: float | str | None = None,
    target_precision: float | None = None,
    ood: str | None = "auto",
    batch_size: int = VIDEO_BATCH,
) -> list[FramePrediction]:
    """Frame predictions for one or more video files (``imagewise predict RUN clip.mp4``).

    Args:
        run: a run folder or an exported model file.
        videos: video files (.mp4, .mov, .avi, .mkv, .webm).
        top_k: classes per frame.
        stride: predict every N-th frame (0, N, 2N, ...).
        annotate: also write this annotated copy of the (single) video.
        device, min_confidence, target_precision, ood: as in ``imagewise.predict``.
        batch_size: frames per forward pass.

    Example:
        >>> preds = predict_videos("runs/fm", "belt.mp4", stride=5)  # doctest: +SKIP
        >>> preds[1].frame, preds[1].time, preds[1].label  # doctest: +SKIP
        (5, 0.2, 'Sneaker')
    """
    from imagewise.predict.prediction import open_model
    from imagewise.predict.sharding import refuse_under_torchrun
    from imagewise.predict.unknown import resolve_min_confidence, resolve_ood

    videos = [videos] if isinstance(videos, str | Path) else list(videos)
    refuse_under_torchrun("video prediction")
    if stride < 1:
        raise UserError(f"--stride must be at least 1, not {stride}")
    if others := [str(v) for v in videos if not is_video(v)]:
        raise UserError(
            f"'{others[0]}' is not a video (.mp4, .mov, .avi, .mkv, .webm); predict images "
            "and videos in separate commands"
        )
    if annotate is not None:
        if len(videos) != 1:
            raise UserError("--annotate takes one video; give one at a time")
        check_annotate_target(videos[0], annotate)
    for video in videos:
        if not Path(video).is_file():
            raise UserError(f"'{video}' does not exist; give image files, folders, globs or videos")
    model = open_model(run, device)
    threshold = resolve_min_confidence(model, run, min_confidence, target_precision)
    scorer = resolve_ood(model, run, ood)
    out: list[FramePrediction] = []
    for video in videos:
        before = len(out)
        out.extend(predict_video(model, video, top_k, stride, batch_size, threshold, scorer))
        if len(out) == before:
            raise UserError(f"cannot read video '{video}' (no frame could be decoded)")
    if annotate is not None:
        annotate_video(videos[0], out, annotate)
    return out
