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

from mammosynth.builders.core import schema
from mammosynth.builders.core.atomic import atomic_dir
from mammosynth.training import checkpoints, runtime
from mammosynth.training import data as tdata
from mammosynth.training.config import SD35LoraConfig
from mammosynth.training.latent_cache import LatentCache, encode_distribution

COMPONENTS = (
    "transformer",
    "vae",
    "scheduler",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
)
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@torch.no_grad()
def encode_prompts(
    base: str, revision: str | None, prompts: list[str], device, dtype, max_sequence_length: int, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings with the pipeline's own encode_prompt (what generation uses), then the
    three text encoders are dropped."""
    from diffusers import StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    parts = {}
    for name, cls in (
        ("text_encoder", CLIPTextModelWithProjection),
        ("text_encoder_2", CLIPTextModelWithProjection),
        ("text_encoder_3", T5EncoderModel),
    ):
        parts[name] = runtime.load_component(cls, base, name, revision, dtype=dtype)
    for name, cls in (("tokenizer", CLIPTokenizer), ("tokenizer_2", CLIPTokenizer), ("tokenizer_3", T5TokenizerFast)):
        parts[name] = runtime.load_component(cls, base, name, revision)
    pipe = StableDiffusion3Pipeline(transformer=None, vae=None, scheduler=None, **parts)
    pipe.to(device)
    embeds, pooled = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        e, _, p, _ = pipe.encode_prompt(
            chunk,
            chunk,
            chunk,
            device=device,
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
        )
        embeds.append(e)
        pooled.append(p)
    del pipe, parts
    runtime.free_memory()
    return torch.cat(embeds), torch.cat(pooled)


def sample_sigmas(
    scheduler, batch_size: int, config: SD35LoraConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, sigmas) of a batch, drawn by the SD3 timestep density ``weighting_scheme``."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        weighting_scheme=config.weighting_scheme,
        batch_size=batch_size,
        logit_mean=config.logit_mean,
        logit_std=config.logit_std,
        mode_scale=config.mode_scale,
        generator=generator,
    )
    n = scheduler.config.num_train_timesteps
    indices = (u * n).long().clamp(max=n - 1)
    return scheduler.timesteps[indices], scheduler.sigmas[indices]


def flow_matching_terms(
    latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, weighting_scheme: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rectified flow (SD3): the noisy input x_t = (1 - s) x0 + s n, the velocity target n - x0,
    and the per-sample loss weight of ``weighting_scheme``."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    s = sigmas.to(latents.device, latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    noisy = (1.0 - s) * latents + s * noise
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=weighting_scheme, sigmas=s)
    return noisy, noise - latents, weighting


def flow_matching_loss(
    transformer,
    scheduler,
    latents,
    prompt_embeds,
    pooled,
    config: SD35LoraConfig,
    *,
    noise: torch.Tensor | None = None,
    sigmas_timesteps: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The SD3 objective (as in diffusers' SD3 LoRA example): weighted MSE between the
    transformer's output and ``flow_matching_terms``' target; noise and timesteps drawn unless given."""
    bsz = latents.shape[0]
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, device="cpu", dtype=torch.float32)
    noise = noise.to(latents)
    timesteps, sigmas = sigmas_timesteps or sample_sigmas(scheduler, bsz, config, generator)
    noisy, target, weighting = flow_matching_terms(latents, noise, sigmas, config.weighting_scheme)
    pred = transformer(
        hidden_states=noisy,
        timestep=timesteps.to(latents.device),
        encoder_hidden_states=prompt_embeds,
        pooled_projections=pooled,
        return_dict=False,
    )[0]
    return (weighting.float() * (pred.float() - target.float()) ** 2).reshape(bsz, -1).mean(1).mean()


def scale_latents(vae_config, z: torch.Tensor) -> torch.Tensor:
    return (z - vae_config.shift_factor) * vae_config.scaling_factor


def train_sd35_lora(
    config: SD35LoraConfig,
    *,
    resume: str | None = None,
    force: bool = False,
    stop_after: int | None = None,
    config_file: str | Path | None = None,
) -> runtime.TrainResult:
    """Train; ``stop_after`` ends this run after that many optimizer steps (e.g. to fit a job's
    time limit) — rerun with ``resume="latest"`` to continue from the last checkpoint."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    runtime.check_precision(config, file=config_file)
    local = runtime.check_base_model(config.base_model, COMPONENTS)
    ds, meta = tdata.load_prepared(config.prepared, config.split)
    resume_point = checkpoints.resolve_resume(config, resume, force=force)
    accelerator = runtime.make_accelerator(config, resume_point)
    device, dtype = accelerator.device, runtime.weight_dtype(accelerator)

    augment = tdata.Augment(
        config.resolution, config.resize_mode, config.hflip_prob, config.intensity_jitter, config.unflip
    )
    dataset = tdata.Text2ImageData(ds, meta, augment, seed=config.seed, vendor=config.caption_vendor)
    validation_prompts = [schema.text2image_prompt(**kw) for kw in config.validation_prompts]
    all_prompts = dataset.prompts + validation_prompts + [""]
    embeds, pooled = encode_prompts(
        config.base_model, config.revision, all_prompts, device, dtype, config.max_sequence_length
    )

    # loaded in their dtype (not cast after loading, which diffusers warns about)
    transformer = runtime.load_component(
        SD3Transformer2DModel, config.base_model, "transformer", config.revision, dtype=dtype
    )
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype  # the SD3 VAE overflows in fp16
    vae = runtime.load_component(AutoencoderKL, config.base_model, "vae", config.revision, dtype=vae_dtype)
    scheduler = runtime.load_component(FlowMatchEulerDiscreteScheduler, config.base_model, "scheduler", config.revision)
    transformer.requires_grad_(False)
    vae.requires_grad_(False)
    vae.to(device)
    transformer.to(device)
    runtime.add_lora(transformer, config.lora, file=config_file)
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # trainable LoRA weights in fp32; the frozen base stays in dtype
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()

    # the probe batch always has its pixels; with cached latents the loader decodes none
    probe_batch = tdata.collate([dataset[(0, i)] for i in range(min(config.train_batch_size, len(dataset)))])
    latent_cache = None
    if config.cache_latents:
        latent_cache = LatentCache.build(
            config.output_dir / "cache" / "latents",
            len(dataset),
            lambda keys: encode_distribution(vae, torch.stack([dataset.pixels(k) for k in keys])),
            accelerator,
        )
        dataset.decode_pixels = False
        vae.to("cpu")  # not needed on the GPU until validation images
        runtime.free_memory()

    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer, lr_schedule = runtime.optimizer_and_schedule(params, config, accelerator.num_processes)
    transformer, optimizer, lr_schedule = accelerator.prepare(transformer, optimizer, lr_schedule)
    checkpoints.register_weight_hooks(accelerator, runtime.save_adapter, runtime.load_adapter)
    loader, start_step = runtime.resume_loader(accelerator, config, dataset, resume_point)

    @torch.no_grad()
    def latents(batch, generator=None) -> torch.Tensor:
        if latent_cache is not None:
            z = latent_cache.sample(batch["row"].tolist(), generator)
        else:
            pixels = batch["pixel_values"].to(vae.device, vae.dtype, non_blocking=True)
            z = vae.encode(pixels).latent_dist.sample(generator)
        return scale_latents(vae.config, z).to(device, dtype, non_blocking=True)

    def loss(batch) -> torch.Tensor:
        lat = latents(batch)
        idx = batch["prompt_index"].to(device)
        with accelerator.autocast():
            return flow_matching_loss(transformer, scheduler, lat, embeds[idx], pooled[idx], config)

    def probe() -> float:
        """Loss on a fixed batch with fixed noise and timesteps: comparable across steps."""
        g = torch.Generator().manual_seed(config.seed + 12345)
        lat = latents(probe_batch, g)
        idx = probe_batch["prompt_index"].to(device)
        with torch.no_grad(), accelerator.autocast():
            return float(flow_matching_loss(transformer, scheduler, lat, embeds[idx], pooled[idx], config, generator=g))

    def validation_images(model, step: int) -> list[Path]:
        with runtime.on_device(vae, device):
            return _validation_images(
                model, vae, scheduler, embeds, pooled, len(dataset.prompts), validation_prompts, config, step
            )

    return runtime.run_steps(
        accelerator,
        config,
        transformer,
        params,
        optimizer,
        lr_schedule,
        loader,
        start_step=start_step,
        resumed_from=resume_point.step if resume_point else None,
        loss=loss,
        probe=probe,
        validation_images=validation_images,
        write_final=lambda model, step: _write_final(model, config, ds, meta, local, step),
        tracker="sd35_lora",
        desc="sd35-lora",
        stop_after=stop_after,
    )


@torch.no_grad()
def _validation_images(transformer, vae, scheduler, embeds, pooled, first, prompts, config, step) -> list[Path]:
    """Fixed-seed samples of the validation prompts, from the precomputed embeddings."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        vae=vae,
        scheduler=copy.deepcopy(scheduler),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    folder = config.output_dir / "validation" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    neg = len(embeds) - 1
    dtype = next(transformer.parameters()).dtype
    written = []
    for p_i, _ in enumerate(prompts):
        for seed in config.validation_seeds:
            k = first + p_i
            image = pipe(
                prompt_embeds=embeds[k : k + 1].to(dtype),
                pooled_prompt_embeds=pooled[k : k + 1].to(dtype),
                negative_prompt_embeds=embeds[neg : neg + 1].to(dtype),
                negative_pooled_prompt_embeds=pooled[neg : neg + 1].to(dtype),
                height=config.resolution,
                width=config.resolution,
                guidance_scale=config.guidance_scale,
                num_inference_steps=config.validation_inference_steps,
                generator=torch.Generator().manual_seed(seed),
            ).images[0]
            path = folder / f"prompt{p_i}-seed{seed}.png"
            image.convert("L").save(path)
            written.append(path)
    return written


def _write_final(transformer, config: SD35LoraConfig, ds, meta, local, step: int) -> Path:
    """final/: the diffusers-format LoRA (``pipe.load_lora_weights(folder)``, alpha in its
    metadata), the PEFT adapter (adapter_config.json with alpha), and the training metadata."""
    from diffusers import StableDiffusion3Pipeline

    final = config.output_dir / "final"
    with atomic_dir(final) as tmp:
        StableDiffusion3Pipeline.save_lora_weights(
            tmp,
            transformer_lora_layers=runtime.adapter_state(transformer),
            weight_name=LORA_WEIGHTS,
            transformer_lora_adapter_metadata=runtime.lora_config(transformer),
        )
        runtime.save_adapter(transformer, tmp)
        runtime.write_metadata(
            tmp,
            {
                "kind": "sd35-lora",
                **runtime.base_identity(config.base_model, config.revision, local),
                "data_sha256": tdata.data_hash(ds, meta),
                "num_images": len(meta),
                "steps": step,
                "prompt_template": schema.TEXT2IMAGE_TEMPLATE,
                "max_sequence_length": config.max_sequence_length,
                "lora_rank": config.lora.rank,
                "lora_alpha": config.lora.alpha or config.lora.rank,
                "config": config.model_dump(mode="json"),
            },
        )
    return final
