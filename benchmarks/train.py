"""Training throughput: samples/s per device for the SD2-inpainting UNet fine-tune (512²) and the
SD3.5-Large transformer LoRA (1024²), real architecture sizes with random weights (speed does not
depend on weight values), against the plain diffusers training-example approach, same run.

Baseline (diffusers' dreambooth_inpaint / SD3 LoRA examples with per-image captions): the frozen
text encoders run on every step's captions. Ours (mammosynth.training): prompt embeddings computed
once and the encoders freed; the same loss functions the trainers use (inpainting_loss,
flow_matching_loss), AdamW, autocast. MFU = counted model FLOPs (torch FlopCounterMode, one
training step) x steps/s / the device's dense bf16 peak.

    .venv/bin/python benchmarks/train.py --tiny      # CPU: tiny configs; GPU figures pending
    python benchmarks/train.py                        # GPU: real sizes, bf16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from mammosynth.builders.core import schema
from mammosynth.training import runtime, tiny_models
from mammosynth.training.config import LoraOptions, SD35LoraConfig
from mammosynth.training.inpaint import inpainting_loss
from mammosynth.training.sd35_lora import flow_matching_loss

HERE = Path(__file__).resolve().parent
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense tensor-core FLOP/s


def _real_builders():
    spec = importlib.util.spec_from_file_location("bench_generate", HERE / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # real-size random-weight pipelines shared with the generation benchmark
    return mod


def peak_flops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(step, steps: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def count_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def bench_inpaint(pipe, batch: int, res: int, device: str, dtype, args) -> dict:
    unet, vae, scheduler_cfg = pipe.unet, pipe.vae, pipe.scheduler.config
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(scheduler_cfg)
    vae.to(device, dtype).requires_grad_(False)
    pipe.text_encoder.to(device, dtype).requires_grad_(False)
    unet.to(device, torch.float32).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=5e-6, weight_decay=0.01)
    prompt = schema.inpainting_prompt(4)
    tok = pipe.tokenizer
    ids = tok([prompt] * batch, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        cached = pipe.text_encoder(ids[:1])[0]
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(batch, 3, res, res, generator=g) * 2 - 1
    mask = torch.zeros(batch, 1, res, res)
    mask[:, :, res // 4: res // 2, res // 4: res // 2] = 1
    data = {"pixel_values": pixels.to(device), "mask": mask.to(device), "masked_pixel_values": (pixels * (mask < 0.5)).to(device)}
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)

    def ours():
        with autocast:
            loss = inpainting_loss(unet, scheduler, vae, data, cached)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def plain():
        with autocast:
            with torch.no_grad():
                hidden = pipe.text_encoder(ids)[0]  # example: text encoder forward every step
            loss = inpainting_loss(unet, scheduler, vae, data, hidden)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _compare(ours, plain, batch, device, args)


def bench_sd35(pipe, batch: int, res: int, device: str, dtype, args) -> dict:
    transformer, vae = pipe.transformer, pipe.vae
    cfg = SD35LoraConfig(prepared="-", output_dir="-")
    for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, vae, transformer):
        m.to(device, dtype).requires_grad_(False)
    lora = LoraOptions(**{**cfg.lora.model_dump(), "rank": 64, "dropout": 0.1})
    runtime.add_lora(transformer, lora)
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    prompts = [schema.text2image_prompt("L", "CC", d, b) for d, b in zip("ABCD", (1, 2, 4, 5))][:batch]
    prompts = (prompts * batch)[:batch]
    with torch.no_grad():
        emb, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device,
                                               do_classifier_free_guidance=False, max_sequence_length=77)
    pixels = (torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device, dtype)
    scheduler = pipe.scheduler
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)

    def step(e, p):
        with torch.no_grad():
            lat = ((vae.encode(pixels).latent_dist.sample() - vae.config.shift_factor) * vae.config.scaling_factor)
        with autocast:
            loss = flow_matching_loss(transformer, scheduler, lat, e, p, cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def ours():
        step(emb, pooled)

    def plain():
        with torch.no_grad():  # example with per-image captions: three text encoders every step
            e, _, p, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device,
                                            do_classifier_free_guidance=False, max_sequence_length=77)
        step(e, p)

    return _compare(ours, plain, batch, device, args)


def _compare(ours, plain, batch: int, device: str, args) -> dict:
    flops = count_flops(ours)
    # interleave so load from other users of a shared machine hits both alike
    t_ours, t_plain = [], []
    for _ in range(args.repeats):
        t_plain.append(measure(plain, args.steps, args.warmup, device))
        t_ours.append(measure(ours, args.steps, args.warmup, device))
    to, tp = sorted(t_ours)[len(t_ours) // 2], sorted(t_plain)[len(t_plain) // 2]
    peak = peak_flops(device)
    return {
        "batch_per_device": batch,
        "samples_per_s_ours": batch / to,
        "samples_per_s_plain": batch / tp,
        "speedup": tp / to,
        "flops_per_step": flops,
        "achieved_flops_per_s": flops / to,
        "mfu": (flops / to / peak) if peak else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny configs on CPU (GPU figures pending)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--inpaint-batch", type=int, default=4)
    ap.add_argument("--sd35-batch", type=int, default=3)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--only", choices=["inpaint", "sd35"], default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train.json")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    results: dict = {}
    if args.only in (None, "inpaint"):
        if args.tiny:
            pipe, res = tiny_models.build_tiny_sd2_inpainting(), 64
        else:
            pipe, res = _real_builders().real_sd2_inpainting(torch.float32, device), 512
        results["inpaint_unet"] = {"resolution": res, **bench_inpaint(pipe, args.inpaint_batch, res, device, dtype, args)}
        del pipe
        runtime.free_memory()
    if args.only in (None, "sd35"):
        if args.tiny:
            pipe, res = tiny_models.build_tiny_sd3(), 64
        else:
            pipe, res = _real_builders().real_sd35_large(dtype, device), 1024
        results["sd35_large_lora"] = {"resolution": res, **bench_sd35(pipe, args.sd35_batch, res, device, dtype, args)}
        del pipe
        runtime.free_memory()

    import accelerate
    import diffusers
    import peft

    record = {
        "benchmark": "train",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__,
                     "accelerate": accelerate.__version__},
        "mode": "tiny configs on CPU" if args.tiny else f"real sizes on {device}, {dtype}",
        "gpu_figures": "pending: no GPU in this run; ratios from tiny CPU configs only, not absolute speed"
        if device != "cuda" else "measured",
        "targets_samples_per_s_per_gpu": {"inpaint_unet": 30, "sd35_large_lora": 2.5},
        "paper_anchors_samples_per_s_per_gpu": {"inpaint_unet": 5.6, "sd35_large_lora": 0.67},
        "settings": vars(args) | {"out": str(args.out)},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["results"], indent=2))


if __name__ == "__main__":
    main()
