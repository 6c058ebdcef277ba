"""verify_prepared: a sound prepared set passes; each kind of corruption fails with the file,
record and field named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.prepared import ingest_fingerprint, verify_prepared


def test_sound_sets_pass(prepared_set, cbis_prepared) -> None:
    report = verify_prepared(prepared_set)
    assert report.images == 48 and report.boxes >= 6 and report.bit_depths == (8,)
    assert report.decoded == 32 and report.skipped == 0
    assert verify_prepared(cbis_prepared, decode=None).decoded == 8
    info = json.loads((prepared_set / "ingest.json").read_text())
    assert ingest_fingerprint(prepared_set) == info["fingerprint"]


def _rewrite(src: Path, out: Path, edit) -> Path:
    """A copy of the prepared set ``src`` whose rows went through ``edit(rows)``; the image bytes
    stay as stored."""
    features = datasets.load_from_disk(str(src)).features.copy()
    features["image"] = datasets.Image(decode=False)
    rows = datasets.load_from_disk(str(src)).cast_column("image", datasets.Image(decode=False)).to_list()
    edit(rows)
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(out))
    for name in ("ingest.json", "skipped.csv"):
        shutil.copy(src / name, out / name)
    return out


def _edit_info(path: Path, edit) -> None:
    info = json.loads((path / "ingest.json").read_text())
    edit(info)
    (path / "ingest.json").write_text(json.dumps(info))


@pytest.fixture
def copy(prepared_set, tmp_path) -> Path:
    return Path(shutil.copytree(prepared_set, tmp_path / "prep"))


def test_duplicate_image_id(prepared_set, tmp_path) -> None:
    def dup(rows):
        rows[5]["image_id"] = rows[2]["image_id"]

    bad = _rewrite(prepared_set, tmp_path / "bad", dup)
    with pytest.raises(InputError, match="occurs twice") as exc:
        verify_prepared(bad)
    assert exc.value.field == "image_id" and exc.value.file == str(bad)


def test_box_outside_the_image(prepared_set, tmp_path) -> None:
    target = {}

    def outside(rows):
        row = next(r for r in rows if r["findings"])
        row["findings"][0]["bbox"][2] = 10_000.0
        target["id"] = row["image_id"]

    bad = _rewrite(prepared_set, tmp_path / "bad", outside)
    with pytest.raises(InputError, match="inside") as exc:
        verify_prepared(bad)
    assert exc.value.field == "findings.bbox" and exc.value.record == target["id"]


def test_count_mismatch(copy) -> None:
    _edit_info(copy, lambda i: i["counts"].update(images=i["counts"]["images"] + 1))
    with pytest.raises(InputError, match="48 rows") as exc:
        verify_prepared(copy)
    assert exc.value.field == "counts.images" and exc.value.file.endswith("ingest.json")


def test_birads_and_skipped_counts(copy) -> None:
    _edit_info(copy, lambda i: i["counts"]["birads"].update({"1": 999}))
    with pytest.raises(InputError) as exc:
        verify_prepared(copy)
    assert exc.value.field == "counts.birads"
    _edit_info(copy, lambda i: i["counts"].pop("birads"))
    _edit_info(copy, lambda i: i["counts"].update(skipped=3))
    with pytest.raises(InputError) as exc:
        verify_prepared(copy)
    assert exc.value.field == "counts.skipped"


def test_missing_ingest_json(copy) -> None:
    (copy / "ingest.json").unlink()
    with pytest.raises(InputError, match="missing") as exc:
        verify_prepared(copy)
    assert exc.value.file.endswith("ingest.json")
    assert ingest_fingerprint(copy) is None


def test_declared_bit_depth(copy) -> None:
    _edit_info(copy, lambda i: i["options"].update(bit_depth=16))
    with pytest.raises(InputError, match="8-bit PNG") as exc:
        verify_prepared(copy)
    assert exc.value.field == "image"


def test_truncated_image(prepared_set, tmp_path) -> None:
    def truncate(rows):
        data = rows[7]["image"]["bytes"]
        rows[7]["image"]["bytes"] = data[: len(data) // 2]

    bad = _rewrite(prepared_set, tmp_path / "bad", truncate)
    verify_prepared(bad, decode=0)  # the header alone is sound
    with pytest.raises(InputError, match="decode") as exc:
        verify_prepared(bad, decode=None)
    assert exc.value.field == "image"


def test_missing_column(prepared_set, tmp_path) -> None:
    ds = datasets.load_from_disk(str(prepared_set)).remove_columns(["findings"])
    ds.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(InputError, match="missing column") as exc:
        verify_prepared(tmp_path / "bad")
    assert exc.value.field == "findings"
