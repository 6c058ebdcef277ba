"""Sharded, resumable writer for generated rows.

The plan is cut into fixed chunks of ``shard_size`` tasks; chunk k becomes ``shard-0000k.parquet``.
A shard is written to a temporary name and renamed when complete, so a finished shard is never
rewritten and a killed run loses at most the shards in flight. Because chunk boundaries depend only
on the plan, any number of processes (each taking every n-th shard) produce the same files as one.
Beside each shard: ``shard-0000k.json`` with per-shard statistics, the skipped samples, and the
shard's row count, size and sha256. The record is written before the parquet is renamed into place,
so a shard counts as done only when both exist and agree: a truncated or altered shard is detected
(cheaply on resume: size and row count; fully by ``verify``) and written again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from mammosynth.builders.core import atomic
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import sha256_file
from mammosynth.builders.core.imageio import encode_png
from mammosynth.builders.core.schema import RELEASE_COLUMNS, release_features

SHARD_GLOB = "shard-*.parquet"
RUN_FILE = "run.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


class ShardWriter:
    """Writes one method's rows into ``out_dir`` shard by shard."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.features = release_features()

    def claim(self, fingerprint: str) -> None:
        """Record which run owns this folder; a folder holding shards of another run is refused
        (resuming with a changed spec would mix two datasets)."""
        path = self.out_dir / RUN_FILE
        if path.exists():
            recorded = path.read_text()
            if recorded != fingerprint and self.shard_files():
                raise InputError(
                    "holds shards of a run with other parameters, checkpoints or counts; "
                    "remove the folder or set another output_dir to start afresh",
                    file=self.out_dir,
                    field="output_dir",
                )
            if recorded == fingerprint:
                return
        atomic.write_bytes(path, fingerprint.encode())

    def record(self, index: int) -> dict[str, Any] | None:
        """The shard's statistics record, or None when there is none (or it does not parse)."""
        path = self.out_dir / f"{shard_name(index)}.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def is_done(self, index: int) -> bool:
        """Finished, and the parquet on disk is the one its record describes (size, row count); a
        shard that fails this is removed so that the run writes it again."""
        parquet = self.out_dir / f"{shard_name(index)}.parquet"
        if not parquet.exists():
            return False
        record = self.record(index)
        ok = record is not None and "bytes" in record and parquet.stat().st_size == record["bytes"]
        if ok:
            try:
                ok = pq.ParquetFile(parquet).metadata.num_rows == record["rows"]
            except (OSError, pa.ArrowException):
                ok = False
        if not ok:
            parquet.unlink(missing_ok=True)
        return ok

    def verify(self, index: int) -> None:
        """InputError unless shard ``index``'s bytes hash to the sha256 its record holds."""
        parquet = self.out_dir / f"{shard_name(index)}.parquet"
        record = self.record(index)
        if record is None or "sha256" not in record:
            raise InputError("shard has no record of its content hash; generate it again", file=parquet)
        if sha256_file(parquet) != record["sha256"]:
            raise InputError("shard changed after it was written (sha256 differs from its record)", file=parquet)

    def verify_all(self) -> int:
        """``verify`` every finished shard; returns how many there are."""
        files = self.shard_files()
        for f in files:
            self.verify(int(f.stem.split("-")[1]))
        return len(files)

    def write(self, index: int, rows: list[dict[str, Any]], skipped: list[dict[str, str]], seconds: float) -> Path:
        """Write shard ``index`` atomically: stats first, then the parquet whose rename marks it done."""
        base = self.out_dir / shard_name(index)
        for row in rows:
            missing = set(RELEASE_COLUMNS) - set(row)
            if missing:
                raise ValueError(f"row {row.get('image_id')} lacks columns {sorted(missing)}")
            if not isinstance(row["image"], dict):
                row["image"] = {"bytes": encode_png(row["image"]), "path": None}
        stats = {
            "shard": index,
            "rows": len(rows),
            "skipped": skipped,
            "seconds": round(seconds, 3),
            "images_per_second": round(len(rows) / seconds, 4) if seconds > 0 else None,
            "per_birads": dict(Counter(str(r["birads"]) for r in rows)),
            "per_view": dict(Counter(str(r["view"]) for r in rows)),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # from_dict keeps the schema when every row of a shard was skipped
        table = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in RELEASE_COLUMNS}, features=self.features)
        # pyarrow directly (same schema and feature metadata as ``to_parquet``, which would draw a
        # progress bar per shard under the run's own)
        with atomic.atomic_file(base.with_suffix(".parquet")) as tmp:
            pq.write_table(table.data.table, tmp)
            stats.update(bytes=tmp.stat().st_size, sha256=sha256_file(tmp))
            atomic.write_bytes(base.with_suffix(".json"), json.dumps(stats, indent=1).encode())
        return base.with_suffix(".parquet")

    def shard_files(self) -> list[Path]:
        return sorted(self.out_dir.glob(SHARD_GLOB))

    def skipped(self) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for p in sorted(self.out_dir.glob("shard-*.json")):
            if p.with_suffix(".parquet").exists():
                out.extend(json.loads(p.read_text())["skipped"])
        return out

    def load(self) -> datasets.Dataset:
        """All finished shards as one Dataset, in plan order."""
        files = [str(p) for p in self.shard_files()]
        if not files:
            return datasets.Dataset.from_dict({k: [] for k in RELEASE_COLUMNS}, features=self.features)
        # pyarrow directly: ``Dataset.from_parquet`` would copy every shard into the HF cache and
        # print a "Generating train split" bar per shard
        table = pa.concat_tables([pq.read_table(f) for f in files])
        return datasets.Dataset(table.cast(self.features.arrow_schema))
