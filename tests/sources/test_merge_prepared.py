from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.sources.merge import merge_prepared


def test_merge_keeps_every_row_and_records_sources(prepared_set, cbis_prepared, tmp_path: Path) -> None:
    out = merge_prepared([prepared_set, cbis_prepared], tmp_path / "merged")
    merged = datasets.load_from_disk(str(out))
    a, b = datasets.load_from_disk(str(prepared_set)), datasets.load_from_disk(str(cbis_prepared))
    assert len(merged) == len(a) + len(b)
    assert sorted(merged["image_id"]) == sorted(list(a["image_id"]) + list(b["image_id"]))
    info = json.loads((out / "ingest.json").read_text())
    assert [s["kind"] for s in info["source"]["inputs"]] == ["vindr", "dicom"]
    assert (out / "skipped.csv").is_file()


def test_merge_refuses_duplicate_ids_and_leaves_nothing(prepared_set, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="occurs in more than one input"):
        merge_prepared([prepared_set, prepared_set], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert not [p for p in tmp_path.glob(".merged*") if not p.name.startswith(".merged.lock")]  # the lock stays
