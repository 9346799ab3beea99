"""The ``imagewise`` command line: parse arguments, call one library function, print.

Bad input ends with one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from imagewise.errors import UserError

log = logging.getLogger("imagewise")

EXAMPLES = {
    "demo": "imagewise demo",
    "data fetch": "imagewise data fetch fashion-mnist",
    "data check": "imagewise data check photos/ --json audit.json --html audit.html "
    "--write-clean clean.csv   # then: imagewise train clean.csv",
    "models": "imagewise models --img-size 28 --channels 1",
    "train": "imagewise train fashion-mnist --model resnet9_slim --epochs 10 --out runs/fm",
    "distill": "imagewise distill fashion-mnist --teacher runs/fm --student tutorial_cnn "
    "--epochs 10 --out runs/fm-small",
    "tune": "imagewise tune fashion-mnist --model tutorial_cnn --epochs 4 --trials 20 "
    "--subset 10000 --out runs/fm-tune   # then: imagewise train fashion-mnist --config "
    "runs/fm-tune/best.yaml",
    "evaluate": "imagewise evaluate runs/fm   # then open runs/fm/eval/report.html",
    "compare": "imagewise compare runs/fm runs/fm-hog --out compare.html",
    "predict": "imagewise predict runs/fm photos/ 'more/*.png' --top-k 3 --format csv",
    "explain": "imagewise explain runs/fm photos/shoe.png --method gradcam++ --class Sneaker",
    "export": "imagewise export runs/fm --int8   # then: imagewise predict "
    "runs/fm/export/model.int8.onnx photos/",
    "serve": "imagewise serve runs/fm --port 8000   # then open http://127.0.0.1:8000/",
    "features": "imagewise features runs/fm fashion-mnist --split test --out fm-test.npz "
    "--map fm-test.png",
    "similar": "imagewise similar runs/fm shoe.png --index photos/ --k 10 --format html "
    "--out similar.html",
}

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
    "loss": "auto, cross_entropy, mse or margin",
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
    "more than 3x, else accuracy), accuracy or macro_f1",
}


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    from imagewise.config import OPTIONS, option_type

    for name, (section, attr) in OPTIONS.items():
        kind = option_type(name)
        flag = "--" + name.replace("_", "-")
        help_text = FLAG_HELP.get(name, f"{section}.{attr} (see config.yaml)")
        if kind.startswith("bool"):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            base = kind.split("|")[0].strip()
            convert = {"int": int, "float": float}.get(base, str)
            parser.add_argument(flag, type=convert, default=None, help=help_text)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to look, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")

    def sub(subparsers: Any, name: str, help_text: str, key: str | None = None) -> Any:
        return subparsers.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=f"example:\n  {EXAMPLES[key or name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    import imagewise

    parser = _Parser(
        prog="imagewise",
        parents=[common],
        description="Image classification: train, evaluate and use classifiers.",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagewise {imagewise.__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in (
        _add_demo,
        _add_data,
        _add_models,
        _add_train,
        _add_distill,
        _add_tune,
        _add_evaluate,
        _add_compare,
        _add_predict,
        _add_export,
        _add_explain,
        _add_serve,
        _add_features,
        _add_similar,
    ):
        add(verbs, sub)
    return parser


def _add_demo(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(verbs, "demo", "the main job end to end on the built-in digits")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.set_defaults(func=cmd_demo)


def _add_data(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(verbs, "data", "dataset tools", "data fetch")
    data_verbs = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    q = sub(data_verbs, "fetch", "make a built-in dataset available offline", "data fetch")
    q.add_argument("name", help="digits, fashion-mnist or photos")
    q.set_defaults(func=cmd_data_fetch)
    c = sub(
        data_verbs,
        "check",
        "find unreadable, tiny and odd images, class imbalance, exact and near duplicates "
        "within and across splits, and likely label errors; never changes your files",
        "data check",
    )
    c.add_argument("data", help="folder, CSV manifest, IDX folder, digits, fashion-mnist or photos")
    c.add_argument("--json", help="write the findings as JSON to this file")
    c.add_argument("--html", help="write a page with thumbnails to this file")
    c.add_argument(
        "--write-clean", metavar="MANIFEST", help="write a CSV manifest without the flagged images"
    )
    c.add_argument(
        "--no-label-check", action="store_true", help="skip the label-error check (the slowest)"
    )
    c.add_argument("--workers", type=int, default=None, help="processes (default: CPU cores)")
    c.set_defaults(func=cmd_data_check)


def _add_models(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(verbs, "models", "list the built-in models with parameters and FLOPs")
    p.add_argument("names", nargs="*", help="models to show (default: all built-in)")
    p.add_argument("--img-size", type=int, default=224, help="input size for FLOPs (default 224)")
    p.add_argument("--channels", type=int, default=3, help="input channels (default 3)")
    p.add_argument("--num-classes", type=int, default=10, help="classes (default 10)")
    p.add_argument(
        "--measure",
        action="store_true",
        help="also time training and inference images/s on this machine (a few steps each; "
        "refreshes the speed table --model auto uses)",
    )
    p.add_argument(
        "--check",
        metavar="NAME",
        help="classify scikit-image's photographs with NAME's ImageNet weights and their "
        "1000-class head, print the top-5 and exit 1 unless each is right: proves a mapping "
        "and its preprocessing (e.g. --check tf_efficientnet_lite0)",
    )
    p.add_argument("--weights", help="with --check: a weights file to check (any layout)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_models)


def _add_train(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(verbs, "train", "train a classifier and write a run folder")
    p.add_argument(
        "data", nargs="?", help="folder, CSV manifest, or a built-in: digits, fashion-mnist, photos"
    )
    p.add_argument("--out", help="run folder (default runs/DATA-MODEL)")
    p.add_argument("--config", help="YAML file with sections data / model / train")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--recipe", help="named settings: default, fast or accurate (see BENCHMARKS.md)")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)


def _add_distill(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(verbs, "distill", "train a student model on a teacher run's soft targets and labels")
    p.add_argument(
        "data", help="folder, CSV manifest, or a built-in: digits, fashion-mnist, photos"
    )
    p.add_argument("--student", required=True, help="the student's network name (any --model)")
    p.add_argument("--out", help="run folder (default runs/DATA-STUDENT)")
    p.add_argument("--config", help="YAML file with sections data / model / train")
    p.add_argument("--recipe", help="named settings: default, fast or accurate (see BENCHMARKS.md)")
    _add_train_options(p)  # --teacher, --distill-alpha, --distill-temperature among them
    p.set_defaults(func=cmd_distill)


def _add_evaluate(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(verbs, "evaluate", "measure a run on held-out images; writes RUN/eval/")
    p.add_argument("run", help="run folder")
    p.add_argument("data", nargs="?", help="other data to evaluate on (default: the test split)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--gallery", type=int, default=24, help="worst errors in the report (24)")
    p.add_argument("--no-report", action="store_true", help="skip eval/report.html")
    p.set_defaults(func=cmd_evaluate)


def _add_compare(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(verbs, "compare", "put runs side by side: accuracy, F1, ECE, size, latency, time")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--data", help="evaluate every run on this data (default: each test split)")
    p.add_argument("--out", default="compare.html", help="HTML page (default compare.html)")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"))
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.set_defaults(func=cmd_compare)


def _add_unknown_options(p: argparse.ArgumentParser, ood_default: str) -> None:
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


def _add_predict(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(verbs, "predict", "classify images, folders, globs and videos")
    p.add_argument("run", metavar="RUN|MODEL", help="run folder, or .onnx / .pt file from export")
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image files, folders or globs; or video files (.mp4 .mov .avi .mkv .webm)",
    )  # fmt: skip
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"))
    p.add_argument("--out", help="write the predictions to this file instead of printing")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    _add_unknown_options(p, ood_default="auto")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 64; videos 32)")
    p.add_argument(
        "--sort-into", metavar="OUT",
        help="copy each image into OUT/<class>/, unsure ones (below --min-confidence, default "
        "0.5 here) into OUT/_unsure/, with OUT/predictions.csv; never overwrites; rerun to "
        "resume after an interruption",
    )  # fmt: skip
    p.add_argument("--move", action="store_true", help="with --sort-into: move, not copy")
    p.add_argument(
        "--stride", type=int, default=1, metavar="N", help="videos: every N-th frame (default 1)"
    )
    p.add_argument(
        "--annotate", metavar="VIDEO", help="videos: write a copy with each frame's answer drawn"
    )
    p.set_defaults(func=cmd_predict)


def _add_export(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(verbs, "export", "write the model as ONNX or TorchScript, checked against PyTorch")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    p.add_argument(
        "--int8", action="store_true", help="INT8 quantization, calibrated on training images"
    )
    p.add_argument(
        "--raw-input",
        action="store_true",
        help="the graph takes uint8 NHWC images at the model's size and normalizes them",
    )
    p.add_argument("--out", help="model file (default RUN/export/model[.int8].onnx or model.pt)")
    p.set_defaults(func=cmd_export)


def _add_explain(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(verbs, "explain", "Grad-CAM heat maps of where the model looks; writes RUN/explain/")
    p.add_argument("run", help="run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument(
        "--method", default="gradcam", help="gradcam (default), gradcam++, hirescam or eigencam"
    )
    p.add_argument(
        "--class",
        dest="target",
        metavar="CLASS",
        help="class to explain, name or index (default: the predicted class)",
    )
    p.add_argument(
        "--layer", metavar="NAME", help="dotted layer name (default: chosen per model family)"
    )
    p.add_argument("--out", metavar="DIR", help="folder for the heat maps (default RUN/explain)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=cmd_explain)


def _add_serve(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(verbs, "serve", "HTTP API and web page over a run folder or an ONNX file")
    p.add_argument("model", metavar="RUN|ONNX", help="run folder or .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port, printed)"
    )
    p.add_argument(
        "--token",
        default=os.environ.get("IMAGEWISE_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' (default: $IMAGEWISE_TOKEN; none)",
    )
    p.add_argument("--max-batch", type=int, default=32, help="images per model call (32)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long a batch waits to fill (0: those that came while the model ran)",
    )
    p.add_argument("--no-batching", action="store_true", help="one image per model call")
    p.add_argument("--queue-size", type=int, default=256, help="images waiting before 503 (256)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before 504 (30)")
    p.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds to send a request body, plus 1 s per 500 bytes received (10); then 408",
    )
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request (20 MB)")
    p.add_argument("--max-images", type=int, default=32, help="images per request (32)")
    p.add_argument(
        "--max-megapixels", type=float, default=50.0, help="largest image (50 megapixels)"
    )
    p.add_argument("--top-k", type=int, default=5, help="default classes per image (5)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="compute threads (default: torch's; ONNX files: the CPUs this process may use)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (run folders)")
    _add_unknown_options(p, ood_default="none")  # existing clients see no new fields
    p.set_defaults(func=cmd_serve)


def cmd_demo(args: argparse.Namespace) -> int:
    from imagewise.demo import run_demo
    from imagewise.io import check_output_dir

    check_output_dir(args.out)
    _tune_process()
    run_demo(args.out, epochs=args.epochs, show_progress=not args.quiet)
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from imagewise.data.builtin import fetch

    print(f"{args.name} is available in {fetch(args.name)}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from imagewise.audit import check

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, not {args.workers}")
    result = check(
        args.data,
        json_path=args.json,
        html_path=args.html,
        clean_manifest=args.write_clean,
        find_label_issues=not args.no_label_check,
        workers=args.workers,
        show_progress=not args.quiet,
    )
    print(result.summary())
    written = (args.json, "findings"), (args.html, "page"), (args.write_clean, "clean manifest")
    for path, what in written:
        if path:
            print(f"{what}: {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import json

    from imagewise.models import describe_models
    from imagewise.models.summary import format_models
    from imagewise.runtime.threads import ThreadGovernor, kept_threads

    if args.check:
        return _check_weights(args)
    with kept_threads():  # timed with the threads training would get beside other work
        pace = ThreadGovernor(interval=0.2).tick if args.measure else None
        rows = describe_models(
            args.names or None, args.channels, args.img_size, args.num_classes, args.measure, pace
        )
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(format_models(rows, args.img_size, measured=args.measure))
    if args.measure:
        print("\ntrain/s, infer/s: images per second measured just now on this machine "
              f"({args.channels}x{args.img_size}x{args.img_size}).")  # fmt: skip
    print("\npretrained: here = ImageNet weights on this machine (an installed weight package or "
          "the hub cache; --pretrained works offline), hub = downloaded on first use.")  # fmt: skip
    print("Any timm model name works too, e.g. --model convnext_nano.")
    return 0


def _check_weights(args: argparse.Namespace) -> int:
    from imagewise.models.check import check_pretrained

    result = check_pretrained(args.check, weights=args.weights or "")
    if args.format == "json":
        import json
        from dataclasses import asdict

        print(json.dumps({**asdict(result), "passed": result.passed}, indent=2))
    else:
        print("\n".join(result.lines()))
    return 0 if result.passed else 1


def _tune_process() -> None:
    """Process-wide tuning the library leaves to its caller: glibc keeps freed activation
    buffers for reuse (``keep_freed_memory``; the step time it saves: see BENCHMARKS.md)."""
    from imagewise.runtime.device import keep_freed_memory

    keep_freed_memory()


def cmd_train(args: argparse.Namespace) -> int:
    from imagewise.config import OPTIONS
    from imagewise.train.run import train

    _tune_process()

    options = {name: getattr(args, name) for name in OPTIONS}
    result = train(
        args.data,
        args.out,
        config_file=args.config,
        recipe=args.recipe,
        resume=args.resume,
        show_progress=not args.quiet,
        **options,
    )
    _print_trained(result)
    return 0


def _print_trained(result: Any, what: str = "") -> None:
    """The two lines a finished training run prints (rank 0 only under torchrun)."""
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for all
        return
    print(f"{result.summary(what)}   next: imagewise evaluate {result.run}")


def cmd_distill(args: argparse.Namespace) -> int:
    from imagewise.config import OPTIONS
    from imagewise.train.distill import distill

    if not args.teacher:
        raise UserError("distill needs the teacher: --teacher RUN (a folder from imagewise train)")
    if args.model:
        raise UserError("distill names its model with --student, not --model")
    _tune_process()
    options = {name: getattr(args, name) for name in OPTIONS if name not in ("model", "teacher")}
    result = distill(
        args.data, teacher=args.teacher, student=args.student, out=args.out,
        config_file=args.config, recipe=args.recipe, show_progress=not args.quiet, **options,
    )  # fmt: skip
    _print_trained(result, f"distilled {args.teacher} into {result.model}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from imagewise.evaluate import evaluate

    if args.gallery < 0:
        raise UserError(f"--gallery must be 0 or more, not {args.gallery}")
    ev = evaluate(
        args.run, args.data, split=args.split, batch_size=args.batch_size, device=args.device,
        report=not args.no_report, gallery=args.gallery,
    )  # fmt: skip
    print(ev.summary())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from imagewise.evaluate.compare import compare_runs, format_comparison, write_comparison

    rows = compare_runs(args.runs, args.data, latency=not args.no_latency)
    print(format_comparison(rows, args.format))
    print(f"wrote {write_comparison(rows, args.out)}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from imagewise.predict import format_predictions, predict
    from imagewise.predict.sharding import is_main_process
    from imagewise.predict.video import format_frames, is_video, predict_videos

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, not {args.top_k}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.move and not args.sort_into:
        raise UserError("--move goes with --sort-into OUT (it moves the images into OUT)")
    if args.sort_into:
        return _sort_into(args)
    if args.out:
        from imagewise.io import check_output_file, refuse_overwriting

        check_output_file(args.out)
        refuse_overwriting(args.out, [args.run, *_expanded(args.inputs)])
    common = dict(
        top_k=args.top_k, device=args.device, min_confidence=args.min_confidence,
        target_precision=args.target_precision, ood=args.ood,
    )  # fmt: skip
    if any(is_video(i) for i in args.inputs):
        frames = predict_videos(args.run, args.inputs, stride=args.stride, annotate=args.annotate,
                                batch_size=args.batch_size or 32, **common)  # fmt: skip
        text, preds = format_frames(frames, args.format), frames
    elif args.annotate or args.stride != 1:
        raise UserError("--stride and --annotate are for videos (.mp4 .mov .avi .mkv .webm)")
    else:
        preds = predict(args.run, args.inputs, batch_size=args.batch_size or 64, **common)
        if not is_main_process():  # under torchrun, rank 0 prints and writes for all
            return 0
        text = format_predictions(preds, args.format)
    if args.out:
        from imagewise.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"wrote {len(preds)} predictions to {args.out}")
    else:
        print(text)
    if args.annotate:
        print(f"wrote {args.annotate}", file=sys.stderr)
    return 0


def _sort_into(args: argparse.Namespace) -> int:
    from imagewise.predict.sharding import refuse_under_torchrun
    from imagewise.predict.sorting import sort_images

    refuse_under_torchrun("--sort-into")
    r = sort_images(
        args.run, args.inputs, args.sort_into, move=args.move, device=args.device,
        min_confidence=args.min_confidence, target_precision=args.target_precision,
        batch_size=args.batch_size or 64,
    )  # fmt: skip
    print(r.summary())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from imagewise.export import export

    result = export(
        args.run, format=args.format, int8=args.int8, raw_input=args.raw_input, out=args.out
    )
    print(f"{result.summary()}   next: imagewise predict {result.path} IMAGES")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from imagewise.explain import explain

    files = explain(
        args.run,
        args.images,
        method=args.method,
        target=args.target,
        layer=args.layer,
        out=args.out,
        device=args.device,
    )
    for path in files:
        print(path)
    folder = files[0].parent if files else args.out
    noun = "heat map" if len(files) == 1 else "heat maps"
    print(f"wrote {len(files)} {noun} to {folder} (index: {folder}/explain.json)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from imagewise.serve import serve

    serve(
        args.model,
        host=args.host,
        port=args.port,
        token=args.token,
        batching=not args.no_batching,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        timeout_s=args.timeout,
        body_timeout_s=args.body_timeout,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_images=args.max_images,
        max_pixels=int(args.max_megapixels * 1_000_000),
        top_k=args.top_k,
        threads=args.threads,
        device=args.device,
        access_log=not args.quiet,
        min_confidence=args.min_confidence,
        target_precision=args.target_precision,
        ood=args.ood,
    )
    return 0


def _add_tune(verbs: Any, sub: Callable[..., Any]) -> None:
    from imagewise.config import OPTIONS, option_type

    p = sub(verbs, "tune", "search training settings (grid, random or TPE on Optuna)")
    p.add_argument(
        "data", help="folder, CSV manifest, or a built-in: digits, fashion-mnist, photos"
    )
    p.add_argument(
        "--space",
        help="YAML search space (default: lr, weight decay, batch size, "
        "label smoothing, augmentation, optimizer; syntax in README.md)",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        help="finished trials the study should hold; a rerun adds what is missing (default 20)",
    )
    p.add_argument("--sampler", default="tpe", choices=("tpe", "random", "grid"))
    p.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"))
    p.add_argument("--timeout", help="start no trial after this long, e.g. 30m, 2h")
    p.add_argument(
        "--storage",
        help="SQLAlchemy URL (postgresql://user:pw@host/db) or SQLite "
        "file shared by several workers (default OUT/study.db)",
    )
    p.add_argument("--study", default="imagewise", help="study name (default imagewise)")
    p.add_argument("--out", help="output folder (default runs/tune-DATA)")
    p.add_argument("--subset", type=int, help="search on a stratified sample of N training images")
    p.add_argument(
        "--retrain-best",
        action="store_true",
        help="train the best settings on all training images at the end (OUT/final)",
    )
    p.add_argument("--keep-runs", action="store_true", help="keep every trial's run folder")
    p.add_argument("--config", help="YAML file with sections data / model / train")
    for name in OPTIONS:  # the fixed training settings; train's --sampler is a config-file key
        if name == "sampler":
            continue
        flag, kind = "--" + name.replace("_", "-"), option_type(name)
        if kind.startswith("bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            convert = {"int": int, "float": float}.get(kind.split("|")[0].strip(), str)
            p.add_argument(flag, type=convert, default=None, help=FLAG_HELP.get(name))
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from imagewise.config import OPTIONS
    from imagewise.tune import tune

    _tune_process()
    options = {name: getattr(args, name) for name in OPTIONS if name != "sampler"}
    result = tune(
        args.data, args.out, trials=args.trials, space=args.space, sampler=args.sampler,
        pruner=args.pruner, timeout=args.timeout, storage=args.storage, study=args.study,
        subset=args.subset, retrain_best=args.retrain_best, keep_runs=args.keep_runs,
        config_file=args.config, **options,
    )  # fmt: skip
    print("\n".join(result.summary))
    print(f"wrote {', '.join(str(p) for p in result.files.values())}")
    if "best" in result.files:
        print(f"next: imagewise train {args.data} --config {result.files['best']}")
    return 0


def _add_features(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(
        verbs,
        "features",
        "embeddings (penultimate or a named layer) or HOG features of images, as .npz or "
        ".parquet; optionally a 2-D map",
    )
    p.add_argument("run", help="run folder")
    p.add_argument(
        "data",
        nargs="+",
        metavar="DATA",
        help="a dataset train accepts (class folders, CSV manifest, digits, fashion-mnist), or "
        "unlabelled image files, folders and globs",
    )
    p.add_argument("--out", required=True, help="features file: .npz (NumPy) or .parquet")
    p.add_argument(
        "--layer",
        help="a module's dotted name instead of the penultimate layer (the classifier's input); "
        "4-D outputs are global-average-pooled, tokens averaged",
    )
    p.add_argument(
        "--hog",
        action="store_true",
        help="HOG features (scikit-image) instead: the run's settings for a hog_svm run, else "
        "9 orientations, 2x2-cell blocks, 7 cells across (14 from 112 px)",
    )
    p.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        help="of a dataset (default: test for digits and fashion-mnist, all the files given for "
        "folders and manifests)",
    )
    p.add_argument("--map", metavar="PNG", help="also draw a 2-D map of the features, by class")
    p.add_argument(
        "--map-method",
        default="pca",
        choices=("pca", "tsne"),
        help="pca (default) or tsne (on a random 10,000 above that many images)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=cmd_features)


def _add_similar(verbs: Any, sub: Callable[..., Any]) -> None:
    p = sub(
        verbs,
        "similar",
        "find the images most similar to each query (cosine similarity of the run's embeddings); "
        "the index of the collection is built once, saved and reused",
    )
    p.add_argument("run", help="run folder")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="image files, folders or globs")
    p.add_argument(
        "--index",
        required=True,
        metavar="DATA|INDEX_DIR",
        help="an index folder, or the data to search (a dataset, a folder of images or a quoted "
        "glob; its index is saved in RUN/index/ and rebuilt when the files or the weights change)",
    )
    p.add_argument("--k", type=int, default=10, help="matches per query (default 10)")
    p.add_argument(
        "--format",
        choices=("table", "json", "html"),
        help="table, json or html (a contact sheet of thumbnails); default: from --out's "
        "extension (.html, .json), else table",
    )
    p.add_argument("--out", help="write the result to this file instead of printing")
    p.add_argument("--save-index", metavar="DIR", help="where to save the index built from DATA")
    p.add_argument("--split", choices=("train", "val", "test", "all"), help="as in features")
    p.add_argument("--layer", help="a named layer instead of the penultimate one")
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "exact", "faiss"),
        help="auto (default): exact search below 200k images, FAISS above when installed",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=cmd_similar)


def cmd_features(args: argparse.Namespace) -> int:
    from imagewise.features import features

    data = args.data[0] if len(args.data) == 1 else args.data
    result = features(
        args.run, data, out=args.out, layer=args.layer, hog=args.hog, split=args.split,
        batch_size=args.batch_size, device=args.device, map_path=args.map,
        map_method=args.map_method, show_progress=not args.quiet,
    )  # fmt: skip
    print(result.summary())
    return 0


def _expanded(inputs: list[str]) -> list[str]:
    """Inputs with their globs expanded (what an output must not overwrite)."""
    import glob

    return [found for given in inputs for found in (glob.glob(given) or [given])]


def cmd_similar(args: argparse.Namespace) -> int:
    from imagewise.features import similar

    if args.out:
        from imagewise.features.extraction import check_output
        from imagewise.io import refuse_overwriting

        check_output(args.out, None, "--out")
        refuse_overwriting(args.out, [args.run, *_expanded(args.queries)])
    suffix = os.path.splitext(args.out or "")[1].lower()
    fmt = args.format or {".html": "html", ".htm": "html", ".json": "json"}.get(suffix, "table")
    result = similar(
        args.run, args.queries, args.index, k=args.k, save_index=args.save_index, split=args.split,
        layer=args.layer, backend=args.backend, batch_size=args.batch_size, device=args.device,
        show_progress=not args.quiet,
    )  # fmt: skip
    info = result.index_info
    how = f"built in {result.build_seconds:.1f}s" if result.built else "reused"
    log.info("index %s: %d images, %s, %s", result.index, info["count"], info["backend"], how)
    if args.out:
        result.write(args.out, fmt)
        n = len(result.queries)
        print(f"wrote {n} quer{'y' if n == 1 else 'ies'} x {args.k} matches to {args.out}")
    else:
        print(result.format(fmt))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imagewise`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    quiet = "-q" in argv or "--quiet" in argv
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with _stop_on_sigterm() as stopped_by:
        return _run(args, debug, main_rank, stopped_by)


# Top-level modules that only `pip install "imagewise[all]"` brings, and those that the
# `imagewise[runtime]` extra brings (predict with and serve an ONNX file, without PyTorch).
FULL_INSTALL_MODULES = frozenset(
    {
        "torch", "torchvision", "timm", "sklearn", "yaml", "safetensors", "matplotlib", "tqdm",
        "tensorboard", "pytorch_grad_cam", "skimage", "onnx", "onnxscript", "optuna",
        "psycopg", "cleanlab", "pyarrow", "av", "scipy",
    }
)  # fmt: skip
RUNTIME_MODULES = frozenset(
    {
        "onnxruntime", "fastapi", "fastapi_offline", "uvicorn", "multipart", "python_multipart",
        "prometheus_client", "starlette", "pydantic",
    }
)  # fmt: skip


def _missing_install(exc: ModuleNotFoundError, args: argparse.Namespace) -> str | None:
    """The one line for a verb whose packages this install lacks, or None (a real bug)."""
    module = (exc.name or "").partition(".")[0]
    words = (getattr(args, "verb", None), getattr(args, "data_verb", None))
    verb = " ".join(["imagewise", *(w for w in words if w)])
    if module in RUNTIME_MODULES:
        return f"'{verb}' needs the runtime extra: pip install \"imagewise[runtime]\""
    if module in FULL_INSTALL_MODULES:
        return f"'{verb}' needs the full install: pip install \"imagewise[all]\""
    return None


def _run(args: argparse.Namespace, debug: bool, main_rank: bool, stopped_by: dict[str, int]) -> int:
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if debug:
            raise
        # Under torchrun every rank hits the same error; one line from rank 0 is clearer than
        # N interleaved copies.
        if main_rank:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        # A verb run on the small install (numpy, Pillow, maybe the runtime extra): one line
        # naming the install it needs, here for every verb rather than in each of them.
        message = _missing_install(exc, args)
        if debug or message is None:
            raise
        if main_rank:
            print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if debug:
            raise
        if main_rank:
            print(str(exc) or "interrupted", file=sys.stderr)
        return 128 + stopped_by.get("signal", signal.SIGINT)


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[dict[str, int]]:
    """Turn SIGTERM into KeyboardInterrupt, as Ctrl-C is, so training stops the same clean way
    (atomic files, one line with the --resume command); the exit code then says 143.
    Yields a dict that holds the signal number once one came; the old handler comes back."""
    seen: dict[str, int] = {}

    def stop(signum: int, frame: object) -> None:
        seen["signal"] = signum
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield seen  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)
