"""SD3.5 text-to-image LoRA trainer (source paper §3.1): flow-matching loss, LoRA on the
transformer's attention projections, frozen text encoders whose prompt embeddings are computed once
for the distinct captions and then freed.

    mammosynth train sd35-lora CONFIG [--resume latest]
    accelerate launch -m mammosynth.training sd35-lora CONFIG [--resume latest]
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mammosynth.builders.core import schema
from mammosynth.builders.core.atomic import atomic_dir
from mammosynth.builders.core.errors import InputError
from mammosynth.training import data as tdata
from mammosynth.training import runtime
from mammosynth.training.config import SD35LoraConfig

COMPONENTS = ("transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "text_encoder_3",
              "tokenizer", "tokenizer_2", "tokenizer_3")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@torch.no_grad()
def encode_prompts(base: str, revision: str | None, prompts: list[str], device, dtype, max_sequence_length: int,
                   batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings with the pipeline's own encode_prompt (what generation uses), then the
    three text encoders are dropped."""
    from diffusers import StableDiffusion3Pipeline

    try:
        pipe = StableDiffusion3Pipeline.from_pretrained(base, transformer=None, vae=None, revision=revision, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load text encoders: {exc}".splitlines()[0], file=base, field="base_model") from None
    pipe.to(device)
    embeds, pooled = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        e, _, p, _ = pipe.encode_prompt(chunk, chunk, chunk, device=device, do_classifier_free_guidance=False,
                                        max_sequence_length=max_sequence_length)
        embeds.append(e)
        pooled.append(p)
    del pipe
    runtime.free_memory()
    return torch.cat(embeds), torch.cat(pooled)


def flow_matching_loss(transformer, scheduler, latents, prompt_embeds, pooled, config: SD35LoraConfig,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Rectified-flow objective of SD3 (as in diffusers' SD3 LoRA example): x_t = (1-s) x + s n,
    target n - x, timestep density and loss weighting by ``weighting_scheme``."""
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    bsz = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device="cpu", dtype=torch.float32).to(latents)
    u = compute_density_for_timestep_sampling(
        weighting_scheme=config.weighting_scheme, batch_size=bsz, logit_mean=config.logit_mean,
        logit_std=config.logit_std, mode_scale=config.mode_scale, generator=generator,
    )
    indices = (u * scheduler.config.num_train_timesteps).long().clamp(max=scheduler.config.num_train_timesteps - 1)
    timesteps = scheduler.timesteps[indices].to(latents.device)
    sigmas = scheduler.sigmas[indices].to(latents.device, latents.dtype).view(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    pred = transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=prompt_embeds,
                       pooled_projections=pooled, return_dict=False)[0]
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=config.weighting_scheme, sigmas=sigmas)
    target = noise - latents
    return (weighting.float() * (pred.float() - target.float()) ** 2).reshape(bsz, -1).mean(1).mean()


def _encode_latents(vae, pixels: torch.Tensor, sample: bool = True, generator=None) -> torch.Tensor:
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def train_sd35_lora(config: SD35LoraConfig, *, resume: str | None = None, force: bool = False,
                    stop_after: int | None = None, config_file: str | Path | None = None) -> runtime.TrainResult:
    """Train; ``stop_after`` ends this run after that many optimizer steps (e.g. to fit a job's
    time limit) — rerun with ``resume="latest"`` to continue from the last checkpoint."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    local = runtime.check_base_model(config.base_model, COMPONENTS)
    ds, meta = tdata.load_prepared(config.prepared, config.split)
    resume_point = runtime.resolve_resume(config, resume, force=force)
    accelerator = runtime.make_accelerator(config)
    device, dtype = accelerator.device, runtime.weight_dtype(accelerator)

    augment = tdata.Augment(config.resolution, config.resize_mode, config.hflip_prob, config.intensity_jitter, config.unflip)
    dataset = tdata.Text2ImageData(ds, meta, augment, seed=config.seed, vendor=config.caption_vendor)
    validation_prompts = [schema.text2image_prompt(**kw) for kw in config.validation_prompts]
    all_prompts = dataset.prompts + validation_prompts + [""]
    embeds, pooled = encode_prompts(config.base_model, config.revision, all_prompts, device, dtype, config.max_sequence_length)

    transformer = runtime.load_component(SD3Transformer2DModel, config.base_model, "transformer", config.revision)
    vae = runtime.load_component(AutoencoderKL, config.base_model, "vae", config.revision)
    scheduler = runtime.load_component(FlowMatchEulerDiscreteScheduler, config.base_model, "scheduler", config.revision)
    transformer.requires_grad_(False)
    vae.requires_grad_(False)
    vae.to(device, dtype=torch.float32 if dtype == torch.float16 else dtype)  # the SD3 VAE overflows in fp16
    transformer.to(device, dtype=dtype)
    runtime.add_lora(transformer, config.lora, file=config_file)
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # trainable LoRA weights in fp32; the frozen base stays in dtype
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()

    latent_cache = None
    if config.cache_latents:
        latent_cache = _cache_latents(dataset, vae, accelerator)

    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer, lr_schedule = runtime.optimizer_and_schedule(params, config, accelerator.num_processes)
    transformer, optimizer, lr_schedule = accelerator.prepare(transformer, optimizer, lr_schedule)

    def save_hook(models, weights, output_dir):
        for model in models:
            runtime.save_adapter(accelerator.unwrap_model(model), Path(output_dir))
            if weights:
                weights.pop()

    def load_hook(models, input_dir):
        while models:
            runtime.load_adapter(accelerator.unwrap_model(models.pop()), Path(input_dir))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    loader, start_step = runtime.resume_loader(accelerator, config, dataset, resume_point)
    probe_batch = tdata.collate([dataset[(0, i)] for i in range(min(config.train_batch_size, len(dataset)))])

    def latents(batch, generator=None) -> torch.Tensor:
        if latent_cache is not None:
            return _latents_from_cache(latent_cache, batch["row"], generator).to(device, dtype)
        return _encode_latents(vae, batch["pixel_values"], generator=generator).to(dtype)

    def loss(batch) -> torch.Tensor:
        with torch.no_grad():
            lat = latents(batch)
        idx = batch["prompt_index"].to(device)
        with accelerator.autocast():
            return flow_matching_loss(transformer, scheduler, lat, embeds[idx], pooled[idx], config)

    def probe() -> float:
        """Loss on a fixed batch with fixed noise and timesteps: comparable across steps."""
        g = torch.Generator().manual_seed(config.seed + 12345)
        with torch.no_grad(), accelerator.autocast():
            lat = latents(probe_batch, g)
            idx = probe_batch["prompt_index"].to(device)
            return float(flow_matching_loss(transformer, scheduler, lat, embeds[idx], pooled[idx], config, g))

    return runtime.run_steps(
        accelerator, config, transformer, params, optimizer, lr_schedule, loader,
        start_step=start_step, resumed_from=resume_point[1] if resume_point else None,
        loss=loss, probe=probe,
        validation_images=lambda model, step: _validation_images(
            model, vae, scheduler, embeds, pooled, len(dataset.prompts), validation_prompts, config, step),
        write_final=lambda model, step: _write_final(model, config, ds, meta, local, step),
        tracker="sd35_lora", desc="sd35-lora", stop_after=stop_after,
    )


def _cache_latents(dataset, vae, accelerator) -> dict[int, torch.Tensor]:
    """Latent distribution (mean, std) of every row, encoded once; sampled per step."""
    cache: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for i in tqdm(range(len(dataset)), desc="caching latents", disable=not accelerator.is_main_process):
            item = dataset[(0, i)]
            dist = vae.encode(item["pixel_values"][None].to(vae.device, vae.dtype)).latent_dist
            cache[i] = torch.cat([dist.mean, dist.std]).cpu()
    cache["_shift"], cache["_scale"] = vae.config.shift_factor, vae.config.scaling_factor  # type: ignore[index]
    return cache


def _latents_from_cache(cache: dict, rows: torch.Tensor, generator=None) -> torch.Tensor:
    out = []
    for r in rows.tolist():
        mean, std = cache[r][0:1], cache[r][1:2]
        z = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        out.append((z - cache["_shift"]) * cache["_scale"])
    return torch.cat(out)


@torch.no_grad()
def _validation_images(transformer, vae, scheduler, embeds, pooled, first, prompts, config, step) -> list[Path]:
    """Fixed-seed samples of the validation prompts, from the precomputed embeddings."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=copy.deepcopy(scheduler),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    folder = config.output_dir / "validation" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    neg = len(embeds) - 1
    dtype = next(transformer.parameters()).dtype
    written = []
    was_training = transformer.training
    transformer.eval()
    for p_i, _ in enumerate(prompts):
        for seed in config.validation_seeds:
            k = first + p_i
            image = pipe(
                prompt_embeds=embeds[k:k + 1].to(dtype), pooled_prompt_embeds=pooled[k:k + 1].to(dtype),
                negative_prompt_embeds=embeds[neg:neg + 1].to(dtype), negative_pooled_prompt_embeds=pooled[neg:neg + 1].to(dtype),
                height=config.resolution, width=config.resolution, guidance_scale=config.guidance_scale,
                num_inference_steps=config.validation_inference_steps,
                generator=torch.Generator().manual_seed(seed),
            ).images[0]
            path = folder / f"prompt{p_i}-seed{seed}.png"
            image.convert("L").save(path)
            written.append(path)
    transformer.train(was_training)
    return written


def _write_final(transformer, config: SD35LoraConfig, ds, meta, local, step: int) -> Path:
    """final/: diffusers-format LoRA (pipe.load_lora_weights(folder)), PEFT adapter, metadata."""
    from diffusers import StableDiffusion3Pipeline
    from peft.utils import get_peft_model_state_dict

    final = config.output_dir / "final"
    with atomic_dir(final) as tmp:
        layers = {k: v.detach().to("cpu", torch.float32) for k, v in get_peft_model_state_dict(transformer).items()}
        StableDiffusion3Pipeline.save_lora_weights(tmp, transformer_lora_layers=layers, weight_name=LORA_WEIGHTS)
        runtime.save_adapter(transformer, tmp)
        runtime.write_metadata(tmp, {
            "kind": "sd35-lora",
            **runtime.base_identity(config.base_model, config.revision, local),
            "data_sha256": tdata.data_hash(ds, meta),
            "num_images": len(meta),
            "steps": step,
            "prompt_template": schema.TEXT2IMAGE_TEMPLATE,
            "config": config.model_dump(mode="json"),
        })
    return final

