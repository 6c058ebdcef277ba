"""Parquet files written the way `datasets` writes image data (``push_to_hub`` / ``to_parquet``).

The writer is datasets' own (``datasets.arrow_writer.ParquetWriter``): the features' Arrow schema
with their metadata (plain pyarrow readers keep the ClassLabel names), PNG bytes stored as they
are (no compression, plain encoding), snappy and dictionaries for the small columns,
content-defined chunking and a page index. Row groups follow datasets' rule for image data: as
many rows as fit in ``datasets.config.MAX_ROW_GROUP_SIZE`` (100 MB) on average, so the Hub's
viewer, which refuses larger row groups, can read every file. Rows stream in one table at a time
(one generated shard), so memory is bounded by a shard and a row group, never by the release.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
from datasets import config
from datasets.arrow_writer import ParquetWriter, get_writer_batch_size_from_data_size
from datasets.utils.py_utils import convert_file_size_to_int

from mammosynth.builders.core.schema import release_features

ROW_GROUP_BYTES = convert_file_size_to_int(config.MAX_ROW_GROUP_SIZE)


def shard_bounds(image_sizes: list[int], max_bytes: int) -> list[tuple[int, int]]:
    """Greedy contiguous [start, stop) slices whose image bytes stay under ``max_bytes``."""
    bounds, start, acc = [], 0, 0
    for i, size in enumerate(image_sizes):
        if acc and acc + size > max_bytes:
            bounds.append((start, i))
            start, acc = i, 0
        acc += size
    if start < len(image_sizes) or not bounds:
        bounds.append((start, len(image_sizes)))
    return bounds


def rows_per_row_group(num_rows: int, num_bytes: int) -> int:
    """datasets' row-group size for ``num_rows`` rows of ``num_bytes`` (Arrow bytes, images included)."""
    return get_writer_batch_size_from_data_size(num_rows, num_bytes)


def shard_name(k: int, n: int) -> str:
    return f"train-{k:05d}-of-{n:05d}.parquet"


def write_shards(
    tables: Iterable[pa.Table],
    image_sizes: list[int],
    num_bytes: int,
    out_dir: Path,
    max_bytes: int,
) -> list[Path]:
    """Write the rows of ``tables`` (in order; ``image_sizes`` holds each row's PNG length) as
    ``train-NNNNN-of-NNNNN.parquet`` files of at most ``max_bytes`` of images each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    file_rows = [stop - start for start, stop in shard_bounds(image_sizes, max_bytes)]
    group = rows_per_row_group(len(image_sizes), num_bytes)
    features = release_features()
    paths = [out_dir / shard_name(k, len(file_rows)) for k in range(len(file_rows))]
    k, in_file, buf, buf_rows = 0, 0, [], 0
    writer: ParquetWriter | None = None

    def flush() -> None:
        nonlocal buf, buf_rows
        if buf:
            assert writer is not None
            writer.write_table(pa.concat_tables(buf), writer_batch_size=group)
        buf, buf_rows = [], 0

    for table in tables:
        offset = 0
        while offset < table.num_rows:
            if k >= len(file_rows):
                raise ValueError(f"more rows than the {len(image_sizes)} image sizes given")
            if writer is None:
                writer = ParquetWriter(features=features, path=str(paths[k]), writer_batch_size=group)
            take = min(table.num_rows - offset, file_rows[k] - in_file, group - buf_rows)
            buf.append(table.slice(offset, take))
            buf_rows, in_file, offset = buf_rows + take, in_file + take, offset + take
            if buf_rows == group or in_file == file_rows[k]:
                flush()
            if in_file == file_rows[k]:
                writer.finalize()
                writer, k, in_file = None, k + 1, 0
    if k != len(file_rows) or writer is not None:
        raise ValueError(f"fewer rows than the {len(image_sizes)} image sizes given")
    return paths


__all__ = ["ROW_GROUP_BYTES", "shard_bounds", "rows_per_row_group", "write_shards", "shard_name"]
