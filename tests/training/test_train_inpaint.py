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
from mammosynth.training import runtime
from mammosynth.training.config import InpaintConfig
from mammosynth.training.inpaint import train_inpaint


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory):
    return write_trainer_set(tmp_path_factory.mktemp("prep") / "prep", n=4, birads=(4, 3))


def _config(prepared, base, out, **kw) -> InpaintConfig:
    data = dict(prepared=prepared, output_dir=out, base_model=str(base), resolution=64, train_batch_size=2,
                max_train_steps=8, learning_rate=2e-3, mixed_precision="no", checkpointing_steps=4,
                validation_seeds=[0], validation_inference_steps=2, hflip_prob=0.0)
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
    return pipe("A mammogram with BI-RADS 4 lesion.", image=image, mask_image=mask, height=64, width=64,
                num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images[0]


def test_overfits_and_final_pipeline_loads_and_differs(full_run, tiny_sd2_inpaint):
    config, result = full_run
    first, last = result.probe_losses[0][1], result.probe_losses[-1][1]
    assert last < first * 0.95, result.probe_losses
    meta = json.loads((result.final_dir / runtime.METADATA_FILE).read_text())
    assert meta["birads"] == 4 and meta["steps"] == 8 and meta["num_images"] == 2
    assert meta["prompt"] == "A mammogram with BI-RADS 4 lesion."
    assert meta["base_sha256"] == hash_tree(tiny_sd2_inpaint)
    assert np.abs(_inpaint(result.final_dir) - _inpaint(tiny_sd2_inpaint)).max() > 1e-3
    assert sorted(p.name for p in (config.output_dir / "validation" / "step-000008").iterdir()) == [
        "image0-seed0.png", "image1-seed0.png"]


def test_resuming_another_class_is_refused(full_run):
    """A different class is a different model: resuming it from these checkpoints is refused
    (exact resume itself: test_default_config_cli, test_two_processes)."""
    config, _ = full_run
    with pytest.raises(InputError, match="birads"):
        train_inpaint(config, birads=3, resume="latest")


def test_lora_option_merges_into_a_plain_unet(tiny_prepared, tiny_sd2_inpaint, tmp_path, monkeypatch):
    config = _config(tiny_prepared, tiny_sd2_inpaint, tmp_path / "lora", use_lora=True, max_train_steps=3,
                     learning_rate=1e-2, validation_seeds=[], lora={"rank": 4, "dropout": 0.0})
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


def test_cli_no_images_of_class_and_non_inpainting_base_exit_2(tiny_prepared, tiny_sd3, tiny_sd2_inpaint, tmp_path, capsys):
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
    cfg.write_text(yaml.safe_dump(_config(prepared_set, tiny_sd2_inpaint, tmp_path / "out", max_train_steps=2,
                                          validation_seeds=[]).model_dump(mode="json")))
    with pytest.raises(SystemExit) as ex:
        cli_main(["train", "inpaint", str(cfg), "--birads", str(birads)])
    assert ex.value.code == 0
    assert json.loads((tmp_path / "out" / "final" / runtime.METADATA_FILE).read_text())["birads"] == birads
