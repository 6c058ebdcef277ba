"""BI-RADS inpainting trainer on the tiny SD2-inpainting pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers.synthetic import write_trainer_set
from mammosynth.builders.cli import main as cli_main
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import hash_tree
from mammosynth.builders.core.provenance import TRAINING_METADATA
from mammosynth.training.config import InpaintConfig
from mammosynth.training.inpaint import train_inpaint


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory):
    return write_trainer_set(tmp_path_factory.mktemp("prep") / "prep", n=4, birads=(4, 3))


def _config(prepared, base, out, **kw) -> InpaintConfig:
    data = dict(
        prepared=prepared,
        output_dir=out,
        base_model=str(base),
        resolution=64,
        train_batch_size=2,
        max_train_steps=8,
        learning_rate=2e-3,
        mixed_precision="no",
        checkpointing_steps=4,
        validation_seeds=[0],
        validation_inference_steps=2,
        hflip_prob=0.0,
    )
    data.update(kw)
    return InpaintConfig(**data)


@pytest.fixture(scope="module")
def full_run(tiny_prepared, tiny_sd2_inpaint, tmp_path_factory):
    config = _config(tiny_prepared, tiny_sd2_inpaint, tmp_path_factory.mktemp("inp") / "run")
    return config, train_inpaint(config, birads=4)


def _inpaint(folder):
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 40, 40))
    return pipe(
        "A mammogram with BI-RADS 4 lesion.",
        image=image,
        mask_image=mask,
        height=64,
        width=64,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]


def test_overfits_and_final_pipeline_loads_and_differs(full_run, tiny_sd2_inpaint):
    config, result = full_run
    first, last = result.probe_losses[0][1], result.probe_losses[-1][1]
    assert last < first * 0.95, result.probe_losses
    meta = json.loads((result.final_dir / TRAINING_METADATA).read_text())
    assert meta["birads"] == 4 and meta["steps"] == 8 and meta["num_images"] == 2
    assert meta["prompt"] == "A mammogram with BI-RADS 4 lesion."
    assert meta["base_sha256"] == hash_tree(tiny_sd2_inpaint)
    assert np.abs(_inpaint(result.final_dir) - _inpaint(tiny_sd2_inpaint)).max() > 1e-3
    assert sorted(p.name for p in (config.output_dir / "validation" / "step-000008").iterdir()) == [
        "image0-seed0.png",
        "image1-seed0.png",
    ]


def test_resuming_another_class_is_refused(full_run):
    """A different class is a different model: resuming it from these checkpoints is refused
    (exact resume itself: test_default_config_cli, test_two_processes)."""
    config, _ = full_run
    with pytest.raises(InputError, match="birads"):
        train_inpaint(config, birads=3, resume="latest")


def test_lora_option_merges_into_a_plain_unet(tiny_prepared, tiny_sd2_inpaint, tmp_path, monkeypatch):
    config = _config(
        tiny_prepared,
        tiny_sd2_inpaint,
        tmp_path / "lora",
        use_lora=True,
        max_train_steps=3,
        learning_rate=1e-2,
        validation_seeds=[],
        lora={"rank": 4, "dropout": 0.0},
    )
    from mammosynth.training import data as tdata

    grids = []
    made = tdata.InpaintData.__init__

    def spy(self, *args, **kwargs):
        grids.append(kwargs.get("grid"))
        made(self, *args, **kwargs)

    monkeypatch.setattr(tdata.InpaintData, "__init__", spy)
    result = train_inpaint(config, birads=3)
    assert grids == [8]  # masks on the VAE's 8-pixel latent grid
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(result.final_dir, subfolder="unet")
    assert not any("lora" in k for k in unet.state_dict())
    base = UNet2DConditionModel.from_pretrained(tiny_sd2_inpaint, subfolder="unet")
    diffs = [float((unet.state_dict()[k] - v).abs().max()) for k, v in base.state_dict().items()]
    assert max(diffs) > 0  # merged adapters changed the attention weights


def test_cli_no_images_of_class_and_non_inpainting_base_exit_2(
    tiny_prepared, tiny_sd3, tiny_sd2_inpaint, tmp_path, capsys
):
    import yaml

    good = _config(tiny_prepared, tiny_sd2_inpaint, tmp_path / "out").model_dump(mode="json")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(good))
    with pytest.raises(SystemExit) as ex:
        cli_main(["train", "inpaint", str(cfg), "--birads", "5"])
    assert ex.value.code == 2
    assert "BI-RADS 5" in capsys.readouterr().err
    cfg.write_text(yaml.safe_dump({**good, "base_model": str(tiny_sd3)}))
    with pytest.raises(SystemExit) as ex:
        cli_main(["train", "inpaint", str(cfg), "--birads", "4"])
    assert ex.value.code == 2
    assert "missing component 'unet'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_on_phantom_prepared_set(prepared_set, tiny_sd2_inpaint, tmp_path):
    """End to end on the ingest fixture: the trained class is one the phantom has boxes for."""
    import datasets
    import yaml

    rows = datasets.load_from_disk(str(prepared_set)).select_columns(["findings", "split"]).to_list()
    classes = {f["finding_birads"] for r in rows if r["split"] == "training" for f in r["findings"] if f["bbox"]}
    birads = max(c for c in classes if c in (3, 4, 5))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            _config(
                prepared_set, tiny_sd2_inpaint, tmp_path / "out", max_train_steps=2, validation_seeds=[]
            ).model_dump(mode="json")
        )
    )
    with pytest.raises(SystemExit) as ex:
        cli_main(["train", "inpaint", str(cfg), "--birads", str(birads)])
    assert ex.value.code == 0
    assert json.loads((tmp_path / "out" / "final" / TRAINING_METADATA).read_text())["birads"] == birads


def test_cached_latents_are_the_vae_distributions_of_the_fixed_samples(tiny_prepared, tiny_sd2_inpaint, tmp_path):
    """The cache holds, per row and mirror state, what the VAE gives for the image and its
    lesion-box masked image; a batch of box-mask samples reads both from it."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL

    from mammosynth.training import data as tdata
    from mammosynth.training.inpaint import cache_latents, vae_factor
    from mammosynth.training.latent_cache import encode_distribution

    vae = AutoencoderKL.from_pretrained(tiny_sd2_inpaint, subfolder="vae")
    ds, meta = tdata.load_prepared(tiny_prepared)
    rows = tdata.rows_with_birads(meta, 4)
    data = tdata.InpaintData(ds, rows, tdata.Augment(64, hflip_prob=0.5), birads=4, seed=0, grid=vae_factor(vae))
    one = SimpleNamespace(
        num_processes=1, process_index=0, is_main_process=True, device="cpu", wait_for_everyone=lambda: None
    )
    latents = cache_latents(data, vae, one, tmp_path / "cache", flips=2)
    for i in range(len(rows)):
        for flip in (0, 1):
            pixels, masked = data.fixed_sample(i, bool(flip))
            with torch.no_grad():
                want_image, want_masked = encode_distribution(vae, pixels[None]), encode_distribution(vae, masked[None])
            torch.testing.assert_close(
                latents.image_cache.distribution([2 * i + flip]), want_image, rtol=1e-4, atol=1e-5
            )
            torch.testing.assert_close(
                latents.masked_cache.distribution([2 * i + flip]), want_masked, rtol=1e-4, atol=1e-5
            )
    data.decode_pixels = False
    batch = tdata.collate([data[(e, 0)] for e in range(4)])
    assert set(batch["mask_kind"].tolist()) == {tdata.MASK_BOX} and "pixel_values" not in batch
    lat, masked_lat, mask = latents(batch, torch.Generator().manual_seed(0))
    keys = (2 * batch["row"] + batch["flip"]).tolist()
    g = torch.Generator().manual_seed(0)  # the same draws: image latents first, then the masked image's
    want_image, want_masked = latents.image_cache.sample(keys, g), latents.masked_cache.sample(keys, g)
    torch.testing.assert_close(lat, want_image * vae.config.scaling_factor)
    torch.testing.assert_close(masked_lat, want_masked * vae.config.scaling_factor)
    assert torch.equal(mask, batch["mask"][:, :, ::8, ::8])


def test_full_and_random_masks_next_to_cached_box_masks(tiny_prepared, tiny_sd2_inpaint, tmp_path):
    """A fully masked sample takes the constant's latents, a random box its own VAE encoding, a
    lesion box the cache; drawn in that order from one generator."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL

    from mammosynth.training import data as tdata
    from mammosynth.training.inpaint import cache_latents

    vae = AutoencoderKL.from_pretrained(tiny_sd2_inpaint, subfolder="vae")
    ds, meta = tdata.load_prepared(tiny_prepared)
    rows = tdata.rows_with_birads(meta, 4)
    data = tdata.InpaintData(
        ds, rows, tdata.Augment(64), birads=4, seed=1, grid=8, full_mask_fraction=0.3, random_box_fraction=0.4
    )
    one = SimpleNamespace(
        num_processes=1, process_index=0, is_main_process=True, device="cpu", wait_for_everyone=lambda: None
    )
    latents = cache_latents(data, vae, one, tmp_path / "cache", flips=1)
    batch = tdata.collate([data[(e, i)] for e in range(4) for i in range(len(rows))])
    kinds = batch["mask_kind"]
    assert set(kinds.tolist()) == {tdata.MASK_BOX, tdata.MASK_FULL, tdata.MASK_RANDOM}
    lat, masked, _ = latents(batch, torch.Generator().manual_seed(0))

    g = torch.Generator().manual_seed(0)
    keys = batch["row"].tolist()
    want_lat, want_masked = latents.image_cache.sample(keys, g), latents.masked_cache.sample(keys, g)
    full, rand = kinds == tdata.MASK_FULL, kinds == tdata.MASK_RANDOM
    dist = latents.full_masked.expand(int(full.sum()), -1, -1, -1, -1)
    want_masked[full] = dist[:, 0] + dist[:, 1] * torch.randn(dist[:, 0].shape, generator=g)
    with torch.no_grad():
        want_masked[rand] = vae.encode(batch["masked_pixel_values"][rand]).latent_dist.sample(g)
    scale = vae.config.scaling_factor
    torch.testing.assert_close(lat, want_lat * scale)
    torch.testing.assert_close(masked, want_masked * scale)
