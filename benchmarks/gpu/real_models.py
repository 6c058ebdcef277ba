"""Pipelines at the released checkpoints' architecture sizes with random weights, built from the
configs in ``configs/`` (copied from the checkpoints' own config files): speed and memory do not
depend on weight values, and nothing is downloaded. ``tiny-*`` kinds are the tests' random
pipelines, so every harness runs on CPU too.

    python benchmarks/gpu/real_models.py write sd2-inpainting /tmp/sd2 --dtype bfloat16   # a folder trainers load
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parent / "configs"
REAL = {"sd35-large": "StableDiffusion3Pipeline", "sd2-inpainting": "StableDiffusionInpaintPipeline"}
TINY = {"tiny-sd3": "StableDiffusion3Pipeline", "tiny-sd2-inpainting": "StableDiffusionInpaintPipeline"}
KINDS = {**REAL, **TINY}
FOR_ARCH = {
    ("real", "text2image"): "sd35-large",
    ("real", "inpainting"): "sd2-inpainting",
    ("tiny", "text2image"): "tiny-sd3",
    ("tiny", "inpainting"): "tiny-sd2-inpainting",
}


def _config(kind: str, component: str) -> dict:
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((CONFIGS / kind / component / name).read_text())


@contextmanager
def _building(dtype: torch.dtype, device: str):
    """Parameters are created directly in ``dtype`` on ``device`` (no float32 copy of an 8B model)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _clip(cls, kind: str, component: str, tokenizer):
    from transformers import CLIPTextConfig

    cfg = {k: v for k, v in _config(kind, component).items() if not k.startswith("_")}
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return cls(CLIPTextConfig(**{**cfg, **ids}))


def build(kind: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """The pipeline of ``kind`` (``KINDS``) with random weights drawn from ``seed``, on ``device``.
    Tokenizers are the tests' offline ones: real sizes matter only for the models."""
    from mammosynth.training import tiny_models

    torch.manual_seed(seed)
    if kind == "tiny-sd3":
        return tiny_models.build_tiny_sd3(seed).to(device, dtype)
    if kind == "tiny-sd2-inpainting":
        return tiny_models.build_tiny_sd2_inpainting(seed).to(device, dtype)
    import diffusers
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if kind == "sd35-large":
        tiny = tiny_models.build_tiny_sd3(seed)
        with _building(dtype, device):
            t5 = {k: v for k, v in _config(kind, "text_encoder_3").items() if not k.startswith("_")}
            pipe = diffusers.StableDiffusion3Pipeline(
                transformer=diffusers.SD3Transformer2DModel.from_config(_config(kind, "transformer")),
                vae=diffusers.AutoencoderKL.from_config(_config(kind, "vae")),
                text_encoder=_clip(CLIPTextModelWithProjection, kind, "text_encoder", tiny.tokenizer),
                text_encoder_2=_clip(CLIPTextModelWithProjection, kind, "text_encoder_2", tiny.tokenizer_2),
                text_encoder_3=T5EncoderModel(T5Config(**t5)),
                tokenizer=tiny.tokenizer,
                tokenizer_2=tiny.tokenizer_2,
                tokenizer_3=tiny.tokenizer_3,
                scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(_config(kind, "scheduler")),
            )
    elif kind == "sd2-inpainting":
        tiny = tiny_models.build_tiny_sd2_inpainting(seed)
        with _building(dtype, device):
            pipe = diffusers.StableDiffusionInpaintPipeline(
                unet=diffusers.UNet2DConditionModel.from_config(_config(kind, "unet")),
                vae=diffusers.AutoencoderKL.from_config(_config(kind, "vae")),
                text_encoder=_clip(CLIPTextModel, kind, "text_encoder", tiny.tokenizer),
                tokenizer=tiny.tokenizer,
                scheduler=diffusers.PNDMScheduler.from_config(_config(kind, "scheduler")),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
    else:
        raise ValueError(f"unknown kind {kind!r}; one of {sorted(KINDS)}")
    return pipe.to(device, dtype)


def config_folder(kind: str, work: Path) -> Path:
    """A folder the samplers' checks accept (model_index.json and component configs): the real
    configs themselves, or a written tiny pipeline."""
    if kind in REAL:
        return CONFIGS / kind
    return write(kind, work / kind)


def write(kind: str, folder: Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Path:
    """Save ``build(kind)`` as a diffusers folder (``from_pretrained`` and the trainers load it)."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    build(kind, dtype=dtype, device=device).save_pretrained(folder, safe_serialization=True)
    return folder


@contextmanager
def random_weights(kind: str, *, seed: int = 0):
    """While active, ``<Pipeline>.from_pretrained(anything, dtype=...)`` of ``kind``'s class returns
    ``build(kind)`` on CPU in that dtype: the samplers' own loading code runs unchanged on random
    real-size weights (they move the pipeline to their device themselves)."""
    import diffusers

    cls = getattr(diffusers, KINDS[kind])

    def from_pretrained(_cls, _path, *args, dtype=None, torch_dtype=None, **kwargs):
        dt = dtype or torch_dtype or torch.float32
        device = "cuda" if torch.cuda.is_available() else "cpu"  # built in place: no host copy of 8B weights
        return build(kind, dtype=dt, device=device, seed=seed)

    had = "from_pretrained" in cls.__dict__
    original = cls.__dict__.get("from_pretrained")
    cls.from_pretrained = classmethod(from_pretrained)
    try:
        yield
    finally:
        if had:
            cls.from_pretrained = original
        else:
            del cls.from_pretrained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="save a random-weight pipeline folder")
    w.add_argument("kind", choices=sorted(KINDS))
    w.add_argument("folder", type=Path)
    w.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(write(args.kind, args.folder, dtype=getattr(torch, args.dtype), device=device))


if __name__ == "__main__":
    main()
