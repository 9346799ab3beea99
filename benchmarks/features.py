"""Features and similar-image search (issue 21) on Fashion-MNIST, with a trained run.

(a) k-NN accuracy: each test image's class by a majority vote of its 10 nearest training
images (cosine similarity of the penultimate embeddings; a tie goes to the class of the nearest
tied neighbour), against the classifier's own test accuracy (its final layer on the same
embeddings, which are its logits).
(b) precision@10 of similar-image search: every test image as a query over the index of the
training split; the share of its 10 matches that have its class.
Also: the time to build the index through ``imagewise.similar`` (embedding the training split
and saving it), the embedding rate, and queries per second of the search alone (exact, torch;
FAISS flat too when ``faiss`` is installed).

    .venv/bin/python benchmarks/features.py --run runs/fm-fast --json /tmp/features.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import imagewise
from imagewise.features.collection import resolve_collection
from imagewise.features.index import load_index, normalize
from imagewise.features.search import build_searcher, faiss_module, top_k_exact

K = 10


def knn_accuracy(neighbour_labels: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """Majority vote of each row's neighbours (nearest first); ties to the nearest tied one."""
    votes = np.zeros((len(neighbour_labels), classes), dtype=np.int64)
    np.add.at(votes, (np.arange(len(votes))[:, None], neighbour_labels), 1)
    top = votes.max(axis=1, keepdims=True)
    tied = votes[np.arange(len(votes))[:, None], neighbour_labels] == top
    predicted = neighbour_labels[np.arange(len(votes)), tied.argmax(axis=1)]
    return float((predicted == truth).mean())


def timed_search(queries: np.ndarray, index: np.ndarray, searcher: Any = None) -> tuple:
    start = time.perf_counter()
    if searcher is None:
        sims, rows = top_k_exact(queries, index, K)
    else:
        sims, rows = searcher.search(queries, K)
    return sims, rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/fm-fast")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(2)

    work = Path(tempfile.mkdtemp(prefix="features-bench-"))
    try:
        test = resolve_collection("fashion-mnist", "test")
        query = work / "query.png"
        assert test.images is not None
        Image.fromarray(test.images[0, 0].numpy()).save(query)
        # The index of the training split, built (embedded and saved) through the library.
        built = imagewise.similar(args.run, [str(query)], "fashion-mnist", k=K, split="train",
                                  save_index=work / "index", show_progress=True)  # fmt: skip
        index = load_index(work / "index")
        start = time.perf_counter()
        feats = imagewise.features(args.run, "fashion-mnist", split="test", show_progress=True)
        embed_seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)

    classes = feats.classes
    truth = feats.label_indices()
    train_labels = np.array([classes.index(label) for label in index.labels])
    clf = imagewise.load(args.run)
    with torch.no_grad():
        logits = clf.model.forward_head(torch.from_numpy(feats.features)[:, :, None, None])
    model_accuracy = float((logits.argmax(1).numpy() == truth).mean())

    queries = normalize(feats.features)
    _, rows, exact_seconds = timed_search(queries, index.embeddings)
    neighbours = train_labels[rows]
    figures: dict[str, Any] = {
        "run": args.run,
        "model": feats.model,
        "layer": feats.layer,
        "dim": feats.dim,
        "index_images": len(index),
        "test_images": len(feats),
        "classifier_test_accuracy": model_accuracy,
        "knn10_accuracy": knn_accuracy(neighbours, truth, len(classes)),
        "precision_at_10": float((neighbours == truth[:, None]).mean()),
        "index_build_seconds": built.build_seconds,
        "embed_images_per_s": len(feats) / embed_seconds,
        "exact_queries_per_s": len(queries) / exact_seconds,
        "exact_search_seconds": exact_seconds,
    }
    if faiss_module() is not None:
        searcher = build_searcher(index.embeddings, "faiss-flat")
        _, frows, faiss_seconds = timed_search(queries, index.embeddings, searcher)
        figures["faiss_flat_queries_per_s"] = len(queries) / faiss_seconds
        figures["faiss_same_top1"] = float((frows[:, 0] == rows[:, 0]).mean())
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
