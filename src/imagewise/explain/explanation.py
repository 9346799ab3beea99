"""Explanation: Grad-CAM heat maps of where a trained classifier looks, over the images.

The maps come from the ``grad-cam`` package (``pytorch_grad_cam``); this stage picks the layer,
runs the chosen method and writes the overlays with a JSON index.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from imagewise.data.transforms import normalize
from imagewise.errors import UserError
from imagewise.explain.cam import METHODS, cam_maps, check_method, overlay, require_network
from imagewise.explain.layers import find_target_layer, named_target_layer

log = logging.getLogger("imagewise")


def resolve_target(target: str | int | None, classes: Sequence[str]) -> int | None:
    """A class name or index -> the class index; ``None`` stays ``None`` (the predicted class).

    A name wins over an index, so a run whose classes are "0".."9" reads "7" as the class "7".
    """
    if target is None:
        return None
    if isinstance(target, str) and target in classes:
        return list(classes).index(target)
    text = str(target).strip()
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(classes):
        return int(text)
    raise UserError(f"unknown class '{target}'; the run's classes are: {', '.join(classes)}")


def output_names(paths: Sequence[str], method: str) -> list[str]:
    """``<stem>.<method>.png`` per image; a stem seen twice gets its folder name, then a counter."""
    stems = [Path(p).stem for p in paths]
    names: list[str] = []
    for path, stem in zip(paths, stems, strict=True):
        base = stem if stems.count(stem) == 1 else f"{Path(path).parent.name}_{stem}"
        name, n = f"{base}.{method}.png", 1
        while name in names:
            n += 1
            name = f"{base}-{n}.{method}.png"
        names.append(name)
    return names


def _read_all(clf: Any, paths: list[str], named: set[str]) -> tuple[list[str], list[torch.Tensor]]:
    """Decode the images; files found in folders or globs may be skipped, named files may not."""
    kept, images = [], []
    for path in paths:
        try:
            images.append(clf._read(path))
        except UserError as exc:
            if path in named:
                raise
            log.warning("skipped: %s", str(exc).split(";")[0])
            continue
        kept.append(path)
    return kept, images


def explain(
    run: str | Path,
    images: Sequence[str | Path],
    method: str = "gradcam",
    target: str | int | None = None,
    layer: str | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 32,
) -> list[Path]:
    """Write a Grad-CAM overlay per image and ``explain.json``; return the PNGs written.

    Args:
        run: a run folder written by ``imagewise train``.
        images: image files, folders (searched recursively) or glob patterns.
        method: ``gradcam`` (default), ``gradcam++``, ``hirescam`` or ``eigencam``.
        target: the class to explain, by name or index; default: each image's predicted class
            (a multi-label model: each of the image's labels, one heat map per label, named
            ``<stem>.<label>.<method>.png``; the most probable class when it has none).
        layer: the dotted name of the layer to look at; default: chosen per model family.
        out: the folder to write to (default ``RUN/explain/``).
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: images per forward and backward pass.

    Example:
        >>> imagewise.explain("runs/digits", ["seven.png"], method="gradcam++")  # doctest: +SKIP
        [PosixPath('runs/digits/explain/seven.gradcam++.png')]
    """
    from imagewise.io import atomic_write_json, check_output_dir
    from imagewise.predict import expand_inputs, load_run

    check_method(method)
    if out is not None:
        check_output_dir(out)
    inputs = [images] if isinstance(images, str | Path) else list(images)
    inputs = [str(i) for i in inputs]
    paths = expand_inputs(inputs)
    named = {str(Path(i).expanduser()) for i in inputs if Path(i).expanduser().is_file()}
    clf = load_run(run, device=device)
    require_network(clf.model, clf.name, clf.capabilities)
    target_index = resolve_target(target, clf.classes)
    paths, tensors = _read_all(clf, paths, named)
    if not paths:
        raise UserError("none of the images could be read")
    folder = Path(out) if out is not None else Path(run) / "explain"
    names = output_names(paths, method)
    first = normalize(clf.preprocessing, tensors[0][None])
    if layer:
        layer_name = named_target_layer(clf.model, layer)[0]
    else:
        layer_name = find_target_layer(clf.model, first.to(clf.device))[0]

    written, records = _write_overlays(
        clf, paths, tensors, folder, names, target_index, method, layer, layer_name,
        batch_size,
    )  # fmt: skip
    atomic_write_json(
        folder / "explain.json",
        {
            "run": str(run),
            "model": clf.name,
            "method": method,
            "layer": layer_name,
            "images": records,
        },
    )
    return written


def _write_overlays(
    clf: Any, paths: list[str], tensors: list[torch.Tensor], folder: Path, names: list[str],
    target_index: int | None, method: str, layer: str | None, layer_name: str, batch_size: int,
) -> tuple[list[Path], list[dict[str, Any]]]:  # fmt: skip
    """Heat maps over the images, batch by batch, written into ``folder``:
    the PNG files and one record per image for ``explain.json``."""
    from imagewise.io import atomic_write

    written: list[Path] = []
    records: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        chunk = tensors[start : start + batch_size]
        batch = normalize(clf.preprocessing, torch.stack(chunk))
        probs = clf.probabilities(batch)
        predicted = probs.argmax(1).tolist()
        # (image in the chunk, class) pairs: one heat map each
        pairs = [(i, t) for i, ts in enumerate(_targets(clf, probs, target_index)) for t in ts]
        index = [i for i, _ in pairs]
        maps = cam_maps(clf.model, batch[index], [t for _, t in pairs], method=method, layer=layer)
        for (i, t), heat in zip(pairs, maps, strict=True):
            n = start + i
            multi = clf.spec.multilabel  # several heat maps an image: the label in the name
            name = _label_name(names[n], method, clf.classes[t]) if multi else names[n]
            picture = overlay(chunk[i], heat)
            dest = atomic_write(folder / name, lambda tmp, p=picture: p.save(tmp, "PNG"))
            written.append(dest)
            records.append(
                {
                    "source": paths[n],
                    "file": str(dest),
                    "target": clf.classes[t],
                    "target_probability": round(float(probs[i, t]), 6),
                    "predicted": clf.classes[predicted[i]],
                    "probability": round(float(probs[i, predicted[i]]), 6),
                    "method": method,
                    "layer": layer_name,
                }
            )
    return written, records


def _targets(clf: Any, probs: torch.Tensor, target_index: int | None) -> list[list[int]]:
    """The classes each image is explained for: the one asked, the predicted class, or for a
    multi-label model its labels (the most probable class when it has none)."""
    if target_index is not None:
        return [[target_index]] * len(probs)
    if not clf.spec.multilabel:
        return [[int(k)] for k in probs.argmax(1).tolist()]
    from imagewise.edge.multilabel import label_sets

    sets = label_sets(probs.numpy(), clf.spec.label_thresholds())
    return [found or [int(row.argmax())] for found, row in zip(sets, probs, strict=True)]


def _label_name(name: str, method: str, label: str) -> str:
    """``<stem>.<method>.png`` -> ``<stem>.<label>.<method>.png``, the label made safe for a
    file name."""
    safe = re.sub(r"[^\w.-]+", "_", label).strip("._") or "label"
    return f"{name[: -len(f'.{method}.png')]}.{safe}.{method}.png"


__all__ = [
    "METHODS",
    "cam_maps",
    "explain",
    "find_target_layer",
    "named_target_layer",
    "overlay",
    "resolve_target",
]
