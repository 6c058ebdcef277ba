"""The ingest runner: one source's records -> the prepared training set.

Output (design.md §3): ``datasets.Dataset.save_to_disk(OUT)`` with `schema.prepared_features()`,
plus ``skipped.csv`` (source record, file, field, reason) and ``ingest.json`` (options, source,
licence, counts) beside the arrow files (`builders.core.prepared` spells that layout).

A source format (`vindr`, `dicom_folder`) lists the records and the runner prepares their pixels.
Problems with one record skip that record; problems that make the whole input unusable (missing
CSV, missing column, output holding a different dataset) raise one `InputError`.
Per-record results are cached in ``OUT.partial/records`` so a killed run resumes where it stopped;
the dataset is assembled in a staging folder beside OUT and renamed onto OUT only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import cv2
import numpy as np
import pydantic

from mammosynth.builders.core.atomic import atomic_dir, atomic_file, remove_stale
from mammosynth.builders.core.config_io import StrictModel
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.png_blocks import encode_blocked_png
from mammosynth.builders.core.prepared import (
    FORMAT_VERSION,
    INGEST_INFO,
    ingest_fingerprint,
    verify_prepared,
    write_skipped,
)
from mammosynth.builders.core.schema import PREPARED_COLUMNS
from mammosynth.builders.core.workers import worker_pool
from mammosynth.builders.sources import dicom_folder, dicom_io, vindr
from mammosynth.builders.sources.records import (
    PSEUDONYM_KEY_ENV,
    Record,
    Skip,
    SkipRecord,
    Source,
    pseudonym_key,
    pseudonymize,
)


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
    """Read, window, resize and encode one image; raise SkipRecord for per-record problems."""
    try:
        image = dicom_io.read_display(record.path)
    except dicom_io.DicomError as exc:
        raise SkipRecord(exc.field or "file", exc.reason) from None
    hdr = image.header
    h, w = image.pixels.shape
    if record.expect_size is not None and record.expect_size != (h, w):
        raise SkipRecord("height", f"CSV says {record.expect_size[0]}x{record.expect_size[1]}, "
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


def cache_record(job: tuple[Record, IngestOptions, str | None, str]) -> tuple[str, str]:
    """Worker: process one record and cache its row (or skip) atomically; returns (key, status)."""
    record, options, key, cache_dir = job
    try:
        result: Any = process_record(record, options, key)
        status = "ok"
    except SkipRecord as exc:
        result = Skip(record.key, record.path, exc.field, exc.reason)
        status = "skipped"
    with atomic_file(Path(cache_dir) / _cache_name(record.key)) as tmp, open(tmp, "wb") as fh:
        pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return record.key, status


# --- the run: cache, parallel map, atomic assembly -----------------------------------------------

def source_fingerprint(source: Source, src: Path, records: list[Record], skips: list[Skip],
                       options: IngestOptions) -> str:
    """What makes two runs the same dataset: options, the source's index files, its images' names
    and sizes (not the pixels: hashing a full VinDr download would take as long as the ingest)."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, source.kind, options.fingerprint_fields()], sort_keys=True).encode())
    for name in source.index_files:
        p = src / name
        if p.is_file():
            h.update(name.encode() + hashlib.sha256(p.read_bytes()).digest())
    for r in sorted(records, key=lambda r: r.key):
        st = os.stat(r.path)
        h.update(f"{r.key}|{Path(r.path).relative_to(src)}|{st.st_size}".encode())
    h.update(str(len(skips)).encode())
    return h.hexdigest()


def run_ingest(source: Source, src: str | Path, out: str | Path, records: list[Record], skips: list[Skip],
               options: IngestOptions, *, progress: bool = True,
               worker: Callable[[tuple], tuple[str, str]] | None = None) -> Path:
    """Prepare ``records`` of ``source`` (at ``src``) into the prepared set ``out``, resuming a
    killed run; a complete set with the same fingerprint is left as it is."""
    src, out = Path(src), Path(out)
    key = pseudonym_key()
    fingerprint = source_fingerprint(source, src, records, skips, options)
    if out.exists():
        if ingest_fingerprint(out) == fingerprint:
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
    remove_stale(cache)  # rows a killed run was writing
    marker.write_text(fingerprint)
    todo = [r for r in records if not (cache / _cache_name(r.key)).is_file()]
    worker = worker or cache_record
    jobs = [(r, options, key, str(cache)) for r in todo]
    from tqdm import tqdm

    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=f"ingest {source.kind}",
               unit="img", disable=not progress)
    if options.num_proc > 1 and len(jobs) > 1:
        # fork: workers start instantly and inherit the imports (spawn would re-import datasets).
        with worker_pool(min(options.num_proc, len(jobs)), method="fork") as pool:
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
        return _assemble(source, src, out, work, records, skips, options, fingerprint)
    finally:
        if not progress and not was_disabled:
            datasets.enable_progress_bars()


def _assemble(source: Source, src: Path, out: Path, work: Path, records: list[Record], skips: list[Skip],
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
    # Streamed to Arrow (a full VinDr ingest does not fit in memory), cached inside the work dir.
    ds = datasets.Dataset.from_generator(
        rows, features=prepared_features(), cache_dir=str(work / "arrow"),
        gen_kwargs={"cache_dir": str(cache), "keys": [r.key for r in records]})
    with atomic_dir(out) as staged:  # OUT, if there, is empty (checked before the run)
        ds.save_to_disk(str(staged))
        write_skipped(staged, ([s.record, s.file, s.field, s.reason] for s in all_skips))
        info = {
            "format_version": FORMAT_VERSION,
            "source": {"kind": source.kind, "path": str(src.resolve())},
            "licence": options.licence or source.licence,
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
        (staged / INGEST_INFO).write_text(json.dumps(info, indent=2))
        del ds
        verify_prepared(staged)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _ingest(source: Source, src: str | Path, list_records: Callable[[Path], tuple[list[Record], list[Skip]]],
            out: str | Path, options: IngestOptions, progress: bool) -> Path:
    src = Path(src)
    if not src.is_dir():
        raise InputError("source directory not found", file=src)
    records, skips = list_records(src)
    return run_ingest(source, src, out, records, skips, options, progress=progress)


def ingest_vindr(src: str | Path, out: str | Path, options: IngestOptions | None = None, *,
                 progress: bool = True) -> Path:
    """VinDr-Mammo layout (or a phantom) -> prepared training set at `out`."""
    return _ingest(vindr.SOURCE, src, vindr.vindr_records, out, options or IngestOptions(), progress)


def ingest_dicom(src: str | Path, out: str | Path, options: IngestOptions | None = None, *,
                 progress: bool = True) -> Path:
    """A folder of mammography DICOMs -> prepared training set; laterality/view from the tags
    (CBIS-DDSM names as fallback), BI-RADS = `options.birads` for every image."""
    options = options or IngestOptions()

    def list_records(folder: Path) -> tuple[list[Record], list[Skip]]:
        return dicom_folder.dicom_records(folder, birads=options.birads, split=options.split)

    return _ingest(dicom_folder.SOURCE, src, list_records, out, options, progress)
