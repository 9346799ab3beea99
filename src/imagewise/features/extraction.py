"""``features(run, data)``: embeddings or HOG features of a collection, streamed in batches.

The result holds the arrays with what they are (paths, labels, classes, layer, model, run);
``Features.save`` writes ``.npz`` (NumPy) or ``.parquet`` (pyarrow), ``Features.draw_map`` a
2-D PCA / t-SNE picture. The same images, run and batch size give byte-identical arrays.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imagewise.errors import UserError
from imagewise.features.collection import Collection, resolve_collection
from imagewise.features.result import Features

OUTPUT_SUFFIXES = (".npz", ".parquet")


def check_output(path: str | Path | None, suffixes: Sequence[str] | None, flag: str) -> None:
    """Refuse an output file that cannot be written or whose kind is unknown, before any work."""
    if path is None:
        return
    from imagewise.io import check_output_file, refuse_overwriting

    check_output_file(path, flag)  # a folder, under a file, no permission, a read-only disk
    refuse_overwriting(path, [], flag)  # a run's own files
    if suffixes is not None and Path(path).suffix.lower() not in suffixes:
        raise UserError(
            f"{flag} '{path}': unknown file type '{Path(path).suffix}'; use "
            + " or ".join(suffixes)
        )


def features(
    run: str | Path,
    data: str | Sequence[str],
    *,
    out: str | Path | None = None,
    layer: str | None = None,
    hog: bool = False,
    split: str | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    map_path: str | Path | None = None,
    map_method: str = "pca",
    show_progress: bool = False,
) -> Features:
    """Features of every image in ``data``: penultimate-layer embeddings, a named layer's
    (globally average-pooled) outputs, or HOG features.

    Args:
        run: a run folder from ``imagewise train``.
        data: a dataset ``train`` accepts (folder of class folders, CSV manifest, IDX folder,
            ``digits``, ``fashion-mnist``), or unlabelled image files, folders and globs.
        out: write the features here, ``.npz`` or ``.parquet``.
        layer: a module's dotted name instead of the penultimate layer.
        hog: HOG features (the run's settings for a ``hog_svm`` run) instead of the network's.
        split: ``train``, ``val``, ``test`` or ``all`` of a dataset (default: ``test`` for the
            built-ins, every file for folders and manifests).
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda`` or ``auto``.
        map_path: also draw a 2-D map of the features to this PNG.
        map_method: ``pca`` or ``tsne``.
        show_progress: a progress bar on stderr.

    Example:
        >>> f = imagewise.features("runs/fm", "fashion-mnist", out="fm.npz")  # doctest: +SKIP
        >>> f.features.shape  # doctest: +SKIP
        (10000, 128)
    """
    from imagewise.features.projection import check_method
    from imagewise.predict.predictor import load_run

    check_output(out, OUTPUT_SUFFIXES, "--out")
    check_output(map_path, (".png",), "--map")
    check_method(map_method)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    if hog and layer:
        raise UserError("--hog and --layer exclude each other; HOG features have no layers")
    classifier = load_run(run, device)
    collection = resolve_collection(data, split)
    result = extract(classifier, collection, layer, hog, batch_size, show_progress)
    result.run = str(run)
    try:
        if out is not None:
            result.files["features"] = result.save(out)
        if map_path is not None:
            result.files["map"] = result.draw_map(map_path, map_method)
    except OSError as exc:
        raise UserError(f"cannot write '{exc.filename or out}': {exc.strerror or exc}") from exc
    return result


def extract(
    classifier: Any,
    collection: Collection,
    layer: str | None = None,
    hog: bool = False,
    batch_size: int = 256,
    show_progress: bool = False,
) -> Features:
    """Features of a resolved collection with a loaded classifier, streamed in batches."""
    from tqdm import tqdm

    from imagewise.features import hog as hog_features
    from imagewise.runtime import embedding as net

    pre = classifier.preprocessing
    model = net.network_of(classifier)
    if hog:
        settings = hog_features.settings_for(classifier)
        name = hog_features.describe(settings)
    else:
        name = layer or net.penultimate_name(model)
        # looked up once for every batch; a wrong layer name fails before any image is read
        embedder = net.Embedder(classifier, layer)
    start = time.perf_counter()
    kept: list[int] = []
    parts: list[np.ndarray] = []
    with tqdm(total=len(collection), desc="features", unit="img", disable=not show_progress) as bar:
        for index, images in collection.batches(
            pre.channels, pre.img_size, batch_size, pre.interpolation, pre.crop_pct
        ):
            if hog:
                parts.append(hog_features.hog_batch(images, settings))
            else:
                parts.append(embedder(images, batch_size))
            kept.extend(index)
            bar.update(index[-1] + 1 - bar.n)
        bar.update(len(collection) - bar.n)  # unreadable files at the end
    if not parts:
        raise UserError(
            f"none of the {len(collection)} images in '{collection.source}' could be read"
        )
    return Features(
        features=np.ascontiguousarray(np.concatenate(parts), dtype=np.float32),
        paths=[collection.names[i] for i in kept],
        labels=[collection.labels[i] for i in kept],
        splits=[collection.splits[i] for i in kept],
        classes=list(collection.classes),
        layer=name,
        model=classifier.name,
        run="",
        skipped=list(collection.skipped),
        seconds=time.perf_counter() - start,
    )
