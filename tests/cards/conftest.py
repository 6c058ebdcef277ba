"""A small packaged release as consumers meet it: 8-bit text-to-image and inpainting rows, 16-bit
Poisson rows (values far above 255), unknown densities (null) and null strings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers.release_helpers import spec_dict, write_report, write_spec  # noqa: E402
from helpers.synthetic import generate_fake  # noqa: E402
from mammosynth.builders.core.shard_writer import ShardWriter
from mammosynth.builders.core.spec import ReleaseSpec, load_spec
from mammosynth.builders.release.build import build

POISSON_SIZE = (48, 40)  # (height, width) of the 16-bit rows: not the 64x64 of the others


def generate_mixed(spec: ReleaseSpec) -> None:
    """`generate_fake`, then Poisson rows made 16-bit and every second inpainting row's density unknown."""
    generate_fake(spec)
    rng = np.random.default_rng(7)
    for method in ("poisson", "inpainting"):
        writer = ShardWriter(spec.layout.generated(method))
        for k, shard in enumerate(writer.shard_files()):
            rows = pq.read_table(shard).to_pylist()
            for i, row in enumerate(rows):
                if method == "poisson":
                    row["image"] = rng.integers(300, 4000, POISSON_SIZE, dtype=np.uint16)
                elif i % 2 == 0:
                    row["density"] = None
            writer.write(k, rows, [], 0.0)


@dataclass
class SmallRelease:
    spec: ReleaseSpec
    folder: Path


@pytest.fixture(scope="session")
def small_release(tmp_path_factory) -> SmallRelease:
    tmp = tmp_path_factory.mktemp("small-release")
    (tmp / "prepared").mkdir()
    spec = load_spec(write_spec(tmp, spec_dict(tmp)))
    res = build(
        spec, generate_fn=generate_mixed, validate_fn=lambda s, d: write_report(d), progress=False, echo=lambda s: None
    )
    return SmallRelease(spec, res.release)
