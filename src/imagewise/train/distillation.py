"""Knowledge distillation (Hinton et al. 2015): a student learns from a teacher run's softened
outputs as well as from the labels.

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

``t`` and ``s`` are the teacher's and student's logits on the same augmented batch, ``T`` the
temperature. The T^2 keeps the soft part's gradients the same size whatever T is (they shrink
as 1 / T^2), so alpha means the same at every temperature. The result is an ordinary run folder
whose ``meta.json`` records its teacher.

The loss, the task and the teacher run's checks; ``imagewise.train.distill.distill`` is the
entry point (``train`` with a teacher), which ``build_components`` does not need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imagewise.config import RunConfig
from imagewise.data.sources import ImageData
from imagewise.data.transforms import standardize
from imagewise.edge.spec import TASK_WORDS, InputContract
from imagewise.errors import UserError
from imagewise.models.registry import model_capabilities
from imagewise.runtime.meta import RunMeta
from imagewise.runtime.records import Teacher
from imagewise.runtime.runs import RunFolder
from imagewise.train.task import ClassificationTask

# ITU-R 601 luma, the weights PIL's convert("L") uses when the data pipeline reads RGB as gray.
_LUMA = (0.299, 0.587, 0.114)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, multilabel: bool = False
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch; for
    a multi-label task each label's own Bernoulli KL between the sigmoids, averaged over images
    and labels (the labels are independent yes / no answers, not one distribution).

    Args:
        student: the student's logits (N, C).
        teacher: the teacher's logits (N, C), on the same images.
        temperature: T; above 1 it softens both distributions so the teacher's ranking of the
            wrong classes (its "dark knowledge") carries weight.
    """
    t = float(temperature)
    if multilabel:
        s_logits, t_logits = student.float() / t, teacher.float() / t
        p_teacher = torch.sigmoid(t_logits)
        # KL(Bern(q) || Bern(p)) = BCE(p; q) - H(q): the entropy term has no student gradient
        # but keeps the value a true KL (0 when student and teacher agree).
        cross = F.binary_cross_entropy_with_logits(s_logits, p_teacher)
        entropy = F.binary_cross_entropy_with_logits(t_logits, p_teacher)
        return (cross - entropy) * (t * t)
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (t * t)


def convert_for_teacher(
    x: torch.Tensor, student: InputContract, teacher: InputContract
) -> torch.Tensor:
    """The student's normalized batch as the teacher expects it: un-standardized with the
    student's mean/std, resized, channels converted (gray <-> RGB), standardized with the
    teacher's mean/std. Unchanged when both expect the same input.

    Args:
        x: (N, C, H, W) floats, normalized for ``student``.
        student: the preprocessing ``x`` was made with.
        teacher: the preprocessing of the teacher run.
    """
    same = (student.img_size, student.channels, list(student.mean), list(student.std)) == (
        teacher.img_size, teacher.channels, list(teacher.mean), list(teacher.std),
    )  # fmt: skip
    if same:
        return x
    x = x.float()
    mean = torch.tensor(student.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(student.std, device=x.device).view(1, -1, 1, 1)
    unit = x * std + mean
    if student.channels == 3 and teacher.channels == 1:  # before resizing: a third the pixels
        luma = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)
        unit = (unit * luma).sum(dim=1, keepdim=True)
    if unit.shape[-1] != teacher.img_size or unit.shape[-2] != teacher.img_size:
        size = (teacher.img_size, teacher.img_size)
        unit = F.interpolate(unit, size=size, mode="bilinear", antialias=True)
    if student.channels == 1 and teacher.channels == 3:  # after resizing, for the same reason
        unit = unit.expand(-1, 3, -1, -1)
    return standardize(teacher, unit)


class DistillationTask(ClassificationTask):
    """A ``ClassificationTask`` whose training loss adds the teacher's soft targets.

    ``task(images, targets) -> (loss, logits)`` as for the plain task; ``loss(logits, labels)``
    (what validation calls) stays the plain hard loss, so ``val_loss`` compares with runs
    trained without a teacher. Hard targets may be soft (MixUp / CutMix): the hard part takes
    them as the plain task does, and the teacher sees the same mixed images.

    Args:
        model: the student (through DDP / torch.compile wrappers when on).
        teacher: the teacher network; frozen and kept in eval mode here.
        student_pre: the student's preprocessing (what ``images`` are normalized with).
        teacher_pre: the teacher's preprocessing.
        alpha: weight of the soft part (0: plain training; 1: soft targets only).
        temperature: softening temperature T.
        loss, num_classes, label_smoothing: the hard loss, as for ``ClassificationTask``.
    """

    def __init__(
        self, model: nn.Module, teacher: nn.Module, student_pre: InputContract,
        teacher_pre: InputContract, *, alpha: float, temperature: float, loss: str,
        num_classes: int, label_smoothing: float = 0.0, multilabel: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(model, loss, num_classes, label_smoothing, multilabel)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher.eval()
        self.student_pre, self.teacher_pre = student_pre, teacher_pre
        self.alpha, self.temperature = float(alpha), float(temperature)

    def train(self, mode: bool = True) -> DistillationTask:
        """The student trains; the teacher stays in eval mode (BatchNorm statistics, dropout)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(
        self, images: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        hard = self.loss(logits, target)
        if self.alpha == 0:  # plain training: skip the teacher's forward pass
            return hard, logits
        with torch.no_grad():
            teacher_logits = self.teacher(
                convert_for_teacher(images, self.student_pre, self.teacher_pre)
            )
        soft = distillation_loss(logits, teacher_logits, self.temperature, self.multilabel)
        return self.alpha * soft + (1 - self.alpha) * hard, logits


def read_teacher(
    path: str, classes: list[str], student: str, task: str | None = None
) -> tuple[RunFolder, RunMeta]:
    """The teacher run's folder and metadata, refused in one line when it cannot teach.

    Args:
        path: the teacher run folder.
        classes: the dataset's classes; the teacher's must be the same, in the same order,
            since its outputs are matched to the student's by position.
        student: the student's model name (a one-pass model has no gradient to distill into).
        task: the data's task; the teacher must answer the same way (one class, or labels).
    """
    refuse_one_pass_student(student)
    folder = RunFolder.of(path)
    if not folder.path.exists():
        raise UserError(
            f"teacher run '{path}' does not exist; name a run folder of imagewise train"
        )
    meta = folder.read_meta()
    if meta.spec.capabilities.fit == "one_pass":
        raise UserError(
            f"the teacher '{path}' ({meta.model.name}) is a one-pass model with no logits to "
            "distill; choose a teacher run trained by gradient steps"
        )
    if task is not None and meta.spec.task != task:
        raise UserError(
            f"the teacher '{path}' is a {TASK_WORDS[meta.spec.task]} model and the data is "
            f"{TASK_WORDS[task]}; teacher and student must answer alike"
        )
    if list(meta.classes) != list(classes):
        raise UserError(
            f"the teacher '{path}' was trained on other classes than the data "
            f"({_classes_difference(meta.classes, classes)}); teacher and data need the same "
            "classes in the same order"
        )
    return folder, meta


def refuse_one_pass_student(student: str) -> None:
    """One line for a one-pass student (hog_svm): it has no gradient steps to learn from."""
    if model_capabilities(student).fit == "one_pass":
        raise UserError(
            f"the student '{student}' is fitted in one pass, not by gradient steps, so it "
            "cannot learn from a teacher; choose a network student such as tutorial_cnn"
        )


def _classes_difference(teacher: list[str], data: list[str]) -> str:
    if sorted(teacher) == sorted(data):
        return "same names, other order"
    missing, extra = sorted(set(data) - set(teacher)), sorted(set(teacher) - set(data))
    parts = [f"the data has {', '.join(missing[:3])}" if missing else "",
             f"the teacher has {', '.join(extra[:3])}" if extra else ""]  # fmt: skip
    return "; ".join(p for p in parts if p) or f"{len(teacher)} vs {len(data)} classes"


def teacher_record(config: RunConfig, data: ImageData) -> Teacher | None:
    """What ``meta.json`` says about the teacher (None without one): its run folder, model,
    the classes check, alpha and temperature."""
    t = config.train
    if not t.teacher:
        return None
    folder, meta = read_teacher(t.teacher, list(data.classes), config.model.name, data.task)
    return Teacher(
        run=str(folder.path.resolve()),
        model=meta.model.name,
        classes=f"match ({len(meta.classes)} classes, same order)",
        alpha=float(t.distill_alpha),
        temperature=float(t.distill_temperature),
    )


def make_task(
    cfg: RunConfig, forward: nn.Module, data: ImageData, pre: InputContract, device: torch.device
) -> ClassificationTask:
    """The run's task: a ``DistillationTask`` over the teacher run when ``train.teacher`` is
    set, else the plain ``ClassificationTask``.

    Args:
        cfg: the run's configuration.
        forward: the student as the loop calls it (DDP / compile wrappers included).
        data: the dataset (its classes are checked against the teacher's).
        pre: the student's preprocessing.
        device: where the teacher runs.
    """
    t = cfg.train
    if not t.teacher:
        return ClassificationTask(
            forward, t.loss, len(data.classes), t.label_smoothing, data.multilabel
        )
    from imagewise.runtime.network import load_network

    folder, meta = read_teacher(t.teacher, list(data.classes), cfg.model.name, data.task)
    teacher = load_network(folder, meta).to(device)
    return DistillationTask(
        forward, teacher, pre, meta.spec.input,
        alpha=t.distill_alpha, temperature=t.distill_temperature, loss=t.loss,
        num_classes=len(data.classes), label_smoothing=t.label_smoothing,
        multilabel=data.multilabel,
    )  # fmt: skip
