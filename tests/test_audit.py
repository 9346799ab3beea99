"""imagewise data check: a generated dataset with planted problems, each found by path; a clean
control set with nothing flagged; the user's files untouched; the clean manifest trains."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagewise
from imagewise.audit import check

from conftest import run_cli

KINDS = ("blob", "ring", "bars")


def picture(kind: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A grey picture of one of three easy classes; every draw differs in position, scale and
    texture, so no two draws are near duplicates of each other."""
    yy, xx = np.mgrid[:size, :size].astype(float)
    cy, cx = size / 2 + rng.uniform(-5, 5, size=2)
    r = np.hypot(yy - cy, xx - cx)
    scale = rng.uniform(0.2, 0.35) * size
    if kind == "blob":
        img = (r < scale).astype(float)
    elif kind == "ring":
        img = (abs(r - scale) < 2.5).astype(float)
    else:
        period = rng.uniform(5, 9)
        img = (np.sin((xx + rng.uniform(0, 9)) * 2 * np.pi / period) > 0).astype(float)
    texture = rng.normal(0, 1, (size // 4, size // 4))
    texture = np.kron(texture, np.ones((4, 4)))  # blocky noise: survives a 16x16 comparison
    arr = np.clip(img * 170 + 40 + texture * 10 + rng.normal(0, 6, img.shape), 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "L")


def make_dataset(root: Path, per_class: tuple[int, int] = (30, 10), seed: int = 0) -> Path:
    """root/{train,test}/KIND/NNN.png, all clean."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class, strict=True):
        for kind in KINDS:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                picture(kind, rng).save(folder / f"{i:03d}.png")
    return root


def _jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def plant(root: Path) -> dict[str, list[str]]:
    """Add the problems; return what each finding must name (paths as strings)."""
    rng = np.random.default_rng(99)
    tr, te = root / "train", root / "test"
    p = {k: str(v) for k, v in {
        "corrupt": tr / "blob" / "corrupt.jpg",
        "empty": tr / "ring" / "empty.png",
        "trunc_png": tr / "bars" / "truncated.png",
        "trunc_jpg": tr / "blob" / "truncated.jpg",
        "fake_png": tr / "ring" / "really_jpeg.png",
        "cmyk": tr / "blob" / "cmyk.jpg",
        "sixteen": tr / "ring" / "sixteen.png",
        "tiny": tr / "bars" / "tiny.png",
        "huge": tr / "ring" / "huge.png",
    }.items()}  # fmt: skip
    Path(p["corrupt"]).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all")
    Path(p["empty"]).write_bytes(b"")
    whole = (tr / "bars" / "000.png").read_bytes()
    Path(p["trunc_png"]).write_bytes(whole[: len(whole) // 2])
    jpeg = _jpeg_bytes(picture("blob", rng))
    Path(p["trunc_jpg"]).write_bytes(jpeg[: len(jpeg) // 2])
    Path(p["fake_png"]).write_bytes(_jpeg_bytes(picture("ring", rng)))
    picture("blob", rng).convert("RGB").convert("CMYK").save(p["cmyk"], quality=95)
    arr16 = np.asarray(picture("ring", rng), dtype=np.uint16) * 257
    Image.fromarray(arr16).save(p["sixteen"])
    picture("bars", rng, size=8).save(p["tiny"])
    picture("ring", rng, size=32).resize((160, 160)).save(p["huge"])  # 25x the median's pixels
    # Exact duplicates: lossless re-saves (other bytes, same pixels), within and across splits,
    # and a copy filed under another class.
    src = {name: tr / name.split("/")[0] / name.split("/")[1] for name in
           ("blob/001.png", "ring/002.png", "blob/003.png")}  # fmt: skip
    Image.open(src["blob/001.png"]).save(tr / "blob" / "copy_001.png", compress_level=1)
    Image.open(src["ring/002.png"]).convert("RGB").save(te / "ring" / "leak_002.png")
    Image.open(src["blob/003.png"]).save(tr / "ring" / "conflict_003.png", optimize=True)
    # Near duplicates: a JPEG re-encode across splits, a 1-pixel shift within, a 5% rescale across.
    near_src = {k: tr / k for k in ("bars/004.png", "blob/005.png", "ring/006.png")}
    (te / "bars" / "near_jpeg.jpg").write_bytes(_jpeg_bytes(Image.open(near_src["bars/004.png"])))
    shifted = np.asarray(Image.open(near_src["blob/005.png"])).copy()
    shifted[:, 1:] = shifted[:, :-1].copy()
    Image.fromarray(shifted).save(tr / "blob" / "near_shift.png")
    Image.open(near_src["ring/006.png"]).resize((34, 34), Image.Resampling.BILINEAR).save(
        te / "ring" / "near_rescale.png"
    )
    # Flipped labels: new drawings of one class filed under another.
    flips = []
    for i, (true, given) in enumerate([("blob", "bars"), ("bars", "ring"), ("ring", "blob")]):
        path = tr / given / f"flip_{i}.png"
        picture(true, rng).save(path)
        flips.append(str(path))
    return {
        "unreadable": [p["corrupt"], p["empty"], p["trunc_png"], p["trunc_jpg"]],
        "format_mismatch": [p["fake_png"]],
        "tiny": [p["tiny"]],
        "outliers": [p["huge"]],
        "modes": [p["cmyk"], p["sixteen"]],
        "exact": [
            sorted([str(src["blob/001.png"]), str(tr / "blob" / "copy_001.png")]),
            sorted([str(src["ring/002.png"]), str(te / "ring" / "leak_002.png")]),
            sorted([str(src["blob/003.png"]), str(tr / "ring" / "conflict_003.png")]),
        ],
        "near": [
            sorted([str(near_src["bars/004.png"]), str(te / "bars" / "near_jpeg.jpg")]),
            sorted([str(near_src["blob/005.png"]), str(tr / "blob" / "near_shift.png")]),
            sorted([str(near_src["ring/006.png"]), str(te / "ring" / "near_rescale.png")]),
        ],
        "flips": flips,
    }


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: content hash and modification time (ns)."""
    return {
        str(f): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
        for f in sorted(root.rglob("*"))
        if f.is_file()
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    root = make_dataset(tmp_path_factory.mktemp("audit") / "data")
    return root, plant(root)


@pytest.fixture(scope="module")
def audited(
    planted: tuple[Path, dict[str, list[str]]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, list[str]], dict, Path, dict[str, tuple[str, int]], str]:
    """The CLI run once over the planted dataset (two worker processes), with every output."""
    root, expected = planted
    before = snapshot(root)
    out = tmp_path_factory.mktemp("audit_out")
    args = ["data", "check", str(root), "--json", str(out / "a.json"), "--html",
            str(out / "a.html"), "--write-clean", str(out / "clean.csv"),
            "--workers", "2", "-q"]  # fmt: skip
    code = imagewise.cli.main(args)
    assert code == 0
    report = json.loads((out / "a.json").read_text())
    return root, expected, report, out, before, (out / "a.html").read_text()


def test_unreadable_and_odd_files_are_named(audited: tuple) -> None:
    _, expected, report, *_ = audited
    reasons = {e["path"]: e["reason"] for e in report["unreadable"]}
    assert sorted(reasons) == sorted(expected["unreadable"])
    assert reasons[expected["unreadable"][1]] == "the file is empty"
    assert "truncated" in reasons[expected["unreadable"][3]] or reasons[expected["unreadable"][3]]
    assert [e["path"] for e in report["format_mismatch"]] == expected["format_mismatch"]
    assert report["format_mismatch"][0]["format"] == "JPEG"
    assert [e["path"] for e in report["tiny"]] == expected["tiny"]
    assert [e["path"] for e in report["size_outliers"]] == expected["outliers"]
    modes = {m["mode"]: m for m in report["modes"]}
    assert modes["grayscale"]["paths"] == []  # the common mode is counted, not listed
    assert modes["CMYK"]["paths"] == [expected["modes"][0]]
    assert modes["16-bit"]["paths"] == [expected["modes"][1]]


def test_class_counts_per_split(audited: tuple) -> None:
    _, _, report, *_ = audited
    counts = {c["split"]: c for c in report["class_counts"]}
    assert set(counts) == {"train", "test"}
    assert counts["test"]["counts"] == {"bars": 11, "blob": 10, "ring": 12}
    assert counts["test"]["imbalance_ratio"] == 1.2


def test_exact_duplicates_within_and_across_splits(audited: tuple) -> None:
    _, expected, report, *_ = audited
    groups = {tuple(sorted(e["paths"])): e for e in report["exact_duplicates"]}
    assert sorted(groups) == sorted(tuple(g) for g in expected["exact"])
    within, leak, conflict = (groups[tuple(g)] for g in expected["exact"])
    assert not within["cross_split"] and not within["conflicting_labels"]
    assert leak["cross_split"] and leak["splits"] == ["train", "test"]
    assert conflict["conflicting_labels"] and sorted(conflict["labels"]) == ["blob", "ring"]


def test_near_duplicates_jpeg_shift_rescale(audited: tuple) -> None:
    _, expected, report, *_ = audited
    pairs = sorted(sorted(e["paths"]) for e in report["near_duplicates"])
    assert pairs == sorted(expected["near"])
    cross = {tuple(sorted(e["paths"])): e["cross_split"] for e in report["near_duplicates"]}
    assert cross[tuple(expected["near"][0])] and not cross[tuple(expected["near"][1])]


def test_flipped_labels_found(audited: tuple) -> None:
    _, expected, report, *_ = audited
    found = {e["path"]: e for e in report["label_issues"]}
    assert set(expected["flips"]) <= set(found)
    assert found[expected["flips"][0]]["suggested"] == "blob"
    # Only the flips (and the conflicting duplicate, whose label is wrong in one copy).
    assert set(found) - set(expected["flips"]) <= {
        p for g in expected["exact"] for p in g if "conflict" in p
    }


def test_user_files_untouched(audited: tuple) -> None:
    root, _, _, _, before, _ = audited
    assert snapshot(root) == before


def test_html_page_has_thumbnails_side_by_side(audited: tuple) -> None:
    *_, page = audited
    assert page.count("data:image/png;base64,") >= 2 * (3 + 3) + 3
    assert "conflicting labels" in page and "suggested" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_clean_manifest_leaves_out_flagged_and_trains(audited: tuple, tmp_path: Path) -> None:
    _, expected, _, out, _, _ = audited
    with open(out / "clean.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = {r["path"] for r in rows}
    flagged = expected["unreadable"] + expected["tiny"] + expected["flips"]
    assert not paths & set(flagged)
    assert {r["split"] for r in rows} == {"train", "test"}
    leak = expected["exact"][1]
    assert sum(p in paths for p in leak) == 1  # one copy stays, in train
    assert not paths & set(expected["exact"][2])  # conflicting labels: both go
    code = imagewise.cli.main(
        ["train", str(out / "clean.csv"), "--model", "lenet5", "--epochs", "1",
         "--batch-size", "16", "--out", str(tmp_path / "run"), "-q"]
    )  # fmt: skip
    assert code == 0
    assert (tmp_path / "run" / "meta.json").is_file()


def test_clean_control_set_flags_nothing(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "clean", seed=1)
    result = imagewise.check_data(str(root), show_progress=False)
    for kind in ("unreadable", "format_mismatch", "tiny", "size_outliers", "exact_duplicates",
                 "near_duplicates", "label_issues"):  # fmt: skip
        assert result[kind] == [], (kind, result[kind][:3])
    assert [m["mode"] for m in result["modes"]] == ["grayscale"]
    assert result.notes == []


def test_builtin_images_are_named_by_split_and_index(capsys: pytest.CaptureFixture[str]) -> None:
    result = check("digits", find_label_issues=False, show_progress=False)
    assert result.images == 1797 and result.splits == {"train": 1797}
    assert len(result["tiny"]) == 1797  # 8x8 digits are tiny by definition
    assert all(
        p.startswith("digits:train/") for g in result["exact_duplicates"] for p in g["paths"]
    )
    assert "label check not run" in result.summary()


def test_csv_manifest_and_idx_folder(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", per_class=(8, 0))
    manifest = tmp_path / "list.csv"
    files = sorted(root.rglob("*.png"))
    manifest.write_text("path,label\n" + "".join(f"{f},{f.parent.name}\n" for f in files))
    Image.open(files[0]).save(tmp_path / "again.png", compress_level=0)
    with manifest.open("a") as f:
        f.write(f"{tmp_path / 'again.png'},{files[0].parent.name}\n")
    result = check(str(manifest), find_label_issues=False, show_progress=False)
    assert result.kind == "csv" and result.images == 25
    assert [sorted(g["paths"]) for g in result["exact_duplicates"]] == [
        sorted([str(files[0]), str(tmp_path / "again.png")])
    ]
    idx = tmp_path / "idx"
    idx.mkdir()
    images = np.stack([np.asarray(Image.open(f)) for f in files])
    images[3] = images[0]
    header = bytes([0, 0, 8, 3]) + np.array(images.shape, ">i4").tobytes()
    (idx / "train-images-idx3-ubyte").write_bytes(header + images.tobytes())
    labels = np.array([KINDS.index(f.parent.name) for f in files], np.uint8)
    header = bytes([0, 0, 8, 1]) + np.array([len(labels)], ">i4").tobytes()
    (idx / "train-labels-idx1-ubyte").write_bytes(header + labels.tobytes())
    result = check(str(idx), find_label_issues=False, show_progress=False)
    assert result.kind == "idx"
    assert result["exact_duplicates"][0]["paths"] == [f"{idx}:train/0", f"{idx}:train/3"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["data", "check", "no/such/folder"], "does not exist"),
        (["data", "check", "digits", "--write-clean", "x.csv", "--no-label-check"], "in memory"),
        (["data", "check", "digits", "--workers", "0"], "--workers"),
        (["data", "check", "digits", "--json", "."], "is a folder"),
        (["data", "check", "MANIFEST", "--write-clean", "MANIFEST"], "part of the dataset"),
    ],
)
def test_bad_input_is_one_line(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if "MANIFEST" in args:  # a manifest given as its own clean output: refused, unchanged
        root = make_dataset(tmp_path / "data", per_class=(4, 0))
        manifest = tmp_path / "list.csv"
        rows = "".join(f"{f},{f.parent.name}\n" for f in sorted(root.rglob("*.png")))
        manifest.write_text("path,label\n" + rows)
        args = [str(manifest) if a == "MANIFEST" else a for a in args]
    before = snapshot(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert snapshot(tmp_path) == before
    assert code == 2
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
