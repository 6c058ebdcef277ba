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
from mammosynth.training import data as tdata
from mammosynth.training import runtime
from mammosynth.training.config import InpaintConfig

COMPONENTS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")


@torch.no_grad()
def encode_fixed_prompt(base: str, revision: str | None, prompt: str, device, dtype) -> torch.Tensor:
    """The class prompt and the empty prompt (for guidance) through the frozen CLIP encoder, once;
    the encoder is then dropped. Returns (2, tokens, dim): [prompt, ""]."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = runtime.load_component(CLIPTokenizer, base, "tokenizer", revision)
    encoder = runtime.load_component(CLIPTextModel, base, "text_encoder", revision, torch_dtype=dtype).to(device)
    ids = tokenizer([prompt, ""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    hidden = encoder(ids)[0]
    del encoder
    runtime.free_memory()
    return hidden


def inpainting_loss(unet, scheduler, vae, batch, prompt_hidden, generator=None) -> torch.Tensor:
    dtype = vae.dtype
    with torch.no_grad():
        pixels = batch["pixel_values"].to(vae.device, dtype)
        masked = batch["masked_pixel_values"].to(vae.device, dtype)
        latents = vae.encode(pixels).latent_dist.sample(generator) * vae.config.scaling_factor
        masked_latents = vae.encode(masked).latent_dist.sample(generator) * vae.config.scaling_factor
        mask = F.interpolate(batch["mask"].to(vae.device, dtype), size=latents.shape[-2:], mode="nearest")
    bsz = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), generator=generator).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    model_input = torch.cat([noisy, mask, masked_latents], dim=1)
    pred = unet(model_input, timesteps, prompt_hidden.expand(bsz, -1, -1)).sample
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(pred.float(), target.float())


def train_inpaint(config: InpaintConfig, *, birads: int | None = None, resume: str | None = None, force: bool = False,
                  stop_after: int | None = None, config_file: str | Path | None = None) -> runtime.TrainResult:
    """Fine-tune one class's inpainting UNet; the final pipeline lands in ``output_dir/final``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    birads = birads if birads is not None else config.birads
    if birads not in (3, 4, 5):
        raise InputError("BI-RADS class must be 3, 4 or 5 (--birads or config 'birads')", file=config_file, field="birads")
    if config.birads != birads:
        config = config.model_copy(update={"birads": birads})
    if "{birads}" in str(config.output_dir):  # one config file serves all three classes
        config = config.model_copy(update={"output_dir": Path(str(config.output_dir).format(birads=birads))})
    local = runtime.check_base_model(config.base_model, COMPONENTS)
    ds, meta = tdata.load_prepared(config.prepared, config.split)
    rows = tdata.rows_with_birads(meta, birads, file=config.prepared)
    resume_point = runtime.resolve_resume(config, resume, force=force)
    accelerator = runtime.make_accelerator(config)
    device, dtype = accelerator.device, runtime.weight_dtype(accelerator)

    augment = tdata.Augment(config.resolution, config.resize_mode, config.hflip_prob, config.intensity_jitter)
    dataset = tdata.InpaintData(ds, rows, augment, birads=birads, seed=config.seed, box_margin=config.box_margin,
                                full_mask_fraction=config.full_mask_fraction,
                                random_box_fraction=config.random_box_fraction)
    prompt_hidden, negative_hidden = encode_fixed_prompt(
        config.base_model, config.revision, schema.inpainting_prompt(birads), device, dtype).split(1)

    unet = runtime.load_component(UNet2DConditionModel, config.base_model, "unet", config.revision)
    if unet.config.in_channels != 9:
        raise InputError(f"UNet has {unet.config.in_channels} input channels; an inpainting UNet has 9",
                         file=config.base_model, field="base_model")
    vae = runtime.load_component(AutoencoderKL, config.base_model, "vae", config.revision)
    scheduler = runtime.load_component(DDPMScheduler, config.base_model, "scheduler", config.revision)
    vae.requires_grad_(False)
    vae.to(device, dtype=dtype)
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

    def save_hook(models, weights, output_dir):
        for model in models:
            model = accelerator.unwrap_model(model)
            if config.use_lora:
                runtime.save_adapter(model, Path(output_dir))
            else:
                model.save_pretrained(Path(output_dir) / "unet")
            if weights:
                weights.pop()

    def load_hook(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            if config.use_lora:
                runtime.load_adapter(model, Path(input_dir))
            else:
                saved = UNet2DConditionModel.from_pretrained(input_dir, subfolder="unet")
                model.load_state_dict(saved.state_dict())
                del saved

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    loader, start_step = runtime.resume_loader(accelerator, config, dataset, resume_point)
    probe_batch = tdata.collate([dataset[(0, i)] for i in range(min(config.train_batch_size, len(dataset)))])

    def loss(batch) -> torch.Tensor:
        with accelerator.autocast():
            return inpainting_loss(unet, scheduler, vae, batch, prompt_hidden)

    def probe() -> float:
        g = torch.Generator().manual_seed(config.seed + 12345)
        with torch.no_grad(), accelerator.autocast():
            return float(inpainting_loss(unet, scheduler, vae, probe_batch, prompt_hidden, g))

    return runtime.run_steps(
        accelerator, config, unet, params, optimizer, lr_schedule, loader,
        start_step=start_step, resumed_from=resume_point[1] if resume_point else None,
        loss=loss, probe=probe,
        validation_images=lambda model, step: _validation_images(
            model, vae, prompt_hidden, negative_hidden, probe_batch, config, step),
        write_final=lambda model, step: _write_final(model, config, birads, ds, rows, local, step),
        tracker=f"inpaint_birads{birads}", desc=f"inpaint BI-RADS {birads}", extra={"birads": birads},
        stop_after=stop_after,
    )


def _plain_unet(unet, use_lora: bool):
    """The UNet as a plain diffusers model: LoRA merged into the base weights."""
    import copy

    unet = copy.deepcopy(unet)
    if use_lora:
        from peft.tuners.tuners_utils import BaseTunerLayer

        from diffusers.utils.peft_utils import recurse_remove_peft_layers

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
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            config.base_model, revision=config.revision, unet=_plain_unet(unet, config.use_lora),
            safety_checker=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(tmp, safe_serialization=True)
        runtime.write_metadata(tmp, {
            "kind": "inpaint",
            "birads": birads,
            "prompt": schema.inpainting_prompt(birads),
            **runtime.base_identity(config.base_model, config.revision, local),
            "data_sha256": tdata.data_hash(ds, rows),
            "num_images": len(rows),
            "steps": step,
            "config": config.model_dump(mode="json"),
        })
    return final


@torch.no_grad()
def _validation_images(unet, vae, prompt_hidden, negative, batch, config: InpaintConfig, step: int) -> list[Path]:
    """Fixed-seed inpaintings of the probe images' boxes (the region the model learns to fill)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionInpaintPipeline

    scheduler = DPMSolverMultistepScheduler.from_pretrained(config.base_model, subfolder="scheduler", revision=config.revision)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    folder = config.output_dir / "validation" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    dtype = next(unet.parameters()).dtype
    was_training = unet.training
    unet.eval()
    written = []
    for i in range(min(2, batch["pixel_values"].shape[0])):
        image = (batch["pixel_values"][i:i + 1] + 1) / 2
        for seed in config.validation_seeds:
            out = pipe(prompt_embeds=prompt_hidden.to(dtype), negative_prompt_embeds=negative.to(dtype),
                       image=image, mask_image=batch["mask"][i:i + 1], height=config.resolution, width=config.resolution,
                       guidance_scale=config.guidance_scale, num_inference_steps=config.validation_inference_steps,
                       generator=torch.Generator().manual_seed(seed)).images[0]
            path = folder / f"image{i}-seed{seed}.png"
            out.convert("L").save(path)
            written.append(path)
    unet.train(was_training)
    return written

