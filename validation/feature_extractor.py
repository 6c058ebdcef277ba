"""The feature encoder behind the realism metrics, named in the thresholds file (``realism:``).

The encoder is a Hub id or a local folder; nothing is ever downloaded (a Hub id must already be in
the local Hugging Face cache). What a folder holds decides how it loads (``kind: auto``):

- ``config.json`` with a ``model_type``: a transformers model (``AutoModel``; normalisation and
  input size from its ``preprocessor_config.json`` when there is one).
- ``config.json`` with an ``architecture``: a timm model as timm saves it for the Hub (needs timm).
- ``torchvision.json``: ``{"arch": "<torchvision.models name>", "weights": "<state dict file>"}``,
  optionally ``"mean"``, ``"std"``, ``"image_size"`` (needs torchvision); its classification head
  (``fc``, ``classifier``, ``head`` or ``heads``) is replaced by the identity, so the features
  are what the head would have read.
- ``model.pt2``: any ``torch.export`` program taking ``(N, 3, H, W)`` floats and returning
  ``(N, D)`` (or ``(N, D, 1, 1)``) features; export it with a dynamic batch dimension. An
  ``extractor.json`` beside it may give ``"mean"``, ``"std"``, ``"image_size"``.

One preprocessing for every kind (``preprocess``): grey uint8/uint16 pixels scaled to [0, 1] by
their bit depth (floats are taken as [0, 1] already), the whole image resized to a square of the
encoder's input size (area interpolation when shrinking, so nothing is cropped and the breast's
outline is kept, its aspect ratio is not), the grey channel repeated three times, then normalised
by the encoder's per-channel mean and std (ImageNet's when it names none).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import cv2
import numpy as np
from pydantic import Field

from mammosynth.builders.core.config_io import StrictModel
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import tree_hash
from mammosynth.builders.core.provenance import checkpoint_name

FIELD = "realism.extractor"  # the thresholds field that names the encoder (errors name it)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
TORCHVISION_FILE = "torchvision.json"
EXPORT_FILE = "model.pt2"
EXPORT_META = "extractor.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

Kind = Literal["auto", "transformers", "timm", "torchvision", "torch_export"]


class RealismConfig(StrictModel):
    """The realism metrics' encoder and sample sizes (the thresholds file's ``realism:`` mapping)."""

    extractor: str | None = Field(
        None,
        description="Hub id (read from the local Hugging Face cache, never downloaded) or local folder of the "
        "feature encoder, e.g. a DINOv2 or Inception checkpoint; None = no realism metrics (the report says so)",
    )
    kind: Kind = Field("auto", description="which library loads it; auto = decided by the folder's files")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of a Hub id")
    pooling: Literal["auto", "pooler", "cls", "mean"] = Field(
        "auto",
        description="transformers models: pooled output, first (CLS) token, or mean of the last hidden state; "
        "auto = the pooled output when the model has one, else the mean",
    )
    image_size: int | None = Field(
        None, ge=8, le=4096, description="side of the square input; None = the encoder's own (224 if it names none)"
    )
    batch_size: int = Field(32, ge=1, le=4096, description="images per forward pass")
    device: str = Field(
        "cpu", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="torch device; auto = cuda when available"
    )
    min_images: int = Field(
        50, ge=2, description="strata with fewer images on either side are reported as too few, without figures"
    )
    kid_subsets: int = Field(100, ge=1, description="KID: random subsets averaged (their std is reported)")
    kid_subset_size: int = Field(1000, ge=2, description="KID: images per subset (capped by the smaller side)")
    k: int = Field(3, ge=1, description="precision/recall: the k-th neighbour's distance is each point's radius")


@dataclass
class FeatureExtractor:
    """A loaded encoder: ``extract(images)`` -> (n, dim) float64 features, one row per image."""

    name: str  # Hub id or folder name: never a machine path
    kind: str
    content_hash: str  # tree_hash of the weights folder (the Hub snapshot for a Hub id)
    revision: str | None  # the Hub snapshot's commit, None for a local folder
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pooling: str
    batch_size: int
    device: str
    forward: Callable[[Any], Any]  # (N, 3, S, S) float tensor on ``device`` -> (N, D) tensor
    dim: int = 0

    def describe(self) -> dict[str, Any]:
        """What the report records about the encoder."""
        return {
            "name": self.name,
            "kind": self.kind,
            "content_hash": self.content_hash,
            "revision": self.revision,
            "feature_dim": self.dim,
            "image_size": self.image_size,
            "pooling": self.pooling,
            "preprocessing": f"grey scaled to [0, 1] by bit depth, resized to {self.image_size}x{self.image_size}, "
            f"repeated to 3 channels, normalised by mean {list(self.mean)} and std {list(self.std)}",
        }

    def extract(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """Features of every image, in order (batches of ``batch_size`` through the encoder)."""
        import torch

        out = []
        with torch.inference_mode():
            for batch in _batches(images, self.batch_size):
                x = np.stack([preprocess(im, self.image_size, self.mean, self.std) for im in batch])
                y = self.forward(torch.from_numpy(x).to(self.device))
                y = y.reshape(y.shape[0], -1) if y.ndim > 2 else y
                out.append(y.detach().to("cpu", torch.float64).numpy())
        feats = np.concatenate(out) if out else np.zeros((0, self.dim))
        if feats.ndim != 2 or (self.dim and feats.shape[1] != self.dim):
            raise InputError(f"the encoder returned features of shape {feats.shape[1:]}", field=FIELD)
        return feats


def preprocess(
    image: np.ndarray, size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> np.ndarray:
    """A grey image (any size) -> (3, size, size) float32, normalised (the module docstring)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"expected a grey image, got shape {arr.shape}")
    if arr.dtype in (np.uint8, np.uint16):
        unit = arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    elif arr.dtype.kind in "fb":
        unit = np.clip(arr.astype(np.float32), 0.0, 1.0)
    else:
        raise ValueError(f"expected uint8, uint16 or float pixels, got {arr.dtype}")
    h, w = unit.shape
    shrink = size < h or size < w
    unit = cv2.resize(unit, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return (np.broadcast_to(unit, (3, size, size)) - m) / s


def _batches(items: Iterable[np.ndarray], n: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


# --- locating the weights ----------------------------------------------------------------------


def resolve_source(cfg: RealismConfig) -> tuple[Path, str, str | None]:
    """(folder, shipped name, Hub revision) of the configured encoder; never downloads."""
    ref = cfg.extractor
    if not ref:
        raise InputError("no feature extractor configured", field=FIELD)
    path = Path(ref).expanduser()
    if path.is_dir():
        return path, checkpoint_name(path.resolve()), None
    if path.exists():
        raise InputError(f"{ref} is a file; name the folder that holds the encoder", field=FIELD)
    if ref.startswith((".", "/", "~")) or not _HUB_ID.match(ref):
        raise InputError(f"folder not found: {ref}", field=FIELD)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snap = Path(snapshot_download(ref, revision=cfg.revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        raise InputError(
            f"{ref} is neither a local folder nor in the local Hugging Face cache; downloads are off, so "
            f"fetch it first (hf download {ref}) or name a local folder",
            field=FIELD,
        ) from None
    return snap, ref, snap.name


def detect_kind(folder: Path) -> str:
    """Which library loads ``folder`` (the module docstring lists the files each kind needs)."""
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        data = _read_json(cfg_file)
        if "model_type" in data:
            return "transformers"
        if "architecture" in data:
            return "timm"
    if (folder / TORCHVISION_FILE).is_file():
        return "torchvision"
    if (folder / EXPORT_FILE).is_file():
        return "torch_export"
    raise InputError(
        f"cannot tell how to load {folder.name}: expected config.json (transformers or timm), "
        f"{TORCHVISION_FILE} or {EXPORT_FILE}",
        field=FIELD,
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path.name} not found (is realism.kind right?)", file=path.parent.name, field=FIELD)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot parse: {exc}".splitlines()[0], file=path, field=FIELD) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON mapping", file=path, field=FIELD)
    return data


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine", field="realism.device")
    return name


# --- loading -------------------------------------------------------------------------------------


def load_extractor(cfg: RealismConfig) -> FeatureExtractor:
    """The configured encoder, in eval mode on ``cfg.device``."""
    folder, name, revision = resolve_source(cfg)
    kind = detect_kind(folder) if cfg.kind == "auto" else cfg.kind
    device = _device(cfg.device)
    loaders = {
        "transformers": _load_transformers,
        "timm": _load_timm,
        "torchvision": _load_torchvision,
        "torch_export": _load_export,
    }
    forward, size, mean, std, pooling = loaders[kind](folder, cfg, device)
    ext = FeatureExtractor(
        name=name,
        kind=kind,
        content_hash=tree_hash(folder),
        revision=revision,
        image_size=cfg.image_size or size or DEFAULT_IMAGE_SIZE,
        mean=tuple(float(v) for v in mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in std),  # type: ignore[arg-type]
        pooling=pooling,
        batch_size=cfg.batch_size,
        device=device,
        forward=forward,
    )
    # one probe batch of two blank images: the feature dimension is known before any real image
    blank = np.zeros((ext.image_size, ext.image_size), np.uint8)
    ext.dim = int(ext.extract([blank, blank]).shape[1])
    return ext


# (forward, input side or None, mean, std, pooling) as each loader returns them
Loaded = tuple[Callable[[Any], Any], Optional[int], tuple[float, ...], tuple[float, ...], str]


def _load_transformers(folder: Path, cfg: RealismConfig, device: str) -> Loaded:
    import torch
    import transformers

    try:
        model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
        model = model.to(device=device, dtype=torch.float32).eval()  # a half-precision checkpoint too
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot load as a transformers model: {exc}".splitlines()[0], field=FIELD) from None
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, getattr(model.config, "image_size", None)
    if (folder / "preprocessor_config.json").is_file():
        proc = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        if getattr(proc, "do_normalize", True) and getattr(proc, "image_mean", None) is not None:
            mean, std = _three(proc.image_mean), _three(proc.image_std)
        size = _processor_size(getattr(proc, "crop_size", None)) or _processor_size(proc.size) or size
    if isinstance(size, (list, tuple)):
        size = size[0]
    pooling = cfg.pooling

    def forward(x: Any) -> Any:
        out = model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        hidden = out.last_hidden_state
        if pooling == "pooler" or (pooling == "auto" and pooled is not None):
            if pooled is None:
                raise InputError(
                    "this model has no pooled output; choose pooling: cls or mean", field="realism.pooling"
                )
            return pooled
        if pooling == "cls":
            if hidden.ndim != 3:
                raise InputError("this model has no tokens (no CLS); choose pooling: mean", field="realism.pooling")
            return hidden[:, 0]
        return hidden.mean(dim=1) if hidden.ndim == 3 else hidden.flatten(2).mean(dim=2)

    return forward, size, mean, std, pooling


def _processor_size(size: Any) -> int | None:
    """A processor's target side: height, shortest edge, or a plain int."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    return get("height") or get("shortest_edge")


def _three(v: Any) -> tuple[float, float, float]:
    v = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    return (v[0], v[0], v[0]) if len(v) == 1 else (v[0], v[1], v[2])


def _load_timm(folder: Path, cfg: RealismConfig, device: str) -> Loaded:
    import torch

    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError:
        raise InputError("this encoder needs timm, which is not installed (pip install timm)", field=FIELD) from None
    weights = next((folder / f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).is_file()), None)
    if weights is None:
        raise InputError(f"{folder.name} has no model.safetensors or pytorch_model.bin", field=FIELD)
    meta = _read_json(folder / "config.json")
    # the local weights file in place of the download; num_classes=0 drops the head (pooled features)
    model = timm.create_model(
        meta["architecture"], pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(weights)}
    )
    model = model.to(device=device, dtype=torch.float32).eval()
    data_cfg = resolve_data_config({}, model=model)
    size = data_cfg.get("input_size", (3, None, None))[1]
    return model, size, _three(data_cfg["mean"]), _three(data_cfg["std"]), "timm num_classes=0"


def _load_torchvision(folder: Path, cfg: RealismConfig, device: str) -> Loaded:
    import torch

    try:
        import torchvision
    except ImportError:
        raise InputError("this encoder needs torchvision, which is not installed", field=FIELD) from None
    meta = _read_json(folder / TORCHVISION_FILE)
    try:
        model = torchvision.models.get_model(meta["arch"], weights=None)
        state = torch.load(folder / meta["weights"], map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, OSError) as exc:
        raise InputError(f"cannot load: {exc}".splitlines()[0], file=folder / TORCHVISION_FILE, field=FIELD) from None
    for head in ("fc", "classifier", "head", "heads"):
        if hasattr(model, head):
            setattr(model, head, torch.nn.Identity())
            break
    if hasattr(model, "aux_logits"):  # inception_v3: one output in eval mode
        model.aux_logits, model.AuxLogits = False, None
    model = model.to(device=device, dtype=torch.float32).eval()
    return (
        model,
        meta.get("image_size"),
        _three(meta.get("mean", IMAGENET_MEAN)),
        _three(meta.get("std", IMAGENET_STD)),
        f"{meta['arch']} without its head",
    )


def _load_export(folder: Path, cfg: RealismConfig, device: str) -> Loaded:
    import torch
    from torch.export.passes import move_to_device_pass

    try:
        program = torch.export.load(folder / EXPORT_FILE)
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"cannot load: {exc}".splitlines()[0], file=folder / EXPORT_FILE, field=FIELD) from None
    module = move_to_device_pass(program, device).module()  # an exported program is moved as a whole
    meta = _read_json(folder / EXPORT_META) if (folder / EXPORT_META).is_file() else {}
    return (
        module,
        meta.get("image_size"),
        _three(meta.get("mean", IMAGENET_MEAN)),
        _three(meta.get("std", IMAGENET_STD)),
        "program output",
    )


__all__ = [
    "FIELD",
    "RealismConfig",
    "FeatureExtractor",
    "preprocess",
    "resolve_source",
    "detect_kind",
    "load_extractor",
]
