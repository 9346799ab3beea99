"""onnxruntime-web's files for the web page: one pinned version, from npm, checked, cached.

``imagewise export RUN --format web`` copies three files of the npm package into the page's
folder: the WebAssembly build's loader (``ort.wasm.min.js``, a classic script that defines
``ort``), its Emscripten glue (``ort-wasm-simd-threaded.mjs``) and the WebAssembly binary
(``ort-wasm-simd-threaded.wasm``). The WebGPU / WebGL / JSEP builds are not needed: the page
runs on the CPU.

They are looked for, in order:

1. ``IMAGEWISE_ORT_WEB``: an unpacked ``dist`` folder of the package (``npm pack
   onnxruntime-web@1.31.1``), for machines without network;
2. the cache, ``~/.cache/imagewise/onnxruntime-web/VERSION/`` (``$XDG_CACHE_HOME`` if set),
   which ``make install`` fills;
3. the npm registry: the version's metadata names the tarball and its ``dist.integrity``
   (sha512); the tarball is downloaded, its hash checked against that integrity (and, for the
   pinned version, against the integrity recorded here), and the three files are unpacked
   into the cache, atomically.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from imagewise.errors import UserError

VERSION = "1.31.1"
# dist.integrity of onnxruntime-web 1.31.1 as the registry published it: a download must match.
INTEGRITY = (
    "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0f"
    "I19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
)
REGISTRY = "https://registry.npmjs.org"
LOADER = "ort.wasm.min.js"
GLUE = "ort-wasm-simd-threaded.mjs"
WASM = "ort-wasm-simd-threaded.wasm"
FILES = (LOADER, GLUE, WASM)
ENV = "IMAGEWISE_ORT_WEB"
TIMEOUT_S = 60


def cache_dir(version: str = VERSION) -> Path:
    """Where a version's files are kept: ``~/.cache/imagewise/onnxruntime-web/VERSION``."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "imagewise" / "onnxruntime-web" / version


def onnxruntime_web(version: str = VERSION, registry: str = REGISTRY) -> Path:
    """A folder holding onnxruntime-web's loader, glue and WebAssembly binary (``FILES``):
    ``IMAGEWISE_ORT_WEB``, else the cache, else downloaded from the npm registry into the cache.

    Raises:
        UserError: in one line: ``IMAGEWISE_ORT_WEB`` lacks a file, or the download failed or
            did not match its integrity (nothing is cached then).
    """
    given = os.environ.get(ENV)
    if given:
        folder = Path(given).expanduser()
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise UserError(
                f"{ENV}='{given}' has no {', '.join(missing)}; point it at the dist folder of "
                f"the onnxruntime-web package (npm pack onnxruntime-web@{VERSION})"
            )
        return folder
    cached = cache_dir(version)
    if all((cached / f).is_file() for f in FILES):
        return cached
    return download(version, registry, cached)


def version_of(folder: Path) -> str:
    """The version a folder's loader announces in its banner (``ONNX Runtime Web v1.31.1``)."""
    head = (folder / LOADER).read_text(encoding="utf-8", errors="replace")[:400]
    found = re.search(r"ONNX Runtime Web v([\w.+-]+)", head)
    return found.group(1) if found else "unknown version"


def download(version: str, registry: str, dest: Path) -> Path:
    """The package's tarball from ``registry``, checked against its ``dist.integrity``, with
    ``FILES`` unpacked to ``dest`` (written beside it, then renamed into place)."""
    where = f"{registry}/onnxruntime-web/{version}"
    try:
        meta = json.loads(_get(where, f"onnxruntime-web {version}'s metadata"))
    except ValueError:
        raise UserError(f"{where} did not answer with the package's metadata (JSON)") from None
    dist = meta.get("dist") if isinstance(meta, dict) else None
    if not isinstance(dist, dict) or not str(dist.get("integrity", "")).startswith("sha512-"):
        raise UserError(f"{where} names no sha512 integrity for onnxruntime-web {version}")
    integrity, tarball = str(dist["integrity"]), str(dist.get("tarball", ""))
    if version == VERSION and integrity != INTEGRITY:
        raise UserError(
            f"{where} gives onnxruntime-web {version} the integrity {integrity}, not the "
            f"{INTEGRITY} recorded when it was pinned; nothing was downloaded"
        )
    if not tarball.startswith(registry + "/"):
        raise UserError(f"{where} points the tarball outside the registry: '{tarball}'")
    data = _get(tarball, f"onnxruntime-web {version}")
    got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != integrity:
        raise UserError(
            f"the onnxruntime-web {version} tarball from {registry} does not match its "
            f"integrity ({got[:24]}... instead of {integrity[:24]}...); nothing was cached"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _unpack(data, staging, version)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        if dest.exists():  # an incomplete earlier copy
            shutil.rmtree(dest)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _unpack(data: bytes, folder: Path, version: str) -> None:
    """``FILES`` from the tarball's ``package/dist/`` (nothing else is read out of it)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for name in FILES:
            try:
                member = tar.getmember(f"package/dist/{name}")
            except KeyError:
                missing = f"the onnxruntime-web {version} package has no dist/{name}"
                raise UserError(missing) from None
            source = tar.extractfile(member) if member.isfile() else None
            if source is None:
                raise UserError(f"dist/{name} of onnxruntime-web {version} is not a file")
            (folder / name).write_bytes(source.read())


def _get(url: str, what: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return bytes(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(
            f"could not download {what} from {url} ({reason}); --format web needs "
            f"onnxruntime-web's files: connect to the network once, or set {ENV} to the dist "
            f"folder of the package (npm pack onnxruntime-web@{VERSION})"
        ) from None
