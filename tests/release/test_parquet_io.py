"""Release parquet is written the way `datasets` writes image data: the same writer settings as
`Dataset.to_parquet` (per-column compression and encodings, page index, row groups capped by
datasets' MAX_ROW_GROUP_SIZE), streamed one generated shard at a time."""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.release_helpers import spec_dict, write_spec  # noqa: E402
from helpers.synthetic import generate_fake  # noqa: E402
from mammosynth.builders.core.release_data import load_release_data
from mammosynth.builders.core.schema import release_features
from mammosynth.builders.core.spec import load_spec
from mammosynth.builders.release.package import write_parquet_shards
from mammosynth.builders.release.parquet_io import write_shards

CAP = "40KB"  # a row-group cap a few 64x64 random PNGs (~4.2 kB each) exceed


@pytest.fixture
def data(tmp_path: Path):
    spec = load_spec(write_spec(tmp_path, spec_dict(tmp_path, n=12, output={"shard_size": 5})))
    generate_fake(spec)
    return load_release_data(spec)


def _layout(path: Path) -> dict:
    md = pq.ParquetFile(path).metadata
    columns = [
        (
            md.row_group(0).column(c).path_in_schema,
            md.row_group(0).column(c).compression,
            tuple(sorted(md.row_group(0).column(c).encodings)),
            md.row_group(0).column(c).has_offset_index,
        )
        for c in range(md.num_columns)
    ]
    groups = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    return {"columns": columns, "groups": groups, "schema": pq.read_schema(path).metadata[b"huggingface"]}


def test_same_layout_as_datasets_to_parquet(data, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(datasets.config, "MAX_ROW_GROUP_SIZE", CAP)
    ours = write_parquet_shards(data, "text2image", tmp_path / "ours", 10**9)
    assert len(ours) == 1
    table = pa.concat_tables(data.iter_tables("text2image"))
    theirs = tmp_path / "theirs.parquet"
    datasets.Dataset(table, info=datasets.DatasetInfo(features=release_features())).to_parquet(str(theirs))
    got, want = _layout(ours[0]), _layout(theirs)
    assert got == want
    assert len(got["groups"]) > 1 and sum(got["groups"]) == data.num_examples("text2image") == 48
    md = pq.ParquetFile(ours[0]).metadata
    cap = datasets.utils.py_utils.convert_file_size_to_int(CAP)
    for g in range(md.num_row_groups):  # each row group holds at most about the cap of image bytes
        assert md.row_group(g).column(0).total_uncompressed_size <= cap
    assert all(col[3] for col in got["columns"])  # page index on every column
    assert {c[0]: c[1] for c in got["columns"]}["image.bytes"] == "UNCOMPRESSED"
    assert pq.read_table(ours[0]).equals(table.cast(pq.read_schema(ours[0])))


def test_files_capped_by_bytes_rows_in_order_across_chunks(data, tmp_path: Path) -> None:
    rows = data.rows["inpainting"]
    tables = list(rows.iter_tables())
    assert len(tables) > 2  # several generated shards stream through
    max_bytes = sum(rows.image_sizes) // 3
    paths = write_shards(iter(tables), rows.image_sizes, rows.nbytes, tmp_path / "out", max_bytes)
    assert [p.name for p in paths] == [f"train-{k:05d}-of-{len(paths):05d}.parquet" for k in range(len(paths))]
    assert len(paths) >= 3
    for p in paths:
        images = pq.read_table(p, columns=["image"]).column("image").combine_chunks().field("bytes")
        assert sum(len(b.as_py()) for b in images) <= max_bytes
    ids = [i for p in paths for i in pq.read_table(p, columns=["image_id"]).column("image_id").to_pylist()]
    assert ids == list(rows.hashes)
    with pytest.raises(ValueError, match="fewer rows"):
        write_shards(iter(tables[:-1]), rows.image_sizes, rows.nbytes, tmp_path / "short", max_bytes)


def test_release_data_holds_no_pixels(data) -> None:
    for m in data.methods:
        assert "image" not in data.tables[m].column_names
        assert len(data.rows[m].image_sizes) == len(data.image_hashes(m)) == data.num_examples(m)
