"""The example files the README points at load as written."""

from __future__ import annotations

from pathlib import Path

from mammosynth.builders.core.spec import load_spec
from mammosynth.training.config import InpaintConfig, SD35LoraConfig, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_training_examples_validate() -> None:
    lora = load_config(SD35LoraConfig, EXAMPLES / "sd35-lora.yaml")
    assert lora.lora.rank == 64 and lora.max_train_steps == 2000
    inpaint = load_config(InpaintConfig, EXAMPLES / "inpaint.yaml")
    assert "{birads}" in str(inpaint.output_dir) and inpaint.learning_rate == 5e-6


def test_paper_spec_points_at_what_the_trainers_write() -> None:
    spec = load_spec(EXAMPLES / "paper-release.yaml")
    assert spec.methods["text2image"].text2image.lora.endswith("checkpoints/sd35-lora/final")
    for b, ref in spec.methods["inpainting"].inpainting.checkpoints.items():
        assert ref.endswith(f"checkpoints/inpaint-b{b}/final")


def test_birads_placeholder_gives_one_run_folder_per_class(prepared_set, tiny_sd2_inpaint, tmp_path: Path) -> None:
    from mammosynth.training.inpaint import train_inpaint

    config = InpaintConfig(
        prepared=prepared_set,
        output_dir=tmp_path / "inpaint-b{birads}",
        base_model=str(tiny_sd2_inpaint),
        resolution=32,
        train_batch_size=1,
        max_train_steps=1,
        checkpointing_steps=1,
        mixed_precision="no",
        validation_seeds=[0],
        validation_inference_steps=1,
    )
    result = train_inpaint(config, birads=5)
    assert result.final_dir == tmp_path / "inpaint-b5" / "final"
    assert (tmp_path / "inpaint-b5" / "final" / "model_index.json").is_file()
