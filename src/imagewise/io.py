"""Atomic writes: every file imagewise writes appears whole or not at all.

Also the checks that an output path can be written, made before any expensive work, and the
translation of a full disk, a missing permission or a read-only disk into one line that names
the file (:func:`write_error`, for writers that cannot go through :func:`atomic_write`).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imagewise.errors import UserError
from imagewise.names import TEXT_ERRORS, json_dumps

# Below this many free bytes a failed write is taken as a full disk, whatever the writer raised:
# torch.save and safetensors wrap the OS error in their own exception types.
_NEARLY_FULL = 1 << 20


class DiskFull(UserError):
    """No space left for a file; the file that was there (if any) is unchanged."""

    def __init__(self, path: Path, kept: str = "") -> None:
        super().__init__(
            f"no space left on the device for '{path}' (it was not written; what was there "
            f"before is unchanged); {kept or 'free some space and try again'}"
        )
        self.path = path


class NotWritable(UserError):
    """No permission to write a file, or its disk is mounted read-only."""

    def __init__(self, path: str | Path, why: str) -> None:
        super().__init__(f"cannot write '{path}': {why}")
        self.path = Path(path)


def write_error(path: str | Path, exc: BaseException, kept: str = "") -> UserError | None:
    """The one-line error for ``exc``, raised while writing ``path``, when it is the disk's or
    the folder's fault (full, no permission, read-only); None for anything else. ``kept``: what
    a full disk leaves and what to do (``DiskFull``).

    Example:
        >>> try:  # doctest: +SKIP
        ...     append_row(path)
        ... except OSError as exc:
        ...     if (error := write_error(path, exc)) is not None:
        ...         raise error from exc
        ...     raise
    """
    if not isinstance(exc, OSError):
        return None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(Path(path), kept)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return NotWritable(path, "no permission to write there")
    if exc.errno == errno.EROFS:
        return NotWritable(path, "its disk is read-only")
    return None


def _umask() -> int:
    """The process's umask, read without changing it: ``os.umask`` can only be read by setting
    it, which would race with files other threads create meanwhile. Linux shows it in
    ``/proc/self/status`` (read at each write, so a umask the program sets later counts)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _umask_once()


@functools.cache
def _umask_once() -> int:
    """Where /proc does not show it: set and put back once, on the first write (0o077 in the
    meantime: a file another thread creates then is private, not open to all)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A full disk raises :class:`DiskFull` (a one-line ``UserError``); ``path`` is left as it was.
    """
    path = Path(path)
    check_output_file(path, "output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if (error := write_error(path, exc)) is not None:
            raise error from exc
        raise
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException as exc:
        full = _disk_full(exc, path.parent)  # while the partial file still takes its space
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise DiskFull(path) from exc
        if (error := write_error(path, exc)) is not None:
            raise error from exc
        raise
    return path


def _disk_full(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(exc, Exception):
        return False  # KeyboardInterrupt, SystemExit
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL


def existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` that exists (where a write would create folders)."""
    return next((parent for parent in path.parents if parent.exists()), Path(path.anchor or "."))


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder."""
    ancestor = existing_ancestor(path)
    return None if ancestor.is_dir() else ancestor


def _refuse_unwritable(path: Path, folder: Path, flag: str) -> None:
    """Refuse ``path`` when ``folder`` (where it would be written) takes no writes."""
    if os.access(folder, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    why = f"'{folder}' is on a read-only disk" if read_only else f"no permission in '{folder}'"
    raise UserError(f"{flag} '{path}' cannot be written: {why}")


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, a folder path that cannot be one: a file, under a file, or
    where this process may not write."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} '{path}' is a file, not a folder; name a folder instead")
    if blocker := _file_in_the_way(path):
        raise UserError(f"{flag} '{path}' is inside '{blocker}', which is a file, not a folder")
    _refuse_unwritable(path, path if path.is_dir() else existing_ancestor(path.absolute()), flag)
    return path


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, a file path that cannot be written: a folder, under a file, or
    where this process may not write."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} '{path}' is a folder; name a file to write instead")
    if blocker := _file_in_the_way(path):
        raise UserError(f"{flag} '{path}' is inside '{blocker}', which is a file, not a folder")
    _refuse_unwritable(path, existing_ancestor(path.absolute()), flag)
    return path


# A folder holding these is a run folder: its files are the run's, never an output's.
_RUN_MARKERS = ("meta.json", "config.yaml")
# What training, evaluation, export and the fitted extras write into a run folder; other files
# there are the user's own outputs, which a rerun may replace.
_RUN_FILES = {
    "meta.json", "config.yaml", "model.safetensors", "last.ckpt", "history.csv", "curves.png",
    "skipped.txt", "unknown.json", "knn_reference.npz", "events.out.tfevents",
}  # fmt: skip
_RUN_SUBFOLDERS = {"eval", "export", "index", "tensorboard", "trials"}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def _run_folder_of(path: Path) -> Path | None:
    """The run folder ``path`` lies in (itself, or two folders up at most: eval/, export/)."""
    for folder in list(path.parents)[:3]:
        if all((folder / marker).is_file() for marker in _RUN_MARKERS):
            return folder
    return None


def refuse_overwriting(path: str | Path, inputs: Sequence[str | Path], flag: str = "--out") -> None:
    """Refuse, before any work, an output path that is one of ``inputs`` (a file given, or an
    image inside a folder given), or an existing file of a run folder: a table written over the
    image it describes, or a page over a run's meta.json, loses what the user owns.

    Raises:
        UserError: in one line naming the input or the run.
    """
    out = Path(path).expanduser()
    if not out.is_file():
        return  # a new file takes nothing's place; a folder is check_output_file's
    for given in inputs:
        source = Path(given).expanduser()
        if source.is_file() and os.path.samefile(out, source):
            raise UserError(f"{flag} '{path}' is one of the inputs; name another file to write")
        if (
            source.is_dir()
            and out.suffix.lower() in _IMAGE_SUFFIXES
            and out.resolve().is_relative_to(source.resolve())
        ):
            raise UserError(
                f"{flag} '{path}' is an image inside the input folder '{given}'; "
                "name a file outside it"
            )
    resolved = out.resolve()
    run = _run_folder_of(resolved)
    if run is not None:
        inside = resolved.relative_to(run).parts
        if inside[0] in _RUN_FILES or inside[0] in _RUN_SUBFOLDERS:
            raise UserError(
                f"{flag} '{path}' is a file of the run folder '{run}'; name a file outside it"
            )


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to ``path`` atomically (UTF-8; a file name's undecodable bytes as they are)."""
    return atomic_write(
        path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors=TEXT_ERRORS)
    )


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write JSON (indented, UTF-8) to ``path`` atomically; names read back whole."""
    return atomic_write_text(path, json_dumps(data) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read 1 MiB at a time (weights files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
