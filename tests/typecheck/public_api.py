"""Uses every public function as a user would; `make test` runs mypy over this file, so a
public call that a type checker cannot see through (a callable module, a lost signature)
fails CI. It is never executed."""

from __future__ import annotations

from pathlib import Path

import imagewise
from imagewise.audit import AuditResult
from imagewise.card import ModelCard
from imagewise.evaluate import Evaluation
from imagewise.export import ExportResult
from imagewise.features import Features, SimilarResult
from imagewise.label import AutoLabels, LabelQueue
from imagewise.predict import BaseClassifier, Prediction
from imagewise.train import TrainResult
from imagewise.tune import TuneResult


def tour(run: Path) -> None:
    result: TrainResult = imagewise.train("digits", run, epochs=1, model="lenet5")
    accuracy: float = result.best_val_accuracy
    small: TrainResult = imagewise.distill(
        "digits", teacher=run, student="tutorial_cnn", out=run / "small", epochs=1
    )
    study: TuneResult = imagewise.tune(
        "digits", run / "tune", trials=4, sampler="random", model="lenet5", epochs=1
    )
    best: dict[str, object] = study.best_params
    ev: Evaluation = imagewise.evaluate(run, split="test", report=False)
    worst: list[dict[str, object]] = ev.top_losses(3)
    predictions: list[Prediction] = imagewise.predict(run, ["seven.png"], top_k=3)
    label: str = predictions[0].label
    classifier: BaseClassifier = imagewise.load(run, device="cpu")
    names: list[str] = classifier.classes
    maps: list[Path] = imagewise.explain(run, ["seven.png"], method="gradcam++")
    exported: ExportResult = imagewise.export(run, format="onnx", int8=True)
    rows: list[dict[str, object]] = imagewise.compare([run], latency=False)
    models: list[str] = imagewise.list_models()
    imagewise.serve(run, port=0)
    audit: AuditResult = imagewise.check_data("photos/", json_path=run / "audit.json")
    leaks: list[dict[str, object]] = [d for d in audit["exact_duplicates"] if d["cross_split"]]
    print(audit.summary(), leaks, audit.write_clean(run / "clean.csv"))
    feats: Features = imagewise.features(run, "digits", out=run / "digits.npz", split="test")
    dim: int = feats.dim
    found: SimilarResult = imagewise.similar(run, ["seven.png"], "digits", k=5)
    nearest: str = found.queries[0].matches[0].path
    print(dim, nearest, found.format("json"), feats.labels[:3])
    card: ModelCard = imagewise.card(run, intended_use="sorting digits", authors=["me"])
    card_file: Path = card.markdown_path
    print(card.summary(), card_file, [s.title for s in card.missing])
    print(accuracy, small.run, best, worst, label, names, maps, exported.path, rows, models)
    queue: LabelQueue = imagewise.label_next(run, "pool/", 100, out="queue.csv")
    auto: AutoLabels = imagewise.label_auto(run, "pool/", target_precision=0.98, out="auto.csv")
    coverage: float = auto.coverage
    imagewise.label_serve("photos/", queue="queue.csv", run=run, out="labels.csv", port=0)
    selftrained: TrainResult = imagewise.train("digits", unlabelled="pool/", add_labels=["a.csv"])
    print(queue.summary(), coverage, selftrained.pseudo_labels)
