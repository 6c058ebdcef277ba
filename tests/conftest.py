"""Shared fixtures. Tests never reach the network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- tiny random-weight pipelines (training/tiny_models.py) --------------------------------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory):
    """Folder of a tiny StableDiffusion3Pipeline (random weights, offline tokenizers)."""
    from mammosynth.training.tiny_models import write_tiny_sd3

    return write_tiny_sd3(tmp_path_factory.mktemp("tiny_models") / "sd3")


@pytest.fixture(scope="session")
def tiny_sd2_inpaint(tmp_path_factory):
    """Folder of a tiny StableDiffusionInpaintPipeline (9-channel UNet, random weights)."""
    from mammosynth.training.tiny_models import write_tiny_sd2_inpainting

    return write_tiny_sd2_inpainting(tmp_path_factory.mktemp("tiny_models") / "sd2_inpainting")
