"""Training configs (design.md §5 defaults; every default is a field). Load with ``load_config``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mammosynth.builders.core.config_io import StrictModel, load_model
from mammosynth.builders.core.spec import InpaintingParams, Text2ImageParams

# Generation's defaults are the trainers' defaults: validation images sample as generation will,
# and the T5 prompt length the adapter learns is the one the pipeline is called with.
T2I_GUIDANCE: float = Text2ImageParams.model_fields["guidance"].default
T2I_MAX_SEQUENCE_LENGTH: int = Text2ImageParams.model_fields["max_sequence_length"].default
INPAINT_GUIDANCE: float = InpaintingParams.model_fields["guidance"].default

# Fields that only change cadence, bookkeeping or the validation images: a resumed run may differ
# in these without --force (the trained weights do not depend on them).
RESUME_SAFE_FIELDS: frozenset[str] = frozenset(
    {
        "output_dir",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "validation_steps",
        "log_every",
        "dataloader_num_workers",
        "report_to",
        "max_train_steps",
        "guidance_scale",
        "validation_seeds",
        "validation_inference_steps",
        "validation_prompts",
    }
)


class LoraOptions(StrictModel):
    rank: int = Field(64, ge=1, description="LoRA rank r (source paper: 64)")
    alpha: float | None = Field(None, description="LoRA alpha; null = rank (scale 1)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        min_length=1,
        description="module-name suffixes to wrap (PEFT target_modules); must match at least one layer",
    )


def _sd3_lora() -> LoraOptions:
    # transformer attention: image-stream and text-stream (joint) projections
    return LoraOptions(
        rank=64,
        dropout=0.1,
        target_modules=[
            "attn.to_q",
            "attn.to_k",
            "attn.to_v",
            "attn.to_out.0",
            "attn.add_q_proj",
            "attn.add_k_proj",
            "attn.add_v_proj",
            "attn.to_add_out",
        ],
    )


def _unet_lora() -> LoraOptions:
    return LoraOptions(rank=64, dropout=0.0)


class TrainingConfig(StrictModel):
    """Fields shared by both trainers."""

    prepared: Path = Field(description="prepared training set folder (mammosynth ingest output)")
    output_dir: Path = Field(description="run folder: checkpoints/, logs/, validation/, final/")
    base_model: str = Field(description="hub id or local folder of the base pipeline")
    revision: str | None = Field(None, description="hub revision of base_model (ignored for folders)")
    split: str | None = Field("training", description="prepared-set split to train on; null = all rows")
    resolution: int = Field(ge=8, description="square training size in pixels")
    resize_mode: Literal["stretch", "pad"] = Field(
        "stretch", description="stretch = plain resize to a square (source paper); pad = keep aspect, pad with black"
    )
    hflip_prob: float = Field(
        0.0, ge=0.0, le=1.0, description="horizontal-flip probability (boxes mirrored, caption laterality swapped)"
    )
    intensity_jitter: float = Field(0.0, ge=0.0, le=0.5, description="max relative brightness/contrast jitter")
    train_batch_size: int = Field(ge=1, description="samples per device per micro-step")
    gradient_accumulation_steps: int = Field(ge=1, description="micro-steps per optimizer step")
    max_train_steps: int = Field(ge=1, description="optimizer steps")
    learning_rate: float = Field(gt=0, description="AdamW learning rate")
    adam_beta1: float = Field(0.9, description="AdamW beta1")
    adam_beta2: float = Field(0.999, description="AdamW beta2")
    adam_epsilon: float = Field(1e-8, description="AdamW epsilon")
    weight_decay: float = Field(ge=0.0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = Field(
        description="diffusers get_scheduler name"
    )
    lr_warmup_steps: int = Field(ge=0, description="warm-up optimizer steps")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(description="Accelerate mixed precision")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    allow_tf32: bool = Field(True, description="TF32 matmuls on Ampere+ GPUs")
    seed: int = Field(0, description="seeds weights init, data order, augmentation and noise")
    checkpointing_steps: int = Field(ge=1, description="save a resumable checkpoint every N optimizer steps")
    checkpoints_total_limit: int | None = Field(
        None, ge=1, description="keep at most this many checkpoints (oldest deleted)"
    )
    validation_steps: int | None = Field(
        None, ge=1, description="write validation images every M steps; null = only at the end"
    )
    validation_seeds: list[int] = Field(
        default_factory=lambda: [0, 1], description="fixed sampling seeds of validation images"
    )
    validation_inference_steps: int = Field(24, ge=1, description="sampler steps for validation images")
    log_every: int = Field(1, ge=1, description="write a jsonl log line every N optimizer steps")
    report_to: Literal["jsonl", "tensorboard"] = Field("jsonl", description="tensorboard also writes jsonl")
    dataloader_num_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader worker processes (persistent); null = min(4, cores per local process - 1), at least 1",
    )


class SD35LoraConfig(TrainingConfig):
    """SD3.5 text-to-image LoRA (source paper §3.1)."""

    base_model: str = Field("stabilityai/stable-diffusion-3.5-large", description="hub id or local folder")
    resolution: int = Field(1024, ge=8, description="square training size in pixels")
    train_batch_size: int = Field(3, ge=1, description="samples per device per micro-step")
    gradient_accumulation_steps: int = Field(8, ge=1, description="micro-steps per optimizer step")
    max_train_steps: int = Field(2000, ge=1, description="optimizer steps")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = Field(
        "cosine", description="diffusers get_scheduler name"
    )
    lr_warmup_steps: int = Field(100, ge=0, description="warm-up optimizer steps")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "bf16", description="Accelerate mixed precision (paper: fp16)"
    )
    gradient_checkpointing: bool = Field(True, description="trade compute for activation memory")
    checkpointing_steps: int = Field(500, ge=1, description="save a resumable checkpoint every N optimizer steps")
    lora: LoraOptions = Field(default_factory=_sd3_lora, description="LoRA on the transformer attention")
    caption_vendor: bool = Field(False, description="append the manufacturer clause of the shared prompt template")
    unflip: bool = Field(
        True, description="mirror back right breasts the ingest flipped, so pixels match the caption's laterality"
    )
    max_sequence_length: int = Field(
        T2I_MAX_SEQUENCE_LENGTH,
        ge=8,
        le=512,
        description="T5 prompt tokens (recorded with the adapter; generation's text2image.max_sequence_length)",
    )
    weighting_scheme: Literal["logit_normal", "sigma_sqrt", "mode", "cosmap", "none"] = Field(
        "logit_normal", description="flow-matching timestep density / loss weighting (SD3)"
    )
    logit_mean: float = Field(0.0, description="logit-normal mean")
    logit_std: float = Field(1.0, description="logit-normal std")
    mode_scale: float = Field(1.29, description="scale of the 'mode' weighting scheme")
    cache_latents: bool = Field(
        False,
        description="encode every image once with the VAE (sharded over the processes, memory-mapped), "
        "then move the VAE off the GPU (needs no augmentation)",
    )
    validation_prompts: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"laterality": "L", "view": "CC", "density": "B", "birads": 1},
            {"laterality": "R", "view": "MLO", "density": "C", "birads": 4},
        ],
        description="keyword arguments of schema.text2image_prompt for validation images",
    )
    guidance_scale: float = Field(
        T2I_GUIDANCE, ge=0.0, description="guidance of validation images (generation's default)"
    )

    @model_validator(mode="after")
    def _cache_needs_fixed_pixels(self) -> "SD35LoraConfig":
        if self.cache_latents and (self.hflip_prob > 0 or self.intensity_jitter > 0):
            raise ValueError("cache_latents needs hflip_prob = 0 and intensity_jitter = 0 (cached latents are fixed)")
        return self


class InpaintConfig(TrainingConfig):
    """BI-RADS-specific SD2 inpainting fine-tune (source paper §3.3)."""

    base_model: str = Field("stabilityai/stable-diffusion-2-inpainting", description="hub id or local folder")
    output_dir: Path = Field(
        description="run folder; '{birads}' in it is replaced by the class, so one config serves 3, 4 and 5"
    )
    birads: Literal[3, 4, 5] | None = Field(None, description="lesion class; the CLI's --birads overrides it")
    resolution: int = Field(512, ge=8, description="square training size in pixels")
    hflip_prob: float = Field(0.5, ge=0.0, le=1.0, description="horizontal-flip probability (boxes mirrored)")
    train_batch_size: int = Field(4, ge=1, description="samples per device per micro-step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-steps per optimizer step")
    max_train_steps: int = Field(10000, ge=1, description="optimizer steps")
    learning_rate: float = Field(5e-6, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = Field(
        "constant", description="diffusers get_scheduler name"
    )
    lr_warmup_steps: int = Field(0, ge=0, description="warm-up optimizer steps")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("bf16", description="Accelerate mixed precision")
    checkpointing_steps: int = Field(1000, ge=1, description="save a resumable checkpoint every N optimizer steps")
    use_lora: bool = Field(
        False, description="train LoRA adapters instead of the full UNet (merged into the saved UNet)"
    )
    lora: LoraOptions = Field(default_factory=_unet_lora, description="LoRA options when use_lora")
    box_margin: int = Field(0, ge=0, description="pixels added around each box when drawing the mask")
    full_mask_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of samples with the whole image masked")
    random_box_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="share of samples with a random box instead of the lesion boxes"
    )
    guidance_scale: float = Field(
        INPAINT_GUIDANCE, ge=0.0, description="guidance of validation images (generation's default; paper: 7)"
    )
    cache_latents: bool = Field(
        True,
        description="where pixels and masks are fixed (intensity_jitter 0): encode each image and its "
        "lesion-box masked image once (both mirror images when hflip_prob > 0), sharded over the "
        "processes; random boxes are still encoded per step",
    )

    @model_validator(mode="after")
    def _fractions(self) -> "InpaintConfig":
        if self.full_mask_fraction + self.random_box_fraction > 1.0:
            raise ValueError("full_mask_fraction + random_box_fraction must be <= 1")
        return self


def load_config(model: type[TrainingConfig], path: str | Path, overrides: dict[str, Any] | None = None):
    """YAML/JSON -> config; a typo or bad value is one InputError naming the file and the field."""
    return load_model(model, path, overrides)


def resume_fingerprint(config: TrainingConfig) -> dict[str, Any]:
    """The config fields that must match between a checkpoint and the run resuming it."""
    data = config.model_dump(mode="json")
    return {k: v for k, v in data.items() if k not in RESUME_SAFE_FIELDS}
