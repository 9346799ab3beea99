"""Options that several verbs share, each declared once: the training settings (one flag per
config option), the device, batch size, output format, a run folder, a dataset, a config file,
a recipe, and the answers for unknown images."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, Protocol


class NewVerb(Protocol):
    """Makes a verb's parser: its help, the common flags (--debug, -q) and its example."""

    def __call__(
        self, verbs: Any, name: str, help_text: str, example: str | None = None
    ) -> argparse.ArgumentParser: ...


# Help for the common train flags; the rest get a generic line naming their config section.
FLAG_HELP = {
    "model": "network name from 'imagewise models', any timm name, or auto (default: chosen "
    "from the data; with --time-budget from speeds measured on this machine)",
    "time_budget": "--model auto: training time to fit in, e.g. 90s, 5m, 1h",
    "epochs": "training epochs (default: from the data's size, 10 to 40)",
    "batch_size": "images per step (default: from the data's size, 32 to 128)",
    "lr": "learning rate (default: the optimizer's, scaled with the batch size)",
    "optimizer": "sgd, adam, adamw (default) or rmsprop",
    "weight_decay": "L2 weight decay (default: the optimizer's)",
    "augment": "augmentation preset: none, light, standard, strong or auto (default: light "
    "for small sets and short runs, else standard)",
    "img_size": "square input size in pixels (default: from the data, 28..224)",
    "channels": "1 (grayscale) or 3 (RGB) (default: from the data)",
    "interpolation": "resize with bilinear, bicubic or nearest (default: the starting "
    "weights', else bilinear)",
    "crop_pct": "keep the centre square after resizing the shorter side to img-size / "
    "crop-pct, e.g. 0.875; 1 resizes the whole image (default: the starting weights', else 1)",
    "schedule": "onecycle (default), cosine, step or constant",
    "warmup_steps": "warm-up in optimizer steps (default: onecycle 25%% of the run, cosine and "
    "step 5%%, constant none)",
    "loss": "auto, cross_entropy, mse or margin; multi-label: bce (default) or asl "
    "(asymmetric loss, for many absent labels)",
    "task": "auto (default: a CSV manifest with several labels per image is multi-label), "
    "single or multilabel",
    "label_separator": "what separates a multi-label manifest's labels in one cell (default |)",
    "target_precision": "multi-label: fit each label's threshold for the most recall at this "
    "precision on the validation split, e.g. 0.9 (default 0: best F1 per label)",
    "add_labels": "a CSV manifest of images labelled later (path,label[,split],labelled_by), "
    "e.g. from imagewise label serve; added to the data by class name (repeatable; an image "
    "already in the data keeps one label: a person's replaces the data's, a machine's does not)",
    "label_smoothing": "cross-entropy label smoothing (default 0.1)",
    "patience": "early stopping after this many epochs without improvement (0 = off)",
    "seed": "random seed (default 0)",
    "device": "cpu, cuda, cuda:N or auto (default)",
    "ema_decay": "keep an exponential moving average of the weights (e.g. 0.999; 0 = off)",
    "strict": "fail on a corrupt image instead of skipping it",
    "precision": "auto (bf16 on GPUs; on CPUs with native bf16, bf16 if a timed step is "
    "faster), fp32, bf16 or fp16",
    "compile": "torch.compile the model: auto (on GPUs only; slower on CPUs, see BENCHMARKS.md), "
    "on or off; falls back to eager if compiling fails",
    "teacher": "distill from this run folder (imagewise distill sets it)",
    "distill_alpha": "weight of the teacher's soft targets against the labels, 0..1 (default 0.5)",
    "distill_temperature": "softening temperature of the teacher's and student's outputs "
    "(default 4)",
    "tta": "answer with the mean over the views training taught (mirror if --augment flips, "
    "small shifts if it translates) in evaluate, predict, export and serve",
    "pretrained": "start from the timm / torchvision hub's weights (their local cache when "
    "offline); input size, mean and std follow them",
    "weights": "start from a .safetensors file or a PyTorch state dict (loaded by name and "
    "shape; a classifier for other classes starts new)",
    "init_from": "start from an earlier run folder (its model, size and mean/std; its "
    "classifier too when the classes are the same)",
    "freeze": "backbone (train the classifier only: a linear probe), N (freeze the first N "
    "stages) or none (default)",
    "unfreeze_at": "from this epoch on everything trains (progressive fine-tuning)",
    "freeze_bn": "BatchNorm layers keep their statistics and weights",
    "layer_lr_decay": "each stage below the classifier learns this factor slower, e.g. 0.7 "
    "(default 1: off)",
    "cache_features": "with --freeze backbone, compute the backbone's outputs once and train "
    "the classifier on them: auto (default), on or off",
    "feature_views": "cached features: the plain image plus N-1 augmented views (default 1)",
    "class_weight": "auto: weigh each class in the loss by its inverse frequency; none (default)",
    "sampler": "balanced: draw every class equally often each epoch; shuffle (default)",
    "select_by": "what picks the best epoch: auto (macro F1 when the classes are imbalanced "
    "more than 3x, else accuracy; multi-label: mAP), accuracy, macro_f1 or map",
}


def add_training_options(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One flag per training setting (``imagewise.config.OPTIONS``): ``--epochs`` for
    ``train.epochs``, ``--[no-]hflip`` for a boolean; each defaults to None (the config's).
    The one place train, distill and tune get their training flags from.

    Call it after the verb's own arguments: a setting named like one of them (a flag or a
    positional) is refused here, when the parser is built, naming both; ``skip`` leaves out
    the settings whose name the verb uses for something else on purpose (tune's --sampler).

    Raises:
        ValueError: a setting's flag or name is one the verb declares itself.
    """
    from imagewise.config import OPTIONS, option_type

    # The verb's own arguments, by name and by flag (argparse lists them only in _actions).
    declared = {action.dest: action for action in parser._actions}
    declared |= {flag: action for action in parser._actions for flag in action.option_strings}
    for name, (section, attr) in OPTIONS.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        theirs = declared.get(flag) or declared.get(name)
        if theirs is not None:
            raise ValueError(
                f"the config option {name} ({section}.{attr}) would add {flag} to "
                f"'{parser.prog}', which declares {'/'.join(theirs.option_strings) or name} "
                "itself; rename the config option, or skip it in that verb's "
                "add_training_options call"
            )
        kind = option_type(name)
        help_text = FLAG_HELP.get(name, f"{section}.{attr} (see config.yaml)")
        if kind.startswith("bool"):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif kind.startswith("list"):  # repeatable: --add-labels a.csv --add-labels b.csv
            parser.add_argument(flag, action="append", default=None, help=help_text)
        else:
            base = kind.split("|")[0].strip()
            convert = {"int": int, "float": float}.get(base, str)
            parser.add_argument(flag, type=convert, default=None, help=help_text)


def training_options(args: argparse.Namespace, leave_out: Sequence[str] = ()) -> dict[str, Any]:
    """The training settings given on the command line, by option name (None: not given)."""
    from imagewise.config import OPTIONS

    return {name: getattr(args, name) for name in OPTIONS if name not in leave_out}


def add_data(parser: argparse.ArgumentParser, nargs: str | None = None) -> None:
    """The dataset a training verb learns from."""
    parser.add_argument(
        "data",
        nargs=nargs,
        help="folder, CSV manifest, or a built-in: digits, fashion-mnist, photos",
    )


def add_run(parser: argparse.ArgumentParser) -> None:
    """The run folder a verb reads."""
    parser.add_argument("run", help="run folder")


def add_config(parser: argparse.ArgumentParser) -> None:
    """The YAML file a training verb reads its settings from."""
    parser.add_argument("--config", help="YAML file with sections data / model / train")


def add_recipe(parser: argparse.ArgumentParser) -> None:
    """Named settings a training verb starts from."""
    parser.add_argument(
        "--recipe", help="named settings: default, fast or accurate (see BENCHMARKS.md)"
    )


def add_device(parser: argparse.ArgumentParser, help_text: str = "cpu, cuda or auto") -> None:
    """Where a verb that uses a trained model runs it (training verbs: the config's --device)."""
    parser.add_argument("--device", default="cpu", help=help_text)


def add_batch_size(
    parser: argparse.ArgumentParser, default: int | None = None, help_text: str | None = None
) -> None:
    """Images per forward pass of a verb that uses a trained model."""
    parser.add_argument("--batch-size", type=int, default=default, help=help_text)


def add_output_format(
    parser: argparse.ArgumentParser,
    choices: Sequence[str],
    default: str | None = "table",
    help_text: str | None = None,
) -> None:
    """How a verb prints its result: a table, or a machine-readable form."""
    parser.add_argument("--format", default=default, choices=tuple(choices), help=help_text)


def add_coverage_options(p: argparse.ArgumentParser) -> None:
    """--coverage and --coverage-per-class, for predict, serve and evaluate alike."""
    p.add_argument(
        "--coverage",
        type=float,
        metavar="C",
        help="a prediction set per image: the classes that hold the true class with "
        "probability C, e.g. 0.9 (conformal, on the run's validation images: fitted once, kept "
        "in RUN/conformal.json; or the fit an exported file carries)",
    )
    p.add_argument(
        "--coverage-per-class",
        action="store_true",
        help="with --coverage: reach C for each class, not only on average (larger sets)",
    )
    p.add_argument(
        "--non-empty-sets",
        action="store_true",
        help="with --coverage: keep the top class in every set (without it, a confident answer's "
        "set may be empty, which keeps the coverage exact; with it, the coverage is at least "
        "the model's top-1 accuracy)",
    )


def checked_coverage(args: argparse.Namespace) -> float | None:
    """``--coverage`` checked before any model loads (one line for a value outside (0, 1), or
    for ``--coverage-per-class`` alone)."""
    from imagewise.edge.conformal import check_coverage_request

    return check_coverage_request(args.coverage, args.coverage_per_class, args.non_empty_sets)


def add_unknown_options(p: argparse.ArgumentParser, ood_default: str) -> None:
    """--min-confidence, --target-precision and --ood, for predict and serve alike."""
    p.add_argument(
        "--min-confidence",
        metavar="P|auto",
        help="answer 'unknown' when the top (calibrated) probability is below P; auto: the "
        "lowest threshold reaching --target-precision on the run's validation images (fitted "
        "once, kept in RUN/unknown.json), or the one an exported file carries",
    )
    p.add_argument(
        "--target-precision",
        type=float,
        metavar="T",
        help="with --min-confidence auto: the precision the answers kept must reach (default 0.95)",
    )
    p.add_argument(
        "--ood",
        default=ood_default,
        choices=("auto", "energy", "knn", "none"),
        help="out-of-distribution score per image, higher for unusual images: energy (from "
        "the logits), knn (distance to the training embeddings; run folders: made once, kept "
        "in RUN/knn_reference.npz), none, or auto: knn when the run has a reference, else "
        f"energy (default {ood_default})",
    )
