"""Tiny random-weight pipelines for tests and the demo (design.md §6).

They have the component layout of the real checkpoints (SD3.5: two CLIP encoders with projection +
T5, 16-channel VAE, flow-matching scheduler; SD2-inpainting: 9-channel UNet, 4-channel VAE, one
CLIP encoder) so training and generation load them with the same ``from_pretrained(path)`` code.
Tokenizers are built offline from a byte-level vocabulary (CLIP) and a word-level vocabulary of the
prompt templates (T5). Everything is written with ``save_pretrained``; nothing is downloaded.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import torch

from mammosynth.builders.core import schema

MAX_LENGTH = 77  # design.md §6: always pass model_max_length=77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _clip_tokenizer(max_length: int = MAX_LENGTH):
    """Byte-level CLIP BPE with no merges: every text tokenizes (one token per byte)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _prompt_words() -> list[str]:
    """Every whitespace-separated word the shared prompt templates can produce."""
    texts = [schema.inpainting_prompt(b) for b in range(1, 6)]
    for lat, view, dens, b in itertools.product(
        schema.LATERALITIES, schema.VIEWS, (*schema.DENSITIES, None), range(1, 6)
    ):
        texts.append(schema.text2image_prompt(lat, view, dens, b, "SIEMENS"))
    words: dict[str, None] = {}
    for text in texts:
        for word in text.split():
            words.setdefault(word, None)
    return list(words)


def _t5_tokenizer(max_length: int = MAX_LENGTH):
    """T5 tokenizer over a small Unigram vocabulary: the template words plus single ASCII
    characters, so any prompt tokenizes. (transformers 5 re-opens a saved T5 tokenizer as Unigram,
    so the vocabulary is given as (piece, score) pairs rather than a WordLevel model.)"""
    from transformers import T5TokenizerFast

    pieces: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "\u2581": -2.0}
    for word in _prompt_words():
        pieces.setdefault("\u2581" + word, -1.0)
    for code in range(33, 127):
        pieces.setdefault(chr(code), -5.0)
        pieces.setdefault("\u2581" + chr(code), -5.0)
    return T5TokenizerFast(vocab=list(pieces.items()), extra_ids=0, model_max_length=max_length)


def _clip_text_config(tokenizer, hidden: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )


def _tiny_vae(latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    # four blocks -> 8x downsampling like the real VAEs, with tiny widths
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        **extra,
    )


def _write_atomic(pipe, path: str | Path) -> Path:
    """save_pretrained into a temporary sibling, then rename: a killed write leaves no half folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def build_tiny_sd3(seed: int = 0):
    """A StableDiffusion3Pipeline with every component of SD3.5, at toy sizes, random weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    clip_hidden, t5_dim = 16, 32  # joint_attention_dim >= 2 * clip_hidden (CLIP pair is zero-padded)
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = _clip_tokenizer(), _clip_tokenizer()
    text_encoder = CLIPTextModelWithProjection(_clip_text_config(tokenizer, clip_hidden))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tokenizer_2, clip_hidden))
    tokenizer_3 = _t5_tokenizer()
    text_encoder_3 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_3),
            d_model=t5_dim,
            d_kv=8,
            d_ff=2 * t5_dim,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=t5_dim,
        caption_projection_dim=16,
        pooled_projection_dim=2 * clip_hidden,
        pos_embed_max_size=32,
    )
    vae = _tiny_vae(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def build_tiny_sd2_inpainting(seed: int = 0):
    """A StableDiffusionInpaintPipeline laid out like stable-diffusion-2-inpainting, toy sizes."""
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    hidden = 32
    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer, hidden))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9,  # noisy latents (4) + mask (1) + masked-image latents (4)
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=hidden,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )
    vae = _tiny_vae(4, scaling_factor=0.18215)
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
        prediction_type="epsilon",
    )
    return StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_tiny_sd3(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny SD3 pipeline folder; load it with ``StableDiffusion3Pipeline.from_pretrained``."""
    return _write_atomic(build_tiny_sd3(seed), path)


def write_tiny_sd2_inpainting(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny SD2-inpainting folder; load it with ``StableDiffusionInpaintPipeline.from_pretrained``."""
    return _write_atomic(build_tiny_sd2_inpainting(seed), path)
