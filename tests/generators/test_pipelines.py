"""Checkpoint references: local folders, hub ids resolved through the HF cache, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants

from mammosynth.builders.core.errors import InputError
from mammosynth.generators.pipelines import pipeline_folder


def test_hub_id_resolves_through_the_cache(tiny_sd2_inpaint, tmp_path: Path, monkeypatch) -> None:
    # Lay out the cache exactly as huggingface_hub does: refs/main -> snapshots/<commit>/...
    repo = tmp_path / "models--my-org--tiny-inpaint"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_sd2_inpaint, repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = pipeline_folder("my-org/tiny-inpaint", field="f", needs="unet", kind="an inpainting pipeline")
    assert folder == repo / "snapshots" / commit
    assert json.loads((folder / "model_index.json").read_text())["unet"]


def test_hub_id_missing_offline_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match="could not be fetched from the Hub") as info:
        pipeline_folder("my-org/absent", field="methods.x", needs="unet", kind="x", spec_file="spec.yaml")
    assert "field 'methods.x'" in str(info.value) and str(info.value).startswith("spec.yaml")


def test_missing_local_folder_and_wrong_pipeline(tiny_sd3, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        pipeline_folder(str(tmp_path / "nope"), field="f", needs="unet", kind="x")
    with pytest.raises(InputError, match="has no unet"):
        pipeline_folder(str(tiny_sd3), field="f", needs="unet", kind="an inpainting pipeline")


def test_checkpoint_names_are_readable_and_machine_independent() -> None:
    from mammosynth.builders.core.provenance import checkpoint_name

    assert checkpoint_name("/home/u/run/checkpoints/inpaint-b3/final") == "inpaint-b3/final"
    assert checkpoint_name("/srv/ckpt/sd35-lora/checkpoint-2000") == "sd35-lora/checkpoint-2000"
    assert checkpoint_name("/cache/models--my-org--sd2-inpaint/snapshots/" + "a" * 40) == "my-org/sd2-inpaint"
    assert checkpoint_name("/models/sd35-tiny") == "sd35-tiny"
