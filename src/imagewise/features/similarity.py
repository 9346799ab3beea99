"""``similar(run, queries, index)``: the images of a collection nearest to each query.

Cosine similarity of L2-normalized embeddings (the run's penultimate layer, or ``layer``). Given
data, the index is built once and saved (``RUN/index/<data>-<split>-<hash>/`` or ``save_index``)
and reused while the run's weights and the data's files (names, sizes, mtimes) are unchanged;
given an index folder, it is used as it is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagewise.errors import UserError
from imagewise.features.index import Index
from imagewise.features.result import Match, QueryMatches, SimilarResult


def similar(
    run: str | Path,
    queries: str | Sequence[str],
    index: str | Sequence[str],
    k: int = 10,
    *,
    save_index: str | Path | None = None,
    split: str | None = None,
    layer: str | None = None,
    backend: str = "auto",
    batch_size: int = 256,
    device: str = "cpu",
    show_progress: bool = False,
) -> SimilarResult:
    """The ``k`` images of ``index`` most similar to each query image (cosine similarity).

    Args:
        run: the run folder whose network embeds the images.
        queries: image files, folders or globs.
        index: an index folder written before, or data (a dataset ``train`` accepts, or image
            files, folders and globs) to index; the index is saved and reused next time.
        k: matches per query.
        save_index: where to save an index built from data (default
            ``RUN/index/<data>-<split>-<hash>/``).
        split: of a dataset: ``train``, ``val``, ``test`` or ``all`` (as ``features``).
        layer: a named layer instead of the penultimate one.
        backend: ``auto`` (exact below 200k images; FAISS above when installed),
            ``exact`` or ``faiss``.
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda`` or ``auto``.
        show_progress: progress bars on stderr.

    Example:
        >>> r = imagewise.similar("runs/fm", ["shoe.png"], "photos/", k=5)  # doctest: +SKIP
        >>> r.queries[0].matches[0].path  # doctest: +SKIP
        'photos/shoe-copy.png'
    """
    from imagewise.features.collection import resolve_collection
    from imagewise.features.extraction import extract
    from imagewise.features.index import normalize
    from imagewise.features.search import choose_backend, top_k
    from imagewise.predict.predictor import load_run

    if k < 1:
        raise UserError(f"--k must be at least 1, not {k}")
    choose_backend(backend, 0)  # an unknown name fails before any work
    classifier = load_run(run, device)
    start = time.perf_counter()
    found, built = _index_for(classifier, run, index, save_index, split, layer, backend,
                              batch_size, show_progress)  # fmt: skip
    build_seconds = time.perf_counter() - start if built else 0.0
    start = time.perf_counter()
    asked = resolve_collection([queries] if isinstance(queries, str | Path) else queries)
    embedded = extract(classifier, asked, layer, False, batch_size, show_progress=False)
    sims, rows = top_k(normalize(embedded.features), found.embeddings, k, found.searcher)
    answers = [
        QueryMatches(query, [
            Match(rank + 1, float(s), found.paths[r], found.labels[r])
            for rank, (s, r) in enumerate(zip(sim_row, row, strict=True)) if r >= 0
        ])
        for query, sim_row, row in zip(embedded.paths, sims, rows, strict=True)
    ]  # fmt: skip
    assert found.folder is not None
    return SimilarResult(answers, found.folder, found.info, built, build_seconds,
                         time.perf_counter() - start, embedded.skipped)  # fmt: skip


def _index_for(
    classifier: Any,
    run: str | Path,
    index: str | Sequence[str],
    save_index: str | Path | None,
    split: str | None,
    layer: str | None,
    backend: str,
    batch_size: int,
    show_progress: bool,
) -> tuple[Index, bool]:
    """The index to search and whether it was built now: a saved index folder as it is, or
    the saved index of the data when still current, else one built and saved."""
    from imagewise.features.collection import resolve_collection
    from imagewise.features.index import default_dir, index_key, is_index_dir, load_index
    from imagewise.io import file_sha256
    from imagewise.runtime.embedding import network_of, penultimate_name
    from imagewise.runtime.runs import RunFolder

    weights = file_sha256(RunFolder.of(run).weights)
    layer_name = layer or penultimate_name(network_of(classifier))
    items = [index] if isinstance(index, str | Path) else list(index)
    if len(items) == 1 and is_index_dir(items[0]) and save_index is None:
        found = load_index(items[0])
        if found.info.get("weights_sha256") != weights or found.info.get("layer") != layer_name:
            raise UserError(
                f"the index '{items[0]}' was built with other weights or another layer "
                f"({found.info.get('run')}, {found.info.get('layer')}); give the data with "
                "--index DATA to build one for this run"
            )
        return found, False
    if save_index is not None:
        from imagewise.io import check_output_dir

        check_output_dir(save_index, "--save-index")
    collection = resolve_collection([str(i) for i in items], split)
    key = index_key(weights, layer_name, collection.fingerprint())
    folder = Path(save_index or default_dir(run, collection.source, collection.split, layer_name))
    if is_index_dir(folder):
        try:
            saved = load_index(folder)
        except UserError:
            saved = None  # unreadable: built again below
        if saved is not None and saved.info.get("key") == key:
            return saved, False
    found = _build(classifier, run, collection, layer, layer_name, weights, key, backend,
                   batch_size, show_progress)  # fmt: skip
    found.save(folder)
    return found, True


def _build(
    classifier: Any,
    run: str | Path,
    collection: Any,
    layer: str | None,
    layer_name: str,
    weights: str,
    key: str,
    backend: str,
    batch_size: int,
    show_progress: bool,
) -> Index:
    """Embed ``collection`` and make its index (unsaved), with the backend for its size."""
    from imagewise.features.extraction import extract
    from imagewise.features.index import new_info, normalize
    from imagewise.features.search import build_searcher, choose_backend

    embedded = extract(classifier, collection, layer, False, batch_size, show_progress)
    embeddings = normalize(embedded.features)
    chosen = choose_backend(backend, len(embeddings))
    info = new_info(
        model=classifier.name, run=str(run), weights_sha256=weights, layer=layer_name,
        dim=int(embeddings.shape[1]), count=len(embeddings), backend=chosen,
        data=collection.source, split=collection.split, classes=collection.classes, key=key,
        skipped=len(embedded.skipped),
    )  # fmt: skip
    found = Index(embeddings, embedded.paths, embedded.labels, info)
    found.searcher = build_searcher(embeddings, chosen)
    return found
