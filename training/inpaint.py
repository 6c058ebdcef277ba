"""BI-RADS-specific SD2-inpainting fine-tune (source paper §3.3, MAM-E §2.4.3): the UNet sees
(noisy latents, mask on the latent grid, masked-image latents) = 9 channels and learns the
noise-prediction (or v-prediction, per the scheduler config) MSE on images with lesions of one class.

    mammosynth train inpaint CONFIG --birads 3|4|5 [--resume latest]
    accelerate launch -m mammosynth.training inpaint CONFIG --birads 4
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mammosynth.builders.core import schema
from mammosynth.builders.core.atomic import atomic_dir
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.progress import no_loading_bars
from mammosynth.training import checkpoints, runtime
from mammosynth.training import data as tdata
from mammosynth.training.config import InpaintConfig
from mammosynth.training.latent_cache import LatentCache, encode_distribution

COMPONENTS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")


@torch.no_grad()
def encode_fixed_prompt(base: str, revision: str | None, prompt: str, device, dtype) -> torch.Tensor:
    """The class prompt and the empty prompt (for guidance) through the frozen CLIP encoder, once;
    the encoder is then dropped. Returns (2, tokens, dim): [prompt, ""]."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = runtime.load_component(CLIPTokenizer, base, "tokenizer", revision)
    encoder = runtime.load_component(CLIPTextModel, base, "text_encoder", revision, dtype=dtype).to(device)
    ids = tokenizer(
        [prompt, ""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    hidden = encoder(ids)[0]
    del encoder
    runtime.free_memory()
    return hidden


def vae_factor(vae) -> int:
    """Pixels per latent cell (8 for the SD VAEs): the grid the box masks are aligned to."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def inpaint_model_input(noisy: torch.Tensor, mask: torch.Tensor, masked_latents: torch.Tensor) -> torch.Tensor:
    """The 9 UNet input channels in the order StableDiffusionInpaintPipeline feeds them:
    noisy latents (4), the mask on the latent grid (1), the masked image's latents (4)."""
    return torch.cat([noisy, mask, masked_latents], dim=1)


PREDICTION_TYPES = ("epsilon", "v_prediction")


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict, per the scheduler config: the noise (epsilon) or the
    velocity (v_prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r} is not one of {PREDICTION_TYPES}")


def inpainting_loss(
    unet,
    scheduler,
    latents,
    masked_latents,
    mask,
    prompt_hidden,
    *,
    noise=None,
    timesteps=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MSE between the UNet's prediction and ``diffusion_target`` for (scaled) image latents,
    masked-image latents and the latent-grid mask; noise and timesteps drawn unless given."""
    bsz = latents.shape[0]
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), generator=generator)
    timesteps = timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred = unet(inpaint_model_input(noisy, mask, masked_latents), timesteps, prompt_hidden.expand(bsz, -1, -1)).sample
    return F.mse_loss(pred.float(), diffusion_target(scheduler, latents, noise, timesteps).float())


class InpaintLatents:
    """A batch's (scaled) image latents, masked-image latents and latent-grid mask: from the
    latent cache where the sample is fixed (its image; its lesion-box masked image; the constant
    fully masked image), from the VAE otherwise (no cache, or a random box)."""

    def __init__(
        self,
        vae,
        device,
        dtype,
        *,
        image_cache: LatentCache | None = None,
        masked_cache: LatentCache | None = None,
        full_masked: torch.Tensor | None = None,
        flips: int = 1,
    ):
        self.vae, self.device, self.dtype = vae, device, dtype
        self.scale = vae.config.scaling_factor
        self.image_cache, self.masked_cache, self.full_masked, self.flips = (
            image_cache,
            masked_cache,
            full_masked,
            flips,
        )

    def _encode(self, pixels: torch.Tensor, generator) -> torch.Tensor:
        pixels = pixels.to(self.vae.device, self.vae.dtype, non_blocking=True)
        return self.vae.encode(pixels).latent_dist.sample(generator).to(self.device, torch.float32)

    def _cached(self, cache: LatentCache, keys: list[int], generator) -> torch.Tensor:
        return cache.sample(keys, generator).to(self.device, non_blocking=True)

    @torch.no_grad()
    def __call__(self, batch: dict, generator: torch.Generator | None = None):
        if self.image_cache is None:
            latents = self._encode(batch["pixel_values"], generator)
            masked = self._encode(batch["masked_pixel_values"], generator)
        else:
            keys = (batch["row"] * self.flips + batch["flip"] * (self.flips > 1)).tolist()
            latents = self._cached(self.image_cache, keys, generator)
            masked = self._cached(self.masked_cache, keys, generator)
            kinds = batch["mask_kind"]
            full = (kinds == tdata.MASK_FULL).tolist()
            if any(full):
                dist = self.full_masked.expand(sum(full), *self.full_masked.shape[1:])
                draw = dist[:, 0] + dist[:, 1] * torch.randn(dist[:, 0].shape, generator=generator)
                masked[torch.tensor(full)] = draw.to(self.device)
            rand = (kinds == tdata.MASK_RANDOM).tolist()
            if any(rand):
                masked[torch.tensor(rand)] = self._encode(batch["masked_pixel_values"][torch.tensor(rand)], generator)
        latents = (latents * self.scale).to(self.dtype)
        masked = (masked * self.scale).to(self.dtype)
        mask = F.interpolate(
            batch["mask"].to(self.device, self.dtype, non_blocking=True), size=latents.shape[-2:], mode="nearest"
        )
        return latents, masked, mask


def cache_latents(dataset: tdata.InpaintData, vae, accelerator, folder: Path, flips: int) -> InpaintLatents:
    """Encode each row's fixed image and lesion-box masked image once (both mirror states when
    ``flips`` is 2), sharded over the ranks; one constant for the fully masked image."""
    memo: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]] = {}

    def sample(key: int):
        i, flip = divmod(key, flips)
        if (i, bool(flip)) not in memo:
            memo.clear()
            memo[(i, bool(flip))] = dataset.fixed_sample(i, bool(flip))
        return memo[(i, bool(flip))]

    def encode(which: int):
        return lambda keys: encode_distribution(vae, torch.stack([sample(k)[which] for k in keys]))

    count = len(dataset) * flips
    image = LatentCache.build(folder / "image", count, encode(0), accelerator, desc="caching image latents")
    masked = LatentCache.build(folder / "masked", count, encode(1), accelerator, desc="caching masked latents")
    size = dataset.augment.resolution
    with torch.no_grad():
        full = encode_distribution(vae, torch.zeros(1, 3, size, size))
    return InpaintLatents(
        vae, accelerator.device, vae.dtype, image_cache=image, masked_cache=masked, full_masked=full, flips=flips
    )


def train_inpaint(
    config: InpaintConfig,
    *,
    birads: int | None = None,
    resume: str | None = None,
    force: bool = False,
    stop_after: int | None = None,
    config_file: str | Path | None = None,
) -> runtime.TrainResult:
    """Fine-tune one class's inpainting UNet; the final pipeline lands in ``output_dir/final``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    runtime.check_precision(config, file=config_file)
    birads = birads if birads is not None else config.birads
    if birads not in (3, 4, 5):
        raise InputError(
            "BI-RADS class must be 3, 4 or 5 (--birads or config 'birads')", file=config_file, field="birads"
        )
    if config.birads != birads:
        config = config.model_copy(update={"birads": birads})
    if "{birads}" in str(config.output_dir):  # one config file serves all three classes
        config = config.model_copy(update={"output_dir": Path(str(config.output_dir).format(birads=birads))})
    local = runtime.check_base_model(config.base_model, COMPONENTS)
    ds, meta = tdata.load_prepared(config.prepared, config.split)
    rows = tdata.rows_with_birads(meta, birads, file=config.prepared)
    resume_point = checkpoints.resolve_resume(config, resume, force=force)
    accelerator = runtime.make_accelerator(config, resume_point)
    device, dtype = accelerator.device, runtime.weight_dtype(accelerator)

    prompt_hidden, negative_hidden = encode_fixed_prompt(
        config.base_model, config.revision, schema.inpainting_prompt(birads), device, dtype
    ).split(1)
    unet = runtime.load_component(UNet2DConditionModel, config.base_model, "unet", config.revision)
    if unet.config.in_channels != 9:
        raise InputError(
            f"UNet has {unet.config.in_channels} input channels; an inpainting UNet has 9",
            file=config.base_model,
            field="base_model",
        )
    vae = runtime.load_component(AutoencoderKL, config.base_model, "vae", config.revision)
    scheduler = runtime.load_component(DDPMScheduler, config.base_model, "scheduler", config.revision)
    if scheduler.config.prediction_type not in PREDICTION_TYPES:
        raise InputError(
            f"scheduler prediction_type {scheduler.config.prediction_type!r} is not supported "
            f"({', '.join(PREDICTION_TYPES)})",
            file=config.base_model,
            field="base_model",
        )
    vae.requires_grad_(False)
    vae.to(device, dtype=dtype)

    augment = tdata.Augment(config.resolution, config.resize_mode, config.hflip_prob, config.intensity_jitter)
    dataset = tdata.InpaintData(
        ds,
        rows,
        augment,
        birads=birads,
        seed=config.seed,
        box_margin=config.box_margin,
        full_mask_fraction=config.full_mask_fraction,
        random_box_fraction=config.random_box_fraction,
        grid=vae_factor(vae),
    )
    # the probe batch (and the validation images drawn from it) always has its pixels
    probe_batch = tdata.collate([dataset[(0, i)] for i in range(min(config.train_batch_size, len(dataset)))])
    if config.cache_latents and augment.fixed_pixels:
        flips = 2 if config.hflip_prob > 0 else 1
        latents = cache_latents(dataset, vae, accelerator, config.output_dir / "cache" / "latents", flips)
        if config.random_box_fraction == 0:
            dataset.decode_pixels = False  # the loader workers decode nothing
            vae.to("cpu")  # not needed on the GPU until validation images
            runtime.free_memory()
    else:
        latents = InpaintLatents(vae, device, dtype)

    if config.use_lora:
        unet.requires_grad_(False)
        unet.to(device, dtype=dtype)
        runtime.add_lora(unet, config.lora, file=config_file)
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    else:
        unet.train()
        unet.to(device)  # fp32 master weights; autocast runs the math in dtype
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer, lr_schedule = runtime.optimizer_and_schedule(params, config, accelerator.num_processes)
    unet, optimizer, lr_schedule = accelerator.prepare(unet, optimizer, lr_schedule)

    def save(model, folder: Path) -> None:
        if config.use_lora:
            runtime.save_adapter(model, folder)
        else:
            model.save_pretrained(folder / "unet")

    def load(model, folder: Path) -> None:
        if config.use_lora:
            runtime.load_adapter(model, folder)
        else:
            saved = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
            model.load_state_dict(saved.state_dict())
            del saved

    checkpoints.register_weight_hooks(accelerator, save, load)
    loader, start_step = runtime.resume_loader(accelerator, config, dataset, resume_point)

    def loss(batch) -> torch.Tensor:
        lat, masked, mask = latents(batch)
        with accelerator.autocast():
            return inpainting_loss(unet, scheduler, lat, masked, mask, prompt_hidden)

    def probe() -> float:
        g = torch.Generator().manual_seed(config.seed + 12345)
        lat, masked, mask = latents(probe_batch, g)
        with torch.no_grad(), accelerator.autocast():
            return float(inpainting_loss(unet, scheduler, lat, masked, mask, prompt_hidden, generator=g))

    def validation_images(model, step: int) -> list[Path]:
        with runtime.on_device(vae, device):
            return _validation_images(model, vae, scheduler, prompt_hidden, negative_hidden, probe_batch, config, step)

    return runtime.run_steps(
        accelerator,
        config,
        unet,
        params,
        optimizer,
        lr_schedule,
        loader,
        start_step=start_step,
        resumed_from=resume_point.step if resume_point else None,
        loss=loss,
        probe=probe,
        validation_images=validation_images,
        write_final=lambda model, step: _write_final(model, config, birads, ds, rows, local, step),
        tracker=f"inpaint_birads{birads}",
        desc=f"inpaint BI-RADS {birads}",
        extra={"birads": birads},
        stop_after=stop_after,
    )


def _plain_unet(unet, use_lora: bool):
    """The UNet as a plain diffusers model: LoRA merged into the base weights."""
    import copy

    unet = copy.deepcopy(unet)
    if use_lora:
        from diffusers.utils.peft_utils import recurse_remove_peft_layers
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in unet.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
        recurse_remove_peft_layers(unet)  # wrappers -> their (merged) base layers: plain key names
        unet._hf_peft_config_loaded = False
        unet.peft_config = {}
    return unet.to("cpu", torch.float32)


def _write_final(unet, config: InpaintConfig, birads: int, ds, rows, local, step: int) -> Path:
    """final/: a complete pipeline folder, loadable with StableDiffusionInpaintPipeline.from_pretrained."""
    from diffusers import StableDiffusionInpaintPipeline

    final = config.output_dir / "final"
    with atomic_dir(final) as tmp:
        with no_loading_bars():
            pipe = StableDiffusionInpaintPipeline.from_pretrained(
                config.base_model,
                revision=config.revision,
                unet=_plain_unet(unet, config.use_lora),
                safety_checker=None,
                requires_safety_checker=False,
            )
        pipe.save_pretrained(tmp, safe_serialization=True)
        runtime.write_metadata(
            tmp,
            {
                "kind": "inpaint",
                "birads": birads,
                "prompt": schema.inpainting_prompt(birads),
                **runtime.base_identity(config.base_model, config.revision, local),
                "data_sha256": tdata.data_hash(ds, rows),
                "num_images": len(rows),
                "steps": step,
                "config": config.model_dump(mode="json"),
            },
        )
    return final


@torch.no_grad()
def _validation_images(
    unet, vae, train_scheduler, prompt_hidden, negative, batch, config: InpaintConfig, step: int
) -> list[Path]:
    """Fixed-seed inpaintings of the probe images' boxes (the region the model learns to fill)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionInpaintPipeline

    scheduler = DPMSolverMultistepScheduler.from_config(train_scheduler.config)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    folder = config.output_dir / "validation" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    dtype = next(unet.parameters()).dtype
    written = []
    for i in range(min(2, batch["pixel_values"].shape[0])):
        image = (batch["pixel_values"][i : i + 1] + 1) / 2
        for seed in config.validation_seeds:
            out = pipe(
                prompt_embeds=prompt_hidden.to(dtype),
                negative_prompt_embeds=negative.to(dtype),
                image=image,
                mask_image=batch["mask"][i : i + 1],
                height=config.resolution,
                width=config.resolution,
                guidance_scale=config.guidance_scale,
                num_inference_steps=config.validation_inference_steps,
                generator=torch.Generator().manual_seed(seed),
            ).images[0]
            path = folder / f"image{i}-seed{seed}.png"
            out.convert("L").save(path)
            written.append(path)
    return written
