"""Feature extraction and similar-image search: shapes, determinism, files, HOG against
scikit-image, the planted copy found first, the saved index reused and rebuilt, the outputs, and
one-line errors from the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import imagewise
from imagewise.data.decode import find_images, read_image
from imagewise.data.transforms import normalize
from imagewise.errors import UserError
from imagewise.features import Features, embed, load_index
from imagewise.features.search import top_k_exact
from imagewise.models.hog_svm import hog_settings

from conftest import CLASSES, run_cli

WIDTH = 16 * 8  # resnet9_tiny: the classifier's input is 8 x the base width


@pytest.fixture(scope="module")
def feats(trained_run: Path, folder_data: Path) -> Features:
    return imagewise.features(trained_run, str(folder_data), batch_size=16)


def test_penultimate_features_are_the_classifiers_input(
    feats: Features, trained_run: Path, folder_data: Path
) -> None:
    good = [p for p in find_images(folder_data) if "broken" not in p]
    assert feats.features.shape == (len(good), WIDTH)
    assert feats.features.dtype == np.float32
    assert feats.paths == good  # in path order, the unreadable file left out and recorded
    assert [Path(p).name for p, _ in feats.skipped] == ["broken.jpg"]
    assert feats.labels == [Path(p).parent.name for p in good]
    assert feats.classes == list(CLASSES)
    assert feats.layer == "penultimate (input of fc)" and feats.model == "resnet9_tiny"
    # The final layer applied to the features gives the classifier's logits (ResNet-9 scales
    # them by 1/8).
    clf = imagewise.load(trained_run)
    logits = clf.logits(clf.preprocess(good[:8]))
    from_features = clf.model.fc(torch.from_numpy(feats.features[:8])) * clf.model.logit_scale
    torch.testing.assert_close(from_features.detach(), logits, rtol=1e-4, atol=1e-4)


def test_features_are_deterministic_and_embed_agrees(
    feats: Features, trained_run: Path, folder_data: Path
) -> None:
    again = imagewise.features(trained_run, str(folder_data), batch_size=16)
    assert again.features.tobytes() == feats.features.tobytes()
    clf = imagewise.load(trained_run)
    pre = clf.preprocessing
    batch = torch.stack([read_image(p, pre.channels, pre.img_size) for p in feats.paths[:16]])
    assert embed(clf, batch).tobytes() == feats.features[:16].tobytes()


def test_features_decode_with_the_edge_stream_and_look_the_network_up_once(
    feats: Features, trained_run: Path, folder_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagewise.edge import stream
    from imagewise.features import collection
    from imagewise.runtime import embedding

    streams, embedders = [], []
    real_read_ahead, real_init = stream.read_ahead, embedding.Embedder.__init__

    def read_ahead(*args: Any, **kwargs: Any) -> Any:
        streams.append(args[2])
        return real_read_ahead(*args, **kwargs)

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        embedders.append(args)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(collection, "read_ahead", read_ahead)
    monkeypatch.setattr(embedding.Embedder, "__init__", init)
    again = imagewise.features(trained_run, str(folder_data), batch_size=16)
    assert len(again) > 3 * 16  # several batches
    assert streams == [16] and len(embedders) == 1
    assert again.features.tobytes() == feats.features.tobytes() and again.skipped == feats.skipped


def test_named_layer_is_pooled_and_a_wrong_name_lists_real_ones(
    trained_run: Path, folder_data: Path
) -> None:
    clf = imagewise.load(trained_run)
    pre = clf.preprocessing
    batch = torch.stack(
        [read_image(p, pre.channels, pre.img_size) for p in find_images(folder_data)[:4]]
    )
    out = embed(clf, batch, layer="layer2")
    seen = []
    handle = clf.model.layer2.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        clf.model(normalize(pre, batch).contiguous(memory_format=torch.channels_last))
    handle.remove()
    assert out.shape == (4, 4 * 16)
    np.testing.assert_allclose(out, seen[0].mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match=r"no layer 'layer9'; valid names include .*layer2, layer1"):
        embed(clf, batch, layer="layer9")


def test_hog_features_equal_scikit_image(trained_run: Path, folder_data: Path) -> None:
    from skimage.feature import hog

    result = imagewise.features(trained_run, str(folder_data), hog=True)
    clf = imagewise.load(trained_run)
    pre = clf.preprocessing
    settings = hog_settings(pre.img_size)
    assert result.features.shape[1] == settings.feature_dim(pre.img_size)
    assert result.layer.startswith("hog (9 orientations")
    for row in (0, 17, len(result) - 1):
        img = read_image(result.paths[row], pre.channels, pre.img_size).numpy()
        unit = img.astype(np.float32) / np.float32(255.0)
        gray = unit[0] if len(unit) == 1 else unit[None].mean(axis=1)[0]
        expected = hog(
            gray,
            orientations=settings.orientations,
            pixels_per_cell=(settings.pixels_per_cell,) * 2,
            cells_per_block=(settings.cells_per_block,) * 2,
            block_norm=settings.block_norm,
        )
        assert np.array_equal(result.features[row], expected.astype(np.float32))


def test_npz_and_parquet_hold_the_features_paths_and_labels(
    feats: Features, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    npz = np.load(feats.save(tmp_path / "f.npz"))
    assert npz["features"].tobytes() == feats.features.tobytes()
    assert npz["paths"].tolist() == feats.paths and npz["labels"].tolist() == feats.labels
    assert npz["classes"].tolist() == list(CLASSES)
    assert str(npz["layer"]) == feats.layer and int(npz["dim"]) == WIDTH
    table = pq.read_table(feats.save(tmp_path / "f.parquet"))
    assert table.column("path").to_pylist() == feats.paths
    assert table.column("label").to_pylist() == feats.labels
    vectors = np.array(table.column("features").to_pylist(), dtype=np.float32)
    assert vectors.tobytes() == feats.features.tobytes()
    meta = table.schema.metadata
    assert json.loads(meta[b"imagewise.classes"]) == list(CLASSES)
    assert meta[b"imagewise.model"] == b"resnet9_tiny"


def test_unlabelled_images_and_the_map(
    trained_run: Path, folder_data: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for p in find_images(folder_data / "square")[:6]:
        shutil.copy(p, plain / Path(p).name)
    result = imagewise.features(
        trained_run, str(plain), map_path=tmp_path / "map.png", map_method="tsne"
    )
    assert len(result) == 6 and result.labels == [""] * 6 and result.classes == []
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_top_k_merges_chunks_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagewise.features import search

    monkeypatch.setattr(search, "_ROWS_PER_CHUNK", 7)
    monkeypatch.setattr(search, "_QUERIES_PER_CHUNK", 3)
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(10, 8)).astype(np.float32)
    sims, idx = top_k_exact(queries, rows, 5)
    full = queries @ rows.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :5]
    assert np.array_equal(idx, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(full, expected, 1), rtol=1e-6)


@pytest.fixture()
def collection(folder_data: Path, tmp_path: Path) -> Path:
    """A copy of a few images per class, which a test may change."""
    root = tmp_path / "collection"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for p in find_images(folder_data / cls)[:8]:
            if "broken" not in p:
                shutil.copy2(p, root / cls / Path(p).name)
    return root


@pytest.fixture()
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns(
        "eval", "explain", "tens*", "index", "last.ckpt"
    )))  # fmt: skip


def test_similar_finds_the_planted_copy_and_reuses_the_index(
    run_copy: Path, collection: Path, tmp_path: Path
) -> None:
    original = find_images(collection / "stripes")[3]
    query = tmp_path / "query.png"
    shutil.copy(original, query)
    first = imagewise.similar(run_copy, [str(query)], str(collection), k=5)
    top = first.queries[0].matches[0]
    assert top.path == original and top.label == "stripes"
    assert top.similarity == pytest.approx(1.0, abs=1e-5)
    assert [m.rank for m in first.queries[0].matches] == [1, 2, 3, 4, 5]
    assert first.built and first.index.parent == run_copy / "index"
    info = json.loads((first.index / "index.json").read_text())
    assert info["count"] == 24 and info["dim"] == WIDTH and info["backend"] == "exact"
    assert info["model"] == "resnet9_tiny" and len(info["weights_sha256"]) == 64
    stamp = (first.index / "embeddings.npy").stat().st_mtime_ns

    second = imagewise.similar(run_copy, [str(query)], str(collection), k=5)
    assert not second.built  # not embedded again: the same file, the same created time
    assert (first.index / "embeddings.npy").stat().st_mtime_ns == stamp
    assert json.loads((first.index / "index.json").read_text())["created"] == info["created"]
    assert second.queries[0].matches[0].path == original

    by_folder = imagewise.similar(run_copy, [str(query)], str(first.index), k=2)
    assert not by_folder.built and by_folder.queries[0].matches[0].path == original


def test_index_is_rebuilt_when_the_data_or_the_weights_change(
    run_copy: Path, collection: Path, tmp_path: Path
) -> None:
    query = find_images(collection / "circle")[0]
    first = imagewise.similar(run_copy, [query], str(collection), k=3)
    new = collection / "circle" / "new.png"
    shutil.copy(find_images(collection / "square")[0], new)
    changed = imagewise.similar(run_copy, [query], str(collection), k=3)
    assert changed.built and changed.index == first.index
    assert load_index(changed.index).info["count"] == 25

    os.utime(new, ns=(1, 1))  # same names, another mtime
    assert imagewise.similar(run_copy, [query], str(collection), k=3).built

    weights = run_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"")  # same bytes: still current
    assert not imagewise.similar(run_copy, [query], str(collection), k=3).built


def test_json_and_html_outputs(run_copy: Path, collection: Path, tmp_path: Path) -> None:
    queries = [find_images(collection / c)[1] for c in ("circle", "square")]
    result = imagewise.similar(run_copy, queries, str(collection), k=4, save_index=tmp_path / "idx")
    assert (tmp_path / "idx" / "index.json").is_file()
    data = json.loads(result.format("json"))
    assert [q["query"] for q in data["queries"]] == queries
    assert data["queries"][0]["matches"][0]["path"] == queries[0]
    assert data["count"] == 24 and len(data["queries"][1]["matches"]) == 4
    page = result.write(tmp_path / "sheet.html", "html").read_text()
    assert page.count("data:image/png;base64,") == 2 * (1 + 4)
    assert "circle" in page and "square" in page and "<script" not in page


def test_faiss_backend_agrees_with_exact_search(
    run_copy: Path, collection: Path, tmp_path: Path
) -> None:
    pytest.importorskip("faiss")
    query = find_images(collection / "square")[2]
    exact = imagewise.similar(run_copy, [query], str(collection), k=5, save_index=tmp_path / "a")
    fast = imagewise.similar(
        run_copy, [query], str(collection), k=5, backend="faiss", save_index=tmp_path / "b"
    )
    assert fast.index_info["backend"] == "faiss-flat" and (tmp_path / "b" / "faiss.index").is_file()
    assert [m.path for m in fast.queries[0].matches] == [m.path for m in exact.queries[0].matches]


def test_cli_features_and_similar(
    trained_run: Path,
    run_copy: Path,
    collection: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, png = tmp_path / "f.npz", tmp_path / "map.png"
    code, stdout, err = run_cli(
        ["features", str(trained_run), str(collection), "--out", str(out), "--map", str(png), "-q"],
        capsys,
    )
    assert code == 0, err
    assert f"24 images x {WIDTH} features" in stdout and png.is_file()
    assert np.load(out)["features"].shape == (24, WIDTH)
    query = find_images(collection / "circle")[0]
    code, stdout, err = run_cli(
        ["similar", str(run_copy), query, "--index", str(collection), "--k", "3", "-q"], capsys
    )
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == f"query: {query}" and lines[2].split()[:3] == ["1", "1.0000", "circle"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["features", "{run}", "{data}", "--out", "{tmp}/f.csv"], "unknown file type '.csv'"),
        (
            ["features", "{run}", "{data}", "--out", "{tmp}/f.npz", "--layer", "nope"],
            "no layer 'nope'",
        ),
        (["features", "{tmp}/missing", "{data}", "--out", "{tmp}/f.npz"], "does not exist"),
        (["features", "{run}", "{tmp}/empty", "--out", "{tmp}/f.npz"], "has no images"),
        (["features", "{run}", "{data}", "--out", "{tmp}/file.txt/f.npz"], "is a file"),
        (["similar", "{run}", "{query}", "--index", "{data}", "--k", "0"], "--k must be"),
        (["similar", "{run}", "{query}", "--index", "{tmp}/nothing"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line(
    args: list[str],
    message: str,
    trained_run: Path,
    folder_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    query = find_images(folder_data / "circle")[0]
    names = {"run": trained_run, "data": folder_data, "tmp": tmp_path, "query": query}
    code, _, err = run_cli([a.format(**names) for a in args], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
