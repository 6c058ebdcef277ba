"""The prepared training set (the output of `mammosynth ingest`): the one place that spells its
files, opens it (it exists, loads, has the prepared schema's columns) and checks its integrity.
Training, generation, validation and `ingest merge` all open it through here and add only their
own checks.

Beside the arrow files, a prepared set holds ``ingest.json`` (format version, source, options,
counts, the fingerprint that lets a rerun recognise its own output, and ``sources``: the licence of
every source its rows came from) and ``skipped.csv`` (one row per source record left out: record,
file, field, reason).

Licences travel with the data, per row. Each row's ``source`` column (`schema.SOURCE_COLUMN`)
names its source; ``ingest.json`` maps that name to its terms. Stages that publish or describe
pixels ask here, never the release spec alone::

    terms = licences(path)                      # {"CBIS-DDSM": SourceLicence(...), ...}
    info = read_ingest_info(path)
    for row in open_prepared(path).select_columns(["image_id", "source"]):
        lic = terms[row_source(row, info)]      # .licence, .redistribution_allowed, .attribution

`row_source` falls back to the single source of ``ingest.json`` when the column is absent (sets
written before it existed); sets without any ``sources`` entry read as one source whose licence is
the old ``licence`` text (or ``unknown``) and whose redistribution is not allowed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from mammosynth.builders.core.errors import InputError, environment_error
from mammosynth.builders.core.schema import PREPARED_COLUMNS, SOURCE_COLUMN

FORMAT_VERSION = 1  # of ingest.json and of the ingest fingerprint
INGEST_INFO = "ingest.json"
SKIPPED_CSV = "skipped.csv"
SKIPPED_COLUMNS = ("record", "file", "field", "reason")
VERIFY_DECODE = 32  # images verify_prepared decodes in full by default (evenly spaced)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GREY = 0  # IHDR colour type of a grey image without alpha


def open_prepared(path: str | Path, *, field: str | None = None) -> datasets.Dataset:
    """``datasets.load_from_disk(path)`` as one Dataset, or InputError naming the file (and
    ``field``, the config field that pointed here, when given): a missing folder, one not written
    by ``save_to_disk``, a truncated or unreadable ``.arrow`` file, a missing prepared column."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("prepared training set not found", file=path, field=field)
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise InputError(
            f"not a prepared training set saved with save_to_disk ({exc})".splitlines()[0], file=path, field=field
        ) from None
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        if isinstance(exc, OSError) and environment_error(exc) is not None:
            raise  # permission and the like: the exit-code mapping says so in one line
        bad = unreadable_arrow_file(path)
        what = "truncated or unreadable arrow file" if bad is not None else "not a prepared training set"
        raise InputError(
            f"{what} ({type(exc).__name__}: {exc})".splitlines()[0], file=bad or path, field=field
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets(list(ds.values()))
    missing = [c for c in PREPARED_COLUMNS if c not in ds.column_names]
    if missing:
        raise InputError(
            f"not a prepared training set: missing column(s) {missing}", file=path, field=field or missing[0]
        )
    return ds


def unreadable_arrow_file(path: str | Path) -> Path | None:
    """The first ``.arrow`` file under ``path`` (a saved set, or a DatasetDict's split folders)
    that pyarrow cannot read to its end; None when they all read. Used to name the culprit."""
    for file in sorted(Path(path).rglob("*.arrow")):
        try:
            with pa.memory_map(str(file)) as source:
                pa.ipc.open_stream(source).read_all()
        except (OSError, pa.ArrowException):
            return file
    return None


# --- ingest.json and skipped.csv -----------------------------------------------------------------

# The JSON type of each top-level key of ingest.json that readers rely on.
_INFO_TYPES: dict[str, tuple[type, str]] = {
    "format_version": (int, "number"),
    "source": (dict, "object"),
    "options": (dict, "object"),
    "counts": (dict, "object"),
    "sources": (dict, "object"),
    "fingerprint": (str, "string"),
    "pseudonym_key_digest": (str, "string"),
}


def read_ingest_info(path: str | Path) -> dict[str, Any]:
    """The prepared set's ``ingest.json``; InputError when it is missing, not a JSON object, or one
    of its known keys has the wrong JSON type (named as the field)."""
    file = Path(path) / INGEST_INFO
    if not file.is_file():
        raise InputError("missing (every prepared set has one)", file=file)
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and environment_error(exc) is not None:
            raise
        raise InputError(f"cannot read JSON ({exc})".splitlines()[0], file=file) from None
    if not isinstance(info, dict):
        raise InputError("not a JSON object", file=file)
    for key, (kind, name) in _INFO_TYPES.items():
        if key in info and info[key] is not None and not isinstance(info[key], kind):
            raise InputError(f"must be a JSON {name}, not {type(info[key]).__name__}", file=file, field=key)
    return info


def ingest_fingerprint(path: str | Path) -> str | None:
    """The fingerprint a complete ingest recorded at ``path``; None when there is none to read."""
    try:
        value = read_ingest_info(path).get("fingerprint")
    except InputError:
        return None
    return value if isinstance(value, str) else None


def write_skipped(path: str | Path, rows: Iterable[Sequence[str]]) -> None:
    """Write ``skipped.csv`` into the prepared set folder ``path``."""
    with open(Path(path) / SKIPPED_CSV, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(SKIPPED_COLUMNS)
        writer.writerows(rows)


def read_skipped(path: str | Path) -> list[list[str]]:
    """The rows (header dropped) of the prepared set's ``skipped.csv``; none when it has no file."""
    file = Path(path) / SKIPPED_CSV
    if not file.is_file():
        return []
    with open(file, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


# --- licences: per source, per row ----------------------------------------------------------------

UNKNOWN_LICENCE = "unknown"


@dataclass(frozen=True)
class SourceLicence:
    """The terms of one source's images, as ``ingest.json`` records them under ``sources``."""

    licence: str  # e.g. "CC BY 3.0"; "unknown" when nobody declared one
    redistribution_allowed: bool  # may the source's pixels (or rows embedding them) be published?
    attribution: str | None = None  # the credit line the licence asks for
    citation: str | None = None  # papers to cite
    url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: Any, *, file: Path | None = None, name: str = "") -> SourceLicence:
        """One ``sources`` entry; InputError naming ``sources.<name>.<key>`` when malformed."""
        where = f"sources.{name}"
        if not isinstance(value, dict):
            raise InputError("must be a JSON object", file=file, field=where)
        licence = value.get("licence")
        if not isinstance(licence, str) or not licence.strip():
            raise InputError("must be a non-empty string", file=file, field=f"{where}.licence")
        allowed = value.get("redistribution_allowed")
        if not isinstance(allowed, bool):
            raise InputError("must be true or false", file=file, field=f"{where}.redistribution_allowed")
        texts = {}
        for key in ("attribution", "citation", "url"):
            text = value.get(key)
            if text is not None and not isinstance(text, str):
                raise InputError("must be a string or null", file=file, field=f"{where}.{key}")
            texts[key] = text
        return cls(licence=licence, redistribution_allowed=allowed, **texts)


def source_licences(info: Mapping[str, Any], *, file: str | Path | None = None) -> dict[str, SourceLicence]:
    """Source name -> terms, from an ``ingest.json`` mapping (``file`` names it in errors).

    Without a ``sources`` entry (sets written before licences travelled per source) the set reads
    as one source named after its kind, under its old ``licence`` text, redistribution not allowed."""
    file = Path(file) if file is not None else None
    sources = info.get("sources")
    if sources is None:
        source = info.get("source")
        name = str(source.get("kind") or UNKNOWN_LICENCE) if isinstance(source, dict) else UNKNOWN_LICENCE
        old = info.get("licence")
        text = "; ".join(map(str, old)) if isinstance(old, list) else str(old or UNKNOWN_LICENCE)
        return {name: SourceLicence(licence=text or UNKNOWN_LICENCE, redistribution_allowed=False)}
    if not isinstance(sources, dict) or not sources:
        raise InputError("must be a non-empty JSON object", file=file, field="sources")
    return {str(name): SourceLicence.from_json(value, file=file, name=str(name)) for name, value in sources.items()}


def licences(path: str | Path) -> dict[str, SourceLicence]:
    """Source name -> `SourceLicence` of the prepared set at ``path`` (from its ``ingest.json``)."""
    return source_licences(read_ingest_info(path), file=Path(path) / INGEST_INFO)


def row_source(row: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """The name of the source ``row`` came from: its ``source`` column, or, when the set has no
    such column, the single source ``info`` (the set's ``ingest.json``) lists. InputError when the
    name is not among ``info``'s sources, or the column is absent and there are several."""
    names = source_licences(info)
    name = row.get(SOURCE_COLUMN)
    record = row.get("image_id")
    if name:
        if name not in names:
            raise InputError(
                f"source {name!r} is not listed in {INGEST_INFO} (lists {sorted(names)})",
                record=record,
                field=SOURCE_COLUMN,
            )
        return str(name)
    if len(names) == 1:
        return next(iter(names))
    raise InputError(
        f"row names no source and {INGEST_INFO} lists {len(names)} ({sorted(names)})",
        record=record,
        field=SOURCE_COLUMN,
    )


def prepared_bit_depth(ds: datasets.Dataset, info: Mapping[str, Any], *, path: str | Path) -> int | None:
    """8 or 16: the bit depth ``ingest.json`` declares (``options.bit_depth``), else that of the
    first image's PNG header; None for an empty set without a declaration."""
    declared = (info.get("options") or {}).get("bit_depth")
    if declared is not None:
        if declared not in (8, 16):
            raise InputError(
                f"bit depth {declared!r} is not 8 or 16", file=Path(path) / INGEST_INFO, field="options.bit_depth"
            )
        return int(declared)
    if len(ds) == 0:
        return None
    table = ds.select_columns(["image"]).with_format("arrow")[:1]
    data, image_path = next(_image_heads(table))
    if data is None and image_path and Path(image_path).is_file():
        data = Path(image_path).read_bytes()
    header = _png_header(memoryview(data)[:26].tobytes()) if data is not None else None
    if header is None:
        raise InputError("image is not a PNG", file=path, record=ds[0]["image_id"], field="image")
    return header[2]


# --- integrity -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedReport:
    """What `verify_prepared` checked."""

    path: Path
    images: int
    skipped: int
    boxes: int
    bit_depths: tuple[int, ...]  # the PNG bit depths found
    decoded: int  # images decoded in full (the others by their PNG header)


def _image_heads(table: Any) -> Iterator[tuple[bytes | None, str | None]]:
    """(bytes, path) per row of an arrow ``image`` column, zero-copy for the bytes."""
    for chunk in table.column("image").chunks:
        data, paths = chunk.flatten()  # struct<bytes, path>, with the chunk's offset applied
        for i in range(len(chunk)):
            b = data[i]
            yield (b.as_buffer() if b.is_valid else None), paths[i].as_py()


def _png_header(head: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) of PNG bytes, or None when they are no PNG."""
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    w, h, depth, colour = struct.unpack(">IIBB", head[16:26])
    return w, h, depth, colour


def _check_counts(
    path: Path, info: dict[str, Any], n: int, birads: np.ndarray, flipped: np.ndarray, skipped: int
) -> None:
    file = path / INGEST_INFO
    counts = info.get("counts")
    if not isinstance(counts, dict):
        raise InputError("no counts", file=file, field="counts")
    if counts.get("images") != n:
        raise InputError(
            f"counts {counts.get('images')!r} images, the set has {n} rows", file=file, field="counts.images"
        )
    if "birads" in counts:
        have = {str(b): int(c) for b, c in zip(*np.unique(birads, return_counts=True))}
        if counts["birads"] != have:
            raise InputError(
                f"BI-RADS counts {counts['birads']} differ from the rows' {have}", file=file, field="counts.birads"
            )
    if "flipped" in counts and counts["flipped"] != int(flipped.sum()):
        raise InputError(
            f"counts {counts['flipped']!r} flipped images, the rows {int(flipped.sum())}",
            file=file,
            field="counts.flipped",
        )
    if "skipped" in counts and counts["skipped"] != skipped:
        raise InputError(
            f"counts {counts['skipped']!r} skipped records, {SKIPPED_CSV} lists {skipped}",
            file=file,
            field="counts.skipped",
        )


def verify_prepared(path: str | Path, *, decode: int | None = VERIFY_DECODE) -> PreparedReport:
    """Check a prepared set before anything trains on it (in the spirit of nnU-Net's
    ``verify_dataset_integrity``): it loads with the prepared columns; ``ingest.json`` is there and
    its counts match the rows (and ``skipped.csv``); every row's source has a licence entry; image
    ids are unique; every image is a grey
    PNG at the declared bit depth (from its header), ``decode`` evenly spaced ones (None: all)
    decode in full to that size and depth; every box lies inside its image.

    Returns a `PreparedReport`; the first problem raises `InputError` naming the file, the record
    (the image id) and the field."""
    from mammosynth.builders.core.imageio import UnreadableImage
    from mammosynth.builders.core.imageio import decode as decode_image

    path = Path(path)
    ds = open_prepared(path)
    info = read_ingest_info(path)
    table = ds.select_columns(["image", "image_id", "birads", "flipped", "findings"]).with_format("arrow")[:]
    n = table.num_rows
    ids = table.column("image_id").to_pylist()
    skipped = len(read_skipped(path))
    _check_counts(path, info, n, np.asarray(table.column("birads")), np.asarray(table.column("flipped")), skipped)
    terms = source_licences(info, file=path / INGEST_INFO)
    if SOURCE_COLUMN in ds.column_names:
        for row, name in enumerate(ds.select_columns([SOURCE_COLUMN]).with_format("arrow")[:].column(0).to_pylist()):
            if name not in terms:
                raise InputError(
                    f"source {name!r} is not listed in {INGEST_INFO} (lists {sorted(terms)})",
                    file=path,
                    record=ids[row],
                    field=SOURCE_COLUMN,
                )
    seen: dict[str, int] = {}
    for row, image_id in enumerate(ids):
        if not image_id:
            raise InputError("empty image id", file=path, record=row, field="image_id")
        if image_id in seen:
            raise InputError(
                f"image id occurs twice (rows {seen[image_id]} and {row})", file=path, record=image_id, field="image_id"
            )
        seen[image_id] = row
    declared = (info.get("options") or {}).get("bit_depth")
    allowed = (declared,) if declared is not None else (8, 16)
    full = set(range(n)) if decode is None else set(np.linspace(0, n - 1, min(decode, n)).round().astype(int).tolist())
    sizes: list[tuple[int, int]] = []
    depths: Counter[int] = Counter()
    for row, (data, image_path) in enumerate(_image_heads(table)):
        image_id = ids[row]
        if data is None:
            if not image_path or not Path(image_path).is_file():
                raise InputError(
                    "image has neither bytes nor a readable file", file=path, record=image_id, field="image"
                )
            data = Path(image_path).read_bytes()
        header = _png_header(memoryview(data)[:26].tobytes())
        if header is None:
            raise InputError("image is not a PNG", file=path, record=image_id, field="image")
        w, h, depth, colour = header
        if colour != _PNG_GREY or depth not in allowed:
            want = f"{declared}-bit" if declared is not None else "8- or 16-bit"
            raise InputError(
                f"image is a {depth}-bit PNG of colour type {colour}, not {want} grey",
                file=path,
                record=image_id,
                field="image",
            )
        if row in full:
            try:
                arr = decode_image(bytes(data))
            except UnreadableImage as exc:
                raise InputError(str(exc), file=path, record=image_id, field="image") from None
            dtype = np.uint8 if depth == 8 else np.uint16
            if arr.shape != (h, w) or arr.dtype != dtype:
                raise InputError(
                    f"image decodes to {arr.dtype} {arr.shape}, its header says {depth}-bit ({h}, {w})",
                    file=path,
                    record=image_id,
                    field="image",
                )
        sizes.append((w, h))
        depths[depth] += 1
    boxes = 0
    for row, findings in enumerate(table.column("findings").to_pylist()):
        w, h = sizes[row]
        for f in findings or ():
            box = f.get("bbox")
            if box is None or len(box) != 4 or not np.all(np.isfinite(box)):
                raise InputError(
                    f"box {box} is not four finite numbers", file=path, record=ids[row], field="findings.bbox"
                )
            x0, y0, x1, y1 = box
            if not (0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h):
                raise InputError(
                    f"box {[x0, y0, x1, y1]} does not lie inside the {w}x{h} image",
                    file=path,
                    record=ids[row],
                    field="findings.bbox",
                )
            boxes += 1
    return PreparedReport(
        path=path, images=n, skipped=skipped, boxes=boxes, bit_depths=tuple(sorted(depths)), decoded=len(full)
    )


__all__ = [
    "open_prepared",
    "unreadable_arrow_file",
    "verify_prepared",
    "PreparedReport",
    "read_ingest_info",
    "ingest_fingerprint",
    "write_skipped",
    "read_skipped",
    "SourceLicence",
    "source_licences",
    "licences",
    "row_source",
    "prepared_bit_depth",
    "UNKNOWN_LICENCE",
    "FORMAT_VERSION",
    "INGEST_INFO",
    "SKIPPED_CSV",
    "SKIPPED_COLUMNS",
]
