"""Which sources' pixels a release's rows embed, and under which terms.

Inpainting and Poisson rows carry real pixels: of their background (``source_image``) and, for
Poisson, of the donor lesion's image (``lesion_source``). Each of those images came from a source
whose terms the prepared set records at ingest (``core.prepared.licences``); a row inherits the
terms of every image it embeds. The spec's ``source`` block may only narrow them: a spec that says
``redistribution_allowed: true`` over a source recorded as restricted does not make it public.

The release ships the result as ``sources.json``; ``publish`` and the card read it from there.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.prepared import (
    INGEST_INFO,
    SourceLicence,
    licences,
    open_prepared,
    read_ingest_info,
    row_source,
)
from mammosynth.builders.core.schema import METHODS, SOURCE_COLUMN, lesion_image_id

SOURCES_FILE = "sources.json"
PIXEL_COLUMNS = ("source_image", "lesion_source")


@dataclass
class SourceUse:
    """One source as a release uses it."""

    licence: SourceLicence
    rows: dict[str, int] = field(default_factory=dict)  # method -> rows embedding its pixels
    images: list[str] = field(default_factory=list)  # its image ids those rows embed

    @property
    def embedded(self) -> bool:
        return sum(self.rows.values()) > 0

    def to_json(self) -> dict[str, Any]:
        return {**self.licence.to_json(), "rows": self.rows, "images": self.images}


def embedded_images(row: dict[str, Any]) -> list[str]:
    """The source image ids whose pixels a release row holds (none for text-to-image)."""
    ids = []
    if row.get("source_image"):
        ids.append(row["source_image"])
    if row.get("lesion_source"):
        ids.append(lesion_image_id(row["lesion_source"]))
    return ids


def _image_sources(prepared: Path) -> tuple[dict[str, str], dict[str, SourceLicence]]:
    """Prepared image id -> source name, and the terms of each source."""
    info = read_ingest_info(prepared)
    terms = licences(prepared)
    ds = open_prepared(prepared, field="source.prepared")
    cols = ["image_id", SOURCE_COLUMN] if SOURCE_COLUMN in ds.column_names else ["image_id"]
    table = ds.select_columns(cols).data.table
    ids = table.column("image_id").to_pylist()
    names = table.column(SOURCE_COLUMN).to_pylist() if SOURCE_COLUMN in cols else [None] * len(ids)
    return {i: row_source({"image_id": i, SOURCE_COLUMN: n}, info) for i, n in zip(ids, names)}, terms


def source_uses(spec: Any, tables: dict[str, Any]) -> dict[str, SourceUse]:
    """Source name -> its use by the rows of ``tables`` (method -> arrow table with the release
    columns). A prepared set without ``ingest.json`` (not written by ``mammosynth ingest``) falls
    back to the spec's declaration; an embedded image the prepared set does not hold is an error."""
    prepared = Path(spec.source.prepared)
    declared = SourceLicence(
        licence=spec.source.license,
        redistribution_allowed=spec.source.redistribution_allowed,
        citation=spec.source.citation,
        url=spec.source.url,
    )
    if not (prepared / INGEST_INFO).is_file():
        of_image: dict[str, str] | None = None
        terms = {spec.source.name: declared}
    else:
        of_image, terms = _image_sources(prepared)
    rows: dict[str, Counter] = defaultdict(Counter)
    images: dict[str, set[str]] = defaultdict(set)
    for method in METHODS:
        if method not in tables:
            continue
        table = tables[method]
        columns = {c: table.column(c).to_pylist() for c in ("image_id", *PIXEL_COLUMNS)}
        for k, image_id in enumerate(columns["image_id"]):
            row = {c: columns[c][k] for c in PIXEL_COLUMNS}
            for used in embedded_images(row):
                name = spec.source.name if of_image is None else of_image.get(used)
                if name is None:
                    raise InputError(
                        f"embeds image {used!r}, which the prepared set does not hold",
                        file=prepared,
                        record=image_id,
                        field="source_image",
                    )
                rows[name][method] += 1
                images[name].add(used)
    out = {}
    for name, lic in terms.items():
        if not spec.source.redistribution_allowed:  # the spec may narrow, never widen
            lic = SourceLicence(**{**lic.to_json(), "redistribution_allowed": False})
        out[name] = SourceUse(lic, dict(rows[name]), sorted(images[name]))
    return out


def restricted(uses: dict[str, SourceUse]) -> dict[str, SourceUse]:
    """The sources whose pixels the rows embed although their terms forbid redistribution."""
    return {n: u for n, u in uses.items() if u.embedded and not u.licence.redistribution_allowed}


def write_sources(path: Path, uses: dict[str, SourceUse]) -> None:
    path.write_text(json.dumps({n: u.to_json() for n, u in sorted(uses.items())}, indent=1) + "\n", encoding="utf-8")


def read_sources(path: Path) -> dict[str, SourceUse]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("release has no record of its sources' licences; package it again", file=path) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read ({exc})".splitlines()[0], file=path) from None
    out = {}
    for name, entry in (raw or {}).items():
        entry = dict(entry)
        rows, images = entry.pop("rows", {}), entry.pop("images", [])
        out[name] = SourceUse(SourceLicence.from_json(entry, file=path, name=name), rows, images)
    return out


__all__ = ["SOURCES_FILE", "SourceUse", "source_uses", "restricted", "write_sources", "read_sources", "embedded_images"]
