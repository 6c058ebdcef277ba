"""Generation throughput: images/s per GPU for BI-RADS inpainting (SD2, 24 steps, CFG 7) and SD3.5-L
text-to-image (28 steps), real architecture sizes with random weights (GPU speed does not depend
on weight values), against the plain diffusers pipeline called once per image, same run.

Baseline: what a user writes from the model card: ``from_pretrained(..., torch_dtype=bf16)`` on
GPU (float32 on CPU), default scheduler, one ``pipe(prompt, ...)`` call per image. Ours: the
mammosynth samplers' own ``generate`` (batched, per-image CPU generators, bf16, SDPA,
channels-last, optional torch.compile / VAE tiling) with the same weights injected.

    .venv/bin/python benchmarks/generate.py --tiny          # CPU: tiny configs, GPU figures pending
    python benchmarks/generate.py --batch 8 --compile       # GPU: real sizes at 1024²
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mammosynth.builders.core.schema import prepared_features
from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.generators.engine import plan
from mammosynth.generators.inpainting import InpaintingSampler
from mammosynth.generators.pipelines import Runtime, prepare_pipeline
from mammosynth.generators.text2image import Text2ImageSampler
from mammosynth.training import tiny_models


# --- real-size random pipelines ------------------------------------------------------------------


def real_sd2_inpainting(dtype, device):
    """stable-diffusion-2-inpainting's architecture (865M UNet, OpenCLIP-H text), random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device), default_dtype(dtype):
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024, use_linear_projection=True,
        ).to(dtype)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=768,
        ).to(dtype)
        tok = tiny_models._clip_tokenizer()
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
            max_position_embeddings=77, projection_dim=1024, hidden_act="gelu",
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )).to(dtype)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                          clip_sample=False, set_alpha_to_one=False)
    return StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def real_sd35_large(dtype, device):
    """SD3.5-Large's architecture (8B MMDiT, CLIP-L, CLIP-G, T5-XXL), random weights."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tok, tok2, tok3 = tiny_models._clip_tokenizer(), tiny_models._clip_tokenizer(), tiny_models._t5_tokenizer()

    def clip(hidden, layers, heads, inter):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, max_position_embeddings=77, projection_dim=hidden, hidden_act="gelu",
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )).to(dtype)

    with torch.device(device), default_dtype(dtype):
        transformer = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
            num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
            pooled_projection_dim=2048, pos_embed_max_size=192, qk_norm="rms_norm",
        ).to(dtype)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
            use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305,
        ).to(dtype)
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(tok3), d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )).to(dtype)
        text, text2 = clip(768, 12, 12, 3072), clip(1280, 32, 20, 5120)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text, tokenizer=tok, text_encoder_2=text2, tokenizer_2=tok2, text_encoder_3=t5, tokenizer_3=tok3,
    )


# --- inputs --------------------------------------------------------------------------------------


def synthetic_prepared(path: Path, size: int, n: int) -> Path:
    """BI-RADS 1 CC-L backgrounds (textured half-ellipses) and BI-RADS 4 boxes of ~8% width."""
    import datasets

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (xx / (0.8 * size)) ** 2 + ((yy - size / 2) / (0.42 * size)) ** 2 <= 1
    rows = []
    for i in range(n + 4):
        img = np.clip(np.where(inside, 150 + rng.normal(0, 20, inside.shape), 5), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        b = 1 if i < n else 4
        w = size * (0.06 + 0.01 * (i - n))
        findings = [] if b == 1 else [{"bbox": [size * 0.2, size * 0.4, size * 0.2 + w, size * 0.4 + w], "categories": ["Mass"], "finding_birads": 4}]
        rows.append({"image": {"bytes": buf.getvalue(), "path": None}, "image_id": f"img-{i:04d}", "study_id": "s", "laterality": "L",
                     "view": "CC", "birads": b, "density": "C", "manufacturer": "SIEMENS", "model_name": "m", "split": "training",
                     "orig_height": size, "orig_width": size, "findings": findings, "flipped": False})
    datasets.Dataset.from_list(rows, features=prepared_features()).save_to_disk(str(path))
    return path


def spec_for(work: Path, method: str, params: dict, n: int) -> ReleaseSpec:
    return ReleaseSpec.model_validate({
        "name": "bench", "version": "1.0", "pretty_name": "b", "description": "b", "authors": ["b"],
        "source": {"name": "s", "prepared": str(work / "prepared"), "license": "x", "redistribution_allowed": True},
        "methods": {method: {"counts": [{"birads": 4, "view": "CC", "laterality": "L", "n": n}], method: params}},
        "output_dir": str(work / "out"),
    })


def sampler_scheduler(pipe):
    """The scheduler InpaintingSampler.pipeline() installs (DPM-Solver++ multistep)."""
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2)
    return pipe


class default_dtype:
    """Build modules directly in ``dtype`` (no float32 copy of an 8B model on the GPU)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        self.prev = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.prev)


def timed(fn, sync) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def bench_method(method: str, args, work: Path, device: str, dtype) -> dict:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    res, n, batch = args.resolution, args.images, args.batch
    if method == "inpainting":
        tiny_models.write_tiny_sd2_inpainting(work / "ckpt")  # folder for the sampler's checks only
        steps = 24 if not args.tiny else args.steps
        params = {"checkpoints": {4: str(work / "ckpt")}, "steps": steps, "guidance": 7.0, "resolution": res,
                  "batch_size": batch, "margin_px": max(2, res * 24 // 1024), "erosion_px": max(1, res * 5 // 1024)}
        pipe = tiny_models.build_tiny_sd2_inpainting() if args.tiny else real_sd2_inpainting(dtype, device)
    else:
        tiny_models.write_tiny_sd3(work / "ckpt")
        steps = 28 if not args.tiny else args.steps
        params = {"base_model": str(work / "ckpt"), "steps": steps, "guidance": 7.0, "resolution": res, "batch_size": batch}
        pipe = tiny_models.build_tiny_sd3() if args.tiny else real_sd35_large(dtype, device)
    pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    spec = spec_for(work, method, params, n)
    sampler = (InpaintingSampler if method == "inpainting" else Text2ImageSampler)(spec, Runtime(device=device))
    tasks = plan(spec, method)

    # baseline: one plain call per image, default scheduler and settings
    if method == "inpainting":
        placed = [sampler.place(t) for t in tasks]
        from mammosynth.builders.core.box_mask import box_mask

        def mask_image(pl) -> Image.Image:  # the pipeline's "inpaint here": 255 inside the box
            return Image.fromarray(box_mask(pl.image.shape, [pl.box]).astype(np.uint8) * np.uint8(255))

        def baseline():
            for pl in placed:
                pipe(prompt="A mammogram with BI-RADS 4 lesion.", image=Image.fromarray(pl.image).convert("RGB"),
                     mask_image=mask_image(pl), height=res, width=res,
                     num_inference_steps=steps, guidance_scale=7.0)
    else:
        def baseline():
            for t in tasks:
                pipe(prompt="A left craniocaudal (CC) mammogram, breast density C, BI-RADS 4.", height=res, width=res,
                     num_inference_steps=steps, guidance_scale=7.0)

    # ours: the sampler's generate with these weights injected
    rt = Runtime(device=device, dtype=str(dtype).split(".")[-1], compile=args.compile, vae_tiling=args.vae_tiling).resolved()
    def ours():
        sampler.generate(tasks)

    # baseline first, on the untouched pipeline (ours changes scheduler, memory format, compiles)
    if method == "inpainting":
        pipe(prompt="x", image=Image.fromarray(placed[0].image).convert("RGB"),
             mask_image=mask_image(placed[0]), height=res, width=res, num_inference_steps=2)
    else:
        pipe(prompt="x", height=res, width=res, num_inference_steps=2)  # warm-up
    # Ours gets its own copy on CPU so the runs can be interleaved (the shared CPU's load then
    # hits both alike); on a GPU, weights are not duplicated and the baseline runs first.
    ours_pipe = copy.deepcopy(pipe) if args.tiny else pipe
    baseline_runs: list[float] = []
    if not args.tiny:
        baseline_runs = [timed(baseline, sync) for _ in range(args.repeats)]
    if method == "inpainting":
        sampler._pipes[4] = prepare_pipeline(sampler_scheduler(ours_pipe), rt, "unet")
    else:
        sampler._pipe = prepare_pipeline(ours_pipe, rt, "transformer")
    sampler.generate(tasks[:batch])  # warm-up: kernels, allocator, torch.compile
    ours_runs = []
    for _ in range(args.repeats):
        if args.tiny:
            baseline_runs.append(timed(baseline, sync))
        ours_runs.append(timed(ours, sync))
    b, o = float(np.median(baseline_runs)), float(np.median(ours_runs))
    return {
        "images": n, "resolution": res, "steps": steps, "guidance": 7.0, "batch_size": batch,
        "baseline_images_per_s": round(n / b, 4), "ours_images_per_s": round(n / o, 4), "speedup": round(b / o, 3),
        "baseline_seconds": [round(x, 3) for x in baseline_runs], "ours_seconds": [round(x, 3) for x in ours_runs],
        "weights": "tiny random (tests' configs)" if args.tiny else "real architecture sizes, random weights",
        "runtime": {"dtype": rt.dtype, "channels_last": rt.channels_last, "compile": rt.compile, "vae_tiling": rt.vae_tiling},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU); GPU figures stay pending")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--steps", type=int, default=8, help="steps with --tiny (GPU runs use 24 / 28)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--vae-tiling", action="store_true")
    ap.add_argument("--methods", default="inpainting,text2image")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate.json"))
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    if not gpu and not args.tiny:
        ap.error("no GPU: run with --tiny")
    args.images = args.images or (8 if args.tiny else 16)
    args.batch = args.batch or (4 if args.tiny else 8)
    args.resolution = args.resolution or (256 if args.tiny else 1024)
    device = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    torch.manual_seed(0)
    figures = {}
    for method in args.methods.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-{method}-") as tmp:
            work = Path(tmp)
            synthetic_prepared(work / "prepared", args.resolution, args.images)
            figures[method] = bench_method(method, args, work, device, dtype)
            print(method, json.dumps(figures[method]))
    import diffusers
    import transformers

    result = {
        "benchmark": "generate",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": __import__("os").cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if gpu else None},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__},
        "baseline": "plain diffusers pipeline, default scheduler/settings, one call per image (bf16 on GPU as the model cards load it)",
        "ours": "mammosynth sampler generate(): batched, per-image seeds, bf16+SDPA+channels-last on GPU, optional compile/VAE tiling",
        "figures": figures,
        "gpu_figures": "measured" if gpu else "pending: no GPU in this session; CPU tiny-config figures only show the harness runs",
        "targets": {"inpainting_speedup": 3.0, "text2image_speedup": 2.0},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
