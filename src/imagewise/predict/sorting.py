"""Sorting a folder of images into one folder per class: ``predict RUN FOLDER --sort-into OUT``.

Each image is copied (moved with ``move=True``) to ``OUT/<class>/``, or to ``OUT/_unsure/``
when the model is not confident enough (``Prediction.unknown``); ``OUT/predictions.csv``
(source, destination, answer, class, probability) lists every image placed.

A multi-label model's image is copied into the folder of each of its labels (one row per copy:
``answer`` is the |-joined set, ``class`` and ``probability`` that folder's label), and an
image with no label into ``OUT/_none/``. Its images go to ``_unsure`` only when
``--min-confidence`` is given (some label undecided at that confidence:
``imagewise.edge.multilabel.decision_confidence``): the fitted per-label thresholds already
decide each label, and they are often below an even chance.

The user's files come first:

- **Never overwrites.** A file is placed with ``os.link`` (which fails rather than replace),
  from a complete, fsynced copy beside it; a name already taken gets ``name-1.ext``,
  ``name-2.ext``, ...
- **Never loses one.** A move links the source into place (or copies it, fsynced, across file
  systems) and removes the source only once the placement is recorded on disk.
- **Resumable.** ``predictions.csv`` is also the journal: appended and fsynced after every
  batch, so a rerun after an interruption skips the images it lists. An image placed but not
  yet recorded (a kill between the two) is found again (its copy's temporary name is still
  linked to it; a moved file shares its source's inode) and recorded, not placed twice.
- **A failed write leaves nothing behind.** A full disk, a missing permission or a read-only
  disk is one line naming the file. A half-made copy is removed; when the journal itself
  cannot be written, the batch's placements are taken back (their sources are all still in
  place) and a half-written row cut off, so a rerun places each image once.
- **Sources only.** An input inside OUT is refused (it would be sorted again, beside itself);
  a source that goes away before it is placed is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagewise.edge.model import ImageModel
from imagewise.edge.results import Prediction
from imagewise.errors import UserError
from imagewise.io import check_output_dir, write_error
from imagewise.names import TEXT_ERRORS, CsvWriter, shown

log = logging.getLogger("imagewise")

UNSURE = "_unsure"
NO_LABEL = "_none"  # a multi-label model's images with no label
DEFAULT_MIN_CONFIDENCE = 0.5  # when the user gives none: below an even chance -> _unsure
CSV_NAME = "predictions.csv"
LOCK_NAME = ".imagewise-sort.lock"
COLUMNS = ["source", "destination", "answer", "class", "probability"]
PART_PREFIX = ".imagewise-"  # a copy being placed: .imagewise-<token>.part
PART_SUFFIX = ".part"
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS)
_RERUN = "free some space and run the same command again: it carries on where it stopped"


@dataclass
class SortResult:
    """What a sort did.

    Attributes:
        out: the output folder.
        csv: ``OUT/predictions.csv``, every image placed so far (this call and earlier ones).
        counts: images placed by this call, per folder name (``_unsure`` included); a
            multi-label image counts in each of its labels' folders.
        earlier: images an earlier (interrupted) call had placed already, skipped now.
        unreadable: files left where they are because they could not be read.
        min_confidence: the threshold below which an image went to ``_unsure`` (None: a
            multi-label model's sort without one).
        moved: whether the sources were moved (else copied).
        gone: sources that went away (moved or deleted by someone else) before they could be
            placed; skipped.
        images: images placed by this call (None: ``counts``' sum, one folder per image).
    """

    out: Path
    csv: Path
    counts: dict[str, int] = field(default_factory=dict)
    earlier: int = 0
    unreadable: int = 0
    min_confidence: float | None = DEFAULT_MIN_CONFIDENCE
    moved: bool = False
    gone: list[str] = field(default_factory=list)
    images: int | None = None

    @property
    def placed(self) -> int:
        """Images placed by this call (a multi-label image once, whatever its folders)."""
        return sum(self.counts.values()) if self.images is None else self.images

    def summary(self) -> str:
        """What went where: the images placed per folder, those skipped, and the list's file."""
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "nothing new"
        verb = "moved" if self.moved else "copied"
        lines = [f"{verb} {self.placed} images into {self.out}: {counts}"]
        copies = sum(self.counts.values())
        if self.images is not None and copies > self.images:
            lines.append(f"{copies} copies: an image with several labels is in each one's folder")
        if self.counts.get(NO_LABEL):
            lines.append(f"{NO_LABEL}: images with no label")
        if self.counts.get("_unsure") and self.images is not None:
            lines.append(
                f"_unsure: some label undecided at confidence {self.min_confidence:.0%}; review "
                "them by hand"
            )
        elif self.counts.get("_unsure"):
            lines.append(
                f"_unsure: top probability below {self.min_confidence:.0%}; review them by hand"
            )
        if self.earlier:
            lines.append(
                f"{self.earlier} images were sorted by an earlier run and left as they are"
            )
        if self.unreadable:
            lines.append(f"{self.unreadable} unreadable files left where they are")
        if self.gone:
            lines.append(f"{len(self.gone)} images went away before they were placed; skipped")
        lines.append(f"list: {self.csv}")
        return "\n".join(lines)


def sort_images(
    run: str | Path,
    inputs: list[str] | str,
    out: str | Path,
    move: bool = False,
    min_confidence: float | str | None = None,
    target_precision: float | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    hooks: Sequence[Any] = (),
) -> SortResult:
    """Copy (or move) images into ``out/<class>/`` by the model's answer; unsure ones into
    ``out/_unsure/``. Rerun it after an interruption: it carries on where it stopped.

    Args:
        run: a run folder or an exported model file.
        inputs: image files, folders (searched recursively) or glob patterns.
        out: the output folder (created); not inside an input folder.
        move: move the images instead of copying them.
        min_confidence: below this top probability an image goes to ``_unsure``; ``auto`` as
            in ``imagewise.predict``; default 0.5 (a multi-label model: none; see the module).
        target_precision: for ``min_confidence="auto"``.
        batch_size: images per forward pass, and per journal write.
        device: ``cpu``, ``cuda`` or ``auto``.
        hooks: objects with ``on_batch_placed(paths)`` (placed, not yet recorded) and/or
            ``on_batch_done(count)`` (recorded; images placed by this call so far).

    Example:
        >>> from imagewise.predict.sorting import sort_images
        >>> r = sort_images("runs/fm", "inbox/", "sorted/")  # doctest: +SKIP
        >>> r.counts  # doctest: +SKIP
        {'Sneaker': 12, 'Bag': 3, '_unsure': 1}
    """
    from imagewise.predict.inputs import expand_inputs
    from imagewise.predict.prediction import open_model
    from imagewise.predict.unknown import resolve_min_confidence

    inputs = [inputs] if isinstance(inputs, str) else [str(i) for i in inputs]
    out = check_sort_target(out, inputs)
    paths = expand_inputs(inputs)
    refuse_sorted_inputs(out, paths)
    named = {str(Path(i).expanduser()) for i in inputs if Path(i).expanduser().is_file()}
    model = open_model(run, device)
    threshold = resolve_min_confidence(model, run, min_confidence, target_precision)
    if threshold is None and not model.spec.multilabel:
        threshold = DEFAULT_MIN_CONFIDENCE
    return sort_into(
        model, paths, out, move=move, skippable=lambda p: p not in named,
        min_confidence=threshold,
        batch_size=batch_size, hooks=hooks,
    )  # fmt: skip


def check_sort_target(out: str | Path, inputs: Iterable[str]) -> Path:
    """Refuse, before any work, an output folder that is a file or lies inside an input folder
    (a rerun would find the sorted copies among the inputs)."""
    out = check_output_dir(out, "--sort-into")
    where = out.resolve()
    for item in inputs:
        folder = Path(item).expanduser()
        if folder.is_dir() and where.is_relative_to(folder.resolve()):
            raise UserError(
                f"--sort-into '{out}' is inside the input folder '{item}'; choose a folder "
                "outside it"
            )
    return out


def refuse_sorted_inputs(out: Path, paths: Sequence[str]) -> None:
    """Refuse images that lie inside ``out`` (``predict RUN OUT/cat --sort-into OUT``): each
    would be placed again beside itself, as ``img-1.png``, and listed twice."""
    if not out.is_dir():
        return
    where = os.path.realpath(out) + os.sep
    folders: dict[str, str] = {}  # one realpath per folder, not per image
    for path in paths:
        parent, name = os.path.split(os.path.abspath(path))
        if parent not in folders:
            folders[parent] = os.path.realpath(parent) + os.sep
        if (folders[parent] + name).startswith(where):
            raise UserError(
                f"'{shown(path)}' is inside --sort-into '{out}', where sorted images go; give "
                "the images to sort from outside it"
            )


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A full disk, a missing permission or a read-only disk while writing ``path``: one line."""
    try:
        yield
    except OSError as exc:
        error = write_error(shown(str(path)), exc, _RERUN)
        if error is None:
            raise
        raise error from exc


def folder_names(classes: Sequence[str], reserved: Sequence[str] = (UNSURE,)) -> dict[str, str]:
    """A safe, distinct folder name for each class: no separators, control or reserved
    characters, no leading dot, not ``_unsure`` (nor the other ``reserved`` names), distinct
    even on case-insensitive disks."""
    names: dict[str, str] = {}
    kept = {r.lower() for r in reserved}
    taken = set(kept)
    for cls in classes:
        name = "".join("_" if c in '/\\<>:"|?*' or ord(c) < 32 else c for c in cls)
        name = name.strip().rstrip(".")[:100] or "_"
        if name.startswith(".") or name.lower() in kept:
            name = "_" + name
        base, n = name, 1
        while name.lower() in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name.lower())
        names[cls] = name
    return names


def sort_into(
    model: ImageModel,
    paths: Sequence[str],
    out: Path,
    *,
    move: bool = False,
    min_confidence: float | None = DEFAULT_MIN_CONFIDENCE,
    skippable: Callable[[str], bool] | None = None,
    batch_size: int = 64,
    hooks: Sequence[Any] = (),
) -> SortResult:
    """``sort_images`` for a loaded model and a list of image files (see there)."""
    with _writing(out):
        out.mkdir(parents=True, exist_ok=True)
    with _only_sorter(out):
        return _sort(model, paths, out, move, min_confidence, skippable, batch_size, hooks)


@contextlib.contextmanager
def _only_sorter(out: Path) -> Iterator[None]:
    """One sort into ``out`` at a time (two would both place the images they have not seen)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield
        return
    with _writing(out / LOCK_NAME):
        lock = open(out / LOCK_NAME, "a")  # noqa: SIM115 (closed below)
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"another imagewise is sorting into '{out}' now; wait for it to finish"
            ) from None
        yield


def _sort(
    model: ImageModel,
    paths: Sequence[str],
    out: Path,
    move: bool,
    min_confidence: float | None,
    skippable: Callable[[str], bool] | None,
    batch_size: int,
    hooks: Sequence[Any],
) -> SortResult:
    journal = Journal(out / CSV_NAME)
    done = journal.read()
    if move:
        _finish_moves(out, done)
    todo = [p for p in paths if os.path.abspath(p) not in done]
    multilabel = model.spec.multilabel
    reserved = (UNSURE, NO_LABEL) if multilabel else (UNSURE,)
    placer = Placer(out, move, folder_names(model.classes, reserved), done)
    result = SortResult(out, journal.path, earlier=len(paths) - len(todo),
                        min_confidence=min_confidence, moved=move,
                        images=0 if multilabel else None)  # fmt: skip
    seen = 0
    batches = model.predict_batches(todo, top_k=1, batch_size=batch_size, skippable=skippable,
                                    min_confidence=min_confidence)  # fmt: skip
    for _, predictions in batches:
        seen += len(predictions)
        rows: list[list[str]] = []
        try:
            for p in predictions:
                placed = placer.place(p)
                if placed is None:  # the source went away
                    result.gone.append(os.path.abspath(p.source))
                    continue
                rows.extend(placed)
                for row in placed:
                    folder = Path(row[1]).parts[0]
                    result.counts[folder] = result.counts.get(folder, 0) + 1
                if result.images is not None:
                    result.images += 1
            for hook in hooks:
                if hasattr(hook, "on_batch_placed"):
                    hook.on_batch_placed([out / r[1] for r in rows])
        finally:
            # Whatever stopped the batch, what was placed is recorded before anything is
            # removed: the copies' temporary names, then (moves) the sources. A journal that
            # cannot be written (a full disk) takes the batch's placements back instead.
            placer.sync_folders()
            try:
                journal.append(rows)
            except BaseException:
                placer.undo(rows)
                raise
            placer.settle(rows)
        for hook in hooks:
            if hasattr(hook, "on_batch_done"):
                hook.on_batch_done(result.placed)
    result.unreadable = len(todo) - seen
    return result


class Journal:
    """``predictions.csv``: the images placed, appended and fsynced batch by batch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, str]:
        """Source (absolute) -> destination (relative to OUT) of every image recorded; a last
        line cut short by an interruption is dropped from the file."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            with _writing(self.path), open(self.path, "r+b") as f:
                f.truncate(len(data))
        text = data.decode("utf-8", TEXT_ERRORS)  # names that are not UTF-8: their bytes
        rows = list(csv.reader(io.StringIO(text, newline="")))
        if data and (not rows or rows[0] != COLUMNS):
            raise UserError(
                f"'{self.path}' exists and was not written by --sort-into; move it away or "
                "choose another folder"
            )
        return {row[0]: row[1] for row in rows[1:] if len(row) == len(COLUMNS)}

    def append(self, rows: list[list[str]]) -> None:
        """Add ``rows``, on disk when this returns; on failure, none of them (a half-written
        row is cut off)."""
        if not rows and self.path.exists():
            return
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with (
                _writing(self.path),
                open(self.path, "a", newline="", encoding="utf-8", errors=TEXT_ERRORS) as f,
            ):
                writer = CsvWriter(f)
                if f.tell() == 0:
                    writer.writerow(COLUMNS)
                writer.writerows(rows)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):  # shortening a file needs no space
                os.truncate(self.path, size)
            raise


def _token(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _part_name(source: str) -> str:
    return f"{PART_PREFIX}{_token(source)}{PART_SUFFIX}"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _same_file(a: Path, b: Path) -> bool:
    """Same bytes (a move's source against its recorded destination)."""
    try:
        if os.path.samefile(a, b):
            return True
        if a.stat().st_size != b.stat().st_size:
            return False
    except OSError:
        return False
    import filecmp

    return filecmp.cmp(a, b, shallow=False)


def _finish_moves(out: Path, done: dict[str, str]) -> None:
    """Sources an interrupted move recorded but did not remove yet: removed now, when their
    placed copy holds the same bytes."""
    for source, destination in done.items():
        if os.path.exists(source) and _same_file(Path(source), out / destination):
            _remove_source(source, out / destination)


def _remove_source(source: str, dest: Path) -> None:
    """A moved image's source, once its placement is recorded."""
    try:
        os.unlink(source)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UserError(
            f"cannot remove '{shown(source)}' after moving it to '{dest}' "
            f"({(exc.strerror or str(exc)).lower()}); it is placed and listed, so sort the rest "
            "without --move"
        ) from exc


def _gone(source: str) -> None:
    log.warning("'%s' went away before it was placed (moved or deleted); skipped", shown(source))


class Placer:
    """Places files without overwriting, and finds the placements an interruption left
    unrecorded."""

    def __init__(self, out: Path, move: bool, folders: dict[str, str], done: dict[str, str]):
        self.out, self.move, self.folders = out, move, folders
        self.touched: set[Path] = set()
        # source -> its copies' temporary names (one per folder), until recorded
        self.parts: dict[str, list[Path]] = {}
        # (folder, part name) -> placement: a multi-label image's earlier copy per folder
        self.found_in: dict[tuple[str, str], Path] = {}
        self.found = self._unrecorded(set(map(_part_name, done)))

    def _unrecorded(self, recorded_parts: set[str]) -> dict[str, Path]:
        """Placements of an interrupted call that the journal lacks, by part name (copies)
        and by inode (moves), from one look at OUT's folders. Leftover parts are removed."""
        found: dict[str, Path] = {}
        by_inode: dict[tuple[int, int], Path] = {}
        # every name of a linked file: a multi-label move links one source into several folders
        self.linked: dict[tuple[int, int], list[Path]] = {}
        parts: list[tuple[Path, os.stat_result]] = []
        for folder in (d for d in self.out.iterdir() if d.is_dir()):
            for entry in os.scandir(folder):
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                if entry.name.startswith(PART_PREFIX) and entry.name.endswith(PART_SUFFIX):
                    parts.append((Path(entry.path), st))
                elif st.st_nlink > 1:
                    by_inode[(st.st_dev, st.st_ino)] = Path(entry.path)
                    self.linked.setdefault((st.st_dev, st.st_ino), []).append(Path(entry.path))
        for part, st in parts:
            twin = by_inode.get((st.st_dev, st.st_ino))
            if twin is not None and part.name not in recorded_parts:
                found[part.name] = twin
                self.found_in[(part.parent.name, part.name)] = twin  # a copy: same folder
            part.unlink()  # placed (the twin holds it), recorded, or never finished
        self.inodes = by_inode
        return found

    def _earlier(self, source: str, folder: Path | None = None) -> Path | None:
        """Where an interrupted call placed ``source`` unrecorded: in any folder (one folder
        per image), or in ``folder`` (a multi-label image, placed in several)."""
        if folder is not None:
            return self._earlier_in(source, folder)
        if (twin := self.found.get(_part_name(source))) is not None:
            return twin
        if self.move and self.inodes:
            with contextlib.suppress(OSError):
                st = os.stat(source)
                if st.st_nlink > 1:
                    return self.inodes.get((st.st_dev, st.st_ino))
        return None

    def _earlier_in(self, source: str, folder: Path) -> Path | None:
        if (twin := self.found_in.get((folder.name, _part_name(source)))) is not None:
            return twin
        if self.move and self.linked:
            with contextlib.suppress(OSError):
                st = os.stat(source)
                if st.st_nlink > 1:
                    names = self.linked.get((st.st_dev, st.st_ino), [])
                    return next((n for n in names if n.parent == folder), None)
        return None

    def _destinations(self, p: Prediction) -> list[tuple[Path, str, float]]:
        """(folder, class, probability) of each placement of ``p``: its class's folder (or
        ``_unsure``), or a multi-label image's labels' folders (``_none`` for no label)."""
        if p.unknown or p.labels is None:
            folder = UNSURE if p.unknown else self.folders[p.label]
            return [(self.out / folder, p.label, p.confidence)]
        if not p.labels:
            return [(self.out / NO_LABEL, "", p.confidence)]
        chances = p.label_probabilities or []
        return [
            (self.out / self.folders[c], c, prob) for c, prob in zip(p.labels, chances, strict=True)
        ]

    def place(self, p: Prediction) -> list[list[str]] | None:
        """Place one image (a multi-label one in each of its labels' folders); its journal
        rows, or None when its source went away before any placement."""
        source = os.path.abspath(p.source)
        several = p.labels is not None and not p.unknown
        rows = []
        for folder, cls, prob in self._destinations(p):
            earlier = self._earlier(source, folder if several else None)
            dest = earlier or self._new_place(source, folder)
            if dest is None:  # gone: what was placed already is recorded
                break
            self.touched.add(dest.parent)
            relative = dest.relative_to(self.out).as_posix()
            rows.append([source, relative, p.answer, cls, f"{prob:.6f}"])
        return rows or None

    def _new_place(self, source: str, folder: Path) -> Path | None:
        name = Path(source).name
        with _writing(folder / name):
            folder.mkdir(exist_ok=True)
            if self.move:
                try:
                    return _link_free(Path(source), folder, name)
                except OSError as exc:
                    if not os.path.lexists(source):
                        return _gone(source)
                    if exc.errno not in (errno.EXDEV, *_NO_LINKS):
                        raise
        try:
            src = open(source, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            return _gone(source)
        part = folder / _part_name(source)
        try:
            with src, _writing(folder / name):
                with open(part, "xb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                    dst.flush()
                    os.fsync(dst.fileno())
                with contextlib.suppress(FileNotFoundError):  # the source went away: it is copied
                    shutil.copystat(source, part)
                try:
                    dest = _link_free(part, folder, name)
                except OSError as exc:
                    if exc.errno not in _NO_LINKS:
                        raise
                    dest = _rename_free(part, folder, name)  # no hard links here
        except BaseException:
            with contextlib.suppress(OSError):  # a half-made copy, or one never placed
                if os.stat(part).st_nlink == 1:
                    part.unlink()
            raise
        if part.exists():
            self.parts.setdefault(source, []).append(part)
        return dest

    def sync_folders(self) -> None:
        """The batch's new names on disk before the journal records them."""
        for folder in self.touched:
            _fsync_dir(folder)
        self.touched.clear()

    def settle(self, rows: list[list[str]]) -> None:
        """After the journal holds ``rows``: temporary names go, then (moves) the sources."""
        for source, *_ in rows:
            for part in self.parts.pop(source, []):
                part.unlink(missing_ok=True)
        if self.move:
            for source, destination, *_ in rows:
                _remove_source(source, self.out / destination)

    def undo(self, rows: list[list[str]]) -> None:
        """The journal could not record ``rows``: their placements go (each source is still in
        place, so nothing is lost and a rerun places it once), with their temporary names."""
        for source, destination, *_ in rows:
            with contextlib.suppress(OSError):
                if os.path.lexists(source):
                    (self.out / destination).unlink()
            for part in self.parts.pop(source, []):
                part.unlink(missing_ok=True)


def _free_names(name: str) -> Iterable[str]:
    stem, suffix = os.path.splitext(name)
    yield name
    n = 1
    while True:
        yield f"{stem}-{n}{suffix}"
        n += 1


def _link_free(source: Path, folder: Path, name: str) -> Path:
    """``os.link`` to the first free name (``name``, ``name-1``, ...): never replaces a file."""
    for candidate in _free_names(name):
        dest = folder / candidate
        try:
            os.link(source, dest)
            return dest
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _rename_free(part: Path, folder: Path, name: str) -> Path:
    """Where hard links are not supported: reserve a free name with O_EXCL, then rename the
    complete copy onto the (empty) reservation."""
    for candidate in _free_names(name):
        dest = folder / candidate
        try:
            os.close(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        os.replace(part, dest)
        return dest
    raise AssertionError("unreachable")
