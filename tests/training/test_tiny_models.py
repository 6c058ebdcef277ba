"""The tiny pipelines load through the same from_pretrained(path) as real checkpoints and sample."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mammosynth.builders.core import schema


def test_tiny_sd3_loads_and_samples(tiny_sd3):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    assert pipe.text_encoder_3 is not None and pipe.vae.config.latent_channels == 16
    prompt = schema.text2image_prompt("L", "CC", "C", 4)
    ids = pipe.tokenizer_3(prompt).input_ids
    assert 2 not in ids, "template words must be in the T5 vocabulary (no <unk>)"
    images = [
        pipe(
            prompt,
            height=64,
            width=64,
            num_inference_steps=2,
            output_type="np",
            generator=torch.Generator().manual_seed(s),
        ).images[0]
        for s in (0, 0, 1)
    ]
    assert images[0].shape == (64, 64, 3)
    np.testing.assert_array_equal(images[0], images[1])  # seeded sampling is reproducible
    assert not np.array_equal(images[0], images[2])


def test_tiny_sd2_inpainting_loads_and_samples(tiny_sd2_inpaint):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_sd2_inpaint)
    assert pipe.unet.config.in_channels == 9
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 40, 40))
    out = pipe(
        schema.inpainting_prompt(4),
        image=image,
        mask_image=mask,
        height=64,
        width=64,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
