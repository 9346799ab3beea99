"""Knowledge distillation: the loss against hand-computed numbers, the teacher's input converted
from the student's preprocessing, and ``imagewise distill`` end to end on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import imagewise
import imagewise.cli
from imagewise.data.transforms import normalize
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError
from imagewise.train.distill import DistillationTask, convert_for_teacher, distillation_loss
from imagewise.train.task import ClassificationTask

from conftest import make_folder_dataset, run_cli

SAME = InputContract(img_size=4, channels=1, mean=[0.0], std=[1.0])


class Fixed(nn.Module):
    """A 'network' that answers the same logits for every image and records its input."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return self.logits.expand(x.shape[0], -1) + 0 * x.sum()


def test_distillation_loss_matches_hand_computed_value() -> None:
    # softmax([2, 0, 1] / 2) = [0.50648, 0.18632, 0.30720]; the student's is the same values
    # permuted, softmax([1, 2, 0] / 2) = [0.30720, 0.50648, 0.18632];
    # KL = sum p_t log(p_t / p_s) = 0.220514, times T^2 = 4: 0.882058.
    student, teacher = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[2.0, 0.0, 1.0]])
    assert float(distillation_loss(student, teacher, 2.0)) == pytest.approx(0.882058, abs=1e-5)
    assert float(distillation_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    # The whole task, alpha 0.25, label 0, no smoothing: CE = -log(e / (e + e^2 + 1)) = 1.407606
    # and 0.25 * 0.882058 + 0.75 * 1.407606 = 1.276219.
    task = DistillationTask(
        Fixed([[1.0, 2.0, 0.0]]), Fixed([[2.0, 0.0, 1.0]]), SAME, SAME, alpha=0.25,
        temperature=2.0, loss="cross_entropy", num_classes=3,
    )  # fmt: skip
    loss, logits = task(torch.zeros(1, 1, 4, 4), torch.tensor([0]))
    assert float(loss.detach()) == pytest.approx(1.276219, abs=1e-5)
    assert logits.tolist() == [[1.0, 2.0, 0.0]]


def test_alpha_zero_is_plain_cross_entropy_and_validation_keeps_the_hard_loss() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(16, 5), nn.Linear(16, 5)
    images, labels = torch.randn(8, 1, 4, 4), torch.randint(0, 5, (8,))
    flat = nn.Sequential(nn.Flatten(), student)
    plain = ClassificationTask(flat, "cross_entropy", 5, label_smoothing=0.1)
    kw = {"loss": "cross_entropy", "num_classes": 5, "label_smoothing": 0.1, "temperature": 4.0}
    off = DistillationTask(flat, nn.Sequential(nn.Flatten(), teacher), SAME, SAME, alpha=0, **kw)
    on = DistillationTask(flat, nn.Sequential(nn.Flatten(), teacher), SAME, SAME, alpha=0.7, **kw)
    with torch.no_grad():
        expected = float(F.cross_entropy(flat(images), labels, label_smoothing=0.1))
        assert float(off(images, labels)[0]) == pytest.approx(expected, abs=1e-6)
        assert float(plain(images, labels)[0]) == pytest.approx(expected, abs=1e-6)
        assert float(on(images, labels)[0]) != pytest.approx(expected, abs=1e-3)
        # what validation calls: the plain hard loss, whatever alpha is
        assert float(on.loss(flat(images), labels)) == pytest.approx(expected, abs=1e-6)


def test_teacher_is_frozen_in_eval_mode_and_sees_the_same_mixed_batch() -> None:
    teacher = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 3))
    student = Fixed([[0.5, 0.0, -0.5]])
    task = DistillationTask(
        student, teacher, SAME, SAME, alpha=0.5, temperature=3.0, loss="cross_entropy",
        num_classes=3,
    )  # fmt: skip
    task.train()
    assert task.training and student.training and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    images = torch.randn(4, 1, 4, 4)
    soft = torch.tensor([[0.7, 0.3, 0.0]] * 4)  # MixUp / CutMix targets
    loss, _ = task(images, soft)
    loss.backward()
    assert student.seen is images and student.logits.grad is not None
    # the hard part takes the soft targets as the plain task does; eval mode: no dropout noise
    t_logits = teacher(images)
    hard = -(soft * F.log_softmax(student.logits.expand(4, -1), 1)).sum(1).mean()
    want = 0.5 * distillation_loss(student.logits.expand(4, -1), t_logits, 3.0) + 0.5 * hard
    assert float(loss.detach()) == pytest.approx(float(want.detach()), abs=1e-5)


def test_gray_student_batch_is_converted_for_an_rgb_teacher_of_another_size() -> None:
    rng = np.random.default_rng(0)
    gray = torch.from_numpy(rng.integers(0, 256, (2, 1, 8, 8), dtype=np.uint8))
    student = InputContract(img_size=8, channels=1, mean=[0.5], std=[0.25])
    teacher = InputContract(img_size=16, channels=3, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4])
    converted = convert_for_teacher(normalize(student, gray), student, teacher)
    # what the teacher's own preprocessing makes of the same picture read as RGB
    expected = normalize(teacher, gray.expand(-1, 3, -1, -1))
    assert converted.shape == (2, 3, 16, 16)
    assert torch.allclose(converted, expected, atol=1e-5)
    x = normalize(student, gray)
    assert convert_for_teacher(x, student, student) is x  # same preprocessing: untouched


def test_rgb_student_batch_is_converted_for_a_gray_teacher_as_pil_reads_gray() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    as_l = np.array(Image.fromarray(rgb, "RGB").convert("L"))  # how gray data is read
    student = InputContract(img_size=16, channels=3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.3])
    teacher = InputContract(img_size=8, channels=1, mean=[0.3], std=[0.35])
    x = normalize(student, torch.from_numpy(rgb).permute(2, 0, 1)[None])
    converted = convert_for_teacher(x, student, teacher)
    expected = normalize(teacher, torch.from_numpy(as_l)[None, None])
    assert converted.shape == (1, 1, 8, 8)
    # PIL rounds its gray to whole levels: within half a level, in standardized units
    assert torch.allclose(converted, expected, atol=0.51 / 255 / 0.35)


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet-5 teacher on 16 px digits, one epoch (its preprocessing differs from the
    student's below: 16 px gray vs 20 px RGB)."""
    out = tmp_path_factory.mktemp("distill") / "teacher"
    args = f"train digits --model lenet5 --epochs 1 --img-size 16 --out {out} -q"
    assert imagewise.cli.main(args.split()) == 0
    return out


def test_distill_cli_writes_an_ordinary_run_that_evaluate_reads(
    digits_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "student"
    args = (
        f"distill digits --teacher {digits_teacher} --student tutorial_cnn --epochs 1 "
        f"--img-size 20 --channels 3 --distill-alpha 0.7 --distill-temperature 3 --out {out} -q"
    )
    code, stdout, err = run_cli(args.split(), capsys)
    assert code == 0, err
    assert f"distilled {digits_teacher} into tutorial_cnn for 1 epoch" in stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"]["name"] == "tutorial_cnn"
    assert meta["preprocessing"]["channels"] == 3 and meta["preprocessing"]["img_size"] == 20
    assert meta["teacher"] == {
        "run": str(digits_teacher.resolve()),
        "model": "lenet5",
        "classes": "match (10 classes, same order)",
        "alpha": 0.7,
        "temperature": 3.0,
    }
    code, stdout, err = run_cli(["evaluate", str(out), "--no-report"], capsys)
    assert code == 0, err
    accuracy = float(stdout.split("accuracy ")[1].split("%")[0])
    assert 0 <= accuracy <= 100 and (out / "eval" / "metrics.json").is_file()


def test_teacher_with_other_classes_is_refused_in_one_line(
    digits_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shapes = make_folder_dataset(tmp_path / "shapes", per_class=6, size=16, corrupt=False)
    args = ["distill", str(shapes), "--teacher", str(digits_teacher), "--student", "lenet5",
            "--epochs", "1", "--out", str(tmp_path / "s")]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith(f"error: the teacher '{digits_teacher}' was trained on other classes")
    assert "the data has circle, square, stripes" in err and err.count("\n") == 1
    assert not (tmp_path / "s" / "model.safetensors").exists()


def test_one_pass_models_are_refused(
    digits_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["distill", "digits", "--teacher", str(digits_teacher), "--student", "hog_svm"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "the student 'hog_svm' is fitted in one pass" in err
    # the same through train's --teacher flag (its one-pass path writes meta.json too)
    code, _, err = run_cli(["train", "digits", "--model", "hog_svm", *args[2:4]], capsys)
    assert code == 2 and "the student 'hog_svm' is fitted in one pass" in err
    with pytest.raises(UserError, match="fitted in one pass"):
        imagewise.distill("digits", teacher=digits_teacher, student="hog_svm", epochs=1)
    # a one-pass teacher: its metadata declares it (the registry's capabilities)
    fake = tmp_path / "hog"
    fake.mkdir()
    for name in ("config.yaml", "model.safetensors"):
        (fake / name).write_bytes((digits_teacher / name).read_bytes())
    meta = json.loads((digits_teacher / "meta.json").read_text())
    meta["model"]["name"], meta["model"]["capabilities"]["fit"] = "hog_svm", "one_pass"
    (fake / "meta.json").write_text(json.dumps(meta))
    code, _, err = run_cli([*args[:3], str(fake), "--student", "lenet5"], capsys)
    assert code == 2 and err.count("\n") == 1 and "is a one-pass model" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--distill-alpha", "1.5"], "--distill-alpha must be in [0, 1], not 1.5"),
        (["--distill-temperature", "0"], "--distill-temperature must be positive, not 0.0"),
        ([], "distill needs the teacher: --teacher RUN (a folder from imagewise train)"),
    ],
)
def test_bad_distill_settings_are_one_line(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = [] if not flags else ["--teacher", str(tmp_path)]
    code, _, err = run_cli(["distill", "digits", "--student", "lenet5", *teacher, *flags], capsys)
    assert code == 2 and err == f"error: {message}\n"
