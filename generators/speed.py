"""Speed options of the text-to-image transformer (spec fields, off by default = the paper's run):
fused QKV projections, regional ``torch.compile`` of the repeated transformer blocks, and fp8
matrix products. Each is checked before any weights load and applied once, after the LoRA adapter
is merged (a fused or quantized layer can no longer take an adapter).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from mammosynth.builders.core.errors import InputError

FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper: fp8 tensor cores


@dataclass(frozen=True)
class Speed:
    """Which options to apply to a denoiser."""

    fuse_qkv: bool = False
    compile_blocks: bool = False
    fp8: bool = False


def fp8_unavailable(device: str) -> str | None:
    """Why fp8 matrix products cannot run on ``device`` with the installed libraries; None when they can."""
    if not device.startswith("cuda"):
        return (
            f"fp8 needs a CUDA GPU with fp8 tensor cores (compute capability 8.9+, e.g. H100); this run is on {device}"
        )
    import torch

    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < FP8_MIN_CAPABILITY:
        return f"fp8 needs compute capability 8.9+ (H100, L40S); {torch.cuda.get_device_name(torch.device(device))} has {capability[0]}.{capability[1]}"
    if importlib.util.find_spec("torchao") is None:
        return "fp8 needs the torchao package (pip install torchao), which is not installed"
    return None


def check_speed(
    speed: Speed, device: str, *, whole_model_compile: bool, field: str, spec_file: str | Path | None = None
) -> None:
    """InputError (exit 2, naming the field) for an option this machine or run cannot honour."""
    if speed.fp8:
        reason = fp8_unavailable(device)
        if reason:
            raise InputError(reason, file=spec_file, field=f"{field}.fp8")
    if speed.compile_blocks and whole_model_compile:
        raise InputError(
            "compile_blocks and --compile both compile the transformer; use one of them",
            file=spec_file,
            field=f"{field}.compile_blocks",
        )


def quantize_fp8(blocks) -> None:
    """Linear layers of ``blocks`` to fp8 weights with dynamic fp8 activations (torchao)."""
    from torchao.quantization import quantize_

    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

        config = Float8DynamicActivationFloat8WeightConfig()
    except ImportError:  # torchao < 0.10
        from torchao.quantization import float8_dynamic_activation_float8_weight

        config = float8_dynamic_activation_float8_weight()
    quantize_(blocks, config)


def apply_speed(model, speed: Speed) -> None:
    """Apply ``speed`` to an SD3 transformer in place: fuse, then quantize, then compile (compiling
    last so the compiled graphs see the final layers)."""
    if speed.fuse_qkv:
        model.fuse_qkv_projections()
    if speed.fp8:
        quantize_fp8(model.transformer_blocks)
    if speed.compile_blocks:
        # regional compilation: every block has the same structure, so one compiled graph serves
        # them all and compiling takes seconds, not the minutes of a whole-model compile
        for block in model.transformer_blocks:
            block.compile(dynamic=False)
