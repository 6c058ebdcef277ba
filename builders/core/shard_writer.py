"""Sharded, resumable writer for generated rows.

The plan is cut into fixed chunks of ``shard_size`` tasks; chunk k becomes ``shard-0000k.parquet``.
A shard is written to a temporary name and renamed when complete, so a finished shard is never
rewritten and a killed run loses at most the shards in flight. Because chunk boundaries depend only
on the plan, any number of processes (each taking every n-th shard) produce the same files as one.
Beside each shard: ``shard-0000k.json`` with per-shard statistics and the skipped samples.
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

    def is_done(self, index: int) -> bool:
        return (self.out_dir / f"{shard_name(index)}.parquet").exists()

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
        atomic.write_bytes(base.with_suffix(".json"), json.dumps(stats, indent=1).encode())
        # from_dict keeps the schema when every row of a shard was skipped
        table = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in RELEASE_COLUMNS}, features=self.features)
        # pyarrow directly (same schema and feature metadata as ``to_parquet``, which would draw a
        # progress bar per shard under the run's own)
        with atomic.atomic_file(base.with_suffix(".parquet")) as tmp:
            pq.write_table(table.data.table, tmp)
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
