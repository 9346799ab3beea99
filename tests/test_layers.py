"""The layered core: typed run metadata end to end, capabilities instead of model names, and
library calls that leave the process as they found it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import imagewise
from imagewise.config import resumable_options
from imagewise.errors import UserError
from imagewise.runtime.meta import FORMAT, Capabilities
from imagewise.runtime.runs import RunFolder


def test_train_writes_typed_metadata_that_every_stage_reads(trained_run: Path) -> None:
    raw = json.loads((trained_run / "meta.json").read_text())
    assert raw["format"] == FORMAT
    assert raw["model"]["capabilities"] == {"fit": "gradient", "onnx_export": True, "gradcam": True}
    meta = RunFolder.of(trained_run).read_meta()
    assert meta.model.name == "resnet9_tiny" and meta.classes == ["circle", "square", "stripes"]
    clf = imagewise.load(trained_run)
    assert clf.name == "resnet9_tiny" and clf.capabilities == Capabilities()
    # one object says what the model expects: the run's spec is the classifier's
    assert clf.spec is clf.run_meta.spec and clf.preprocessing is clf.run_meta.spec.input


def test_a_bad_metadata_field_is_one_line_naming_it(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    meta = json.loads((run / "meta.json").read_text())
    meta["preprocessing"]["img_size"] = 100000  # a run folder from elsewhere, edited
    (run / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as err:
        imagewise.load(run)
    assert str(err.value) == (
        f"meta.json of '{run}': preprocessing.img_size is 100000; it must be a whole number 8-4096"
    )


def test_a_one_pass_model_is_handled_by_its_declared_capabilities(
    folder_data: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from imagewise.serve import ServeSettings, create_app

    run = tmp_path / "hog"
    imagewise.train(str(folder_data), run, model="hog_svm", show_progress=False)
    meta = RunFolder.of(run).read_meta()
    assert meta.spec.capabilities == Capabilities("one_pass", False, False)
    clf = imagewise.load(run)
    with pytest.raises(UserError, match="'hog_svm' is a classical model"):
        imagewise.explain(run, [str(next((folder_data / "square").glob("*.png")))])
    with pytest.raises(UserError, match="declares no ONNX or TorchScript graph"):
        imagewise.export(run)
    client = TestClient(create_app(clf, ServeSettings()))
    info = client.get("/v1/info").json()
    assert info["model"] == "hog_svm" and info["gradcam"] is False and info["backend"] == "pytorch"


def test_a_library_call_leaves_the_process_as_it_found_it(
    folder_data: Path, tmp_path: Path
) -> None:
    import matplotlib

    class BusyMachine:
        """As the thread governor (or any hook) may: fewer threads in the middle of a run."""

        def on_epoch_end(self, state: object) -> None:
            torch.set_num_threads(1)

    def process_state() -> tuple[object, ...]:
        logger = logging.getLogger("imagewise")
        return (
            torch.get_num_threads(), logger.level, list(logger.filters), Image.MAX_IMAGE_PIXELS,
            matplotlib.get_backend(),
        )  # fmt: skip

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's backend, not the Agg that figures draw with
    try:
        before = process_state()
        imagewise.train(
            str(folder_data), tmp_path / "r", epochs=2, model="lenet5", batch_size=8,
            augment="none", show_progress=False, hooks=[BusyMachine()],
        )  # fmt: skip
        assert process_state() == before
    finally:
        matplotlib.use(backend)
    assert (tmp_path / "r" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resumable_settings_are_declared_on_the_config_fields() -> None:
    # Adding a resumable flag is one field with metadata=RESUMABLE; the check and its message
    # follow from it.
    assert resumable_options() == ["workers", "epochs", "device", "precision", "compile"]


def test_the_functions_and_the_stage_modules_are_both_reachable() -> None:
    import inspect

    import imagewise.train.loop as loop_module  # the attribute walk meets the function
    from imagewise.train import loop

    assert loop_module is loop and inspect.isfunction(imagewise.train)
    assert inspect.isfunction(imagewise.evaluate) and inspect.isfunction(imagewise.load)


def test_a_registry_entry_declares_valid_capabilities() -> None:
    from imagewise.models.registry import register_model

    with pytest.raises(ValueError, match="fit must be 'gradient' or 'one_pass', not 'one-pass'"):
        register_model("typo_model", fit="one-pass")


def test_resuming_a_finished_run_without_validation_keeps_its_selection(
    folder_data: Path, tmp_path: Path
) -> None:
    opts = {"model": "lenet5", "batch_size": 8, "augment": "none", "show_progress": False}
    run = tmp_path / "noval"
    imagewise.train(str(folder_data), run, epochs=1, val_fraction=0.0, **opts)
    again = imagewise.train(out=run, resume=True, show_progress=False)  # no epochs left
    assert again.epochs == 1 and again.best_val_accuracy != again.best_val_accuracy  # NaN
    assert RunFolder.of(run).read_meta().training.selected_by == "train_loss"


def _import_graph(monkeypatch: pytest.MonkeyPatch) -> Any:
    """benchmarks/import_graph.py, loaded from its file (benchmarks is no package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "import_graph.py"
    spec = importlib.util.spec_from_file_location("import_graph", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "import_graph", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_no_package_imports_its_own_files_in_a_circle(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _import_graph(monkeypatch).report()
    assert result["modules"] > 100 and result["imports_by_place"]["function"] > 0
    assert result["cycles_by_package"] == {} and result["cycles"] == 0


def test_the_import_graph_finds_a_planted_circle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = _import_graph(monkeypatch)
    files = {
        "pkg/__init__.py": "",
        "pkg/low.py": "X = 1\n",
        # a relative import inside a function, and "from package import module"
        "pkg/sub/__init__.py": "",
        "pkg/sub/run.py": "def go():\n    from . import result\n",
        "pkg/sub/result.py": (
            "from typing import TYPE_CHECKING\n"
            "from pkg import low\n"
            "if TYPE_CHECKING:\n    from pkg.sub.run import go\n"
        ),
        # through the package's __init__: a name imported from the package itself
        "pkg/stage/__init__.py": "def __getattr__(name):\n    from pkg.stage import a\n",
        "pkg/stage/a.py": "from pkg.stage import helper\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = graph.report(tmp_path / "pkg")
    found = {p: [c["modules"] for c in cs] for p, cs in result["cycles_by_package"].items()}
    assert found == {
        "pkg.stage": [["pkg.stage", "pkg.stage.a"]],
        "pkg.sub": [["pkg.sub.result", "pkg.sub.run"]],
    }
    assert graph.main(["--root", str(tmp_path / "pkg"), "--fail-on-cycles"]) == 1
    assert graph.main(["--root", str(tmp_path / "pkg"), "--json"]) == 0


TINY_RUN = {"epochs": 1, "model": "lenet5", "batch_size": 8, "augment": "none"}


def test_training_leaves_the_global_random_streams_as_it_found_them(
    folder_data: Path, tmp_path: Path
) -> None:
    import random

    import numpy as np

    def seed_the_callers_streams() -> None:
        random.seed(11)
        np.random.seed(11)
        torch.manual_seed(11)

    def draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.random()), float(torch.rand(1))

    seed_the_callers_streams()
    expected = draws()
    seed_the_callers_streams()
    imagewise.train(str(folder_data), tmp_path / "r", seed=3, show_progress=False, **TINY_RUN)
    assert draws() == expected and torch.initial_seed() == 11


def test_training_plants_no_stub_modules(folder_data: Path, tmp_path: Path) -> None:
    import sys

    before = set(sys.modules)
    imagewise.train(str(folder_data), tmp_path / "r", show_progress=False, **TINY_RUN)
    # a module the import system loaded has a spec; one made by hand and put there has none
    planted = [name for name in set(sys.modules) - before if sys.modules[name].__spec__ is None]
    assert planted == [] and "tensorboard.compat.notf" not in sys.modules
    assert any((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))


def test_an_atomic_write_gives_open_s_mode_without_touching_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from imagewise.io import atomic_write_text

    def no_umask(mask: int) -> int:
        raise AssertionError("os.umask changes the umask of every thread")

    for mask, mode in ((0o022, 0o644), (0o027, 0o640), (0o002, 0o664)):
        old = os.umask(mask)
        try:
            with monkeypatch.context() as patch:
                patch.setattr(os, "umask", no_umask)
                path = atomic_write_text(tmp_path / f"{mask:o}.txt", "x")
            with open(tmp_path / f"open-{mask:o}.txt", "w") as f:  # what open() gives
                f.write("x")
        finally:
            os.umask(old)
        assert path.stat().st_mode & 0o777 == mode
        assert (tmp_path / f"open-{mask:o}.txt").stat().st_mode & 0o777 == mode
