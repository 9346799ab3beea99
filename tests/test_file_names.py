"""File names that are not UTF-8 (``caf\\xe9.png`` in Latin-1) or hold a carriage return: every
file imagewise writes them into reads back as the same file on disk."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

import imagewise
from imagewise.data.sources import resolve_source
from imagewise.names import CsvWriter, json_dumps, shown
from imagewise.predict.sorting import sort_images

from conftest import CLASSES, run_cli

LATIN1 = os.fsdecode(b"caf\xe9.png")  # 'caf\udce9.png'
CR = "a\rb.png"


def make_odd_folder(folder_data: Path, root: Path) -> Path:
    """Four images a class; one in each class is named ``caf\\xe9.png`` or ``a\\rb.png``."""
    for n, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        pngs = sorted((folder_data / cls).glob("*.png"))[:4]
        for i, png in enumerate(pngs):
            name = png.name if i else [LATIN1, CR, "plain.png"][n]
            with open(os.fsencode(root / cls) + b"/" + os.fsencode(name), "wb") as f:
                f.write(png.read_bytes())
    return root


@pytest.fixture
def odd(folder_data: Path, tmp_path: Path) -> Path:
    return make_odd_folder(folder_data, tmp_path / "odd")


def on_disk(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*.png")}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def test_the_helpers_round_trip_and_show() -> None:
    assert json.loads(json_dumps([LATIN1, "é"])) == [LATIN1, "é"]
    json_dumps([LATIN1]).encode("utf-8")  # valid UTF-8: no lone surrogate left in the text
    assert shown(LATIN1) == "caf\\xe9.png" and shown(CR) == "a\\rb.png"
    with open(Path(os.devnull), "w", newline="", errors="surrogateescape") as f:
        CsvWriter(f).writerow([LATIN1, CR])


def test_predict_csv_json_and_table(trained_run: Path, odd: Path, tmp_path: Path, capsys) -> None:
    table_code, table, _ = run_cli(["predict", str(trained_run), str(odd)], capsys)
    assert table_code == 0 and "caf\\xe9.png" in table and "a\\rb.png" in table
    csv_out, json_out = tmp_path / "p.csv", tmp_path / "p.json"
    for fmt, out in (("csv", csv_out), ("json", json_out)):
        code, _, err = run_cli(["predict", str(trained_run), str(odd), "--format", fmt, "--top-k",
                                "1", "--out", str(out)], capsys)  # fmt: skip
        assert code == 0, err
    assert {r["source"] for r in read_csv(csv_out)} == on_disk(odd)
    json_out.read_text(encoding="utf-8")  # valid UTF-8
    assert {p["source"] for p in json.loads(json_out.read_text())} == on_disk(odd)


def test_sort_into_lists_and_places_each_odd_name(trained_run: Path, odd: Path, tmp_path: Path):
    out = tmp_path / "sorted"
    first = sort_images(trained_run, [str(odd)], out)
    rows = read_csv(out / "predictions.csv")
    assert {r["source"] for r in rows} == on_disk(odd) and first.placed == len(rows) == 12
    assert all((out / r["destination"]).is_file() for r in rows)
    assert not list(out.rglob("*.part"))  # no temporary copies left
    again = sort_images(trained_run, [str(odd)], out)
    assert (again.placed, again.earlier) == (0, 12)  # the journal reads back every name


def test_data_check_outputs_and_the_clean_manifest(odd: Path, tmp_path: Path, capsys) -> None:
    report, page, clean = tmp_path / "c.json", tmp_path / "c.html", tmp_path / "clean.csv"
    code, _, err = run_cli(["data", "check", str(odd), "--json", str(report), "--html", str(page),
                            "--write-clean", str(clean), "-q"], capsys)  # fmt: skip
    assert code == 0, err
    json.loads(report.read_text(encoding="utf-8"))
    assert "caf\\xe9.png" in page.read_text(encoding="utf-8")
    listed = {r["path"] for r in read_csv(clean)}
    assert listed == {str(Path(p).resolve()) for p in on_disk(odd)}
    data = resolve_source(str(clean), val_fraction=0, test_fraction=0)
    assert set(data.train.paths or []) == listed  # train reads the manifest back: same files


def test_training_lists_an_odd_unreadable_name_in_skipped(odd: Path, tmp_path: Path) -> None:
    broken = os.fsencode(odd / "circle") + b"/br\xf6ken.png"
    with open(broken, "wb") as f:
        f.write(b"not an image")
    out = tmp_path / "run"
    imagewise.train(str(odd), out, epochs=1, model="lenet5", batch_size=4, val_fraction=0,
                    test_fraction=0, augment="none", show_progress=False)  # fmt: skip
    skipped = (out / "skipped.txt").read_text(encoding="utf-8", errors="surrogateescape")
    assert os.fsdecode(broken) in {line.split("\t")[0] for line in skipped.splitlines()}


def test_features_parquet_and_similar_html(trained_run: Path, odd: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    result = imagewise.features(trained_run, [str(odd)])
    table = pq.read_table(result.save(tmp_path / "f.parquet"))
    assert {os.fsdecode(b) for b in table.column("path_bytes").to_pylist()} == on_disk(odd)
    assert any("caf\\xe9.png" in p for p in table.column("path").to_pylist())
    query = [p for p in on_disk(odd) if p.endswith(LATIN1)]
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    found = imagewise.similar(run, query, str(odd), k=3)
    assert found.queries[0].matches[0].path == query[0]
    assert "caf\\xe9.png" in found.write(tmp_path / "s.html", "html").read_text(encoding="utf-8")
    written = json.loads(found.write(tmp_path / "s.json", "json").read_text(encoding="utf-8"))
    assert written["queries"][0]["query"] == query[0]
