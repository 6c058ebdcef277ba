"""`mammosynth ingest merge`: several prepared sets (e.g. a VinDr ingest and a DICOM folder) as one,
so that training and validation see a single set while ``ingest.json`` keeps every input's
source and licence."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mammosynth.builders.core.atomic import atomic_dir
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.prepared import (
    FORMAT_VERSION,
    INGEST_INFO,
    open_prepared,
    read_ingest_info,
    read_skipped,
    verify_prepared,
    write_skipped,
)
from mammosynth.builders.core.schema import PREPARED_COLUMNS, prepared_features


def merge_prepared(inputs: list[str | Path], out: str | Path) -> Path:
    """Combine prepared sets into one at ``out``.

    Image ids must stay unique; the skipped records of every input are kept, and ``ingest.json``
    lists each input's source and licence. Written to a temporary folder and renamed when complete.
    """
    import datasets

    out = Path(out)
    if len(inputs) < 2:
        raise InputError("merge needs at least two prepared sets", field="inputs")
    if out.exists() and any(out.iterdir()):
        raise InputError("output directory is not empty", file=out)
    parts, infos, skipped_rows = [], [], []
    for src in map(Path, inputs):
        parts.append(open_prepared(src).select_columns(list(PREPARED_COLUMNS)).cast(prepared_features()))
        infos.append(read_ingest_info(src) if (src / INGEST_INFO).is_file() else {"source": {"path": str(src)}})
        skipped_rows.extend(read_skipped(src))
    merged = datasets.concatenate_datasets(parts)
    ids = list(merged["image_id"])
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"image id {dup} occurs in more than one input", field="image_id")
    with atomic_dir(out) as staged:
        merged.save_to_disk(str(staged))
        write_skipped(staged, skipped_rows)
        info = {
            "format_version": FORMAT_VERSION,
            "source": {"kind": "merge", "inputs": [i.get("source") for i in infos]},
            "licence": sorted({str(i.get("licence")) for i in infos}),
            "counts": {
                "images": len(merged),
                "skipped": len(skipped_rows),
                "birads": {str(b): int(c) for b, c in zip(*np.unique(merged["birads"], return_counts=True))},
            },
            "fingerprint": hashlib.sha256(
                "".join(sorted(str(i.get("fingerprint")) for i in infos)).encode()).hexdigest(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (staged / INGEST_INFO).write_text(json.dumps(info, indent=2))
        verify_prepared(staged)
    return out
