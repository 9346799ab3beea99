"""imagewise tune (issue 20): samplers, grid, pruning, space-file errors, shared studies in
SQLite and PostgreSQL, and a killed study continued. Tiny: digits at 16 px, LeNet-5, 1-3 epochs."""

from __future__ import annotations

import csv
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

import imagewise
from imagewise.config import load_config_file
from imagewise.errors import UserError
from imagewise.runtime.runs import RunFolder

from conftest import run_cli

FAST = {"model": "lenet5", "img_size": 16, "precision": "fp32", "epochs": 1}
FAST_FLAGS = ["--model", "lenet5", "--img-size", "16", "--precision", "fp32", "-q"]


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def load(out: Path, name: str = "imagewise", url: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url or f"sqlite:///{out / 'study.db'}")


def write_space(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("sampler", "pruner"), [("tpe", "median"), ("random", "hyperband")])
def test_sampler_completes_and_writes_every_output(
    sampler: str, pruner: str, tmp_path: Path
) -> None:
    out = tmp_path / "study"
    retrain, trials = sampler == "tpe", 2
    filters, verbosity = (
        list(logging.getLogger("imagewise").filters),
        optuna.logging.get_verbosity(),
    )
    result = imagewise.tune(
        "digits", out, trials=trials, sampler=sampler, pruner=pruner, subset=300,
        retrain_best=retrain, **FAST,
    )  # fmt: skip
    # the process as it was: no logging filter or Optuna verbosity left behind
    assert logging.getLogger("imagewise").filters == filters
    assert optuna.logging.get_verbosity() == verbosity
    table = rows(out)
    assert [r["state"] for r in table] == ["complete"] * trials
    assert {"lr", "weight_decay", "batch_size", "label_smoothing", "augment", "optimizer"} <= set(
        table[0]
    )  # the default space
    values = [float(r["value"]) for r in table]
    assert result.best_value == pytest.approx(max(values), abs=1e-6) and result.best_value > 0.1
    best = table[values.index(max(values))]
    # best.yaml: the best trial's settings, readable as a train config as is
    cfg = load_config_file(out / "best.yaml")
    assert cfg.train.lr == pytest.approx(float(best["lr"]))
    assert cfg.train.batch_size == int(best["batch_size"])
    assert cfg.data.augment.preset == best["augment"] and cfg.model.name == "lenet5"
    # only the best trial's run folder is kept; it trained on the stratified 300-image subset
    assert [p.name for p in (out / "trials").iterdir()] == [Path(best["run"]).name]
    meta = RunFolder.of(Path(best["run"])).read_meta()
    assert 290 <= meta.data.train_images <= 310 and result.best_run == Path(best["run"])
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and 'src="http' not in page
    for name in ("optimization_history", "param_importances", "parallel_coordinates"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert any(f"{trials} finished trials" in line for line in result.summary)
    if retrain:  # the best settings on every training image: the final run
        assert result.final_run is not None
        final = RunFolder.of(result.final_run).read_meta()
        assert final.data.train_images > 1000 and (result.final_run / "model.safetensors").is_file()


def test_grid_enumerates_exactly_the_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(
        tmp_path / "space.yaml",
        "lr: [0.01, 0.03]\nbatch_size: {low: 32, high: 64, step: 32}\noptimizer: sgd\n",
    )
    out = tmp_path / "grid"
    code, stdout, err = run_cli(
        ["tune", "digits", "--space", str(space), "--sampler", "grid", "--trials", "10",
         "--epochs", "1", "--subset", "200", "--out", str(out), *FAST_FLAGS], capsys,
    )  # fmt: skip
    assert code == 0, err
    table = rows(out)
    got = sorted((float(r["lr"]), int(r["batch_size"])) for r in table)
    assert got == sorted(itertools.product([0.01, 0.03], [32, 64]))  # each once, nothing else
    assert "4 finished trials" in stdout and f"--config {out / 'best.yaml'}" in stdout
    assert yaml.safe_load((out / "best.yaml").read_text())["train"]["optimizer"] == "sgd"
    # best.yaml is a config file imagewise train reads as is
    code, _, err = run_cli(
        ["train", "digits", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "again"),
         "-q"], capsys,
    )  # fmt: skip
    assert code == 0, err
    config = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert config["train"]["optimizer"] == "sgd" and config["model"]["name"] == "lenet5"


def test_median_pruner_stops_a_clearly_worse_trial_after_its_warm_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # lr 1e-7 learns nothing: once a working trial has finished, its accuracy is far below
    # that trial's at the same epoch, and the median pruner stops it at the first epoch it
    # judges: the one after the warm-up (a quarter of 3 epochs: within the first), epoch 2.
    space = write_space(tmp_path / "s.yaml", "lr: [0.01, 1.0e-7]\nlabel_smoothing: [0.0, 0.1]\n")
    out = tmp_path / "pruned"
    with caplog.at_level(logging.INFO, logger="imagewise"):
        result = imagewise.tune(
            "digits", out, trials=3, space=space, sampler="grid", pruner="median",
            **{**FAST, "epochs": 3, "batch_size": 64},
        )  # fmt: skip
    table = rows(out)
    good = [r for r in table if float(r["lr"]) == 0.01]
    assert good[0]["state"] == "complete" and good[0]["epochs"] == "3"
    hopeless = [
        r for r in table if float(r["lr"]) < 0.01 and int(r["number"]) > int(good[0]["number"])
    ]
    assert hopeless and all(r["state"] == "pruned" and r["epochs"] == "2" for r in hopeless)
    assert result.epochs_run < result.epochs_planned == 9
    rule = next(m for m in caplog.messages if m.startswith("pruner: median"))
    assert "first epoch after the trial's learning-rate warm-up (epoch 2 at the earliest)" in rule
    assert {t.user_attrs["first_judged_epoch"] for t in load(out).trials} == {2}


@pytest.mark.parametrize(
    ("text", "sampler", "words"),
    [
        ("lrr: [0.1, 0.01]\n", "tpe", "'lrr' is not a training option"),
        ("lr: {low: 0.1, high: 0.001}\n", "tpe", "lr: low must be below high"),
        ("lr: {low: 0, high: 0.1, log: true}\n", "tpe", "lr: a log range needs low above 0"),
        ("lr: {low: 0.001, hihg: 0.1}\n", "tpe", "lr: unknown field 'hihg'"),
        ("augment: [none, extreme]\n", "tpe", "augment: unknown augmentation preset 'extreme'"),
        ("batch_size: {low: 16.5, high: 64}\n", "tpe", "batch_size is a whole number"),
        ("lr: {low: 0.001, high: 0.1}\n", "grid", "grid search needs a list of values or a step"),
        ("- lr\n", "tpe", "must map training options to values"),
        ("lr: [0.1\n", "tpe", "is not valid YAML"),
    ],
)
def test_space_file_errors_are_one_line(
    text: str, sampler: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path / "space.yaml", text)
    code, stdout, err = run_cli(
        ["tune", "digits", "--space", str(space), "--sampler", sampler, "--out",
         str(tmp_path / "o"), *FAST_FLAGS], capsys,
    )  # fmt: skip
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "o" / "study.db").exists()  # refused before any work


def test_a_flag_and_the_space_file_cannot_both_set_an_option(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", "lr: [0.1, 0.01]\n")
    with pytest.raises(UserError, match="'lr' is also set by --lr"):
        imagewise.tune("digits", tmp_path / "o", space=space, lr=0.1)


def worker(out: Path, trials: int, *extra: str) -> subprocess.Popen[bytes]:
    """An `imagewise tune` process on the shared study (1 epoch, 300 training images)."""
    args = ["tune", "digits", "--out", str(out), "--trials", str(trials), "--epochs", "1",
            "--subset", "300", "--sampler", "random", *FAST_FLAGS, *extra]  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "imagewise", *args], stderr=subprocess.PIPE)


def check_shared(study: optuna.Study, trials: int) -> None:
    """Both workers ran trials, every trial number once, each with its own run folder."""
    seen = [(t.number, t.state.name, t.user_attrs.get("pid")) for t in study.trials]
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers))), seen
    assert trials <= len(done) <= trials + 1, seen  # one may start just as the other ends
    assert len({t.user_attrs["pid"] for t in done}) == 2, seen  # both workers trained
    runs = [t.user_attrs["run"] for t in study.trials]
    assert len(set(runs)) == len(runs), runs


def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    procs = [worker(out, 3) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    check_shared(load(out), 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's binaries; as the postgres user
    when this runs as root, since the server refuses root); its URL. Stopped afterwards."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    bindir = bins[-1].parent
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="imagewise-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"),
           "-w", "start")  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgres_study(tmp_path: Path, postgres: str) -> None:
    procs = [
        worker(tmp_path / f"machine{i}", 3, "--storage", postgres, "--study", "shared")
        for i in range(2)
    ]  # two output folders: as on two machines, only the database is shared
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    check_shared(load(tmp_path, "shared", postgres), 3)
    assert not (tmp_path / "machine0" / "study.db").exists()


def test_rerun_continues_a_killed_study(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = worker(out, 8, "--epochs", "3")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # kill it mid-trial once one trial has finished
        time.sleep(0.5)
        try:
            trials = load(out).trials
        except Exception:  # not created yet
            continue
        states = [t.state.name for t in trials]
        # A new trial is RUNNING a moment before it records its host and process id; killed in
        # that moment, nothing says it was this machine's, and only the heartbeat finds it.
        if "COMPLETE" in states and states[-1] == "RUNNING" and trials[-1].user_attrs.get("pid"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = load(out).trials
    killed = before[-1]
    assert killed.state.name == "RUNNING"  # as a killed worker leaves it
    result = imagewise.tune("digits", out, trials=len(before), subset=300, sampler="random", **FAST)
    after = load(out).trials
    assert after[killed.number].state.name == "FAIL"  # its process is gone: failed at once
    retry = [t for t in after if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params  # its settings tried again
    assert [t.number for t in after[: len(before)]] == [t.number for t in before]
    assert result.complete + result.pruned == len(before)  # the finished ones plus the retry
    assert not Path(killed.user_attrs["run"]).exists()  # the killed trial's folder is tidied


# --- a study run again, by several workers, or beside another in one --out ------------------


def _draws(study: optuna.Study, trials: int) -> list[float]:
    """Run ``trials`` trials that only draw an lr (no training); the lrs drawn."""
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=trials)
    return [t.params["lr"] for t in study.trials]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_continued_study_and_a_second_worker_draw_new_settings(sampler: str) -> None:
    from imagewise.tune.study import make_sampler

    storage = optuna.storages.InMemoryStorage()

    def worker(seed: int = 0) -> optuna.Study:  # a process joining the study, as tune does
        return optuna.create_study(
            storage=storage, study_name="s", sampler=make_sampler(sampler, seed, None),
            direction="maximize", load_if_exists=True,
        )  # fmt: skip

    first = _draws(worker(), 3)
    again = _draws(worker(), 3)[3:]  # the same command run again with more trials
    beside = _draws(worker(), 2)[6:]  # another worker with the same --seed
    drawn = first + again + beside
    assert len(set(drawn)) == len(drawn), drawn  # no setting drawn twice
    # a new study with the same seed draws what the first one did; another seed does not
    fresh = optuna.create_study(sampler=make_sampler(sampler, 0, None), direction="maximize")
    assert _draws(fresh, 3) == first
    other = optuna.create_study(sampler=make_sampler(sampler, 1, None), direction="maximize")
    assert _draws(other, 3) != first


def test_a_trial_folder_that_is_taken_is_never_trained_into(tmp_path: Path) -> None:
    from imagewise.tune.trial import claim_run_folder

    taken = tmp_path / "trials" / "imagewise-0000"
    taken.mkdir(parents=True)
    (taken / "meta.json").write_text("{}")  # another study's run
    claimed = [claim_run_folder(tmp_path / "trials", "imagewise-0000") for _ in range(2)]
    assert [p.name for p in claimed] == ["imagewise-0000-2", "imagewise-0000-3"]
    assert all(p.is_dir() and not any(p.iterdir()) for p in claimed)
    assert (taken / "meta.json").read_text() == "{}"


def test_two_studies_sharing_one_out_keep_each_others_run_folders(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    space = write_space(tmp_path / "s.yaml", "lr: {low: 0.001, high: 0.1, log: true}\n")
    common = {"space": space, "sampler": "random", "pruner": "none", "subset": 200, **FAST}
    # "imagewise-v2" first, keeping every run; then "imagewise" in its own storage, tidying:
    # its folder names match the first study's pattern (imagewise-*) and their numbers
    kept = imagewise.tune("digits", out, trials=2, study="imagewise-v2", keep_runs=True, **common)
    imagewise.tune("digits", out, trials=2, storage=str(tmp_path / "b.db"), **common)
    first = [Path(t.user_attrs["run"]) for t in load(out, "imagewise-v2").trials]
    assert [p.name for p in first] == ["imagewise-v2-0000", "imagewise-v2-0001"]
    assert all(RunFolder.of(p).weights.is_file() for p in first)  # untouched by the second
    second = load(tmp_path, "imagewise", f"sqlite:///{tmp_path / 'b.db'}")
    runs = {Path(t.user_attrs["run"]) for t in second.trials}
    assert len(runs) == 2 and not runs & set(first)
    best = Path(second.best_trial.user_attrs["run"])
    assert RunFolder.of(best).weights.is_file() and not (runs - {best}).pop().exists()
    assert kept.best_run in first


def test_a_space_no_trial_can_train_with_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imagewise.tune.space import Param, Space

    space = Space((Param("dropout", "float", 0.5, 1.5),), {})
    with pytest.raises(UserError, match=r"dropout: --dropout must be in \[0, 1\), not 1.5"):
        imagewise.tune("digits", tmp_path / "api", space=space, **FAST)
    assert not (tmp_path / "api" / "study.db").exists()
    # a value only training can refuse: the study stops with its one line, no Optuna traceback
    missing = write_space(tmp_path / "s.yaml", f"init_from: ['{tmp_path / 'no-run'}']\n")
    code, stdout, err = run_cli(
        ["tune", "digits", "--space", str(missing), "--subset", "100", "--out",
         str(tmp_path / "o"), *FAST_FLAGS], capsys,
    )  # fmt: skip
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "is not a finished imagewise run" in err
    assert "Traceback" not in err and "Trial 0 failed" not in err


def test_runs_on_prepared_data_that_decode_otherwise_get_their_own_pixels(
    folder_data: Path, tmp_path: Path
) -> None:
    """A trial's crop or interpolation (searched, or its starting weights') decodes the images
    again, on the same training sample; the prepared data's own pixels are never reused."""
    from imagewise.config import RunConfig, apply_options
    from imagewise.train.run import prepare_data

    def config(**options: object) -> RunConfig:
        cfg = apply_options(RunConfig(), {**FAST, **options})
        cfg.data.source = str(folder_data)
        return cfg

    prepared = prepare_data(config()).subset(30, seed=0)
    other = {"crop_pct": 0.5, "interpolation": "nearest"}
    runs = {}
    for name, options in (("same", {}), ("other", other), ("again", other)):
        runs[name] = imagewise.train(
            config=config(), out=tmp_path / name, prepared=prepared, show_progress=False,
            **options,
        ).run  # fmt: skip
    pre = {k: RunFolder.of(run).read_meta().preprocessing for k, run in runs.items()}
    assert (pre["same"].crop_pct, pre["same"].interpolation) == (1.0, "bilinear")
    assert (pre["other"].crop_pct, pre["other"].interpolation) == (0.5, "nearest")
    assert pre["again"] == pre["other"]
    (variant,) = prepared.variants.values()  # decoded once for both runs
    fresh = prepare_data(config(**other)).subset(30, seed=0).data.train
    assert variant.data.train.paths == prepared.data.train.paths == fresh.paths
    assert variant.data.train.images.equal(fresh.images)
    assert not variant.data.train.images.equal(prepared.data.train.images)
    # what decides which images a run sees is still refused
    with pytest.raises(UserError, match=r"data\.split_seed is 1 but the prepared data"):
        imagewise.train(config=config(), out=tmp_path / "x", prepared=prepared, split_seed=1)


def test_a_trial_with_other_starting_weights_decodes_as_they_say() -> None:
    """The study's base holds the decoding its own weights filled in; a trial naming other
    weights has the settings the user left unset unset again, for its weights to fill."""
    from imagewise.config import RunConfig
    from imagewise.tune.trial import trial_config

    base = RunConfig()
    base.model.name, base.model.pretrained = "efficientnet_lite0", True
    base.data.img_size, base.data.interpolation, base.data.crop_pct = 224, "bicubic", 0.875
    unset = ("interpolation", "crop_pct")  # the user gave --img-size 224
    same = trial_config(base, {"lr": 0.01, "model": "efficientnet_lite0"}, unset)
    assert (same.data.img_size, same.data.interpolation, same.data.crop_pct) == (
        224, "bicubic", 0.875,
    )  # fmt: skip
    other = trial_config(base, {"model": "resnet18"}, unset)
    assert (other.data.img_size, other.data.interpolation, other.data.crop_pct) == (224, "", 0.0)
    assert base.data.interpolation == "bicubic"  # the base is left as it was
