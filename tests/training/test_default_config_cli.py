"""Both trainers through the CLI with their DEFAULT config, only sizes and step counts shrunk:
bf16 mixed precision (it runs on CPU), gradient checkpointing, LoRA dropout 0.1 (SD3.5), cached
latents and mirror augmentation (inpainting), loader workers, validation images. A run stopped
early and resumed equals the uninterrupted run bit for bit; ``--resume latest`` after the end
finishes again with exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers.synthetic import write_trainer_set
from mammosynth.builders.cli import main as cli_main
from mammosynth.builders.core.provenance import TRAINING_METADATA
from mammosynth.training import runtime
from mammosynth.training.config import InpaintConfig, SD35LoraConfig

SHRUNK = dict(
    resolution=64,
    train_batch_size=2,
    gradient_accumulation_steps=1,
    max_train_steps=4,
    checkpointing_steps=2,
    validation_steps=2,
    validation_inference_steps=2,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_trainer_set(tmp_path_factory.mktemp("prep") / "prep", n=4, birads=(4, 3))


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as ex:
        cli_main(args)
    return ex.value.code


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _losses(out: Path) -> dict[int, float]:
    """The last logged loss of every step (a resumed run logs its first steps again)."""
    return {r["step"]: r["loss"] for r in runtime.read_log(out / "logs" / "train.jsonl") if "loss" in r}


def _run_both_ways(tmp_path: Path, command: list[str], config: dict, extra: list[str] = ()):
    """Uninterrupted run, and a run stopped after step 3 then resumed from checkpoint-2."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    cfg_whole = _write(tmp_path / "whole.yaml", {**config, "output_dir": str(whole)})
    cfg_parts = _write(tmp_path / "parts.yaml", {**config, "output_dir": str(parts)})
    assert _cli([*command, str(cfg_whole), *extra]) == 0
    assert _cli([*command, str(cfg_parts), *extra, "--stop-after", "3"]) == 0
    assert not (parts / "final").exists()
    assert _cli([*command, str(cfg_parts), *extra, "--resume", "latest"]) == 0
    return whole, parts


def test_sd35_default_config_cli_bf16_resume_is_exact_with_dropout(prepared, tiny_sd3, tmp_path):
    config = {"prepared": str(prepared), "base_model": str(tiny_sd3), "validation_seeds": [0], **SHRUNK}
    defaults = SD35LoraConfig(prepared="p", output_dir="o")
    assert (defaults.mixed_precision, defaults.gradient_checkpointing, defaults.lora.dropout) == ("bf16", True, 0.1)
    whole, parts = _run_both_ways(tmp_path, ["train", "sd35-lora"], config)

    assert _losses(parts) == _losses(whole) and sorted(_losses(whole)) == [1, 2, 3, 4]  # bit-exact, == on floats
    a, b = (
        load_file(whole / "final" / "adapter_model.safetensors"),
        load_file(parts / "final" / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for step in ("step-000002", "step-000004"):
        assert sorted(p.name for p in (whole / "validation" / step).iterdir()) == [
            "prompt0-seed0.png",
            "prompt1-seed0.png",
        ]
    meta = json.loads((whole / "final" / TRAINING_METADATA).read_text())
    assert meta["config"]["mixed_precision"] == "bf16" and meta["max_sequence_length"] == 77
    # the same command again after the end: finishes (no crash at the validation images)
    assert _cli(["train", "sd35-lora", str(tmp_path / "whole.yaml"), "--resume", "latest"]) == 0


def test_inpaint_default_config_cli_bf16_cached_resume_is_exact(prepared, tiny_sd2_inpaint, tmp_path):
    # validation images at the end only (the default cadence), with both default seeds
    config = {
        "prepared": str(prepared),
        "base_model": str(tiny_sd2_inpaint),
        "gradient_checkpointing": True,
        **SHRUNK,
        "validation_steps": None,
    }
    defaults = InpaintConfig(prepared="p", output_dir="o")
    assert (defaults.mixed_precision, defaults.cache_latents, defaults.hflip_prob) == ("bf16", True, 0.5)
    whole, parts = _run_both_ways(tmp_path, ["train", "inpaint"], config, ["--birads", "4"])

    assert _losses(parts) == _losses(whole) and sorted(_losses(whole)) == [1, 2, 3, 4]
    assert (whole / "cache" / "latents" / "image" / "part-0-of-1.npy").is_file()
    from diffusers import UNet2DConditionModel

    ua = UNet2DConditionModel.from_pretrained(whole / "final", subfolder="unet").state_dict()
    ub = UNet2DConditionModel.from_pretrained(parts / "final", subfolder="unet").state_dict()
    assert all(torch.equal(ua[k], ub[k]) for k in ua)
    images = sorted(p.name for p in (whole / "validation" / "step-000004").iterdir())
    assert images == ["image0-seed0.png", "image0-seed1.png", "image1-seed0.png", "image1-seed1.png"]
    from PIL import Image

    assert np.asarray(Image.open(whole / "validation" / "step-000004" / images[0])).std() > 1  # not a blank image
    assert _cli(["train", "inpaint", str(tmp_path / "whole.yaml"), "--birads", "4", "--resume", "latest"]) == 0
