"""A shard counts as done only when its parquet is the one its record describes: a truncated or
altered shard is found and written again, and packaging refuses shards changed after generation."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import synthetic as S
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.shard_writer import ShardWriter


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        S.release_row(rng.integers(0, 255, (32, 32), dtype=np.uint8), f"t-{seed}-{i}", "text2image", 4, "CC", "L")
        for i in range(n)
    ]


def test_truncated_shard_is_not_done_and_is_removed(tmp_path) -> None:
    w = ShardWriter(tmp_path / "gen")
    path = w.write(0, _rows(3), [], 1.0)
    assert w.is_done(0)
    record = w.record(0)
    assert record["rows"] == 3 and record["bytes"] == path.stat().st_size and len(record["sha256"]) == 64
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut mid-file
    assert not w.is_done(0) and not path.exists()


def test_same_size_edit_caught_by_verify(tmp_path) -> None:
    w = ShardWriter(tmp_path / "gen")
    path = w.write(0, _rows(2), [], 1.0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, same footer
    path.write_bytes(bytes(data))
    assert w.is_done(0)  # the cheap resume check cannot see it ...
    with pytest.raises(InputError, match="sha256 differs"):
        w.verify_all()  # ... the full one does


def test_shard_without_record_is_not_done(tmp_path) -> None:
    w = ShardWriter(tmp_path / "gen")
    path = w.write(0, _rows(1), [], 1.0)
    path.with_suffix(".json").unlink()
    assert not w.is_done(0)
