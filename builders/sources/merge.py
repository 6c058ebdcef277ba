"""`mammosynth ingest merge`: several prepared sets (e.g. a VinDr ingest and a DICOM folder) as one,
so that training and validation see a single set while every row keeps its source (the ``source``
column) and ``ingest.json`` keeps every source's licence (``sources``, the union of the inputs').

Everything is checked before anything is written: each input opens (a truncated arrow file or a
malformed ``ingest.json`` is named), all inputs share one bit depth, a source name means one
licence in every input, image ids stay unique, and OUT is a new or empty folder outside the inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mammosynth.builders.core.atomic import atomic_dir
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.locks import folder_lock
from mammosynth.builders.core.prepared import (
    FORMAT_VERSION,
    INGEST_INFO,
    UNKNOWN_LICENCE,
    SourceLicence,
    open_prepared,
    prepared_bit_depth,
    read_ingest_info,
    read_skipped,
    source_licences,
    verify_prepared,
    write_skipped,
)
from mammosynth.builders.core.schema import PREPARED_COLUMNS, SOURCE_COLUMN, prepared_features
from mammosynth.builders.sources.ingest import refuse_nested, remove_own_temporaries


def _input_info(src: Path) -> dict[str, Any]:
    """An input's ``ingest.json``; a hand-made set without one reads as one source named after its
    folder, licence unknown, redistribution not allowed."""
    if (src / INGEST_INFO).exists():
        return read_ingest_info(src)
    return {
        "source": {"kind": "unknown", "path": str(src)},
        "sources": {src.name: SourceLicence(UNKNOWN_LICENCE, False).to_json()},
    }


def _union_licences(terms: list[tuple[Path, dict[str, SourceLicence]]]) -> dict[str, SourceLicence]:
    """One licence per source name across the inputs; two different ones for a name are refused."""
    union: dict[str, SourceLicence] = {}
    seen_in: dict[str, Path] = {}
    for src, lic in terms:
        for name, value in lic.items():
            if name in union and union[name] != value:
                raise InputError(
                    f"source {name!r} has licence {union[name].licence!r} in {seen_in[name]} "
                    f"but {value.licence!r} here (or other terms); give one of them another "
                    "source name (ingest --source-name)",
                    file=src / INGEST_INFO,
                    field=f"sources.{name}",
                )
            union.setdefault(name, value)
            seen_in.setdefault(name, src)
    return union


def merge_prepared(inputs: list[str | Path], out: str | Path, *, progress: bool = True) -> Path:
    """Combine prepared sets into one at ``out``.

    Image ids must stay unique and the inputs share one bit depth; the skipped records of every
    input are kept, each row keeps its source, and ``ingest.json`` lists each input's source and
    the licence of every source. Written to a temporary folder and renamed when complete, holding
    OUT's folder lock."""
    import datasets

    out = Path(out)
    sources = [Path(p) for p in inputs]
    if len(sources) < 2:
        raise InputError("merge needs at least two prepared sets", field="inputs")
    if out.is_file():
        raise InputError("exists and is a file, not a folder for the merged set", file=out)
    for src in sources:
        refuse_nested(out, src, what="input")
    was_disabled = datasets.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        with folder_lock(out, "ingest"):
            remove_own_temporaries(out)
            if out.exists() and any(out.iterdir()):
                raise InputError("output directory is not empty", file=out)
            return _merge(sources, out)
    finally:
        if not progress and not was_disabled:
            datasets.enable_progress_bars()


def _merge(sources: list[Path], out: Path) -> Path:
    import datasets

    opened, infos, terms, depths = [], [], [], []
    for src in sources:
        ds = open_prepared(src)
        info = _input_info(src)
        lic = source_licences(info, file=src / INGEST_INFO)
        if SOURCE_COLUMN not in ds.column_names and len(lic) != 1:
            raise InputError(
                f"{INGEST_INFO} lists {len(lic)} sources but the rows have no '{SOURCE_COLUMN}' "
                "column to tell them apart",
                file=src,
                field=SOURCE_COLUMN,
            )
        opened.append(ds)
        infos.append(info)
        terms.append((src, lic))
        depths.append(prepared_bit_depth(ds, info, path=src))
    known = {d for d in depths if d is not None}
    if len(known) > 1:
        listed = ", ".join(f"{src} is {d}-bit" for src, d in zip(sources, depths) if d is not None)
        raise InputError(
            f"inputs differ in bit depth ({listed}); ingest them again with one --bit-depth", field="bit_depth"
        )
    union = _union_licences(terms)
    features = prepared_features(with_source=True)
    parts = []
    for ds, (_, lic) in zip(opened, terms):
        if SOURCE_COLUMN not in ds.column_names:  # a set written before the column existed
            ds = ds.add_column(SOURCE_COLUMN, [next(iter(lic))] * len(ds))
        parts.append(ds.select_columns([*PREPARED_COLUMNS, SOURCE_COLUMN]).cast(features))
    merged = datasets.concatenate_datasets(parts)
    twice = [i for i, n in Counter(merged["image_id"]).items() if n > 1]
    if twice:
        dup = twice[0]
        raise InputError(f"image id {dup} occurs in more than one input", field="image_id")
    skipped_rows = [row for src in sources for row in read_skipped(src)]
    with atomic_dir(out) as staged:
        merged.save_to_disk(str(staged))
        write_skipped(staged, skipped_rows)
        info = {
            "format_version": FORMAT_VERSION,
            "source": {"kind": "merge", "inputs": [i.get("source") for i in infos]},
            "sources": {name: value.to_json() for name, value in sorted(union.items())},
            "options": {"bit_depth": next(iter(known))} if known else {},
            "counts": {
                "images": len(merged),
                "skipped": len(skipped_rows),
                "birads": {str(b): int(c) for b, c in zip(*np.unique(merged["birads"], return_counts=True))},
            },
            "fingerprint": hashlib.sha256(
                "".join(sorted(str(i.get("fingerprint")) for i in infos)).encode()
            ).hexdigest(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (staged / INGEST_INFO).write_text(json.dumps(info, indent=2))
        verify_prepared(staged)
    return out
