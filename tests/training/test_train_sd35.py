"""SD3.5 LoRA trainer on the tiny SD3 pipeline: it learns, resumes exactly, and its adapter loads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers.synthetic import write_trainer_set
from mammosynth.builders.cli import main as cli_main
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.provenance import TRAINING_METADATA
from mammosynth.training import checkpoints, runtime
from mammosynth.training.config import SD35LoraConfig
from mammosynth.training.sd35_lora import LORA_WEIGHTS, train_sd35_lora


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory):
    return write_trainer_set(tmp_path_factory.mktemp("prep") / "prep", n=2)


def _config(tiny_prepared, tiny_sd3, out, **kw) -> SD35LoraConfig:
    base = dict(
        prepared=tiny_prepared,
        output_dir=out,
        base_model=str(tiny_sd3),
        resolution=64,
        train_batch_size=2,
        gradient_accumulation_steps=1,
        max_train_steps=12,
        learning_rate=2e-2,
        lr_scheduler="constant",
        lr_warmup_steps=0,
        mixed_precision="no",
        gradient_checkpointing=False,
        checkpointing_steps=6,
        validation_seeds=[],
        lora={"rank": 8, "alpha": 32, "dropout": 0.0},
    )
    base.update(kw)
    return SD35LoraConfig(**base)


@pytest.fixture(scope="module")
def full_run(tiny_prepared, tiny_sd3, tmp_path_factory):
    out = tmp_path_factory.mktemp("sd35") / "run"
    return _config(tiny_prepared, tiny_sd3, out), train_sd35_lora(_config(tiny_prepared, tiny_sd3, out))


def test_overfits_fixed_batch_and_writes_final_adapter(full_run):
    config, result = full_run
    (step0, first), (step_n, last) = result.probe_losses[0], result.probe_losses[-1]
    assert (step0, step_n) == (0, 12)
    assert last < first * 0.97, result.probe_losses
    final = result.final_dir
    assert (final / LORA_WEIGHTS).is_file() and (final / "adapter_model.safetensors").is_file()
    meta = json.loads((final / TRAINING_METADATA).read_text())
    assert meta["steps"] == 12 and meta["num_images"] == 2 and len(meta["base_sha256"]) == 64
    assert meta["config"]["lora"]["rank"] == 8
    log = runtime.read_log(config.output_dir / "logs" / "train.jsonl")
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 13))
    assert all(r["samples_per_s_per_device"] > 0 for r in log if "loss" in r)


def test_adapter_loads_into_pipeline_and_changes_output(full_run, tiny_sd3):
    from diffusers import StableDiffusion3Pipeline

    from mammosynth.builders.core import schema

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    prompt = schema.text2image_prompt("L", "CC", "A", 4)

    def sample():
        return pipe(
            prompt,
            height=64,
            width=64,
            num_inference_steps=2,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images[0]

    before = sample()
    pipe.load_lora_weights(full_run[1].final_dir, weight_name=LORA_WEIGHTS)
    after = sample()
    assert np.abs(after - before).max() > 1e-3


def test_resume_with_different_config_is_refused_unless_forced(full_run, tiny_prepared, tiny_sd3, tmp_path):
    config, _ = full_run
    out = tmp_path / "run"
    shutil.copytree(config.output_dir / "checkpoints", out / "checkpoints")
    changed = _config(tiny_prepared, tiny_sd3, out, learning_rate=1e-3)
    with pytest.raises(InputError, match="different config") as err:
        train_sd35_lora(changed, resume="latest")
    assert err.value.field == "learning_rate"
    # cadence fields may change freely, and --force overrides
    assert checkpoints.resolve_resume(_config(tiny_prepared, tiny_sd3, out, checkpointing_steps=5), "latest").step == 12
    assert checkpoints.resolve_resume(changed, "latest", force=True).step == 12


def _write_yaml(path, data):
    import yaml

    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str))))
    return path


def test_cli_bad_inputs_exit_2(tiny_prepared, tiny_sd3, tmp_path, capsys):
    good = _config(tiny_prepared, tiny_sd3, tmp_path / "out").model_dump(mode="json")
    # LoRA targets that match nothing
    cfg = _write_yaml(tmp_path / "a.yaml", {**good, "lora": {"rank": 4, "target_modules": ["no_such_proj"]}})
    with pytest.raises(SystemExit) as ex:
        cli_main(["train", "sd35-lora", str(cfg)])
    assert ex.value.code == 2
    assert "lora.target_modules" in capsys.readouterr().err
    # base model missing a component
    broken = tmp_path / "broken_sd3"
    shutil.copytree(tiny_sd3, broken)
    shutil.rmtree(broken / "text_encoder_3")
    cfg = _write_yaml(tmp_path / "b.yaml", {**good, "base_model": str(broken)})
    with pytest.raises(SystemExit) as ex:
        cli_main(["train", "sd35-lora", str(cfg)])
    assert ex.value.code == 2
    assert "text_encoder_3" in capsys.readouterr().err
    # typo in a field
    cfg = _write_yaml(tmp_path / "c.yaml", {**good, "learning_rat": 0.1})
    with pytest.raises(SystemExit) as ex:
        cli_main(["train", "sd35-lora", str(cfg)])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert "learning_rat" in err and "unknown field" in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_cached_latents_train_without_decoding_images(tiny_prepared, tiny_sd3, tmp_path):
    config = _config(
        tiny_prepared, tiny_sd3, tmp_path / "run", cache_latents=True, max_train_steps=2, checkpointing_steps=2
    )
    result = train_sd35_lora(config)
    part = np.load(config.output_dir / "cache" / "latents" / "part-0-of-1.npy", mmap_mode="r")
    assert part.shape == (2, 2, 16, 8, 8)  # every row: latent mean and std
    assert result.final_dir is not None and all(np.isfinite(result.losses))
