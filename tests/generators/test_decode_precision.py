"""The VAE decodes in float32 for 16-bit output, also when the pipeline runs in bf16 (as on GPU).

A bf16 decoder output keeps 8 significant bits: over [0.5, 1] it takes at most 129 values, which a
16-bit PNG then stores as 129 grey levels. Tiny random pipelines, bf16 on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.gen_helpers import inpainting_method, make_spec, text2image_method
from helpers.synthetic import write_generator_set
from mammosynth.generators.api import make_sampler
from mammosynth.generators.engine import plan
from mammosynth.generators.pipelines import Runtime

BF16_LEVELS_OVER_HALF_TO_ONE = 129  # 2**7 mantissa steps in [0.5, 1) plus 1.0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_generator_set(tmp_path_factory.mktemp("prepared") / "prepared", n_backgrounds=1)


def _method(name, tiny_sd3, tiny_sd2_inpaint):
    cell = [{"birads": 4, "view": "CC", "laterality": "L", "n": 2}]
    if name == "text2image":
        return text2image_method(tiny_sd3, cell)
    return inpainting_method(tiny_sd2_inpaint, cell)


def _decoded(sampler, tasks):
    """Generate ``tasks`` and return what the VAE decoder produced (dtype, values)."""
    seen = []
    pipe = sampler.pipeline() if sampler.method == "text2image" else sampler.pipeline(4)
    handle = pipe.vae.decoder.register_forward_hook(lambda mod, args, out: seen.append(out.detach().float().clone()))
    try:
        rows = sampler.generate(tasks)
    finally:
        handle.remove()
    return rows, torch.cat(seen), pipe.vae.decoder.conv_in.weight.dtype


@pytest.mark.parametrize("method", ["text2image", "inpainting"])
def test_sixteen_bit_output_is_decoded_in_float32_under_bf16(method, tiny_sd3, tiny_sd2_inpaint, prepared, tmp_path):
    spec = make_spec(tmp_path, {method: _method(method, tiny_sd3, tiny_sd2_inpaint)}, prepared=prepared)
    spec.output.bit_depth = 16
    sampler = make_sampler(spec, method, runtime=Runtime(dtype="bfloat16"))
    rows, out, dtype = _decoded(sampler, plan(spec, method))
    assert dtype == torch.float32
    upper = out[(out >= 0.5) & (out <= 1.0)]
    assert upper.numel() > 1000  # enough pixels to tell the precisions apart
    assert len(torch.unique(upper)) > 4 * BF16_LEVELS_OVER_HALF_TO_ONE
    assert all(r["image"].dtype == np.uint16 for r in rows)
    # the denoiser itself stays in bf16: only the decode is upcast
    denoiser = sampler.pipeline().transformer if method == "text2image" else sampler.pipeline(4).unet
    assert next(denoiser.parameters()).dtype == torch.bfloat16


def test_eight_bit_output_keeps_the_pipeline_dtype(tiny_sd3, tiny_sd2_inpaint, prepared, tmp_path):
    spec = make_spec(tmp_path, {"text2image": _method("text2image", tiny_sd3, tiny_sd2_inpaint)}, prepared=prepared)
    sampler = make_sampler(spec, "text2image", runtime=Runtime(dtype="bfloat16"))
    _, out, dtype = _decoded(sampler, plan(spec, "text2image")[:1])
    assert dtype == torch.bfloat16
    assert len(torch.unique(out[(out >= 0.5) & (out <= 1.0)])) <= BF16_LEVELS_OVER_HALF_TO_ONE
