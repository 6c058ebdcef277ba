"""Training throughput of the real loop against diffusers' reference training loop, same run.

Ours: ``train_sd35_lora`` / ``train_inpaint`` themselves — Accelerator, the sharded DataLoader with
its default workers, the trainer's default config (bf16, gradient checkpointing for SD3.5, LoRA
dropout, the inpainting latent cache and mirror augmentation), prompt embeddings computed once,
and a checkpoint. Only sizes, the batch and the step count come from the flags.

Baseline: the loop of diffusers' reference trainers (``train_dreambooth_lora_sd3.py`` with
per-image captions, ``train_dreambooth_inpaint.py``): text encoders resident on the device and run
on every step's captions, every image decoded and VAE-encoded (image and masked image) every
step, no loader workers, nothing cached; the same denoiser, LoRA/optimizer settings, gradient
checkpointing and mixed precision.

Figures per micro-batch: samples/s (steps only, and with the checkpoint amortised over the
trainer's default ``checkpointing_steps``), model FLOP utilisation (denoiser forward + backward
only, no recompute) and hardware FLOP utilisation (everything the step runs: recompute, VAE,
text encoders), FLOPs counted with torch's FlopCounterMode on one step, utilisation against the
device's dense bf16 peak (none on CPU: achieved FLOP/s and ratios only), peak memory on GPU.

    .venv/bin/python benchmarks/train.py --arch tiny                       # CPU, both trainers
    python benchmarks/train.py --arch real --trainer sd35-lora --steps 4 --batch 3 --resolution 1024 --out r.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "gpu"))  # real-size architectures from the checkpoints' configs
sys.path.insert(0, str(HERE.parent / "tests"))  # the one writer of synthetic data
import real_models  # noqa: E402

from helpers.synthetic import write_trainer_set  # noqa: E402
from mammosynth.builders.core import schema  # noqa: E402
from mammosynth.training import data as tdata  # noqa: E402
from mammosynth.training import runtime  # noqa: E402
from mammosynth.training.config import InpaintConfig, SD35LoraConfig  # noqa: E402

PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}  # dense tensor-core FLOP/s
KIND = {
    ("real", "sd35-lora"): "sd35-large",
    ("real", "inpaint"): "sd2-inpainting",
    ("tiny", "sd35-lora"): "tiny-sd3",
    ("tiny", "inpaint"): "tiny-sd2-inpainting",
}
BASE = "benchmark://random-weights"  # the in-memory base model the trainers load from
TARGETS = {
    "sd35-lora": {"goal_samples_per_s": 2.5, "paper_samples_per_s": 0.67, "resolution": 1024, "batch": 3},
    "inpaint": {"goal_samples_per_s": 30, "paper_samples_per_s": 5.6, "resolution": 512, "batch": 4},
}


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def peak_memory_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def reset_peak_memory() -> None:
    runtime.free_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def build(args) -> dict:
    """The base pipeline's components with random weights (trainable ones in float32)."""
    kind = KIND[(args.arch, args.trainer)]
    dtype = torch.bfloat16 if args.arch == "real" and args.trainer == "sd35-lora" else torch.float32
    return dict(real_models.build(kind, dtype=dtype, device=device() if args.arch == "real" else "cpu").components)


def config_for(args, prepared: Path, out: Path):
    model = SD35LoraConfig if args.trainer == "sd35-lora" else InpaintConfig
    steps = args.warmup + args.steps
    fields = dict(
        prepared=prepared,
        output_dir=out,
        base_model=BASE,
        resolution=args.resolution,
        train_batch_size=args.batch,
        max_train_steps=steps + 1,
        checkpointing_steps=steps if args.checkpoint else 10**9,
        validation_seeds=[],
    )
    if args.grad_accum:
        fields["gradient_accumulation_steps"] = args.grad_accum
    if args.trainer == "inpaint":
        fields["birads"] = 4
    return model(**fields)


# --- ours: the trainer itself --------------------------------------------------------------------------------


def run_ours(args, prepared: Path, work: Path) -> dict:
    from mammosynth.training.inpaint import train_inpaint
    from mammosynth.training.sd35_lora import train_sd35_lora

    config = config_for(args, prepared, work / "ours")
    reset_peak_memory()
    t0 = time.time()
    with runtime.preloaded_components(BASE, build(args)):
        built = time.time()
        if args.trainer == "sd35-lora":
            train_sd35_lora(config, stop_after=args.warmup + args.steps)
        else:
            train_inpaint(config, stop_after=args.warmup + args.steps)
    done = time.time()
    log = {r["step"]: r for r in runtime.read_log(config.output_dir / "logs" / "train.jsonl") if "loss" in r}
    first, last = args.warmup, args.warmup + args.steps
    step_s = [log[k]["time"] - log[k - 1]["time"] for k in range(first + 1, last + 1)]  # the checkpoint comes after
    per_step = statistics.median(step_s)
    samples = config.gradient_accumulation_steps * args.batch  # per optimizer step
    checkpoint_s = max(0.0, done - log[last]["time"]) if args.checkpoint else None
    default_every = type(config).model_fields["checkpointing_steps"].default
    dumped = config.model_dump(mode="json")
    shown = (
        "mixed_precision",
        "gradient_checkpointing",
        "gradient_accumulation_steps",
        "train_batch_size",
        "resolution",
        "cache_latents",
        "hflip_prob",
        "use_lora",
    ) + (("lora",) if args.trainer == "sd35-lora" else ())
    return {
        "config": {k: dumped[k] for k in shown if k in dumped}
        | {"loader_workers": runtime.loader_workers(config, _OneProcess())},
        "samples_per_s": samples / per_step,  # median step
        "samples_per_s_mean": samples * len(step_s) / sum(step_s),
        "samples_per_s_with_checkpoints": samples / (per_step + checkpoint_s / default_every)
        if checkpoint_s is not None
        else None,
        "checkpoint_s": checkpoint_s,
        "checkpointing_steps_default": default_every,
        "startup_and_first_step_s": round(log[1]["time"] - built, 2),  # prompt encoding, latent cache, loader start
        "build_s": round(built - t0, 2),
        "seconds_per_optimizer_step": per_step,
        "peak_memory_gb": peak_memory_gb(),
    }


class _OneProcess:
    num_processes = 1


# --- baseline: diffusers' reference loop ----------------------------------------------------------------------


class ReferenceData(torch.utils.data.Dataset):
    """What the reference trainers' datasets do: open, resize, normalise; the caption as text."""

    def __init__(self, prepared: Path, resolution: int, trainer: str):
        self.ds, self.meta = tdata.load_prepared(prepared)
        self.resolution, self.trainer = resolution, trainer

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict:
        row = self.meta[i]
        image = self.ds[row["_index"]]["image"].convert("RGB").resize((self.resolution,) * 2)
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 127.5 - 1
        if self.trainer == "inpaint":
            mask = torch.zeros(1, self.resolution, self.resolution)
            s = self.resolution
            mask[:, s // 4 : s // 2, s // 4 : s // 2] = 1
            return {
                "pixel_values": pixels,
                "mask": mask,
                "masked_pixel_values": pixels * (mask < 0.5),
                "caption": schema.inpainting_prompt(4),
            }
        return {"pixel_values": pixels, "caption": tdata.caption(row, row["laterality"])}


def run_baseline(args, prepared: Path, work: Path) -> tuple[dict, dict]:
    from accelerate import Accelerator

    config = config_for(args, prepared, work / "baseline")
    reset_peak_memory()
    parts = build(args)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps
    )
    dev, dtype = accelerator.device, runtime.weight_dtype(accelerator)
    loader = torch.utils.data.DataLoader(
        ReferenceData(prepared, args.resolution, args.trainer),
        batch_size=args.batch,
        shuffle=True,
        num_workers=0,
        drop_last=True,
    )
    step, flops = (_reference_sd3 if args.trainer == "sd35-lora" else _reference_inpaint)(
        parts, config, accelerator, dev, dtype
    )

    def batches():
        while True:
            yield from loader

    stream = batches()
    for _ in range(args.warmup * config.gradient_accumulation_steps):
        step(next(stream))
    step_s = []
    for _ in range(args.steps):
        sync()
        t0 = time.perf_counter()
        for _ in range(config.gradient_accumulation_steps):
            step(next(stream))
        sync()
        step_s.append(time.perf_counter() - t0)
    samples = config.gradient_accumulation_steps * args.batch
    # no checkpoint timed here: the reference saves at the same cadence, and a second 10 GB write
    # (full UNet + AdamW) would not fit the GPU session's budget
    result = {
        "samples_per_s": samples / statistics.median(step_s),
        "samples_per_s_mean": samples * len(step_s) / sum(step_s),
        "seconds_per_optimizer_step": statistics.median(step_s),
        "peak_memory_gb": peak_memory_gb(),
    }
    counted = flops(
        first_sample(next(stream))
    )  # per sample: FLOPs scale with the batch; batch 1 fits without recompute
    accelerator.end_training()
    return result, counted


def first_sample(batch: dict) -> dict:
    return {k: v[:1] for k, v in batch.items()}


def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _reference_sd3(parts, config: SD35LoraConfig, accelerator, dev, dtype):
    from diffusers import StableDiffusion3Pipeline

    from mammosynth.training.sd35_lora import flow_matching_loss, scale_latents

    transformer, vae, scheduler = parts["transformer"], parts["vae"], parts["scheduler"]
    text = StableDiffusion3Pipeline(
        transformer=None,
        vae=None,
        scheduler=None,
        **{
            k: parts[k]
            for k in ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")
        },
    )
    text.to(dev, dtype)
    for m in (vae, transformer, text.text_encoder, text.text_encoder_2, text.text_encoder_3):
        m.requires_grad_(False)
    vae.to(dev, dtype)
    transformer.to(dev, dtype)
    runtime.add_lora(transformer, config.lora)
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    optimizer, schedule = runtime.optimizer_and_schedule(params, config, 1)
    transformer, optimizer, schedule = accelerator.prepare(transformer, optimizer, schedule)
    transformer.train()

    def encode(batch):
        with torch.no_grad():
            e, _, p, _ = text.encode_prompt(
                batch["caption"],
                batch["caption"],
                batch["caption"],
                device=dev,
                do_classifier_free_guidance=False,
                max_sequence_length=config.max_sequence_length,
            )
            z = vae.encode(batch["pixel_values"].to(dev, dtype)).latent_dist.sample()
        return e, p, scale_latents(vae.config, z).to(dtype)

    def denoise(e, p, lat):
        with accelerator.autocast():
            return flow_matching_loss(transformer, scheduler, lat, e, p, config)

    def step(batch):
        with accelerator.accumulate(transformer):
            loss = denoise(*encode(batch))
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)

    def flops(batch):
        e, p, lat = encode(batch)
        inner = accelerator.unwrap_model(transformer)
        with torch.no_grad():
            counts = {
                "text_encoders": _count(
                    lambda: text.encode_prompt(
                        batch["caption"],
                        batch["caption"],
                        batch["caption"],
                        device=dev,
                        do_classifier_free_guidance=False,
                        max_sequence_length=config.max_sequence_length,
                    )
                ),
                "vae_encode": _count(lambda: vae.encode(batch["pixel_values"].to(dev, dtype)).latent_dist.sample()),
            }
        counts["denoiser_with_recompute"] = _count(lambda: denoise(e, p, lat).backward())
        inner.disable_gradient_checkpointing()
        counts["denoiser"] = _count(lambda: denoise(e, p, lat).backward())
        optimizer.zero_grad(set_to_none=True)
        return counts

    return step, flops


def _reference_inpaint(parts, config: InpaintConfig, accelerator, dev, dtype):
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from mammosynth.training.inpaint import inpainting_loss

    unet, vae, encoder, tokenizer = parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"]
    scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    vae.requires_grad_(False).to(dev, dtype)
    encoder.requires_grad_(False).to(dev, dtype)
    unet.to(dev, torch.float32).train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer, schedule = runtime.optimizer_and_schedule(list(unet.parameters()), config, 1)
    unet, optimizer, schedule = accelerator.prepare(unet, optimizer, schedule)

    def encode(batch):
        with torch.no_grad():
            ids = tokenizer(
                batch["caption"],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(dev)
            hidden = encoder(ids)[0]
            scale = vae.config.scaling_factor
            lat = vae.encode(batch["pixel_values"].to(dev, dtype)).latent_dist.sample() * scale
            masked = vae.encode(batch["masked_pixel_values"].to(dev, dtype)).latent_dist.sample() * scale
            mask = F.interpolate(batch["mask"].to(dev, dtype), size=lat.shape[-2:])
        return hidden, lat, masked, mask

    def denoise(hidden, lat, masked, mask):
        with accelerator.autocast():
            return inpainting_loss(unet, scheduler, lat, masked, mask, hidden)

    def step(batch):
        with accelerator.accumulate(unet):
            hidden, lat, masked, mask = encode(batch)
            loss = denoise(hidden[:1], lat, masked, mask)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)

    def flops(batch):
        hidden, lat, masked, mask = encode(batch)
        ids = tokenizer(
            batch["caption"],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(dev)
        with torch.no_grad():
            counts = {
                "text_encoders": _count(lambda: encoder(ids)),  # image and masked image:
                "vae_encode": 2 * _count(lambda: vae.encode(batch["pixel_values"].to(dev, dtype)).latent_dist.sample()),
            }
        inner = accelerator.unwrap_model(unet)
        counts["denoiser_with_recompute"] = _count(lambda: denoise(hidden[:1], lat, masked, mask).backward())
        inner.disable_gradient_checkpointing()
        counts["denoiser"] = _count(lambda: denoise(hidden[:1], lat, masked, mask).backward())
        optimizer.zero_grad(set_to_none=True)
        return counts

    return step, flops


# --- report ----------------------------------------------------------------------------------------------------


def utilisation(samples_per_s: float, flops_per_sample: float, peak: float | None) -> dict:
    achieved = samples_per_s * flops_per_sample
    return {"flop_per_s": achieved, "utilisation": achieved / peak if peak else None}


def bench(args) -> dict:
    """Ours, then the baseline, ``--repeats`` times (alternating, so a shared machine's load hits
    both alike); the figures are the medians over the repeats."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="mammosynth-train-bench-") as tmp:
        work = Path(tmp)
        h = args.resolution
        prepared = write_trainer_set(work / "prepared", n=max(8, 2 * args.batch), size=(h * 5 // 4, h), birads=(4,))
        for r in range(args.repeats):
            ours = run_ours(args, prepared, work / f"r{r}")
            runtime.free_memory()
            baseline, counts = run_baseline(args, prepared, work / f"r{r}")
            runtime.free_memory()
            runs.append((ours, baseline))
    ours, baseline = _median_run([o for o, _ in runs]), _median_run([b for _, b in runs])
    per_sample = counts
    peak = peak_flops()
    cached = ours["config"].get("cache_latents", False)
    hw_ours = per_sample["denoiser_with_recompute"] + (0 if cached else per_sample["vae_encode"])
    hw_base = per_sample["denoiser_with_recompute"] + per_sample["vae_encode"] + per_sample["text_encoders"]
    ours["model_flops"] = utilisation(ours["samples_per_s"], per_sample["denoiser"], peak)
    ours["hardware_flops"] = utilisation(ours["samples_per_s"], hw_ours, peak)
    baseline["model_flops"] = utilisation(baseline["samples_per_s"], per_sample["denoiser"], peak)
    baseline["hardware_flops"] = utilisation(baseline["samples_per_s"], hw_base, peak)
    return {
        "trainer": args.trainer,
        "arch": args.arch,
        "resolution": args.resolution,
        "batch_per_device": args.batch,
        "steps_timed": args.steps,
        "warmup_steps": args.warmup,
        "repeats": args.repeats,
        "ours": ours,
        "baseline_diffusers_reference_loop": baseline,
        "speedup": ours["samples_per_s"] / baseline["samples_per_s"],
        "speedup_per_repeat": [o["samples_per_s"] / b["samples_per_s"] for o, b in runs],
        "flops_per_sample": per_sample,
        "peak_bf16_flop_per_s": peak,
        "targets_per_gpu": TARGETS[args.trainer],
    }


def _median_run(results: list[dict]) -> dict:
    """The figures of several repeats: medians of the numbers, the rest from the first."""
    out = dict(results[0])
    for key, value in out.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in results if r.get(key) is not None)
    return out


def environment() -> dict:
    from importlib.metadata import version

    env = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 min: other users of the machine
    }
    env["versions"] = {name: version(name) for name in ("torch", "diffusers", "transformers", "accelerate", "peft")}
    return env


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["tiny", "real"], default="tiny", help="tiny random models (CPU) or real sizes")
    ap.add_argument("--trainer", choices=["sd35-lora", "inpaint", "both"], default="both")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps timed (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2, help="optimizer steps before timing")
    ap.add_argument("--batch", type=int, default=None, help="per-device batch (default: the trainer's, 3 / 4)")
    ap.add_argument("--resolution", type=int, default=None, help="default: 1024 / 512 real, 64 tiny")
    ap.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="micro-batches per optimizer step (default 1: every timed step is one batch; 0 = the trainer's)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="ours + baseline this many times; medians reported")
    ap.add_argument(
        "--no-checkpoint", dest="checkpoint", action="store_false", help="skip the checkpoint after the window"
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train.json")
    args = ap.parse_args(argv)
    env = environment()  # date and load at the start
    trainers = ["inpaint", "sd35-lora"] if args.trainer == "both" else [args.trainer]
    results = {}
    for trainer in trainers:
        one = argparse.Namespace(**{**vars(args), "trainer": trainer})
        model = SD35LoraConfig if trainer == "sd35-lora" else InpaintConfig
        one.batch = args.batch or model.model_fields["train_batch_size"].default
        one.resolution = args.resolution or (TARGETS[trainer]["resolution"] if args.arch == "real" else 64)
        one.grad_accum = args.grad_accum or None
        results[trainer] = bench(one)
        print(
            json.dumps(
                {
                    trainer: {k: results[trainer][k] for k in ("speedup",)}
                    | {
                        "ours_samples_per_s": results[trainer]["ours"]["samples_per_s"],
                        "baseline_samples_per_s": results[trainer]["baseline_diffusers_reference_loop"][
                            "samples_per_s"
                        ],
                    }
                }
            ),
            flush=True,
        )
    record = {
        "benchmark": "train",
        **env,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "figures": "absolute (GPU)"
        if torch.cuda.is_available()
        else "CPU with tiny random models: ratios (ours / baseline, model / hardware FLOPs) only; absolute "
        "figures only from a GPU (none in this run). On a shared machine compare speedup_per_repeat and the "
        "load averages: other sessions' load moves single repeats by large factors",
        "results": results,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 min
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
