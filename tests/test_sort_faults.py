"""``predict --sort-into`` when things go wrong: a full disk partway, a source taken away while
sorting, OUT's own folders given as input. Each image ends up placed exactly once."""

from __future__ import annotations

import csv
import errno
import hashlib
import logging
import os
import shutil
from pathlib import Path

import pytest

import imagewise.predict.sorting as sorting
from imagewise.errors import UserError
from imagewise.names import CsvWriter
from imagewise.predict.sorting import sort_images

from conftest import run_cli


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def readable(box: Path) -> dict[str, str]:
    """Absolute path -> sha256 of every image in ``box`` but the corrupt one."""
    return {
        os.path.abspath(p): digest(p)
        for p in sorted(box.rglob("*"))
        if p.suffix in (".png", ".jpg") and "broken" not in p.name
    }


@pytest.fixture
def inbox(folder_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder_data, tmp_path / "inbox"))


def hidden(out: Path) -> list[str]:
    """Temporary or partial files left in OUT (its lock file is meant to stay)."""
    return [p.name for p in out.rglob(".*") if p.name != sorting.LOCK_NAME]


def check_placed_once(out: Path, sources: dict[str, str]) -> None:
    """As many files in OUT's class folders as images; each listed once, with its bytes."""
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["source"] for r in rows) == sorted(sources)
    placed = [p for p in out.rglob("*") if p.is_file() and p.parent != out]
    assert len(placed) == len(sources), sorted(p.name for p in placed)
    assert {digest(out / r["destination"]) for r in rows} == set(sources.values())
    assert all(digest(out / r["destination"]) == sources[r["source"]] for r in rows)


class FullAfter:
    """Makes a write fail with ENOSPC once ``k`` earlier calls went through."""

    def __init__(self, real, k: int) -> None:
        self.real, self.k, self.calls = real, k, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.k:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real(*args, **kwargs)


class HalfCopy(FullAfter):
    def __call__(self, src, dst, *args):  # writes a little, then the disk is full
        self.calls += 1
        if self.calls > self.k:
            dst.write(src.read(100))
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real(src, dst, *args)


class JournalFull:
    """The journal's second append writes one row and half of the next, then ENOSPC."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, f):
        outer = self

        class Writer(CsvWriter):
            def writerows(self, rows):
                outer.calls += 1
                if outer.calls < 2:
                    return super().writerows(rows)
                rows = list(rows)
                self.writerow(rows[0])
                f.write(",".join(rows[1])[:10])
                f.flush()
                raise OSError(errno.ENOSPC, "No space left on device")

        return Writer(f)


@pytest.mark.parametrize("fault", ["copy", "journal"])
@pytest.mark.parametrize("mode", ["copy", "move"])
def test_a_full_disk_partway_is_one_line_and_a_rerun_places_each_image_once(
    mode, fault, trained_run, inbox, tmp_path, capsys, monkeypatch
) -> None:
    out, sources = tmp_path / "out", readable(inbox)
    if fault == "journal":
        monkeypatch.setattr(sorting, "CsvWriter", JournalFull())
    elif mode == "copy":  # the 12th image's copy fills the disk (in the second batch of 8)
        monkeypatch.setattr(sorting.shutil, "copyfileobj", HalfCopy(shutil.copyfileobj, 11))
    else:  # a move links the source into place: the 12th link finds the folder full
        monkeypatch.setattr(sorting.os, "link", FullAfter(os.link, 11))
    args = ["predict", str(trained_run), str(inbox), "--sort-into", str(out), "--batch-size", "8",
            "-q"]  # fmt: skip
    code, _, err = run_cli([*args, *(["--move"] if mode == "move" else [])], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: no space left on the device for '{out}"), err
    assert "run the same command again" in err
    assert hidden(out) == []  # no .part copies, half or whole
    with open(out / "predictions.csv", newline="") as f:
        recorded = list(csv.DictReader(f))
    placed = [p for p in out.rglob("*") if p.is_file() and p.parent != out]
    assert len(placed) == len(recorded) == (8 if fault == "journal" else 11)
    if mode == "move":  # only recorded images left the inbox
        assert len(readable(inbox)) == len(sources) - len(recorded)
    monkeypatch.undo()
    again = sort_images(trained_run, [str(inbox)], out, move=mode == "move", batch_size=8)
    assert again.placed == len(sources) - len(recorded)
    check_placed_once(out, sources)
    assert hidden(out) == []
    if mode == "move":
        assert readable(inbox) == {}


def test_a_source_taken_away_while_sorting_is_skipped_with_a_warning(
    trained_run, inbox, tmp_path, monkeypatch, caplog
) -> None:
    out, sources = tmp_path / "out", readable(inbox)
    real_place, taken = sorting.Placer.place, []

    def place(self, p):
        if not taken:  # someone moves the first image away after it was read
            taken.append(os.path.abspath(p.source))
            shutil.move(p.source, tmp_path / "elsewhere.png")
        return real_place(self, p)

    monkeypatch.setattr(sorting.Placer, "place", place)
    with caplog.at_level(logging.WARNING, logger="imagewise"):
        result = sort_images(trained_run, [str(inbox)], out, batch_size=8)
    assert result.gone == taken and result.placed == len(sources) - 1
    assert "went away before it was placed" in caplog.text
    del sources[taken[0]]
    check_placed_once(out, sources)


@pytest.mark.parametrize("move", [False, True])
def test_a_source_gone_before_its_copy_or_link_is_skipped(
    move, trained_run, inbox, tmp_path, monkeypatch
) -> None:
    out, sources = tmp_path / "out", readable(inbox)
    gone = next(iter(sources))
    real_new_place = sorting.Placer._new_place

    def new_place(self, source, folder):
        if source == gone:
            os.unlink(source)
        return real_new_place(self, source, folder)

    monkeypatch.setattr(sorting.Placer, "_new_place", new_place)
    result = sort_images(trained_run, [str(inbox)], out, batch_size=8, move=move)
    assert result.gone == [gone] and result.placed == len(sources) - 1
    del sources[gone]
    check_placed_once(out, sources)


def test_inputs_inside_the_output_folder_are_refused(trained_run, inbox, tmp_path, capsys) -> None:
    out, sources = tmp_path / "out", readable(inbox)
    sort_images(trained_run, [str(inbox)], out, batch_size=16)
    folder = next(p for p in out.iterdir() if p.is_dir())
    for given in (str(folder), str(out / "*" / "*.png"), str(next(folder.iterdir()))):
        code, _, err = run_cli(["predict", str(trained_run), given, "--sort-into", str(out),
                                "-q"], capsys)  # fmt: skip
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"is inside --sort-into '{out}'" in err
    with pytest.raises(UserError, match="is inside --sort-into"):
        sort_images(trained_run, [str(folder)], str(out) + "/")
    check_placed_once(out, sources)  # nothing placed twice
