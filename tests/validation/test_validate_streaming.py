"""A release is read from its data files a batch at a time: opening it reads no image bytes, the
analysis pass and the row hashes hold about a shard, random access reads one chunk; the rows,
their order and their hashes are those of the files, whatever the layout."""

from __future__ import annotations

import hashlib
import random

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import synthetic as S
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.schema import release_features
from mammosynth.validation import analysis
from mammosynth.validation.analysis import Rows, analyse_rows
from mammosynth.validation.release_io import load_release
from mammosynth.validation.thresholds import Thresholds

SHARDS, ROWS_PER_SHARD = 16, 6
PER_FILE = 5  # the parquet reader's buffers for one file: a few times its bytes, whatever the release
SIDE = 384  # noise PNGs do not compress: each is about SIDE**2 bytes


def _noise_rows(n: int, seed: int, prefix: str = "text2image") -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        img = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
        lat, view = "LR"[k % 2], ("CC", "MLO")[(k // 2) % 2]
        rows.append(S.release_row(img, f"{prefix}-{seed}-{k:04d}", "text2image", 1 + k % 2, view, lat))
    return rows


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A generation run of SHARDS shards and the rows written (in order)."""
    out = tmp_path_factory.mktemp("sharded")
    shards = [_noise_rows(ROWS_PER_SHARD, seed) for seed in range(SHARDS)]
    S.write_shards(out / "generated" / "text2image", shards)
    return out, [r for shard in shards for r in shard]


def _shard_bytes(rows: list[dict]) -> int:
    return sum(len(r["image"]["bytes"]) for r in rows[:ROWS_PER_SHARD])


def test_opening_reads_no_image_bytes_and_the_passes_hold_about_a_shard(sharded, monkeypatch):
    out, rows = sharded
    shard, total = _shard_bytes(rows), sum(len(r["image"]["bytes"]) for r in rows)
    assert total > 3 * PER_FILE * shard  # else the bounds below would not tell a shard from the release
    base = pa.total_allocated_bytes()
    rel = load_release(out)
    assert pa.total_allocated_bytes() - base < shard / 4
    meta = Rows.of(rel)  # every column but the image
    assert meta.ids == [r["image_id"] for r in rows]
    assert pa.total_allocated_bytes() - base < shard / 4

    # the analysis pass, in this process (no pool) so that its allocations are visible
    peaks: list[int] = []
    one_chunk = analysis._analyse_chunk

    def measured(jobs):
        peaks.append(pa.total_allocated_bytes() - base)
        return one_chunk(jobs)

    monkeypatch.setattr(analysis, "ANALYSIS_WORKERS", 1)
    monkeypatch.setattr(analysis, "_analyse_chunk", measured)
    an = analyse_rows(rel, meta, Thresholds(), set(), "test", progress=False)
    assert len(an.feats) == len(rows) and len(peaks) >= SHARDS
    assert max(peaks) < PER_FILE * shard, (max(peaks), shard, total)

    # row hashes, streamed: the sha256 of each row's bytes as written
    before = pa.total_allocated_bytes()
    hashes = rel.row_hashes()
    assert hashes == {r["image_id"]: hashlib.sha256(r["image"]["bytes"]).hexdigest() for r in rows}
    assert an.row_hashes == hashes  # the same figures, taken in the analysis pass
    assert pa.total_allocated_bytes() - before < shard / 4  # nothing kept


def test_random_access_reads_one_chunk(sharded):
    out, rows = sharded
    rel = load_release(out)
    base = pa.total_allocated_bytes()
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    for k in order[:10]:
        assert rel.dataset[k]["image"]["bytes"] == rows[k]["image"]["bytes"]
        assert rel.image(k)["bytes"] == rows[k]["image"]["bytes"]
        assert pa.total_allocated_bytes() - base < PER_FILE * _shard_bytes(rows)
    assert rel.dataset[-1]["image_id"] == rows[-1]["image_id"]
    with pytest.raises(IndexError):
        rel.dataset[len(rows)]


def _hub_folder(root, configs: dict[str, list[dict]], row_group_size: int):
    """A Hub-layout folder written the way ``datasets`` writes parquet (features in the metadata),
    with small row groups so that a file holds several chunks."""
    features = release_features()
    for config, rows in configs.items():
        table = datasets.Dataset.from_list(rows, features=features).data.table
        path = root / "data" / config / "train-00000-of-00001.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(table, path, row_group_size=row_group_size)
    return root


def test_every_layout_gives_the_files_rows_in_order(tmp_path):
    t2i = _noise_rows(7, 1)
    inp = [
        dict(r, method="inpainting", image_id=r["image_id"].replace("text2image", "inpainting"))
        for r in _noise_rows(5, 2)
    ]
    hub = _hub_folder(tmp_path / "hub", {"inpainting": inp, "text2image": t2i, "all": [*t2i, *inp]}, row_group_size=3)
    rel = load_release(hub)
    expected = [*t2i, *inp]  # method order, "all" left out
    assert rel.kind == "hub-folder" and rel.num_rows == len(expected) == len(rel.dataset)
    assert rel.dataset["image_id"] == [r["image_id"] for r in expected]
    # every row, visited out of order across files and row groups, is the row written
    for k in random.Random(1).sample(range(len(expected)), len(expected)):
        got = rel.dataset[k]
        assert (got["image_id"], got["image"]["bytes"]) == (expected[k]["image_id"], expected[k]["image"]["bytes"])
    assert [b.num_rows for b in rel.iter_batches(["image_id"], batch_size=2)] == [2, 2, 2, 1, 2, 2, 1]

    # a save_to_disk dataset in several arrow files, and a dict of splits: their rows in order
    ds = datasets.Dataset.from_list(expected, features=release_features())
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=3)
    saved = load_release(tmp_path / "saved")
    assert saved.kind == "saved" and len(saved.dataset.parts) == 3
    assert saved.row_hashes() == rel.row_hashes()
    assert [saved.dataset[k]["image_id"] for k in (11, 0, 6)] == [expected[k]["image_id"] for k in (11, 0, 6)]
    datasets.DatasetDict({"a": ds.select(range(4)), "b": ds.select(range(4, 12))}).save_to_disk(str(tmp_path / "dict"))
    assert load_release(tmp_path / "dict").dataset["image_id"] == rel.dataset["image_id"]

    # the whole release as a datasets.Dataset stays available for small tools
    whole = rel.dataset.to_dataset()
    assert isinstance(whole, datasets.Dataset) and whole["image_id"] == rel.dataset["image_id"]


def test_a_value_that_does_not_fit_the_features_names_its_file(tmp_path):
    rows = _noise_rows(3, 4)
    table = datasets.Dataset.from_list(rows, features=release_features()).data.table
    bad = table.set_column(table.schema.get_field_index("seed"), "seed", pa.array(["one", "two", "three"]))
    path = tmp_path / "rel" / "data" / "text2image" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(bad, path)
    rel = load_release(tmp_path / "rel")
    with pytest.raises(InputError) as e:
        Rows.of(rel)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
