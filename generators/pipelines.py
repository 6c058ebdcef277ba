"""What the diffusion samplers share: checking a pipeline folder before loading it, choosing
device/precision, speed settings and per-image generators. (Checkpoint names and hashes are in
``core.provenance``/``core.hashing``; pipeline output to grey in ``core.imageio``.)

Checks here read only JSON configs, so a bad spec fails in seconds, before any weights are loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammosynth.builders.core.errors import InputError
from mammosynth.generators.speed import Speed, apply_speed

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


# Diffusers-format components only: hub repos such as SD3.5-Large also hold single-file checkpoints
# of many GB at the root that the pipeline never reads.
HUB_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors"]


def hub_snapshot(ref: str, *, field: str, spec_file: str | Path | None = None) -> Path:
    """A hub model id resolved to its local snapshot (downloaded once into the HF cache; with
    HF_HUB_OFFLINE=1 only the cache is used). Anything else that is not a folder is an InputError."""
    from mammosynth.builders.core.spec import REPO_ID

    if ref.startswith((".", "/", "~")) or not REPO_ID.match(ref):
        raise InputError(f"checkpoint folder {ref!r} not found", file=spec_file, field=field)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # offline, unknown repo, gated without token: one clear line
        raise InputError(
            f"checkpoint {ref!r} is not a local folder and could not be fetched from the Hub "
            f"({type(exc).__name__}); download it or give a local path",
            file=spec_file,
            field=field,
        ) from None


def pipeline_folder(ref: str, *, field: str, needs: str, kind: str, spec_file: str | Path | None = None) -> Path:
    """The local folder of a diffusers pipeline (``model_index.json`` inside) having component
    ``needs`` (e.g. "unet", "transformer"), or InputError naming what it is instead."""
    path = Path(ref) if Path(ref).is_dir() else hub_snapshot(ref, field=field, spec_file=spec_file)
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise InputError(
            f"{ref!r} is not a diffusers pipeline folder (no readable model_index.json)", file=spec_file, field=field
        ) from None
    if needs not in index:
        raise InputError(
            f"{ref!r} is not {kind} ({index.get('_class_name', 'unknown pipeline')} has no {needs})",
            file=spec_file,
            field=field,
        )
    return path


def component_config(
    folder: Path, component: str, *, field: str, spec_file: str | Path | None = None
) -> dict[str, Any]:
    path = folder / component / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {component} config: {exc}", file=path, field=field) from None


def vae_factor(folder: Path, *, field: str, spec_file: str | Path | None = None) -> int:
    """Pixel-to-latent downsampling of the pipeline's VAE (8 for SD2 and SD3)."""
    vae = component_config(folder, "vae", field=field, spec_file=spec_file)
    return 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)


def check_resolution(
    resolution: int, factor: int, *, field: str, spec_file: str | Path | None = None, what: str = "resolution"
) -> None:
    if resolution % factor:
        lower = resolution - resolution % factor
        raise InputError(
            f"{what} {resolution} is not divisible by {factor} (the VAE/patch factor); use {lower} or {lower + factor}",
            file=spec_file,
            field=field,
        )


# --- runtime -----------------------------------------------------------------------------------


@dataclass
class Runtime:
    """Where and how pipelines run. None fields are chosen from the hardware: on CUDA bf16 +
    channels-last (+ optional torch.compile); on CPU float32 and no compilation."""

    device: str | None = None
    dtype: str | None = None  # "float32" | "bfloat16" | "float16"
    compile: bool = False
    channels_last: bool | None = None
    vae_tiling: bool = False

    def resolved(self) -> "Runtime":
        import torch

        device = self.device
        if device is None:
            if torch.cuda.is_available():
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            else:
                device = "cpu"
        on_gpu = device.startswith("cuda")
        return Runtime(
            device=device,
            dtype=self.dtype or ("bfloat16" if on_gpu else "float32"),
            compile=self.compile,
            channels_last=on_gpu if self.channels_last is None else self.channels_last,
            vae_tiling=self.vae_tiling,
        )

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype or "float32")


def prepare_pipeline(pipe, runtime: Runtime, denoiser: str, *, fp32_decode: bool = False, speed: Speed | None = None):
    """Move to the device and apply the speed settings; ``denoiser`` is "unet" or "transformer".

    ``fp32_decode``: the VAE decoder runs in float32 whatever the pipeline's dtype (see ``decode``).
    ``speed``: the transformer's own options (fused QKV, fp8, regional compile), applied before the
    whole-model ``runtime.compile``, which they exclude (``speed.check_speed``).
    """
    import torch

    pipe = pipe.to(runtime.device)
    pipe.set_progress_bar_config(disable=True)
    if fp32_decode:
        decoder_in_fp32(pipe.vae)
    model = getattr(pipe, denoiser)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if runtime.vae_tiling:
        pipe.vae.enable_tiling()
    if speed is not None:
        apply_speed(model, speed)
    if runtime.compile:
        setattr(pipe, denoiser, torch.compile(model, mode="max-autotune-no-cudagraphs", fullgraph=False))
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode="max-autotune-no-cudagraphs")
    return pipe


# --- VAE decode ----------------------------------------------------------------------------------


def decoder_in_fp32(vae) -> None:
    """Upcast the VAE's decoder (and post-quant conv) to float32; the encoder keeps the pipeline's
    dtype, so an inpainting pipeline still encodes its bf16 inputs. A bf16 decoder output has 8
    significant bits: 16-bit PNGs made from it show about 129 distinct levels over [0.5, 1]."""
    import torch

    vae.decoder.to(torch.float32)
    if getattr(vae, "post_quant_conv", None) is not None:
        vae.post_quant_conv.to(torch.float32)


def decode(pipe, latents) -> np.ndarray:
    """Latents from a pipeline called with ``output_type="latent"`` to float RGB in [0, 1], shape
    (N, H, W, 3), decoded in the decoder's own dtype. Same arithmetic as the pipelines' own decode
    (scale, then shift where the VAE has one), so a float32 run gives the same bytes."""
    import torch

    vae = pipe.vae
    z = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None) is not None:
        z = z + vae.config.shift_factor
    with torch.inference_mode():
        image = vae.decode(z.to(vae.decoder.conv_in.weight.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="np")


def generators_for(seeds: list[int]):
    """One CPU generator per image: latents depend on the image's seed only, not on the batch it
    lands in, the device, or the number of processes."""
    import torch

    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
