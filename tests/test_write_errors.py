"""A folder that takes no writes (no permission, a read-only disk) or a disk that fills up: one
line naming the file, exit code 2, nothing half-written left behind. Root may write anywhere,
so the refusals are simulated (os.access, os.statvfs, the writes themselves)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from imagewise.io import NotWritable, atomic_write

from conftest import run_cli


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, _, err = run_cli([*args, "-q"], capsys)  # -q: no info lines beside the error
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def write_clip(path: Path, frames: int = 4) -> Path:
    av = pytest.importorskip("av")
    from PIL import Image

    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "bgr0"
        for i in range(frames):
            image = Image.new("RGB", (32, 32), (60 * i, 0, 0))
            out.mux(stream.encode(av.VideoFrame.from_image(image)))
        out.mux(stream.encode())
    return path


class _ReadOnly:
    f_flag = os.ST_RDONLY


@pytest.fixture
def locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request) -> Path:
    """A folder this process may not write in (``read_only``: on a read-only disk)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    real_access, real_statvfs = os.access, os.statvfs

    def access(path, mode, *args, **kwargs):
        inside = Path(os.fsdecode(path)).absolute().is_relative_to(folder)
        return (not (inside and mode & os.W_OK)) and real_access(path, mode, *args, **kwargs)

    def statvfs(path):
        inside = Path(os.fsdecode(path)).absolute().is_relative_to(folder)
        return _ReadOnly() if inside else real_statvfs(path)

    monkeypatch.setattr(os, "access", access)
    if getattr(request, "param", "") == "read-only":
        monkeypatch.setattr(os, "statvfs", statvfs)
    return folder


VERBS = ["train", "tune", "predict --out", "--sort-into", "--annotate", "data check --json"]


@pytest.mark.parametrize("locked", ["no permission", "read-only"], indirect=True)
@pytest.mark.parametrize("verb", VERBS)
def test_an_unwritable_output_is_refused_before_any_work(
    verb, locked, trained_run, folder_data, tmp_path, capsys, request
) -> None:
    run, image = str(trained_run), str(next((folder_data / "square").glob("*.png")))
    names = {"train": "run", "tune": "t", "--sort-into": "sorted", "--annotate": "a.mkv",
             "data check --json": "c.json", "predict --out": "p.csv"}  # fmt: skip
    target = locked / names[verb]
    args = {
        "train": ["train", str(folder_data), "--out", str(target), "--epochs", "1"],
        "tune": ["tune", str(folder_data), "--trials", "1", "--epochs", "1", "--out", str(target)],
        "predict --out": ["predict", run, image, "--out", str(target)],
        "--sort-into": ["predict", run, image, "--sort-into", str(target)],
        "data check --json": ["data", "check", str(folder_data), "--json", str(target)],
    }.get(verb) or ["predict", run, str(write_clip(tmp_path / "c.mkv")), "--annotate", str(target)]
    line = one_line_error(args, capsys)
    read_only = request.node.callspec.params["locked"] == "read-only"
    why = "is on a read-only disk" if read_only else "no permission in"
    assert f"'{target}' cannot be written: " in line and why in line, line
    assert os.listdir(locked) == []


def test_a_write_refused_by_the_disk_names_the_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    for code, why in ((errno.EACCES, "no permission"), (errno.EROFS, "read-only")):

        def refused(tmp: str, code: int = code) -> None:
            Path(tmp).write_bytes(b"half")
            raise OSError(code, os.strerror(code), tmp)

        with pytest.raises(NotWritable, match=f"cannot write '{target}': .*{why}"):
            atomic_write(target, refused)
        assert os.listdir(tmp_path) == []  # no temporary file left


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_predict_out_and_data_check_json_refused_while_writing(
    code, trained_run, folder_data, tmp_path, capsys, monkeypatch
) -> None:
    import imagewise.io

    def mkstemp(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(imagewise.io.tempfile, "mkstemp", mkstemp)
    image = str(next((folder_data / "square").glob("*.png")))
    out = tmp_path / "p.csv"
    line = one_line_error(["predict", str(trained_run), image, "--out", str(out)], capsys)
    assert f"'{out}'" in line and not out.exists()
    small = tmp_path / "small"
    for cls in ("circle", "square"):
        (small / cls).mkdir(parents=True)
        for png in sorted((folder_data / cls).glob("*.png"))[:3]:
            (small / cls / png.name).write_bytes(png.read_bytes())
    report = tmp_path / "c.json"
    line = one_line_error(["data", "check", str(small), "--json", str(report)], capsys)
    assert f"'{report}'" in line and not report.exists()


def test_annotate_on_a_full_disk_is_one_line_and_leaves_no_partial_file(
    trained_run, tmp_path, capsys, monkeypatch
) -> None:
    import imagewise.predict.video as video

    clip, out = write_clip(tmp_path / "c.mkv"), tmp_path / "out" / "a.mkv"

    def fills_the_disk(path, tmp, answer_of):
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"half a video")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(video, "_write_annotated", fills_the_disk)
    line = one_line_error(["predict", str(trained_run), str(clip), "--annotate", str(out)], capsys)
    assert line.startswith(f"error: no space left on the device for '{out}'")
    assert os.listdir(out.parent) == []
