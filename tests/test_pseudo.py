"""Labels added after the fact (``--add-labels``) and self-training (``--unlabelled``)."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imagewise
from imagewise.config import DataConfig, RunConfig, apply_options
from imagewise.data.extra import resolve_data
from imagewise.edge.unknown import fit_min_confidence
from imagewise.io import read_json
from imagewise.predict.predictor import load_run
from imagewise.runtime.run_data import decode_split, run_split

from conftest import CLASSES, draw, make_folder_dataset, run_cli


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def draw_files(folder: Path, kinds: list[str], size: int = 32, seed: int = 1) -> list[Path]:
    """One new picture per entry of ``kinds``, saved as PNG under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i, kind in enumerate(kinds):
        file = folder / f"{kind}-{i:03d}.png"
        draw(kind, size, rng, rgb=False).save(file)
        files.append(file)
    return files


def test_add_labels_reach_an_in_memory_split(tmp_path: Path) -> None:
    """digits holds decoded 8x8 images: added files are decoded at that size, one channel,
    appended with their class by name; a row with split val goes to validation."""
    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    manifest = write_manifest(
        tmp_path / "labels.csv",
        [
            {"path": "new/0.png", "label": "7", "labelled_by": "person"},
            {"path": "new/1.png", "label": "3", "labelled_by": "machine", "probability": "0.99"},
            {"path": str(folder / "2.png"), "label": "5", "split": "val"},
        ],
    )
    base = resolve_data(DataConfig(source="digits"))
    cfg = apply_options(RunConfig(), {"add_labels": str(manifest)})  # one value: a list
    assert cfg.data.add_labels == [str(manifest)]
    data = resolve_data(DataConfig(source="digits", add_labels=cfg.data.add_labels))
    assert len(data.train) == len(base.train) + 2 and len(data.val) == len(base.val) + 1
    assert data.train.images is not None and data.val.images is not None
    assert data.train.images.shape[1:] == (1, 8, 8)
    assert data.train.labels[-2:].tolist() == [7, 3]
    assert data.val.labels[-1] == 5
    assert int(data.train.images[-1].float().mean()) == 60  # 1.png: gray 60, resized


def test_add_labels_reach_a_folder_split(tmp_path: Path) -> None:
    """Folder data: new files appended as paths; an image already in the data is not added
    twice: a person's label replaces the data's, a machine's does not; the later row wins."""
    data_dir = make_folder_dataset(tmp_path / "shapes", per_class=6, corrupt=False)
    new = draw_files(tmp_path / "new", ["circle", "square"])
    known_circle = data_dir / "circle" / "001.png"
    known_square = data_dir / "square" / "002.png"
    manifest = write_manifest(
        tmp_path / "labels.csv",
        [
            {"path": "new/" + new[0].name, "label": "square", "labelled_by": "person"},
            {"path": str(new[1]), "label": "square", "labelled_by": "machine"},
            {"path": str(known_circle), "label": "stripes", "labelled_by": "person"},
            {"path": str(known_square), "label": "circle", "labelled_by": "machine"},
            {"path": "new/" + new[0].name, "label": "circle", "labelled_by": "person"},
        ],
    )
    cfg = DataConfig(source=str(data_dir))
    base = resolve_data(cfg)
    cfg.add_labels = [str(manifest)]
    data = resolve_data(cfg)

    def labels_of(split) -> dict[str, str]:
        return {
            str(Path(p).resolve()): CLASSES[i]
            for p, i in zip(split.paths, split.labels, strict=True)
        }

    every = {**labels_of(data.train), **labels_of(data.val), **labels_of(data.test)}
    assert len(data.train) == len(base.train) + 2
    assert len(every) == sum(len(s) for s in (data.train, data.val, data.test))  # no doubles
    assert every[str(new[0].resolve())] == "circle"  # the later row
    assert every[str(new[1].resolve())] == "square"
    assert every[str(known_circle.resolve())] == "stripes"  # a person relabels
    assert every[str(known_square.resolve())] == "square"  # a machine does not


def test_unknown_class_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = make_folder_dataset(tmp_path / "shapes", per_class=4, corrupt=False)
    new = draw_files(tmp_path / "new", ["circle", "circle"])
    manifest = write_manifest(
        tmp_path / "labels.csv",
        [{"path": str(new[0]), "label": "circle"}, {"path": str(new[1]), "label": "zebra"}],
    )
    args = ["train", str(data_dir), "--add-labels", str(manifest), "--out", str(tmp_path / "r")]
    code, _, err = run_cli([*args, "--epochs", "1", "-q"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "line 3" in lines[0] and "'zebra'" in lines[0]
    assert not (tmp_path / "r" / "meta.json").exists()


def noise_files(folder: Path, count: int, seed: int) -> list[Path]:
    """Pictures of nothing (gray noise): no class fits them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        file = folder / f"noise-{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(file)
        files.append(file)
    return files


@pytest.fixture(scope="module")
def self_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run trained with --unlabelled on a small shapes set and a pool of new shapes, noise,
    one unreadable file and a link to a labelled image. Noise added to the validation split
    (--add-labels, split val) makes the teacher's answers there imperfect, so the threshold
    fitted for precision 0.9 is above 0 and the pool's noise falls below it."""
    root = tmp_path_factory.mktemp("pseudo")
    data_dir = make_folder_dataset(root / "shapes", per_class=16, corrupt=False)
    hard = noise_files(root / "hard", 6, seed=3)
    rows = [{"path": str(f), "label": CLASSES[i % 3], "split": "val"} for i, f in enumerate(hard)]
    manifest = write_manifest(root / "hard.csv", rows)
    pool = root / "pool"
    draw_files(pool, [kind for kind in CLASSES for _ in range(6)], seed=5)
    noise_files(pool, 4, seed=4)
    (pool / "broken.png").write_bytes(b"not a png")
    # a link to a labelled image: the same resolved path, left out of the pool
    (pool / "known.jpg").symlink_to(data_dir / "circle" / "000.jpg")
    out = root / "run"
    args = f"train {data_dir} --add-labels {manifest} --unlabelled {pool} --out {out} -q"
    flags = "--model resnet9_tiny --epochs 6 --batch-size 8 --augment light --val-fraction 0.25"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = imagewise.cli.main(
            [*args.split(), *flags.split(), "--pseudo-precision", "0.9", "-q"]
        )
    assert code == 0
    record = read_json(out / "meta.json")["pseudo_labels"]
    said = f"pseudo-labelled {record['labelled']:,} of {record['pool_images']:,} pool images"
    assert said in printed.getvalue()  # the one line, even with -q
    return out, pool


def test_unlabelled_records_the_threshold_and_share(self_trained: tuple[Path, Path]) -> None:
    """meta.json's record against a recomputation from the teacher's outputs: the threshold
    fitted on its validation split, the share of the pool kept, the labels its argmax."""
    run, pool = self_trained
    record = read_json(run / "meta.json")["pseudo_labels"]
    teacher = load_run(run / "teacher")
    classes = list(teacher.classes)
    part = run_split(run / "teacher", classes, ("val",), None, "check")
    images, labels = decode_split(part, classes, teacher.preprocessing)
    probs = teacher.image_probabilities(images).numpy()
    fit = fit_min_confidence(probs.max(axis=1), probs.argmax(axis=1) == labels, 0.9)
    assert record["threshold"] == pytest.approx(fit.min_confidence, abs=1e-6)
    assert record["val_precision"] == pytest.approx(fit.precision)
    assert record["val_images"] == len(labels) == 12 + 6 and record["target_precision"] == 0.9
    assert record["threshold"] > 0  # the noise in validation: not every answer may be kept

    files = sorted(p for p in pool.iterdir() if p.suffix == ".png" and p.name != "broken.png")
    pool_probs = torch.cat(
        [teacher.image_probabilities(torch.from_numpy(teacher.read(p))[None]) for p in files]
    )
    top = pool_probs.max(dim=1).values.numpy()
    sure = top >= record["threshold"]
    assert record["pool_images"] == len(files) + 1 and record["unreadable"] == 1
    assert record["labelled"] == int(sure.sum())
    assert record["share"] == pytest.approx(sure.sum() / (len(files) + 1))

    with open(run / "pseudo_labels.csv", newline="") as f:
        rows = {str(Path(r["path"]).resolve()): r for r in csv.DictReader(f)}
    expected = {
        str(p.resolve()): classes[int(pool_probs[i].argmax())]
        for i, p in enumerate(files)
        if sure[i]
    }
    assert {p: r["label"] for p, r in rows.items()} == expected  # nothing below the threshold
    assert all(r["labelled_by"] == "machine" for r in rows.values())
    assert all(float(r["probability"]) >= record["threshold"] - 1e-6 for r in rows.values())


def test_self_trained_run_trains_on_them_and_still_works(
    self_trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The student's config names the pseudo-labels, its training split holds them, and it
    evaluates and predicts like any run."""
    run, pool = self_trained
    record = read_json(run / "meta.json")["pseudo_labels"]
    teacher_meta = read_json(run / "teacher" / "meta.json")
    student_meta = read_json(run / "meta.json")
    added = student_meta["data"]["train_images"] - teacher_meta["data"]["train_images"]
    assert added == record["labelled"]
    from imagewise.config import load_config_file

    cfg = load_config_file(run / "config.yaml")
    assert record["labelled"] > 0
    assert cfg.data.add_labels[-1] == "pseudo_labels.csv"  # the run folder's own
    assert Path(cfg.data.add_labels[0]).name == "hard.csv"  # the user's, recorded absolute
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)  # the pseudo-labels travel with the run folder
    code, out, _ = run_cli(["evaluate", str(moved), "--no-report"], capsys)
    assert code == 0, out
    assert (
        read_json(moved / "eval" / "metrics.json")["images"] == student_meta["data"]["test_images"]
    )
    image = next(p for p in pool.iterdir() if p.suffix == ".png" and p.name != "broken.png")
    code, out, _ = run_cli(["predict", str(run), str(image)], capsys)
    assert code == 0 and any(c in out for c in CLASSES)
    code, out, err = run_cli(["card", str(moved)], capsys)
    assert code == 0, err
    card = (moved / "MODEL_CARD.md").read_text()
    assert f"pseudo-labelled {record['labelled']:,} of {record['pool_images']:,}" in card
    assert "pseudo_labels.csv" in card  # among the labels added


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--pseudo-precision", "1.5"], "--pseudo-precision must be between 0 and 1"),
        (["--resume"], "does not take --resume"),
    ],
)
def test_unlabelled_refusals_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], words: str
) -> None:
    data_dir = make_folder_dataset(tmp_path / "shapes", per_class=4, corrupt=False)
    pool = tmp_path / "pool"
    draw_files(pool, ["circle"])
    out = tmp_path / "run"
    if "--resume" in flags:  # something to resume, so the resume check itself passes
        out.mkdir()
        (out / "last.ckpt").write_bytes(b"")
    data = [] if "--resume" in flags else [str(data_dir)]
    args = ["train", *data, "--unlabelled", str(pool), "--out", str(out), *flags, "-q"]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err


def test_resuming_the_student_keeps_its_data_and_record(
    self_trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume reads the pseudo-labels from config.yaml (the same training split) and keeps
    meta.json's record. Last in the file: it trains the shared run further."""
    run, _ = self_trained
    before = read_json(run / "meta.json")
    code, _, err = run_cli(["train", "--resume", "--out", str(run), "--epochs", "7", "-q"], capsys)
    assert code == 0, err
    after = read_json(run / "meta.json")
    assert after["data"]["train_images"] == before["data"]["train_images"]
    assert after["pseudo_labels"] == before["pseudo_labels"]
    assert after["training"]["epochs_run"] == 7


def test_an_unreachable_precision_keeps_nothing_instead_of_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from imagewise.train.pseudo import NOTHING_KEPT, fit_or_keep_nothing

    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    right = np.array([False, True, True, False])  # the surest answer is wrong
    with caplog.at_level("WARNING", logger="imagewise"):
        fit = fit_or_keep_nothing(confidence, right, 0.95)
    assert fit.min_confidence == NOTHING_KEPT == 1.0 and fit.coverage == 0.0
    assert fit.precision == pytest.approx(2 / 3)  # the best prefix: 0.9, 0.8, 0.7
    assert "at no confidence threshold on its 4 validation images (at best 0.667)" in caplog.text
    assert fit_or_keep_nothing(confidence, right, 0.6).min_confidence == 0.7  # reachable: fitted
