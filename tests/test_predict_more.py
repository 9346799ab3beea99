"""Prediction at scale: decoding ahead of the model, sorting a folder, videos, torchrun."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagewise
from imagewise.edge.stream import read_ahead
from imagewise.errors import UserError
from imagewise.predict.sorting import UNSURE, folder_names, sort_images

from conftest import run_cli

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def model(trained_run: Path) -> imagewise.predict.BaseClassifier:
    return imagewise.load(trained_run)


def image_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- decoding ahead of the model -------------------------------------------------------------


def test_stream_gives_the_sequential_answers_in_order_with_skips(model, folder_data) -> None:
    paths = image_files(folder_data)  # includes circle/broken.jpg, which is skipped
    broken = str(folder_data / "circle" / "broken.jpg")
    assert broken in paths
    batch = 7
    expected = []  # the plain loop: each batch of 7 inputs read one by one, unreadable dropped
    for start in range(0, len(paths), batch):
        names = [p for p in paths[start : start + batch] if p != broken]
        logits, probs = model.scores(np.stack([model.read(p) for p in names]))
        expected += model.answers(logits, probs, names, top_k=3)
    got = list(model.predict_iter(paths, top_k=3, batch_size=batch, skippable=lambda p: True))
    assert [p.source for p in got] == [p.source for p in expected]
    assert [p.classes for p in got] == [p.classes for p in expected]
    assert [p.probabilities for p in got] == [p.probabilities for p in expected]
    with pytest.raises(UserError, match=r"broken\.jpg"):  # not skippable: one line, in order
        list(model.predict_iter(paths, batch_size=batch))


def test_read_ahead_threads_equal_no_threads_and_select_picks_batches(model, folder_data):
    paths = image_files(folder_data)

    def run(**kw):
        return [
            (b.index, b.keys, b.images.copy())
            for b in read_ahead(
                model.read, paths, 5, key=lambda i, p: p, skippable=lambda p: True, **kw
            )
        ]

    threaded, plain = run(threads=3, ahead=1), run(threads=0)
    assert [(i, k) for i, k, _ in threaded] == [(i, k) for i, k, _ in plain]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(threaded, plain, strict=True))
    odd = run(select=lambda i: i % 2 == 1)
    assert [i for i, _, _ in odd] == [i for i, _, _ in plain if i % 2 == 1]
    # an early stop ends the reader threads
    stream = read_ahead(model.read, paths, 5, key=lambda i, p: p, skippable=lambda p: True)
    next(stream)
    stream.close()


# --- sorting a folder ------------------------------------------------------------------------


@pytest.fixture
def inbox(folder_data: Path, tmp_path: Path) -> Path:
    """A copy of the images (and the corrupt file) to sort, with two files of the same name."""
    box = tmp_path / "inbox"
    shutil.copytree(folder_data, box)
    return box


def placed_files(out: Path) -> list[Path]:
    """Files in OUT's class folders (OUT itself holds predictions.csv and a lock file)."""
    return sorted(p for p in out.rglob("*") if p.is_file() and p.parent != out)


def journal(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def check_sorted_once(out: Path, sources: dict[str, str]) -> None:
    """Every readable source placed exactly once, with its bytes; the CSV lists each once."""
    rows = journal(out)
    assert sorted(r["source"] for r in rows) == sorted(sources)
    placed = placed_files(out)
    assert len(placed) == len(sources), [p.name for p in placed]
    assert not [p for p in placed if p.name.startswith(".")]  # no temporary copies left
    for r in rows:
        assert digest(out / r["destination"]) == sources[r["source"]]
        folder = Path(r["destination"]).parts[0]
        assert folder == (UNSURE if r["answer"] == "unknown" else r["class"])


def readable(box: Path) -> dict[str, str]:
    return {os.path.abspath(p): digest(Path(p)) for p in image_files(box) if "broken" not in p}


def test_sort_into_never_overwrites_and_renames_a_clash(trained_run, model, inbox, tmp_path):
    first = image_files(inbox / "square")[0]
    folder = model.predict([first])[0]
    out = tmp_path / "out"
    theirs = out / (UNSURE if folder.confidence < 0.5 else folder.label) / Path(first).name
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"the user's own file")
    sources = readable(inbox)
    result = sort_images(trained_run, [str(inbox)], out, batch_size=8)
    assert theirs.read_bytes() == b"the user's own file"
    renamed = theirs.with_name(f"{theirs.stem}-1{theirs.suffix}")
    assert digest(renamed) == sources[first]
    assert (result.placed, result.unreadable) == (len(sources), 1)
    theirs.unlink()
    check_sorted_once(out, sources)
    assert sources.keys() == readable(inbox).keys()  # copies: the sources stay


class StopAfter:
    def __init__(self, batches: int) -> None:
        self.batches = batches

    def on_batch_done(self, placed: int) -> None:
        self.batches -= 1
        if self.batches == 0:
            raise KeyboardInterrupt


def test_sort_into_resumes_after_an_interruption(trained_run, inbox, tmp_path) -> None:
    out, sources = tmp_path / "out", readable(inbox)
    with pytest.raises(KeyboardInterrupt):
        sort_images(trained_run, [str(inbox)], out, batch_size=8, hooks=[StopAfter(2)])
    assert len(journal(out)) == 16 == len(placed_files(out))
    again = sort_images(trained_run, [str(inbox)], out, batch_size=8)
    assert (again.earlier, again.placed) == (16, len(sources) - 16)
    check_sorted_once(out, sources)
    assert sort_images(trained_run, [str(inbox)], out).placed == 0  # a third run: nothing to do


KILL_SCRIPT = """
import os, sys
from imagewise.predict.sorting import sort_images

class KillWhenPlaced:  # a kill -9 after batch 2 is placed, before it is recorded
    count = 0
    def on_batch_placed(self, paths):
        self.count += 1
        if self.count == 2:
            os._exit(9)

sort_images(sys.argv[1], [sys.argv[2]], sys.argv[3], move=sys.argv[4] == "move", batch_size=8,
            hooks=[KillWhenPlaced()])
"""


@pytest.mark.parametrize("mode", ["copy", "move"])
def test_sort_into_killed_between_placing_and_recording(trained_run, inbox, tmp_path, mode):
    out, sources = tmp_path / "out", readable(inbox)
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    killed = subprocess.run(
        [sys.executable, str(script), str(trained_run), str(inbox), str(out), mode],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert len(journal(out)) == 8  # batch 1 recorded; batch 2 placed, not recorded
    assert len([p for p in placed_files(out) if not p.name.startswith(".")]) == 16
    left = readable(inbox)
    if mode == "move":  # only recorded placements lose their source
        assert len(left) == len(sources) - 8
    again = sort_images(trained_run, [str(inbox)], out, move=mode == "move", batch_size=8)
    # a copy's sources are listed again and skipped; a move's recorded sources are gone
    assert (again.earlier, again.placed) == ((8, 64) if mode == "copy" else (0, 64))
    check_sorted_once(out, sources)
    rows = journal(out)
    assert len({r["destination"] for r in rows}) == len(rows)
    if mode == "move":
        assert readable(inbox) == {}
        assert (inbox / "circle" / "broken.jpg").exists()  # unreadable files stay where they are


def test_sort_into_one_line_errors(trained_run, inbox, tmp_path, capsys, monkeypatch) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = {
        ("--sort-into", str(inbox / "sorted")): "is inside the input folder",
        ("--sort-into", str(a_file)): "is a file, not a folder",
        ("--move",): "--move goes with --sort-into",
    }
    for flags, message in cases.items():
        code, out, err = run_cli(["predict", str(trained_run), str(inbox), *flags], capsys)
        assert (code, out) == (2, "") and err.count("\n") == 1 and message in err, err
    assert not (inbox / "sorted").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    with open(busy / ".imagewise-sort.lock", "a") as held:  # another sort is running
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _, err = run_cli(["predict", str(trained_run), str(inbox), "--sort-into",
                                str(busy)], capsys)  # fmt: skip
    assert code == 2 and "another imagewise is sorting" in err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _, err = run_cli(["predict", str(trained_run), str(inbox), "--sort-into", "o"], capsys)
    assert code == 2 and "without torchrun" in err


def test_sort_into_cli_summary_and_folder_names(trained_run, inbox, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code, text, _ = run_cli(["predict", str(trained_run), str(inbox), "--sort-into", str(out),
                             "--min-confidence", "0.99"], capsys)  # fmt: skip
    assert code == 0 and f"copied {len(readable(inbox))} images into {out}" in text
    assert "below 99%" in text and (out / UNSURE).is_dir()
    names = folder_names(["a/b", "..", "", ".hidden", "_unsure", "Cat", "cat", "x\x00y"])
    assert list(names.values()) == ["a_b", "_", "_-2", "_.hidden", "__unsure", "Cat", "cat-2",
                                    "x_y"]  # fmt: skip


# --- videos ----------------------------------------------------------------------------------


def write_clip(path: Path, frames: list[Image.Image], fps: int = 10) -> Path:
    """A lossless clip (FFV1, RGB): decoded frames equal the images."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = *frames[0].size, "bgr0"
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_image(img)))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def clip(folder_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    files = [f for f in image_files(folder_data) if "broken" not in f][::6]
    frames = [Image.open(f).convert("RGB") for f in files for _ in range(2)]  # 2 frames each
    return write_clip(tmp_path_factory.mktemp("video") / "clip.mkv", frames), frames


def test_video_frames_equal_image_predictions(model, clip, tmp_path) -> None:
    from imagewise.predict.video import predict_video

    path, frames = clip
    expected = model.predict(frames, top_k=2)
    got = list(predict_video(model, path, top_k=2, batch_size=5))
    assert [p.frame for p in got] == list(range(len(frames)))
    assert [p.time for p in got] == pytest.approx([i / 10 for i in range(len(frames))])
    assert [p.classes for p in got] == [p.classes for p in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.probabilities == pytest.approx(e.probabilities, abs=1e-5)
    strided = list(predict_video(model, path, top_k=2, stride=3))
    assert [p.frame for p in strided] == list(range(0, len(frames), 3))
    assert [p.classes for p in strided] == [p.classes for p in expected[::3]]
    assert strided[1].source == f"{path}#frame=3"


def test_video_cli_csv_stride_and_annotated_copy(trained_run, clip, tmp_path, capsys) -> None:
    path, frames = clip
    annotated = tmp_path / "annotated.mp4"
    flags = ["--stride", "4", "--top-k", "1", "--format", "csv", "--annotate", str(annotated)]
    code, out, _ = run_cli(["predict", str(trained_run), str(path), *flags], capsys)
    assert code == 0
    rows = list(csv.DictReader(out.splitlines()))
    assert [int(r["frame"]) for r in rows] == list(range(0, len(frames), 4))
    assert rows[1]["time"] == "0.400" and rows[1]["source"] == f"{path}#frame=4"
    with av.open(str(annotated)) as video:
        stream = video.streams.video[0]
        decoded = list(video.decode(stream))
        assert (stream.width, stream.height) == frames[0].size
        assert float(stream.average_rate) == 10
    assert len(decoded) == len(frames)
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary file left


def test_a_cut_off_video_says_how_many_of_its_frames_were_predicted(
    model, tmp_path, caplog
) -> None:
    from imagewise.predict.video import predict_video

    # a faststart MP4 declares its 40 frames up front; cut in half, FFmpeg stops quietly
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(40):
            img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            out.mux(stream.encode(av.VideoFrame.from_image(img)))
        out.mux(stream.encode())
    whole = list(predict_video(model, path, top_k=1))
    assert len(whole) == 40 and "truncated" not in caplog.text
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="imagewise"):
        got = list(predict_video(model, cut, top_k=1))
    assert 0 < len(got) < 40
    assert f"'{cut}' ended after {len(got)} of the 40 frames its header declares" in caplog.text


def test_video_errors_are_one_line(trained_run, tmp_path, capsys, folder_data) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    cases = {
        (str(bad),): "cannot read video",
        (str(folder_data), "--stride", "2"): "are for videos",
        (str(bad), str(folder_data)): "separate commands",
    }
    for args, message in cases.items():
        code, out, err = run_cli(["predict", str(trained_run), *args], capsys)
        assert (code, out) == (2, "") and err.count("\n") == 1 and message in err, err


# --- torchrun --------------------------------------------------------------------------------


def test_two_processes_write_the_single_process_file_byte_for_byte(trained_run, folder_data,
                                                                   tmp_path) -> None:  # fmt: skip
    args = ["predict", str(trained_run), str(folder_data), "--batch-size", "5", "--top-k", "2",
            "--format", "csv", "-q"]  # fmt: skip
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    single = subprocess.run([sys.executable, "-m", "imagewise", *args, "--out", str(one)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "imagewise", *args, "--out", str(two)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("wrote") == 1  # rank 0 speaks alone
    assert two.read_bytes() == one.read_bytes()
    assert ddp.stderr.count("skipped: cannot read image") == 1  # the corrupt file, by its rank
