"""A release's rows read from its data files a batch at a time, never all at once.

A release can be larger than memory (48k mammograms are tens of GB of PNG bytes), so its rows stay
in their files: parquet shards are read by row group (``ParquetFile.iter_batches`` /
``read_row_group``), the arrow files of a ``save_to_disk`` dataset by record batch. Every batch is
cast to the release features, so readers see one schema whatever wrote the file.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.schema import RELEASE_COLUMNS, release_features

BATCH_ROWS = 256  # rows per streamed batch: a few hundred images of bytes at most


def release_schema() -> pa.Schema:
    """The release features as arrow types (``image`` as its stored struct of bytes and path)."""
    return release_features().arrow_schema


def check_columns(names: Sequence[str], where: str | Path) -> None:
    """InputError naming what is missing or extra when ``names`` are not the release columns."""
    missing = [c for c in RELEASE_COLUMNS if c not in names]
    extra = [c for c in names if c not in RELEASE_COLUMNS]
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"unexpected {extra}")
        raise InputError("columns do not match the release schema: " + "; ".join(detail), file=where)


def _unreadable(exc: Exception, what: str = "unreadable data file") -> str:
    return f"{what}: {exc}".splitlines()[0]


@dataclass
class DataPart:
    """One data file of a release: ``parquet`` (a shard, a Hub file) or ``arrow`` (an IPC stream
    written by ``save_to_disk``)."""

    path: Path
    fmt: str
    num_rows: int

    @classmethod
    def open(cls, path: Path) -> "DataPart":
        """The file's row count and schema checked against the release (no rows read)."""
        try:
            if path.suffix == ".parquet":
                meta = pq.ParquetFile(path).metadata
                schema, rows, fmt = meta.schema.to_arrow_schema(), meta.num_rows, "parquet"
            else:
                with pa.memory_map(str(path)) as source:  # zero-copy: counting rows reads no data pages
                    reader = pa.ipc.open_stream(source)
                    schema, rows, fmt = reader.schema, sum(b.num_rows for b in reader), "arrow"
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise InputError(_unreadable(exc), file=path) from None
        check_columns(schema.names, path)
        target = release_schema()
        try:  # types that cannot be cast fail here, before any row is read
            schema.empty_table().select(target.names).cast(target)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise InputError(_unreadable(exc, "data file does not match the release features"), file=path) from None
        return cls(path, fmt, rows)

    def batches(self, columns: Sequence[str], batch_size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The file's rows in order, ``columns`` only, cast to the release types."""
        columns = tuple(columns)
        target = _sub_schema(columns)
        try:
            if self.fmt == "parquet":
                raw: Iterator[pa.RecordBatch] = pq.ParquetFile(self.path).iter_batches(
                    batch_size=batch_size, columns=list(columns)
                )
                for b in raw:
                    yield b.cast(target)
            else:
                with pa.OSFile(str(self.path)) as source:  # read, not mapped: bounded resident memory
                    for b in pa.ipc.open_stream(source):
                        for start in range(0, b.num_rows, batch_size):
                            yield b.slice(start, batch_size).select(list(columns)).cast(target)
        except (OSError, pa.ArrowException, ValueError, TypeError) as exc:
            raise InputError(_unreadable(exc), file=self.path) from None

    def chunks(self) -> list[int]:
        """Row counts of the file's natural chunks (parquet row groups, arrow record batches)."""
        if self.fmt == "parquet":
            meta = pq.ParquetFile(self.path).metadata
            return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        with pa.memory_map(str(self.path)) as source:
            return [b.num_rows for b in pa.ipc.open_stream(source)]

    def read_chunk(self, index: int) -> pa.Table:
        """Chunk ``index`` (all columns, release types)."""
        try:
            if self.fmt == "parquet":
                table = pq.ParquetFile(self.path).read_row_group(index, columns=RELEASE_COLUMNS)
            else:  # mapped: the batches before ``index`` are skipped without reading their data
                with pa.memory_map(str(self.path)) as source:
                    for i, b in enumerate(pa.ipc.open_stream(source)):
                        if i == index:
                            table = pa.Table.from_batches([b]).select(RELEASE_COLUMNS).combine_chunks()
                            break
            return table.cast(release_schema())
        except (OSError, pa.ArrowException, ValueError, TypeError) as exc:
            raise InputError(_unreadable(exc), file=self.path) from None


@functools.cache
def _sub_schema(columns: tuple[str, ...]) -> pa.Schema:
    full = release_schema()
    return pa.schema([full.field(c) for c in columns], metadata=None)


class ReleaseRows:
    """The rows of a release's data files, in file order, read on demand.

    ``iter_batches`` streams (what validation uses); ``rel[k]`` reads row ``k`` through a one-chunk
    cache, so visiting rows in order reads each chunk once; ``rel["image_id"]`` is one column of every
    row. ``num_rows``, ``features`` and ``column_names`` are those of a ``datasets.Dataset``.

    Any other ``datasets.Dataset`` attribute (``cast_column``, ``save_to_disk`` ...) is answered by
    the whole release materialised in memory once (``to_dataset``): meant for tests and small tools,
    never used by validation itself.
    """

    def __init__(self, parts: list[DataPart]) -> None:
        self.parts = parts
        self._starts = [0]
        for p in parts:
            self._starts.append(self._starts[-1] + p.num_rows)
        self._cached: tuple[tuple[int, int], int, pa.Table] | None = None  # (part, chunk), first row, rows
        self._chunk_starts: dict[int, list[int]] = {}

    @property
    def num_rows(self) -> int:
        return self._starts[-1]

    def __len__(self) -> int:
        return self.num_rows

    @property
    def features(self) -> datasets.Features:
        feats = release_features()
        feats["image"] = datasets.Image(decode=False)
        return feats

    @property
    def column_names(self) -> list[str]:
        return list(RELEASE_COLUMNS)

    def iter_batches(
        self, columns: Sequence[str] = RELEASE_COLUMNS, batch_size: int = BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Every row in order, file by file, a batch at a time."""
        cols = tuple(columns)
        for part in self.parts:
            yield from part.batches(cols, batch_size)

    def table(self, columns: Sequence[str]) -> pa.Table:
        """``columns`` of every row as one table: for the small columns (never ``image``)."""
        schema = _sub_schema(tuple(columns))
        return pa.Table.from_batches(list(self.iter_batches(columns, batch_size=4096)), schema=schema)

    def _locate(self, k: int) -> tuple[int, int]:
        if not -self.num_rows <= k < self.num_rows:
            raise IndexError(f"row {k} of {self.num_rows}")
        k %= self.num_rows
        part = bisect.bisect_right(self._starts, k) - 1
        return part, k - self._starts[part]

    def row(self, k: int) -> dict[str, Any]:
        """Row ``k`` as a ``datasets`` row (class labels as ints, ``image`` as {"bytes", "path"})."""
        part, local = self._locate(k)
        if part not in self._chunk_starts:
            starts = [0]
            for n in self.parts[part].chunks():
                starts.append(starts[-1] + n)
            self._chunk_starts[part] = starts
        starts = self._chunk_starts[part]
        chunk = bisect.bisect_right(starts, local) - 1
        if self._cached is None or self._cached[0] != (part, chunk):
            self._cached = ((part, chunk), starts[chunk], self.parts[part].read_chunk(chunk))
        _, first, table = self._cached
        return table.slice(local - first, 1).to_pylist()[0]

    def column(self, name: str) -> list[Any]:
        return self.table([name]).column(name).to_pylist()

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self.column(key)
        return self.row(int(key))

    @functools.cached_property
    def _materialised(self) -> datasets.Dataset:
        tables = [pa.Table.from_batches(list(p.batches(RELEASE_COLUMNS)), schema=release_schema()) for p in self.parts]
        table = pa.concat_tables(tables) if tables else release_schema().empty_table()
        return datasets.Dataset(table).cast_column("image", datasets.Image(decode=False))

    def to_dataset(self) -> datasets.Dataset:
        """The whole release in memory as a ``datasets.Dataset`` (``image`` not decoded)."""
        return self._materialised

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.to_dataset(), name)


__all__ = ["BATCH_ROWS", "DataPart", "ReleaseRows", "check_columns", "release_schema"]
