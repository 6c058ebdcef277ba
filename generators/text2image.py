"""Text-to-image with Stable Diffusion 3.5 and the mammography LoRA adapter (source paper §3.1).

The caption is the shared structured prompt (laterality, view, density, BI-RADS, optional vendor)
that training used; each image has its own sampling seed; the RGB output is converted to grey by a
fixed luma formula. The adapter is merged into the transformer once at load time (no per-step LoRA
overhead), after checking, from the safetensors header and the base transformer's config alone,
that it was trained on this base architecture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mammosynth.builders.core import schema
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import tree_hash
from mammosynth.builders.core.imageio import rgb_to_grey
from mammosynth.builders.core.progress import no_loading_bars
from mammosynth.builders.core.provenance import TRAINING_METADATA, checkpoint_identity
from mammosynth.builders.core.spec import ReleaseSpec, Text2ImageParams
from mammosynth.generators.engine import SampleTask, Skip
from mammosynth.generators.pipelines import (
    Runtime,
    check_resolution,
    component_config,
    decode,
    generators_for,
    pipeline_folder,
    prepare_pipeline,
    vae_factor,
)
from mammosynth.generators.speed import Speed, check_speed

FIELD = "methods.text2image.text2image"
# diffusers-format LoRA first (what load_lora_weights reads), then a bare PEFT state dict
LORA_FILES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")
_PREFIXES = ("base_model.model.", "transformer.")


def density_for(task: SampleTask, densities: list[str]) -> str:
    """Densities cycle over the index within a cell, so every cell gets a balanced, fixed mix."""
    return densities[task.index % len(densities)]


def prompt_for(task: SampleTask, params: Text2ImageParams) -> str:
    return schema.text2image_prompt(
        task.laterality, task.view, density_for(task, params.densities), task.birads, params.vendor_in_prompt
    )


# --- LoRA adapter ---------------------------------------------------------------------------------


def adapter_weights(folder: Path, *, spec_file: str | Path | None = None) -> Path:
    if not folder.is_dir():
        raise InputError(f"LoRA adapter folder {str(folder)!r} not found", file=spec_file, field=f"{FIELD}.lora")
    for name in LORA_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(found) == 1:
        return folder / found[0]
    raise InputError(
        f"no LoRA weights in {folder} (expected one of {list(LORA_FILES)}, found {found})",
        file=spec_file,
        field=f"{FIELD}.lora",
    )


def _lora_modules(weights: Path) -> dict[str, tuple[int, int]]:
    """module name in the transformer -> (in_features, out_features) the adapter was trained for."""
    from safetensors import safe_open

    shapes: dict[str, dict[str, list[int]]] = {}
    with safe_open(str(weights), "pt") as fh:
        for key in fh.keys():
            for part in ("lora_A", "lora_B"):
                marker = f".{part}."
                if marker in key:
                    name = key.split(marker)[0]
                    for prefix in _PREFIXES:
                        if name.startswith(prefix):
                            name = name[len(prefix) :]
                    shapes.setdefault(name, {})[part] = list(fh.get_slice(key).get_shape())
    return {n: (s["lora_A"][1], s["lora_B"][0]) for n, s in shapes.items() if "lora_A" in s and "lora_B" in s}


def _metadata(folder: Path) -> dict[str, Any]:
    path = folder / TRAINING_METADATA
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def check_adapter(
    lora: Path, base: Path, *, max_sequence_length: int | None = None, spec_file: str | Path | None = None
) -> None:
    """InputError unless the base hash recorded by training (if any) matches ``base``, the T5 prompt
    length it recorded (if any) is ``max_sequence_length``, and every adapted layer exists in the
    base transformer with the same shape. The transformer is built on the meta device: no weights
    are read."""
    import torch
    from diffusers import SD3Transformer2DModel

    field = f"{FIELD}.lora"
    config = component_config(base, "transformer", field=f"{FIELD}.base_model", spec_file=spec_file)
    meta = _metadata(lora)
    # the trainer records the base folder's content hash: same architecture, other weights (another
    # fine-tune, another release) is still another base model
    if meta.get("base_sha256") and meta["base_sha256"] != tree_hash(base):
        raise InputError(
            f"adapter {lora} was trained on another base model: {meta.get('base_model')} "
            f"(sha256 {meta['base_sha256'][:12]}), not {base} (sha256 {tree_hash(base)[:12]})",
            file=spec_file,
            field=field,
        )
    # prompts tokenised to another length condition the transformer on embeddings it never saw
    trained = meta.get("max_sequence_length")
    if max_sequence_length is not None and trained is not None and trained != max_sequence_length:
        raise InputError(
            f"adapter {lora} was trained with {trained} T5 prompt tokens, the spec asks for {max_sequence_length}; "
            "set them equal",
            file=spec_file,
            field=f"{FIELD}.max_sequence_length",
        )
    modules = _lora_modules(adapter_weights(lora, spec_file=spec_file))
    if not modules:
        raise InputError(f"{lora} holds no LoRA weights (no lora_A/lora_B tensors)", file=spec_file, field=field)
    with torch.device("meta"):
        model = SD3Transformer2DModel.from_config(config)
    linear = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, (fan_in, fan_out) in sorted(modules.items()):
        if name not in linear:
            raise InputError(
                f"adapter {lora} was trained on another base model: layer {name!r} does not exist in {base}",
                file=spec_file,
                field=field,
            )
        if linear[name] != (fan_in, fan_out):
            raise InputError(
                f"adapter {lora} was trained on another base model: layer {name!r} is {fan_in}->{fan_out} in the "
                f"adapter but {linear[name][0]}->{linear[name][1]} in {base}",
                file=spec_file,
                field=field,
            )


def apply_adapter(pipe, lora: Path, *, spec_file: str | Path | None = None) -> None:
    """Merge the adapter into the transformer at the scale it was trained with (alpha / rank).

    A PEFT folder (adapter_config.json beside adapter_model.safetensors: the trainer's final/ and
    its checkpoint-N/ folders) is read with its own config; a diffusers LoRA file goes through
    ``load_lora_weights`` (alpha from the file's metadata, else scale 1). An adapter none of whose
    tensors land in the transformer is an InputError, never a silent no-op."""
    field = f"{FIELD}.lora"
    if (lora / "adapter_config.json").is_file() and (lora / LORA_FILES[1]).is_file():
        from peft import LoraConfig, set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = lora / LORA_FILES[1]
        state = {}
        for key, value in load_file(str(weights)).items():
            for prefix in _PREFIXES:
                key = key.removeprefix(prefix)
            state[key] = value
        transformer = pipe.transformer
        transformer.add_adapter(LoraConfig.from_pretrained(str(lora)), adapter_name="mammosynth")
        result = set_peft_model_state_dict(transformer, state, adapter_name="mammosynth")
        unexpected = list(result.unexpected_keys or [])
        missing = [k for k in result.missing_keys or [] if "lora_" in k]
        if not state or unexpected or missing:
            raise InputError(
                f"{weights} does not fit the transformer (unexpected keys {unexpected[:2]}, missing {missing[:2]})",
                file=spec_file,
                field=field,
            )
        transformer.fuse_lora()
        transformer.unload_lora()
        return
    weights = adapter_weights(lora, spec_file=spec_file)
    pipe.load_lora_weights(str(lora), weight_name=weights.name)
    if not getattr(pipe.transformer, "peft_config", None):  # diffusers only warns "No LoRA keys"
        raise InputError(f"{weights} holds no LoRA weights for the transformer", file=spec_file, field=field)
    pipe.fuse_lora()
    pipe.unload_lora_weights()


def make_scheduler(name: str, config):
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    if name == "flow-dpm++":
        return DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++",
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=config.get("shift", 3.0),
            solver_order=2,
        )
    return FlowMatchEulerDiscreteScheduler.from_config(config)


# --- sampler ----------------------------------------------------------------------------------------


class Text2ImageSampler:
    """Sampler (engine protocol) for ``method="text2image"``."""

    method = "text2image"

    def __init__(
        self, spec: ReleaseSpec, runtime: Runtime | None = None, *, spec_file: str | Path | None = None
    ) -> None:
        self.spec = spec
        self.params: Text2ImageParams = spec.methods["text2image"].text2image  # type: ignore[assignment]
        self.runtime = runtime or Runtime()
        self.bit_depth = spec.output.bit_depth
        p = self.params
        self.base = pipeline_folder(
            p.base_model,
            field=f"{FIELD}.base_model",
            needs="transformer",
            kind="a Stable Diffusion 3 pipeline",
            spec_file=spec_file,
        )
        transformer = component_config(self.base, "transformer", field=f"{FIELD}.base_model", spec_file=spec_file)
        factor = vae_factor(self.base, field=f"{FIELD}.base_model") * int(transformer.get("patch_size", 2))
        check_resolution(p.resolution, factor, field=f"{FIELD}.resolution", spec_file=spec_file)
        self.lora = Path(p.lora) if p.lora else None
        if self.lora is not None:
            check_adapter(self.lora, self.base, max_sequence_length=p.max_sequence_length, spec_file=spec_file)
        names = [checkpoint_identity(self.base)] + ([checkpoint_identity(self.lora)] if self.lora else [])
        self.generator_name = "+".join(names)
        self.speed = Speed(fuse_qkv=p.fuse_qkv, compile_blocks=p.compile_blocks, fp8=p.fp8)
        if self.speed != Speed():
            device = self.runtime.resolved().device or "cpu"
            check_speed(self.speed, device, whole_model_compile=self.runtime.compile, field=FIELD, spec_file=spec_file)
        self._pipe = None

    @property
    def fingerprint(self) -> str:
        return json.dumps(
            {
                "params": self.params.model_dump(mode="json", exclude={"batch_size"}),
                "generator": self.generator_name,
                "bit_depth": self.bit_depth,
            },
            sort_keys=True,
        )

    def pipeline(self):
        if self._pipe is None:
            from diffusers import StableDiffusion3Pipeline

            rt = self.runtime.resolved()
            with no_loading_bars():
                pipe = StableDiffusion3Pipeline.from_pretrained(str(self.base), dtype=rt.torch_dtype)
            if self.lora is not None:
                apply_adapter(pipe, self.lora)
            pipe.scheduler = make_scheduler(self.params.scheduler, dict(pipe.scheduler.config))
            self._pipe = prepare_pipeline(pipe, rt, "transformer", fp32_decode=self.bit_depth == 16, speed=self.speed)
        return self._pipe

    def generate(self, tasks: list[SampleTask]) -> list[dict[str, Any] | Skip]:
        import torch

        p = self.params
        pipe = self.pipeline()
        rows: list[dict[str, Any] | Skip] = []
        for s in range(0, len(tasks), p.batch_size):
            batch = tasks[s : s + p.batch_size]
            prompts = [prompt_for(t, p) for t in batch]
            with torch.inference_mode():
                latents = pipe(
                    prompt=prompts,
                    negative_prompt=[p.negative_prompt] * len(batch) if p.negative_prompt else None,
                    height=p.resolution,
                    width=p.resolution,
                    num_inference_steps=p.steps,
                    guidance_scale=p.guidance,
                    max_sequence_length=p.max_sequence_length,
                    generator=generators_for([t.seed for t in batch]),
                    output_type="latent",  # decoded below, in float32 for 16-bit output
                ).images
            images = decode(pipe, latents)
            rows.extend(self.row(t, prompt, img) for t, prompt, img in zip(batch, prompts, images))
        return rows

    def row(self, task: SampleTask, prompt: str, rgb) -> dict[str, Any]:
        return {
            "image": rgb_to_grey(rgb, self.bit_depth),
            "image_id": task.image_id,
            "method": self.method,
            "birads": schema.birads_label(task.birads),
            "view": task.view,
            "laterality": task.laterality,
            "density": density_for(task, self.params.densities),
            "bbox": [],
            "seed": task.seed,
            "mask_seed": task.mask_seed,
            "prompt": prompt,
            "source_image": None,
            "lesion_source": None,
            "manufacturer": self.params.vendor_in_prompt,
            "generator": self.generator_name,
        }
