"""Hostile and broken input: each gets one line and exit 2 (or a clean stop), nothing is lost."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import imagewise
from imagewise.config import MAX_CONFIG_BYTES, RunConfig, load_config_file
from imagewise.errors import UserError
from imagewise.io import DiskFull, atomic_write
from imagewise.runtime.calibration import calibrate
from imagewise.train.loop import MAX_ROLLBACKS, Rollback

from conftest import run_cli

FAST = ["--model", "lenet5", "--batch-size", "8", "--augment", "none", "-q"]


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == "", err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def all_finite(path: Path) -> bool:
    tensors = (
        load_file(path).values()
        if path.suffix == ".safetensors"
        else torch.load(path, weights_only=True)["model"].values()
    )
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def test_a_diverging_run_rolls_back_then_stops_in_one_line(
    folder_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "nan"
    code, _, err = run_cli(
        ["train", str(folder_data), "--out", str(out), "--epochs", "2", "--lr", "1e30", *FAST],
        capsys,
    )
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: training diverged: the loss became ")
    assert "also after lowering the learning rate 1000x" in lines[-1]
    assert "no non-finite weights were saved" in lines[-1]
    tries = [r.message for r in caplog.records if "back to the start of the epoch" in r.message]
    assert [t.rsplit("try ", 1)[1] for t in tries] == [f"{i} of {MAX_ROLLBACKS}" for i in (1, 2, 3)]
    for saved in (out / "model.safetensors", out / "last.ckpt"):
        assert not saved.exists() or all_finite(saved)


def test_rollback_restores_the_epoch_start_with_a_lower_learning_rate() -> None:
    from imagewise.config import TrainConfig
    from imagewise.train.optim import build_optimizer, build_scheduler

    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.5, epochs=2))
    sched = build_scheduler(opt, TrainConfig(schedule="constant", warmup_epochs=0, epochs=2), 5)
    rollback = Rollback(model, opt, sched, None)
    rollback.keep()
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    assert rollback.restore() == pytest.approx(0.05)
    assert torch.equal(model.weight, start)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # the schedule keeps the lower rate
    assert rollback.restore() == pytest.approx(0.005)  # a second try goes lower again
    assert sched.state_dict()["base_lrs"] == pytest.approx([0.005, 0.005])  # into last.ckpt


def test_one_class_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "only"
    (root / "cats").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(root / "cats" / f"{i}.png")
    line = one_line_error(["train", str(root), "--out", str(tmp_path / "r")], capsys)
    assert line == (
        f"error: '{root}' holds one class (cats); a classifier needs at least two: one folder "
        "(or label) per class"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "verb", ["train", "demo", "predict", "explain", "train-under-a-file", "predict-to-a-folder"]
)
def test_an_output_path_that_cannot_be_written_is_one_line(
    verb: str,
    trained_run: Path,
    folder_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    image = str(next((folder_data / "square").glob("*.png")))
    args, expected = {
        "train": (["train", str(folder_data), "--out", str(afile)], "is a file, not a folder"),
        "demo": (["demo", "--out", str(afile)], "is a file, not a folder"),
        "predict": (
            ["predict", str(trained_run), image, "--out", str(afile / "p.csv")],
            "which is a file",
        ),
        "explain": (
            ["explain", str(trained_run), image, "--out", str(afile)],
            "is a file, not a folder",
        ),
        "train-under-a-file": (
            ["train", str(folder_data), "--out", str(afile / "run")],
            "which is a file",
        ),
        "predict-to-a-folder": (
            ["predict", str(trained_run), image, "--out", str(tmp_path)],
            "is a folder; name a file",
        ),
    }[verb]
    line = one_line_error(args, capsys)
    assert line.startswith("error: --out '") and expected in line
    assert afile.read_text() == "mine"  # the user's file is untouched


def test_a_full_disk_names_the_file_and_keeps_what_was_there(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old and whole")

    def fills_the_disk(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFull, match=f"no space left on the device for '{target}'"):
        atomic_write(target, fills_the_disk)
    assert target.read_bytes() == b"old and whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]  # no partial file


def test_a_full_disk_during_training_is_one_line_and_resumable(
    folder_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imagewise.runtime.checkpoint as checkpoint

    real_save, calls = torch.save, []

    def save_until_full(obj: object, f: str) -> None:  # torch wraps the OS error its own way
        calls.append(f)
        if len(calls) > 1:
            Path(f).write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    monkeypatch.setattr("imagewise.io._NEARLY_FULL", 1 << 62)  # every disk is "nearly full"
    out = tmp_path / "full"
    with pytest.raises(DiskFull) as info:
        imagewise.train(str(folder_data), out, epochs=3, model="lenet5", batch_size=8,
                        augment="none", show_progress=False)  # fmt: skip
    message = str(info.value)
    assert message.startswith(f"no space left on the device for '{out / 'last.ckpt'}'")
    assert "keeps epoch 1 whole" in message and f"--resume --out {out}" in message
    assert torch.load(out / "last.ckpt", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    return result.returncode == 0


def test_a_real_full_disk_through_the_cli(folder_data: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "160k"):
        pytest.skip("mounting a small tmpfs needs root (the injected ENOSPC test covers it)")
    try:
        out = disk / "run"
        proc = subprocess.run(
            [sys.executable, "-m", "imagewise", "train", str(folder_data), "--out", str(out),
             "--epochs", "2", *FAST],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]  # after the warning about broken.jpg
        assert last.startswith("error: no space left on the device for '"), proc.stderr
        assert "Traceback" not in proc.stderr
        import yaml  # whole, as written: every section, down to the last training setting

        written = yaml.safe_load((out / "config.yaml").read_text())
        assert set(written) == {"recipe", "data", "model", "train"}
        assert list(written["train"])[-1] == list(RunConfig().to_dict()["train"])[-1]
        assert not list(out.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)])


BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_yaml_alias_bombs_and_huge_config_files_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    with pytest.raises(UserError, match="expands to more than 10,000 values"):
        load_config_file(bomb)  # refused without expanding its 387 million strings
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(UserError, match="a config file is at most 1,048,576"):
        load_config_file(huge)
    anchors = tmp_path / "anchors.yaml"  # a few aliases are fine
    anchors.write_text("train: {epochs: &n 3, patience: *n}\n")
    assert load_config_file(anchors).train.patience == 3


def test_a_bad_flag_value_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        imagewise.cli.main(["train", "digits", "--epochs", "abc"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == (
        "error: argument --epochs: invalid int value: 'abc' (see: imagewise train --help)\n"
    )


def test_calibration_with_nothing_to_fit_says_so_quietly(caplog: pytest.LogCaptureFixture) -> None:
    logits = torch.tensor([[9.0, 0.0], [0.0, 7.0], [5.0, 1.0]])
    with caplog.at_level("DEBUG", logger="imagewise"):
        summary = calibrate(logits, torch.tensor([0, 1, 0]))  # every image right
    assert summary["temperature"] == 1.0 and summary["fitted_on"] is None
    assert summary["note"] == "all 3 validation images classified right: nothing to fit"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


FAKE_TENSORFLOW = """
import sys
print("absl: I0000 fake TensorFlow start-up noise", file=sys.stderr)
__version__ = "0.0"
"""


def test_training_does_not_wake_an_installed_tensorflow(folder_data: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "tensorflow").mkdir(parents=True)
    (site / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "imagewise", "train", str(folder_data), "--out",
         str(tmp_path / "r"), "--epochs", "1", *FAST],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert any((tmp_path / "r" / "tensorboard").iterdir())  # TensorBoard still writes
    assert "fake TensorFlow" not in proc.stderr


INTERRUPTED = textwrap.dedent(
    """
    import os, signal, sys
    import imagewise.cli
    from imagewise.train import loop

    real_call = loop._call

    def call(hooks, name, state):  # SIGTERM from outside, right after epoch 2 was saved
        real_call(hooks, name, state)
        if name == "on_epoch_end" and state.epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    loop._call = call
    sys.exit(imagewise.cli.main(sys.argv[1:]))
    """
)


def test_sigterm_keeps_the_checkpoint_and_says_how_to_resume(
    folder_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "stopped"
    args = ["train", str(folder_data), "--out", str(out), "--epochs", "4", *FAST]
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPTED, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1:] == [
        f"stopped in epoch 3 of 4; {out / 'last.ckpt'} keeps epoch 2. Continue with: "
        f"imagewise train --resume --out {out}"
    ]
    assert torch.load(out / "last.ckpt", weights_only=True)["epoch"] == 2
    resumed = subprocess.run(
        [sys.executable, "-m", "imagewise", "train", "--resume", "--out", str(out), "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "meta.json").read_text())["training"]["epochs_run"] == 4


class FakeMachine:
    """/proc counters of a 2-core machine: ``ours`` and ``others`` cores busy per second."""

    def __init__(self) -> None:
        self.now, self.busy, self.own = 0.0, 0, 0
        self.ours, self.others = 2.0, 0.0

    def advance(self, seconds: float) -> None:
        ticks = 100 * seconds  # the kernel counts in USER_HZ = 100 ticks per second
        self.now += seconds
        self.own += round(self.ours * ticks)
        self.busy += round((self.ours + self.others) * ticks)


def test_the_thread_governor_leaves_cores_that_others_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagewise.runtime import threads

    machine = FakeMachine()
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads, "_TICKS", 100)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gov = threads.ThreadGovernor(
            interval=1.0,
            read_busy=lambda cpus: machine.busy,
            read_own=lambda: machine.own,
            clock=lambda: machine.now,
        )
        machine.advance(1.5)
        assert gov.tick() == 2 and gov.others == 0.0  # a quiet machine: nothing changes
        machine.ours, machine.others = 1.4, 0.66  # one busy process joins, sharing our cores
        machine.advance(0.5)
        assert gov.tick() == 2  # not a second yet since the last look
        machine.advance(0.5)
        assert gov.tick() == 1 and torch.get_num_threads() == 1
        assert gov.others == pytest.approx(0.66, abs=0.02)
        machine.ours, machine.others = 1.0, 1.0  # it keeps its core; we keep ours
        machine.advance(1.0)
        assert gov.tick() == 1
        machine.ours, machine.others = 1.0, 0.1  # it finished
        machine.advance(1.0)
        assert gov.tick() == 2 and torch.get_num_threads() == 2
        machine.others = 1.0
        machine.advance(1.0)
        assert gov.tick() == 1
        gov.close()  # a library call leaves the thread count as it found it
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_thread_governor_reads_this_machine() -> None:
    from imagewise.runtime.threads import cpu_busy_ticks, own_busy_ticks

    cpus = os.sched_getaffinity(0)
    busy, own = cpu_busy_ticks(cpus), own_busy_ticks()
    assert busy is not None and own is not None and busy >= own > 0
