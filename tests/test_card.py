"""The model card: every figure in MODEL_CARD.md equals the run's files, the Hugging Face header
parses, the author's fields appear, missing evidence says what to run, the page opens in
Chromium, and export carries the card."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import imagewise
import imagewise.cli
import imagewise.errors
from imagewise.card.header import header_values, render_header
from imagewise.predict.unknown import weights_sha256

from conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CLASSES = ["circle", "square", "stripes"]


def _write(path: Path, values: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


def _add_trust_files(run: Path) -> None:
    """Hand-written files in the formats the conformal, robustness and slices stages write."""
    metrics = json.loads((run / "eval/metrics.json").read_text())
    metrics["conformal"] = {
        "coverage_target": 0.9, "score": "aps", "per_class": False, "coverage": 0.9123,
        "mean_set_size": 1.4567, "calibration_images": 33,
        "per_class_coverage": {"circle": 0.95, "square": 0.8421, "stripes": 0.9375},
    }  # fmt: skip
    _write(run / "eval/metrics.json", metrics)
    digest = weights_sha256(run)
    _write(run / "conformal.json", {"format": "imagewise-conformal/1", "weights_sha256": digest,
                                    "thresholds": {"0.9": 0.87}})  # fmt: skip
    corrupted = [
        {"name": "gaussian_noise", "severity": 3, "accuracy": 0.5, "ece": 0.2512,
         "per_class_accuracy": {"circle": 0.25, "square": 0.75, "stripes": 0.5}},
        {"name": "jpeg", "severity": 1, "accuracy": 0.8333, "ece": 0.0712,
         "per_class_accuracy": {"circle": 0.875, "square": 0.625, "stripes": 1.0}},
    ]  # fmt: skip
    _write(run / "eval/robustness.json", {
        "format": "imagewise-robustness/1", "weights_sha256": digest,
        "data": metrics["data"], "split": metrics["split"],
        "clean": {"accuracy": 0.9583, "ece": 0.0421,
                  "per_class_accuracy": {"circle": 1.0, "square": 0.875, "stripes": 1.0}},
        "corruptions": corrupted,
    })  # fmt: skip
    _write(run / "eval/slices.json", {
        "format": "imagewise-slices/1", "column": "site", "weights_sha256": digest,
        "slices": [
            {"value": "north", "images": 9, "accuracy": 0.7778, "ece": 0.1234, "coverage": None},
            {"value": "south", "images": 15, "accuracy": 0.9333, "ece": 0.0567, "coverage": 0.9333},
        ],
    })  # fmt: skip


@pytest.fixture(scope="module")
def evaluated_copy(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny run, copied (the card writes into it) and evaluated."""
    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("card") / "shapes"))
    for folder in ("export", "eval"):  # what other tests may have added to the shared run
        shutil.rmtree(run / folder, ignore_errors=True)
    for name in ("MODEL_CARD.md", "model_card.html", "model_card.yaml", "unknown.json",
                 "knn_reference.npz", "drift_reference.json"):  # fmt: skip
        (run / name).unlink(missing_ok=True)
    imagewise.evaluate(run, report=False)
    return run


@pytest.fixture(scope="module")
def carded(evaluated_copy: Path, folder_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The evaluated run with every kind of evidence: a fitted unknown threshold, the hand-written
    trust files, a real audit; then its card written through the CLI with the author's fields."""
    from imagewise.predict.drift import run_drift_reference
    from imagewise.predict.unknown import run_min_confidence

    run = Path(shutil.copytree(evaluated_copy, evaluated_copy.parent / "full"))
    run_min_confidence(imagewise.load(run), run, 0.9)
    run_drift_reference(imagewise.load(run), run)  # what imagewise serve fits at first start
    _add_trust_files(run)
    audit = tmp_path_factory.mktemp("audit") / "audit.json"
    imagewise.check_data(str(folder_data), json_path=audit, find_label_issues=False,
                         workers=1, show_progress=False)  # fmt: skip
    args = ["card", str(run), "--audit", str(audit), "--intended-use", "Sorting test shapes.",
            "--license", "mit", "--author", "Shape team", "--author", "QA", "-q"]  # fmt: skip
    assert imagewise.cli.main(args) == 0
    return run, json.loads(audit.read_text())


def _sections(text: str) -> dict[str, str]:
    body = text.split("\n---\n", 1)[1]
    parts = re.split(r"^## (.+)$", body, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _facts(section: str) -> dict[str, str]:
    return dict(re.findall(r"^- \*\*(.+?)\*\*: (.+)$", section, flags=re.MULTILINE))


def _table(section: str, first_header: str) -> dict[str, list[str]]:
    """A Markdown table of the section (the one whose first header is given), by row name."""
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    start = next(i for i, ln in enumerate(lines) if ln.split("|")[1].strip() == first_header)
    rows = {}
    for line in lines[start + 2 :]:
        if line.startswith("|---"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if cells[0] in rows or cells[0] == first_header:
            break
        rows[cells[0]] = cells[1:]
    return rows


def _pct(text: str) -> float:
    assert text.endswith("%"), text
    return float(text[:-1]) / 100


def test_the_card_numbers_equal_the_run_files(carded) -> None:
    run, audit = carded
    md = _sections((run / "MODEL_CARD.md").read_text())
    metrics = json.loads((run / "eval/metrics.json").read_text())
    meta = json.loads((run / "meta.json").read_text())
    ev = _facts(md["Evaluation"])
    assert _pct(ev["accuracy"]) == pytest.approx(metrics["accuracy"], abs=5e-5)
    assert float(ev["macro F1"]) == pytest.approx(metrics["macro"]["f1"], abs=5e-5)
    assert float(ev["log loss"]) == pytest.approx(metrics["log_loss"], abs=5e-5)
    per_class = _table(md["Evaluation"], "class")
    assert list(per_class) == CLASSES
    for name, (p, r, f1, n) in per_class.items():
        stored = metrics["per_class"][name]
        assert [float(p), float(r), float(f1)] == pytest.approx(
            [stored["precision"], stored["recall"], stored["f1"]], abs=5e-5
        )
        assert int(n) == stored["support"]
    cal = _table(md["Calibration"], "")
    assert float(cal["after temperature scaling"][0]) == pytest.approx(
        metrics["calibration"]["ece_after"], abs=5e-5
    )
    assert float(_facts(md["Calibration"])["temperature"]) == pytest.approx(
        meta["calibration"]["temperature"], rel=1e-3
    )
    data = _facts(md["Training data"])
    assert int(data["training images"].replace(",", "")) == meta["data"]["train_images"]
    assert int(data["test images"].replace(",", "")) == meta["data"]["test_images"]
    assert int(_facts(md["Data audit"])["label issues"]) == len(audit["label_issues"])
    unknown = json.loads((run / "unknown.json").read_text())
    facts = _facts(md["Unknown answers and out-of-distribution inputs"])
    assert float(facts["min confidence (auto)"]) == pytest.approx(
        unknown["min_confidence"], abs=5e-5
    )
    assert _pct(facts["answers kept (coverage)"]) == pytest.approx(unknown["coverage"], abs=5e-5)


def test_the_trust_sections_equal_their_files(carded) -> None:
    run, _ = carded
    md = _sections((run / "MODEL_CARD.md").read_text())
    conformal = _facts(md["Prediction sets (conformal coverage)"])
    assert _pct(conformal["measured coverage"]) == 0.9123
    assert float(conformal["mean set size"]) == 1.457
    coverage = _table(md["Prediction sets (conformal coverage)"], "class")
    assert {k: _pct(v[0]) for k, v in coverage.items()} == pytest.approx(
        {"circle": 0.95, "square": 0.8421, "stripes": 0.9375}
    )
    sets = md["Prediction sets (conformal coverage)"]
    assert "Smallest class coverage: square, 84.21%." in sets
    assert "fitted on 33 images of the validation split, the split that also chose" in sets
    assert "not a test of the guarantee" not in sets and "empty sets" not in sets  # test split
    rob = _table(md["Robustness to corruptions"], "corruption")
    assert rob == {
        "clean": ["-", "95.83%", "0.0421", "square (87.50%)"],
        "gaussian_noise": ["3", "50.00%", "0.2512", "circle (25.00%)"],
        "jpeg": ["1", "83.33%", "0.0712", "square (62.50%)"],
    }
    slices = _table(md["Slices"], "site")
    assert slices == {  # worst first, as slices.json has them
        "north": ["9", "77.78%", "0.1234", "-"],
        "south": ["15", "93.33%", "0.0567", "93.33%"],
    }


def test_every_section_names_its_files_or_what_to_run(carded, evaluated_copy: Path) -> None:
    run, _ = carded
    for folder in (run, evaluated_copy):
        if not (folder / "MODEL_CARD.md").exists():
            imagewise.card(folder)
        for title, body in _sections((folder / "MODEL_CARD.md").read_text()).items():
            source = re.search(r"^Source: (.+)$", body, flags=re.MULTILINE)
            if source is None:  # no evidence: one line saying what to run instead
                assert re.fullmatch(r"\s*_(Not|No) [^\n]+ imagewise [^\n]+_\s*", body), title
                continue
            for name in re.findall(r"`([^`]+)`", source.group(1)):
                assert (folder / name).is_file() or name == "audit.json", (title, name)
    bare = _sections((evaluated_copy / "MODEL_CARD.md").read_text())
    assert "imagewise evaluate RUN --robustness" in bare["Robustness to corruptions"]
    assert "imagewise export RUN" in bare["Exported files"]
    unknown = bare["Unknown answers and out-of-distribution inputs"]
    assert "No drift reference: imagewise serve RUN fits one on the validation split" in unknown
    assert not re.search(r"\d", bare["Slices"])  # nothing invented
    # a folder dataset has no columns to slice by: a CSV manifest is needed first
    assert "slices need a CSV manifest with extra columns" in bare["Slices"]
    assert "this run's data is a folder dataset" in bare["Slices"]


def test_a_file_fitted_with_other_weights_is_left_out(evaluated_copy: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(evaluated_copy, tmp_path / "run"))
    _add_trust_files(run)
    _write(run / "conformal.json", {"format": "imagewise-conformal/1", "weights_sha256": "0" * 64})
    result = imagewise.card(run)
    section = _sections(result.text)["Prediction sets (conformal coverage)"]
    assert "conformal.json was made with other weights" in section
    assert "Source: `eval/metrics.json`\n" in section  # the measured coverage only


def test_evidence_of_other_weights_or_images_is_left_out(evaluated_copy, tmp_path) -> None:
    run = Path(shutil.copytree(evaluated_copy, tmp_path / "run"))
    _add_trust_files(run)
    robustness = json.loads((run / "eval/robustness.json").read_text())
    _write(run / "eval/robustness.json", {**robustness, "split": "val"})  # an older evaluation's
    slices = json.loads((run / "eval/slices.json").read_text())
    _write(run / "eval/slices.json", {**slices, "weights_sha256": "1" * 64})
    sections = _sections(imagewise.card(run).text)
    robustness_notes = sections["Robustness to corruptions"]
    assert "eval/robustness.json was measured on other images than eval/metrics.json" in (
        robustness_notes
    )
    assert "other weights" not in robustness_notes
    slices_notes = sections["Slices"]
    assert "eval/slices.json was made with other weights than the run's current ones" in (
        slices_notes
    )
    assert "other images" not in slices_notes
    for title in ("Robustness to corruptions", "Slices"):
        assert "Not measured" in sections[title] and "%" not in sections[title]
    metrics = json.loads((run / "eval/metrics.json").read_text())
    assert metrics["weights_sha256"] == weights_sha256(run)  # evaluate records what it measured
    _write(run / "eval/metrics.json", {**metrics, "weights_sha256": "2" * 64})
    with pytest.raises(imagewise.errors.UserError, match="measured other weights than the run's"):
        imagewise.card(run)


def test_the_hugging_face_header_parses_with_the_expected_keys(carded, monkeypatch) -> None:
    run, _ = carded
    text = (run / "MODEL_CARD.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    metrics = json.loads((run / "eval/metrics.json").read_text())
    assert header["library_name"] == "imagewise" and header["license"] == "mit"
    assert header["pipeline_tag"] == "image-classification"
    assert {"imagewise", "image-classification", "resnet9_tiny"} <= set(header["tags"])
    (result,) = header["model-index"][0]["results"]
    assert header["model-index"][0]["name"] == "full"
    assert result["dataset"]["split"] == "test"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"accuracy": metrics["accuracy"], "f1": metrics["macro"]["f1"]}  # not retyped
    # without huggingface_hub the same keys are written by yaml.safe_dump
    from imagewise.card.evidence import read_evidence
    from imagewise.card.fields import CardFields

    fields = CardFields(license="mit", authors=("Shape team", "QA"))
    values = header_values(read_evidence(run), fields, "full")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert yaml.safe_load(render_header(values)) == header


def test_the_authors_fields_from_yaml_and_flags(evaluated_copy, tmp_path, capsys) -> None:
    run = Path(shutil.copytree(evaluated_copy, tmp_path / "run"))
    card_yaml = tmp_path / "card.yaml"
    card_yaml.write_text(
        "intended_use: Sorting shapes on a line.\nout_of_scope: Faces.\n"
        "limitations: Only three shapes.\nlicense: apache-2.0\nauthors: [Line team]\n"
    )
    code, out, _ = run_cli(["card", str(run), "--card-yaml", str(card_yaml),
                            "--license", "mit", "--name", "shapes-v2"], capsys)  # fmt: skip
    assert code == 0 and f"wrote {run / 'MODEL_CARD.md'} and {run / 'model_card.html'}" in out
    text = (run / "MODEL_CARD.md").read_text()
    facts = _facts(_sections(text)["Intended use"])
    assert facts == {
        "intended use": "Sorting shapes on a line.", "out of scope": "Faces.",
        "limitations": "Only three shapes.", "license": "mit", "authors": "Line team",
    }  # fmt: skip
    assert "# Model card: shapes-v2" in text
    card_yaml.write_text("intended_use: x\nwarranty: none\n")
    code, _, err = run_cli(["card", str(run), "--card-yaml", str(card_yaml)], capsys)
    assert code == 2 and err.count("\n") == 1 and "unknown card field 'warranty'" in err


def test_no_evaluation_is_one_line_and_exit_2_unless_evaluate(
    trained_run, tmp_path, capsys
) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    shutil.rmtree(run / "eval", ignore_errors=True)
    code, _, err = run_cli(["card", str(run)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"'{run}' has no eval/metrics.json; run 'imagewise evaluate {run}' first" in err
    assert not (run / "MODEL_CARD.md").exists()
    code, _, _ = run_cli(["card", str(run), "--evaluate", "-q"], capsys)
    assert code == 0 and (run / "eval/metrics.json").is_file()
    accuracy = json.loads((run / "eval/metrics.json").read_text())["accuracy"]
    assert f"**accuracy**: {100 * accuracy:.2f}%" in (run / "MODEL_CARD.md").read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_the_card_page_opens_in_headless_chromium(carded) -> None:
    from playwright.sync_api import sync_playwright

    run, _ = carded
    page_file = run / "model_card.html"
    assert "http://" not in page_file.read_text() and "https://" not in page_file.read_text()
    accuracy = json.loads((run / "eval/metrics.json").read_text())["accuracy"]
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        shown = page.inner_text("#summary .card b")
        label = page.inner_text("#summary .card span")
        sections = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
        rows = page.locator("#per-class tbody tr").count()
        align = page.evaluate(
            "Array.from(document.querySelectorAll('#corruptions tbody tr:nth-child(2) td'))"
            ".map(td => getComputedStyle(td).textAlign)"
        )
        background = page.evaluate(
            "getComputedStyle(document.querySelector('header')).backgroundColor"
        )
        browser.close()
    assert errors == []
    assert (label, shown) == ("accuracy", f"{100 * accuracy:.2f}%")
    assert sections == ["summary", "model", "intended-use", "data", "audit", "evaluation",
                        "calibration", "conformal", "unknown", "robustness", "slices", "export",
                        "hub-header"]  # fmt: skip
    assert rows == len(CLASSES)
    # corruption, severity, accuracy, ECE, worst class: text left, numbers right
    assert align == ["left", "right", "right", "right", "left"]
    assert background == "rgb(29, 36, 48)"  # the report's style: #1d2430


def test_export_embeds_the_card_in_the_onnx_metadata(carded, tmp_path) -> None:
    import onnx

    run, _ = carded
    out = tmp_path / "model.onnx"
    result = imagewise.export(run, "onnx", out=out)
    card_text = (run / "MODEL_CARD.md").read_text()
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["model_card"] == card_text
    assert imagewise.load(out).file_metadata["model_card"] == card_text
    # the export's parity record is evidence for the next card
    section = _sections(imagewise.card(run).text)["Exported files"]
    row = _table(section, "file")["model.onnx"]
    assert _pct(row[3]) == pytest.approx(result.parity["top1_agreement"], abs=5e-5)
    assert result.parity["weights_sha256"] == weights_sha256(run)
    assert "Left out" not in section and "does not record which weights" not in section


def test_the_web_export_folder_carries_the_card(carded, tmp_path) -> None:
    from imagewise.export import onnxruntime_web
    from imagewise.export.web import read_model

    try:
        onnxruntime_web.onnxruntime_web()
    except imagewise.errors.UserError as exc:
        pytest.skip(f"onnxruntime-web's files are not here and cannot be downloaded: {exc}")
    run, _ = carded
    folder = imagewise.export(run, "web", out=tmp_path / "web").path
    card_text = (run / "MODEL_CARD.md").read_text()
    assert (folder / "MODEL_CARD.md").read_text() == card_text
    assert read_model(folder)["metadata"]["model_card"] == card_text


def test_an_older_flat_parity_file_is_read_as_its_files_record(evaluated_copy, tmp_path) -> None:
    run = Path(shutil.copytree(evaluated_copy, tmp_path / "run"))
    record = {"file": str(run / "export/model.onnx"), "format": "onnx", "precision": "float32",
              "images": 24, "split": "val", "runtime": "ONNX Runtime", "top1_agreement": 1.0,
              "max_abs_probability_difference": 2.5e-7, "accuracy_exported": 0.9583,
              "accuracy_pytorch": 0.9583, "passed": True}  # fmt: skip
    _write(run / "export/parity.json", record)
    section = _sections(imagewise.card(run).text)["Exported files"]
    assert _table(section, "file")["model.onnx"] == [
        "onnx", "float32", "24 val images (ONNX Runtime)", "100.00%", "2.5e-07", "95.83%",
        "95.83%", "yes",
    ]  # fmt: skip
    _write(run / "eval/slices.json", {"format": "imagewise-slices/9", "column": "site"})
    code_line = "has format 'imagewise-slices/9', not 'imagewise-slices/1'"
    with pytest.raises(imagewise.errors.UserError, match=code_line):
        imagewise.card(run)


def test_export_leaves_out_a_card_of_other_weights(carded, tmp_path, caplog) -> None:
    import onnx
    from safetensors.torch import load_file, save_file

    run = Path(shutil.copytree(carded[0], tmp_path / "run"))
    weights = load_file(run / "model.safetensors")  # retrained: other weights, the old card
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first] = weights[first] + 0.01
    save_file(weights, run / "model.safetensors")
    with caplog.at_level("WARNING", logger="imagewise"):
        result = imagewise.export(run, "onnx", out=tmp_path / "model.onnx")
    props = {p.key for p in onnx.load(str(result.path)).metadata_props}
    assert "model_card" not in props
    warned = [r.getMessage() for r in caplog.records if "MODEL_CARD.md" in r.getMessage()]
    assert warned == [
        "MODEL_CARD.md describes other weights than the run's; the export carries no card: "
        f"run 'imagewise card {run}' again to carry one"
    ]


def test_parity_records_of_other_weights_are_left_out(evaluated_copy, tmp_path) -> None:
    run = Path(shutil.copytree(evaluated_copy, tmp_path / "run"))
    record = {"format": "onnx", "precision": "float32", "images": 24, "split": "val",
              "runtime": "ONNX Runtime", "top1_agreement": 1.0,
              "max_abs_probability_difference": 2.5e-7, "accuracy_exported": 0.9583,
              "accuracy_pytorch": 0.9583, "passed": True}  # fmt: skip
    files = {
        "model.onnx": {**record, "weights_sha256": weights_sha256(run)},
        "model.pt": {**record, "format": "torchscript", "weights_sha256": "3" * 64},
        "model.xml": {**record, "format": "openvino"},  # an older record: no weights named
    }
    _write(run / "export/parity.json", {"format": "imagewise-parity/1", "files": files})
    section = _sections(imagewise.card(run).text)["Exported files"]
    assert list(_table(section, "file")) == ["model.onnx", "model.xml"]
    assert "Left out: model.pt, exported from other weights than the run's current ones" in section
    assert "does not record which weights model.xml came from" in section
    files = {"model.pt": files["model.pt"]}  # only files of other weights: nothing to show
    _write(run / "export/parity.json", {"format": "imagewise-parity/1", "files": files})
    section = _sections(imagewise.card(run).text)["Exported files"]
    assert "Left out: model.pt" in section and "_No export of these weights checked yet" in section


def test_an_audit_of_other_data_is_refused(carded, tmp_path) -> None:
    run, audit = carded
    run = Path(shutil.copytree(run, tmp_path / "run"))
    other = tmp_path / "other.json"
    _write(other, {**audit, "source": "digits"})
    trained_on = yaml.safe_load((run / "config.yaml").read_text())["data"]["source"]
    with pytest.raises(imagewise.errors.UserError) as caught:
        imagewise.card(run, audit=other)
    assert str(caught.value) == (
        f"'{other}' audited 'digits', but the run was trained on '{trained_on}'; audit that "
        f"with imagewise data check {trained_on} --json FILE"
    )
    no_source = {k: v for k, v in audit.items() if k != "source"}
    _write(other, no_source)  # an audit naming no source: its image count is compared
    facts = _facts(_sections(imagewise.card(run, audit=other).text)["Data audit"])
    assert facts["images checked"].startswith(f"{audit['images']} (")
    _write(other, {**no_source, "images": audit["images"] + 5})
    with pytest.raises(imagewise.errors.UserError, match=r"checked \d+ images, but the run was"):
        imagewise.card(run, audit=other)


def test_conformal_notes_on_the_validation_split(evaluated_copy, tmp_path) -> None:
    run = Path(shutil.copytree(evaluated_copy, tmp_path / "run"))
    _add_trust_files(run)
    metrics = json.loads((run / "eval/metrics.json").read_text())
    metrics["split"] = "val"  # evaluated on the calibration images themselves
    metrics["conformal"].update(empty_sets=0.0675, non_empty=False)
    _write(run / "eval/metrics.json", metrics)
    section = _sections(imagewise.card(run).text)["Prediction sets (conformal coverage)"]
    assert _facts(section)["empty sets"] == "6.75%"
    assert "The thresholds were fitted on 33 images of the validation split" in section
    assert "measured on the calibration images themselves, so it is not a test" in section


def test_text_cells_of_the_page_are_left_aligned(carded) -> None:
    page = (carded[0] / "model_card.html").read_text()
    assert '<td class="text">square (87.50%)</td>' in page  # the worst class: text
    assert "<td>95.83%</td>" in page and ".text{text-align:left}" in page  # numbers stay right


def test_the_drift_reference_serve_alarms_on(carded, tmp_path) -> None:
    run, _ = carded
    drift = json.loads((run / "drift_reference.json").read_text())
    section = _sections((run / "MODEL_CARD.md").read_text())[
        "Unknown answers and out-of-distribution inputs"
    ]
    assert "`drift_reference.json`" in re.search(r"^Source: (.+)$", section, re.M).group(1)
    facts = _facts(section)
    threshold, above = re.fullmatch(
        r"(\S+) \(the validation split's 95th percentile: (\d+) of (\d+) images above it\)",
        facts["energy OOD threshold"],
    ).groups()[:2]
    assert float(threshold) == pytest.approx(drift["ood_threshold"], abs=5e-5)
    assert int(above) == drift["ood_above"]
    mean, std = re.fullmatch(
        r"(\S+) \(std (\S+)\)", facts["validation mean top probability"]
    ).groups()
    assert [float(mean), float(std)] == pytest.approx(
        [drift["mean_confidence"], drift["confidence_std"]], abs=5e-5
    )
    assert facts["drift reference fitted on"] == f"{drift['images']} validation images"
    assert "imagewise serve raises a drift alarm" in section and "GET /v1/drift" in section
    other = Path(shutil.copytree(run, tmp_path / "run"))
    _write(other / "drift_reference.json", {**drift, "weights_sha256": "4" * 64})
    section = _sections(imagewise.card(other).text)[
        "Unknown answers and out-of-distribution inputs"
    ]
    assert "drift_reference.json was made with other weights than the run's current ones" in section
    assert "energy OOD threshold" not in section and "drift alarm" not in section


def test_a_card_written_again_keeps_the_authors_fields(carded, tmp_path, capsys) -> None:
    run = Path(shutil.copytree(carded[0], tmp_path / "run"))
    kept = run / "model_card.yaml"
    audit = tmp_path / "audit.json"
    _write(audit, carded[1])
    code, out, _ = run_cli(["card", str(run), "--audit", str(audit), "-q"], capsys)
    assert code == 0 and f"author's fields: flags over {kept} (kept from an earlier card)" in out
    code, out, _ = run_cli(["card", str(run), "-q"], capsys)  # no flags: the kept fields
    assert code == 0 and f"  author's fields: {kept} (kept from an earlier card)\n" in out
    md = _sections((run / "MODEL_CARD.md").read_text())
    assert _facts(md["Intended use"]) == {
        "intended use": "Sorting test shapes.", "license": "mit", "authors": "Shape team, QA",
    }  # fmt: skip
    assert _facts(md["Data audit"])["images checked"].startswith(f"{carded[1]['images']} (")
    code, _, _ = run_cli(["card", str(run), "--license", "apache-2.0", "-q"], capsys)
    assert yaml.safe_load(kept.read_text()) == {  # field by field: the flag wins, the rest kept
        "intended_use": "Sorting test shapes.", "license": "apache-2.0",
        "authors": ["Shape team", "QA"], "audit": str(audit.resolve()),
    }  # fmt: skip
    assert (
        "apache-2.0"
        in _facts(_sections((run / "MODEL_CARD.md").read_text())["Intended use"])["license"]
    )
    audit.unlink()  # the kept audit is gone: one line, and the section is not run
    code, out, err = run_cli(["card", str(run), "-q"], capsys)
    assert code == 0 and err == ""
    assert [ln for ln in out.splitlines() if str(audit.resolve()) in ln] == [
        f"  audit: {audit.resolve()} (kept from an earlier card) no longer exists; the data "
        "audit is left as not run"
    ]
    assert (
        "_Not run: imagewise data check"
        in _sections((run / "MODEL_CARD.md").read_text())["Data audit"]
    )


def test_a_licence_the_hub_does_not_accept_is_a_warning(evaluated_copy, tmp_path, caplog) -> None:
    run = Path(shutil.copytree(evaluated_copy, tmp_path / "run"))
    with caplog.at_level("WARNING", logger="imagewise"):
        result = imagewise.card(run, license="MIT")
    assert [r.getMessage() for r in caplog.records] == [
        "licence 'MIT' is not one the Hugging Face Hub accepts "
        "(https://huggingface.co/docs/hub/repositories-licenses); did you mean 'mit'?"
    ]
    assert result.header["license"] == "MIT"  # a warning, not a refusal
    caplog.clear()
    with caplog.at_level("WARNING", logger="imagewise"):
        imagewise.card(run, license="my-licence")
        assert "or 'other'" in caplog.records[-1].getMessage()
        caplog.clear()
        for accepted in ("mit", "cc-by-nc-sa-4.0", "other"):
            imagewise.card(run, license=accepted)
    assert caplog.records == []
