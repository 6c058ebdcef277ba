"""The rows a release will contain: generated shards per method, minus the rows the maintainer chose
to drop, with the figures the card and the package both need (counts, sizes, generators).

One place computes them so the card's `dataset_info` and the packaged parquet cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.schema import BIRADS_NAMES, DENSITIES, LATERALITIES, METHODS, VIEWS, release_features
from mammosynth.builders.core.shard_writer import ShardWriter
from mammosynth.builders.core.spec import ReleaseSpec


@dataclass
class ReleaseData:
    """Arrow tables per method (ClassLabel columns as indices, images as embedded PNG bytes)."""

    tables: dict[str, pa.Table]
    dropped: dict[str, list[str]] = field(default_factory=dict)  # method -> dropped image ids
    skipped: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # method -> generator skips

    @property
    def methods(self) -> list[str]:
        """Methods with at least one row, in the schema's order."""
        return [m for m in METHODS if m in self.tables and self.tables[m].num_rows]

    def num_examples(self, config: str) -> int:
        return sum(self.tables[m].num_rows for m in self._members(config))

    def num_bytes(self, config: str) -> int:
        return sum(self.tables[m].nbytes for m in self._members(config))

    def _members(self, config: str) -> list[str]:
        return self.methods if config == "all" else [config]

    @property
    def configs(self) -> list[str]:
        return [*self.methods, "all"]

    def counts(self, method: str) -> Counter:
        """(BI-RADS name, view, laterality) -> rows."""
        t = self.tables[method]
        cols = [t.column(c).to_pylist() for c in ("birads", "view", "laterality")]
        return Counter((BIRADS_NAMES[b], VIEWS[v], LATERALITIES[lat]) for b, v, lat in zip(*cols))

    def density_shares(self, method: str | None = None) -> dict[str, int]:
        """Density name (or "unknown") -> rows, over one method or the whole release."""
        values: list[int | None] = []
        for m in [method] if method else self.methods:
            values += self.tables[m].column("density").to_pylist()
        c = Counter(DENSITIES[v] if v is not None and v >= 0 else "unknown" for v in values)
        return {k: c[k] for k in (*DENSITIES, "unknown") if c.get(k)}

    def generators(self, method: str) -> list[str]:
        return sorted(set(self.tables[method].column("generator").to_pylist()))

    def image_hashes(self, method: str, limit: int | None = None) -> dict[str, str]:
        """image_id -> sha256 of the PNG bytes, for the first ``limit`` rows."""
        t = self.tables[method] if limit is None else self.tables[method].slice(0, limit)
        ids = t.column("image_id").to_pylist()
        images = t.column("image").combine_chunks().field("bytes").to_pylist()
        return {i: hashlib.sha256(b).hexdigest() for i, b in zip(ids, images)}

    def fingerprint(self) -> str:
        """Changes whenever a row, a drop or a skip changes; used to skip up-to-date stages."""
        h = hashlib.sha256()
        for m in self.methods:
            h.update(m.encode())
            h.update(json.dumps(sorted(self.image_hashes(m).items())).encode())
        h.update(json.dumps(self.dropped, sort_keys=True).encode())
        return h.hexdigest()


def load_release_data(spec: ReleaseSpec, drop_ids: set[str] | None = None) -> ReleaseData:
    """Read every requested method's generated shards; rows whose image_id is in ``drop_ids`` go."""
    features = release_features()
    tables: dict[str, pa.Table] = {}
    dropped: dict[str, list[str]] = {}
    skipped: dict[str, list[dict[str, str]]] = {}
    for method in spec.methods:
        writer = ShardWriter(spec.layout.generated(method))
        if not writer.shard_files():
            raise InputError(
                f"no generated shards for method {method!r} in {writer.out_dir}; run `mammosynth generate` first",
                field=f"methods.{method}",
            )
        writer.verify_all()  # the bytes released are the bytes generate wrote
        # pyarrow directly: the shards already hold the release schema, no datasets cache needed
        table = pa.concat_tables([pq.read_table(f) for f in writer.shard_files()])
        if table.schema.names != list(features):
            raise InputError(
                f"generated shards do not have the release columns: {table.schema.names}", file=writer.out_dir
            )
        if drop_ids:
            ids = table.column("image_id")
            drop_mask = pc.is_in(ids, value_set=pa.array(sorted(drop_ids), pa.string()))
            dropped[method] = pc.filter(ids, drop_mask).to_pylist()
            table = pc.filter(table, pc.invert(drop_mask))
        tables[method] = table.combine_chunks()
        skipped[method] = writer.skipped()
    data = ReleaseData(tables=tables, dropped=dropped, skipped=skipped)
    if not data.methods:
        raise InputError("no rows left to release (every generated row was dropped or skipped)")
    return data


__all__ = ["ReleaseData", "load_release_data", "datasets"]
