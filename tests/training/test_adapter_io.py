"""What the SD3.5 LoRA trainer writes loads in generation as trained: alpha (the LoRA scale) is
saved, a checkpoint-N folder given as the adapter loads its weights, an adapter folder without
LoRA weights is exit 2 with nothing written, and the T5 prompt length of training is a spec field
that generation passes to the pipeline."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from helpers.gen_helpers import spec_dict, text2image_method
from helpers.synthetic import write_generator_set, write_trainer_set
from mammosynth.builders.cli import main as cli_main
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.provenance import TRAINING_METADATA
from mammosynth.builders.core.spec import Text2ImageParams
from mammosynth.generators.text2image import apply_adapter
from mammosynth.training import runtime
from mammosynth.training.config import SD35LoraConfig
from mammosynth.training.sd35_lora import LORA_WEIGHTS, train_sd35_lora

RANK, ALPHA = 4, 16.0  # scale alpha / rank = 4: a reload at scale 1 is far off
LAYER = "transformer_blocks.0.attn.to_q"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_sd3):
    tmp = tmp_path_factory.mktemp("adapter")
    prepared = write_trainer_set(tmp / "prep", n=2)
    config = SD35LoraConfig(
        prepared=prepared,
        output_dir=tmp / "run",
        base_model=str(tiny_sd3),
        resolution=64,
        train_batch_size=2,
        gradient_accumulation_steps=1,
        max_train_steps=2,
        learning_rate=5e-2,
        lr_scheduler="constant",
        lr_warmup_steps=0,
        mixed_precision="no",
        checkpointing_steps=1,
        validation_seeds=[],
        lora={"rank": RANK, "alpha": ALPHA, "dropout": 0.0},
    )
    return config, train_sd35_lora(config)


def _pipe(base):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(str(base))


def _weight(pipe) -> torch.Tensor:
    return dict(pipe.transformer.named_modules())[LAYER].weight.detach().clone()


def _expected_delta(folder) -> torch.Tensor:
    state = {k.removeprefix(runtime.PEFT_PREFIX): v for k, v in load_file(folder / "adapter_model.safetensors").items()}
    return ALPHA / RANK * state[f"{LAYER}.lora_B.weight"] @ state[f"{LAYER}.lora_A.weight"]


def test_alpha_is_saved_with_the_adapter_and_used_on_reload(trained, tiny_sd3):
    config, result = trained
    final = result.final_dir
    saved = json.loads((final / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"]) == (RANK, ALPHA)
    expected = _expected_delta(final)
    assert expected.abs().max() > 1e-4
    base = _weight(_pipe(tiny_sd3))
    pipe = _pipe(tiny_sd3)
    apply_adapter(pipe, final)  # generation's loader
    torch.testing.assert_close(_weight(pipe) - base, expected, rtol=1e-3, atol=1e-6)
    # the diffusers-format file carries alpha too: load_lora_weights scales as training did
    pipe = _pipe(tiny_sd3)
    pipe.load_lora_weights(final, weight_name=LORA_WEIGHTS)
    pipe.fuse_lora()
    torch.testing.assert_close(_weight(pipe) - base, expected, rtol=1e-3, atol=1e-6)


def test_checkpoint_folder_loads_as_the_adapter(trained, tiny_sd3):
    config, _ = trained
    ckpt = config.output_dir / "checkpoints" / "checkpoint-1"
    expected = _expected_delta(ckpt)
    base = _weight(_pipe(tiny_sd3))
    pipe = _pipe(tiny_sd3)
    apply_adapter(pipe, ckpt)
    torch.testing.assert_close(_weight(pipe) - base, expected, rtol=1e-3, atol=1e-6)
    assert not torch.equal(expected, _expected_delta(config.output_dir / "checkpoints" / "checkpoint-2"))


def test_prompt_length_is_one_field_from_training_to_generation(trained, tiny_sd3, tmp_path, monkeypatch):
    config, result = trained
    assert (
        Text2ImageParams(base_model="x").max_sequence_length
        == SD35LoraConfig(prepared="p", output_dir="o").max_sequence_length
        == 77
    )
    assert json.loads((result.final_dir / TRAINING_METADATA).read_text())["max_sequence_length"] == 77
    from diffusers import StableDiffusion3Pipeline

    from helpers.gen_helpers import make_spec
    from mammosynth.generators.engine import SampleTask
    from mammosynth.generators.text2image import Text2ImageSampler

    seen = {}
    original = StableDiffusion3Pipeline.__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusion3Pipeline, "__call__", spy)
    prepared = write_generator_set(tmp_path / "prepared", n_backgrounds=1)
    # the spec's field reaches the pipeline ...
    method = text2image_method(tiny_sd3, [{"birads": 2, "n": 1}], max_sequence_length=96)
    sampler = Text2ImageSampler(make_spec(tmp_path / "plain", {"text2image": method}, prepared=prepared))
    task = SampleTask(method="text2image", birads=2, view="CC", laterality="L", index=0)
    sampler.generate([task])
    assert seen["max_sequence_length"] == 96
    # ... and must equal what the adapter was trained with
    method = text2image_method(tiny_sd3, [{"birads": 2, "n": 1}], lora=str(result.final_dir), max_sequence_length=96)
    with pytest.raises(InputError, match="trained with 77 T5 prompt tokens"):
        Text2ImageSampler(make_spec(tmp_path / "lora", {"text2image": method}, prepared=prepared))


def test_adapter_folder_without_lora_weights_is_exit_2_nothing_written(tmp_path, tiny_sd3, capsys):
    bad = tmp_path / "not-a-lora"
    bad.mkdir()
    save_file({"some.weight": torch.zeros(2, 2)}, str(bad / "adapter_model.safetensors"))
    (bad / "adapter_config.json").write_text("{}")
    prepared = write_generator_set(tmp_path / "prepared", n_backgrounds=1)
    spec = spec_dict(
        tmp_path, {"text2image": text2image_method(tiny_sd3, [{"birads": 2, "n": 1}], lora=str(bad))}, prepared=prepared
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    with pytest.raises(SystemExit) as ex:
        cli_main(["generate", str(path)])
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2
    assert len(err.splitlines()) == 1 and "methods.text2image.text2image.lora" in err and "not-a-lora" in err
    # nothing generated (generate's per-rank lock file may exist: it is taken before the checks)
    assert not [p for p in (tmp_path / "release").rglob("*") if not p.name.endswith(".lock")]
