"""A small real set and release for reader-study tests, built with the shared test-data writers:
the real set is `synthetic.reference_rows` (4 views per study, BI-RADS 1-5, 320 x 256), the release
has square 256-pixel rows of the three methods; inpainting rows use real images as backgrounds, as
the generators do, so the real set reads as their training set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.synthetic import mammogram, release_row, write_generated, write_reference_set
from mammosynth.validation.reader_study.create import CreateOptions, create_study

N_STUDIES = 8  # 32 real images
PER_METHOD = 8


def release_rows(backgrounds: list[str], seed: int = 1) -> dict[str, list[dict]]:
    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict]] = {}
    for m, method in enumerate(("text2image", "inpainting", "poisson")):
        rows[method] = []
        for i in range(PER_METHOD):
            lat, view = "LR"[i % 2], ("CC", "MLO")[(i // 2) % 2]
            img = mammogram(rng, 256, 256, lat, view)
            source = backgrounds[i % len(backgrounds)] if method == "inpainting" else None
            rows[method].append(
                release_row(
                    img,
                    f"{method}-{i:04d}",
                    method,
                    1 + (i + m) % 5,
                    view,
                    lat,
                    density="ABCD"[i % 4],
                    source_image=source,
                )
            )
    return rows


@pytest.fixture(scope="session")
def study_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(release folder, real prepared set)."""
    root = tmp_path_factory.mktemp("study_inputs")
    real = write_reference_set(root / "prepared", n_studies=N_STUDIES, seed=0)
    backgrounds = ["ref0-0000-LCC", "ref0-0001-LMLO"]
    release = write_generated(root / "run", release_rows(backgrounds))
    return release, real


@pytest.fixture(scope="session")
def made_study(study_inputs, tmp_path_factory) -> Path:
    """A single-mode study: 12 real + 12 synthetic cases, 7 readers (read-only: copy to change)."""
    release, real = study_inputs
    out = tmp_path_factory.mktemp("studies") / "study"
    create_study(release, real, out, CreateOptions(n_real=12, n_synthetic=12, readers=7, seed=3, workers=1))
    return out


@pytest.fixture
def study(made_study, tmp_path) -> Path:
    """A fresh copy of the made study (answers of one test never reach another)."""
    import shutil

    return Path(shutil.copytree(made_study, tmp_path / "study"))
