"""``imagewise demo``: the main job end to end on the built-in ``digits`` data.

Train, evaluate on the held-out test split, predict a few held-out images saved as PNG files,
and say where everything is. Runs in well under two minutes on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Chosen by measurement on 2 CPU cores (BENCHMARKS.md): small, fast and above 98% on the test split.
DEMO_SETTINGS: dict[str, Any] = {
    "model": "resnet9_slim",
    "img_size": 28,
    "epochs": 12,
    "batch_size": 64,
    "augment": "light",
    "label_smoothing": 0.1,
}


def run_demo(
    out: str | Path = "runs/demo", epochs: int | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Run the demo into ``out`` (a fresh ``out-N`` if it already holds a run); return figures."""
    from PIL import Image

    from imagewise.data.sources import resolve_source
    from imagewise.evaluate import evaluate
    from imagewise.io import atomic_write
    from imagewise.predict import format_predictions, predict
    from imagewise.runtime.runs import RunFolder, free_run_path
    from imagewise.train.run import train

    out = Path(out)
    if RunFolder.of(out).holds_run():
        out = free_run_path(out)
    settings = dict(DEMO_SETTINGS, epochs=epochs or DEMO_SETTINGS["epochs"])
    print(f"imagewise demo: training {settings['model']} on the built-in digits into {out}")
    result = train("digits", out, show_progress=show_progress, **settings)
    ev = evaluate(out)
    print(
        f"test accuracy {ev.accuracy:.2%} on {ev.metrics.images} held-out images "
        f"(macro F1 {ev.metrics.macro.f1:.4f})"
    )

    # A few held-out test images as PNG files, to show prediction on real files.
    test = resolve_source("digits").test
    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    assert test.images is not None
    paths = []
    for i in range(0, min(len(test), 60), 12):
        img = Image.fromarray(test.images[i, 0].numpy(), mode="L")
        path = samples / f"test{i:03d}_true-{test.labels[i]}.png"
        atomic_write(path, lambda tmp, img=img: img.save(tmp, format="PNG"))
        paths.append(str(path))
    preds = predict(out, paths, top_k=3)
    print(format_predictions(preds))
    print(
        f"\nrun folder {out}: model.safetensors, meta.json, config.yaml, history.csv, "
        f"curves.png, eval/metrics.json, eval/confusion_matrix.png, samples/\n"
        f"next: imagewise predict {out} {samples} --format json"
    )
    return {
        "run": str(out),
        "test_accuracy": ev.accuracy,
        "train_seconds": result.train_seconds,
        "predictions": [p.to_dict() for p in preds],
    }
