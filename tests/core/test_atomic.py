"""Atomic writes: a target is complete or untouched, and no temporary survives."""

from __future__ import annotations

import pytest

from mammosynth.builders.core import atomic


def test_file_replaced_on_success_and_kept_on_failure(tmp_path) -> None:
    target = tmp_path / "report.json"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError), atomic.atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    atomic.write_json(target, {"a": 1})
    assert target.read_text() == '{"a": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_dir_replaced_whole_or_not_at_all(tmp_path) -> None:
    target = tmp_path / "release"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(ValueError), atomic.atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("v2")
        raise ValueError("round trip failed")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic.atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


def test_remove_stale_takes_only_temporaries(tmp_path) -> None:
    (tmp_path / ".shard-00001.parquet.tmp-123").write_text("x")
    (tmp_path / ".release.tmp-9").mkdir()
    (tmp_path / "shard-00000.parquet").write_text("done")
    (tmp_path / ".gitattributes").write_text("keep")
    removed = atomic.remove_stale(tmp_path)
    assert sorted(p.name for p in removed) == [".release.tmp-9", ".shard-00001.parquet.tmp-123"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gitattributes", "shard-00000.parquet"]
