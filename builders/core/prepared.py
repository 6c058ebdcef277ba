"""The prepared training set (the output of `mammosynth ingest`): the one place that spells its
files, opens it (it exists, loads, has the prepared schema's columns) and checks its integrity.
Training, generation, validation and `ingest merge` all open it through here and add only their
own checks.

Beside the arrow files, a prepared set holds ``ingest.json`` (format version, source, licence,
options, counts, the fingerprint that lets a rerun recognise its own output) and ``skipped.csv``
(one row per source record left out: record, file, field, reason).
"""

from __future__ import annotations

import csv
import json
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.schema import PREPARED_COLUMNS

FORMAT_VERSION = 1  # of ingest.json and of the ingest fingerprint
INGEST_INFO = "ingest.json"
SKIPPED_CSV = "skipped.csv"
SKIPPED_COLUMNS = ("record", "file", "field", "reason")
VERIFY_DECODE = 32  # images verify_prepared decodes in full by default (evenly spaced)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GREY = 0  # IHDR colour type of a grey image without alpha


def open_prepared(path: str | Path, *, field: str | None = None) -> datasets.Dataset:
    """``datasets.load_from_disk(path)`` as one Dataset, or InputError naming the file (and
    ``field``, the config field that pointed here, when given)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("prepared training set not found", file=path, field=field)
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"not a prepared training set saved with save_to_disk ({exc})".splitlines()[0],
                         file=path, field=field) from None
    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets(list(ds.values()))
    missing = [c for c in PREPARED_COLUMNS if c not in ds.column_names]
    if missing:
        raise InputError(f"not a prepared training set: missing column(s) {missing}", file=path,
                         field=field or missing[0])
    return ds


# --- ingest.json and skipped.csv -----------------------------------------------------------------

def read_ingest_info(path: str | Path) -> dict[str, Any]:
    """The prepared set's ``ingest.json``; InputError when it is missing or not a JSON object."""
    file = Path(path) / INGEST_INFO
    if not file.is_file():
        raise InputError("missing (every prepared set has one)", file=file)
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read JSON ({exc})".splitlines()[0], file=file) from None
    if not isinstance(info, dict):
        raise InputError("not a JSON object", file=file)
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


def _check_counts(path: Path, info: dict[str, Any], n: int, birads: np.ndarray, flipped: np.ndarray,
                  skipped: int) -> None:
    file = path / INGEST_INFO
    counts = info.get("counts")
    if not isinstance(counts, dict):
        raise InputError("no counts", file=file, field="counts")
    if counts.get("images") != n:
        raise InputError(f"counts {counts.get('images')!r} images, the set has {n} rows", file=file,
                         field="counts.images")
    if "birads" in counts:
        have = {str(b): int(c) for b, c in zip(*np.unique(birads, return_counts=True))}
        if counts["birads"] != have:
            raise InputError(f"BI-RADS counts {counts['birads']} differ from the rows' {have}", file=file,
                             field="counts.birads")
    if "flipped" in counts and counts["flipped"] != int(flipped.sum()):
        raise InputError(f"counts {counts['flipped']!r} flipped images, the rows {int(flipped.sum())}",
                         file=file, field="counts.flipped")
    if "skipped" in counts and counts["skipped"] != skipped:
        raise InputError(f"counts {counts['skipped']!r} skipped records, {SKIPPED_CSV} lists {skipped}",
                         file=file, field="counts.skipped")


def verify_prepared(path: str | Path, *, decode: int | None = VERIFY_DECODE) -> PreparedReport:
    """Check a prepared set before anything trains on it (in the spirit of nnU-Net's
    ``verify_dataset_integrity``): it loads with the prepared columns; ``ingest.json`` is there and
    its counts match the rows (and ``skipped.csv``); image ids are unique; every image is a grey
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
    _check_counts(path, info, n, np.asarray(table.column("birads")), np.asarray(table.column("flipped")),
                  skipped)
    seen: dict[str, int] = {}
    for row, image_id in enumerate(ids):
        if not image_id:
            raise InputError("empty image id", file=path, record=row, field="image_id")
        if image_id in seen:
            raise InputError(f"image id occurs twice (rows {seen[image_id]} and {row})", file=path,
                             record=image_id, field="image_id")
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
                raise InputError("image has neither bytes nor a readable file", file=path, record=image_id,
                                 field="image")
            data = Path(image_path).read_bytes()
        header = _png_header(memoryview(data)[:26].tobytes())
        if header is None:
            raise InputError("image is not a PNG", file=path, record=image_id, field="image")
        w, h, depth, colour = header
        if colour != _PNG_GREY or depth not in allowed:
            want = f"{declared}-bit" if declared is not None else "8- or 16-bit"
            raise InputError(f"image is a {depth}-bit PNG of colour type {colour}, not {want} grey", file=path,
                             record=image_id, field="image")
        if row in full:
            try:
                arr = decode_image(bytes(data))
            except UnreadableImage as exc:
                raise InputError(str(exc), file=path, record=image_id, field="image") from None
            dtype = np.uint8 if depth == 8 else np.uint16
            if arr.shape != (h, w) or arr.dtype != dtype:
                raise InputError(f"image decodes to {arr.dtype} {arr.shape}, its header says {depth}-bit "
                                 f"({h}, {w})", file=path, record=image_id, field="image")
        sizes.append((w, h))
        depths[depth] += 1
    boxes = 0
    for row, findings in enumerate(table.column("findings").to_pylist()):
        w, h = sizes[row]
        for f in findings or ():
            box = f.get("bbox")
            if box is None or len(box) != 4 or not np.all(np.isfinite(box)):
                raise InputError(f"box {box} is not four finite numbers", file=path, record=ids[row],
                                 field="findings.bbox")
            x0, y0, x1, y1 = box
            if not (0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h):
                raise InputError(f"box {[x0, y0, x1, y1]} does not lie inside the {w}x{h} image", file=path,
                                 record=ids[row], field="findings.bbox")
            boxes += 1
    return PreparedReport(path=path, images=n, skipped=skipped, boxes=boxes, bit_depths=tuple(sorted(depths)),
                          decoded=len(full))


__all__ = ["open_prepared", "verify_prepared", "PreparedReport", "read_ingest_info", "ingest_fingerprint",
           "write_skipped", "read_skipped", "FORMAT_VERSION", "INGEST_INFO", "SKIPPED_CSV", "SKIPPED_COLUMNS"]
