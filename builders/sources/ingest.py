"""The ingest runner: one source's records -> the prepared training set.

Output (design.md §3): ``datasets.Dataset.save_to_disk(OUT)`` with
`schema.prepared_features(with_source=True)`, plus ``skipped.csv`` (source record, file, field,
reason) and ``ingest.json`` (options, source, its licence under ``sources``, counts) beside the
arrow files (`builders.core.prepared` spells that layout).

A source format (`vindr`, `dicom_folder`) lists the records and the runner prepares their pixels.
Problems with one record skip that record; problems that make the whole input unusable (missing
CSV, missing column, output holding a different dataset or lying inside the source) raise one
`InputError`. The run holds OUT's folder lock, so a second ingest into it stops at once.
Per-record results are cached in ``OUT.partial/records`` (keyed by record and pseudonym key) so a
killed run resumes where it stopped; the dataset is assembled in a staging folder beside OUT and
renamed onto OUT only when complete; a killed run's staging folder is removed by the next run of
the same OUT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import cv2
import numpy as np
import pydantic

from mammosynth.builders.core.atomic import TMP_MARK, atomic_dir, atomic_file, remove_stale
from mammosynth.builders.core.config_io import StrictModel
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.locks import folder_lock
from mammosynth.builders.core.png_blocks import encode_blocked_png
from mammosynth.builders.core.prepared import (
    FORMAT_VERSION,
    INGEST_INFO,
    SourceLicence,
    ingest_fingerprint,
    read_ingest_info,
    verify_prepared,
    write_skipped,
)
from mammosynth.builders.core.schema import PREPARED_COLUMNS, SOURCE_COLUMN
from mammosynth.builders.core.workers import worker_pool
from mammosynth.builders.sources import dicom_folder, dicom_io, vindr
from mammosynth.builders.sources.records import (
    PSEUDONYM_KEY_ENV,
    Record,
    Skip,
    SkipRecord,
    Source,
    pseudonym_key,
    pseudonym_key_digest,
    pseudonymize,
)


class IngestOptions(StrictModel):
    """How source images become prepared images. Every field is also a CLI option."""

    size: int | None = pydantic.Field(1024, ge=16, description="long side in pixels (None: keep)")
    mode: Literal["resize", "crop"] = pydantic.Field(
        "resize",
        description="resize: long side = size; crop: MAM-E style, short side = size then centre crop to size x size",
    )
    bit_depth: Literal[8, 16] = 16
    flip_right: bool = pydantic.Field(False, description="mirror right breasts to the left")
    num_proc: int = pydantic.Field(1, ge=1)
    png_compression: int = pydantic.Field(
        1, ge=0, le=9, description="deflate level of the prepared PNGs: 0-3 ISA-L (fast), 4-9 zlib (smaller, slower)"
    )
    birads: int = pydantic.Field(
        1, ge=1, le=5, description="`ingest dicom`: BI-RADS of every image (plain DICOM folders carry no assessment)"
    )
    split: Literal["training", "test"] = pydantic.Field("training", description="`ingest dicom` split")
    licence: str | None = pydantic.Field(
        None,
        min_length=1,
        description="declare the source's licence (defaults: VinDr-Mammo PhysioNet "
        "restricted, the CBIS-DDSM samples CC BY 3.0, any other DICOM folder `unknown`)",
    )
    redistribution_allowed: bool | None = pydantic.Field(
        None, description="with `licence`: may its images be published? (unset: no)"
    )
    attribution: str | None = pydantic.Field(
        None, min_length=1, description="with `licence`: the credit line it asks for"
    )
    source_name: str | None = pydantic.Field(
        None,
        min_length=1,
        description="the rows' `source` name (defaults: VinDr-Mammo, mammosynth phantom, "
        "CBIS-DDSM, or the DICOM folder's name)",
    )

    @pydantic.field_validator("redistribution_allowed", "attribution")
    @classmethod
    def _needs_licence(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        if value is not None and info.data.get("licence") is None:
            raise ValueError("is part of a licence declaration: give the licence too (--licence)")
        return value

    def fingerprint_fields(self) -> dict[str, Any]:
        """Options that change the output (num_proc does not)."""
        return self.model_dump(exclude={"num_proc"})

    def source_for(self, source: Source) -> Source:
        """``source`` under the name and licence these options declare (else its defaults)."""
        licence = source.licence
        if self.licence is not None:
            licence = SourceLicence(
                licence=self.licence,
                redistribution_allowed=bool(self.redistribution_allowed),
                attribution=self.attribution,
            )
        return dataclasses.replace(source, name=self.source_name or source.name, licence=licence)


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
        out = resized[oy : oy + options.size, ox : ox + options.size]
        sx, sy = nw / w, nh / h
    if options.bit_depth == 8:
        # Rounded 16 -> 8 bit: (x + 128) // 257 maps 0..65535 onto 0..255 exactly.
        out = ((out.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return np.ascontiguousarray(out), sx, sy, ox, oy


def transform_box(
    box: tuple[float, float, float, float],
    orig: tuple[int, int],
    scale: tuple[float, float],
    offset: tuple[int, int],
    out_size: tuple[int, int],
    flip: bool,
) -> list[float] | None:
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
        raise SkipRecord("height", f"CSV says {record.expect_size[0]}x{record.expect_size[1]}, DICOM has {h}x{w}")
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


def _cache_name(record_key: str, key_digest: str) -> str:
    """The cache file of one record under one pseudonym key (its ids depend on both)."""
    return hashlib.sha256(f"{key_digest}|{record_key}".encode()).hexdigest()[:40] + ".pkl"


def cache_record(job: tuple[Record, IngestOptions, str | None, str, str]) -> tuple[str, str]:
    """Worker: process one record and cache its row (or skip) atomically; returns (key, status).

    ``job`` is (record, options, pseudonym key, cache folder, digest of that key)."""
    record, options, key, cache_dir, key_digest = job
    try:
        result: Any = process_record(record, options, key)
        status = "ok"
    except SkipRecord as exc:
        result = Skip(record.key, record.path, exc.field, exc.reason)
        status = "skipped"
    with atomic_file(Path(cache_dir) / _cache_name(record.key, key_digest)) as tmp, open(tmp, "wb") as fh:
        pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return record.key, status


# --- the run: cache, parallel map, atomic assembly -----------------------------------------------


def source_fingerprint(
    source: Source, src: Path, records: list[Record], skips: list[Skip], options: IngestOptions, key_digest: str
) -> str:
    """What makes two runs the same dataset: options, the source (kind, name, licence) and its
    index files, its images' names and sizes (not the pixels: hashing a full VinDr download would
    take as long as the ingest), and the pseudonym key (by its digest) the ids are made with."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                FORMAT_VERSION,
                source.kind,
                source.name,
                source.licence.to_json(),
                options.fingerprint_fields(),
                key_digest,
            ],
            sort_keys=True,
        ).encode()
    )
    for name in source.index_files:
        p = src / name
        if p.is_file():
            h.update(name.encode() + hashlib.sha256(p.read_bytes()).digest())
    for r in sorted(records, key=lambda r: r.key):
        st = os.stat(r.path)
        h.update(f"{r.key}|{Path(r.path).relative_to(src)}|{st.st_size}".encode())
    h.update(str(len(skips)).encode())
    return h.hexdigest()


def refuse_nested(out: Path, src: Path, what: str = "source") -> None:
    """OUT and a folder it is made from must not contain each other (a source folder would list
    the output's own files, an output replaced as a whole would take its source with it)."""
    o, s = out.resolve(), src.resolve()
    if o == s or o.is_relative_to(s):
        raise InputError(f"the output lies inside the {what} folder {src}; choose an OUT outside it", file=out)
    if s.is_relative_to(o):
        raise InputError(f"the {what} folder lies inside the output {out}; choose an OUT outside it", file=src)


def remove_own_temporaries(target: Path) -> list[Path]:
    """Remove the staging folders killed runs of ``target`` left beside it (``.<name>.tmp-<pid>``,
    see `core.atomic`); other targets' temporaries in the same folder, whose runs may be alive, are
    left alone. Call it holding ``target``'s folder lock."""
    own = re.compile(rf"^\.{re.escape(target.name)}{re.escape(TMP_MARK)}\d+$")
    if not target.parent.is_dir():
        return []
    stale = [p for p in target.parent.iterdir() if own.match(p.name)]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def _refuse_other_key(out: Path, key_digest: str) -> None:
    """A complete set made under another pseudonym key: its ids would not match this run's."""
    try:
        made_with = read_ingest_info(out).get("pseudonym_key_digest")
    except InputError:
        return
    if made_with is not None and made_with != key_digest:
        raise InputError(
            f"was ingested under another pseudonym key; rerun with the {PSEUDONYM_KEY_ENV} it was "
            "made with, or choose another OUT",
            file=out,
            field=PSEUDONYM_KEY_ENV,
        )


def run_ingest(
    source: Source,
    src: str | Path,
    out: str | Path,
    records: list[Record],
    skips: list[Skip],
    options: IngestOptions,
    *,
    progress: bool = True,
    worker: Callable[[tuple], tuple[str, str]] | None = None,
) -> Path:
    """Prepare ``records`` of ``source`` (at ``src``) into the prepared set ``out``, resuming a
    killed run; a complete set with the same fingerprint is left as it is."""
    src, out = Path(src), Path(out)
    refuse_nested(out, src)
    if out.is_file():
        raise InputError("exists and is a file, not a prepared set folder", file=out)
    source = options.source_for(source)
    with folder_lock(out, "ingest"):
        remove_own_temporaries(out)
        key = pseudonym_key()
        key_digest = pseudonym_key_digest(key)
        fingerprint = source_fingerprint(source, src, records, skips, options, key_digest)
        if out.exists():
            if ingest_fingerprint(out) == fingerprint:
                return out  # the same dataset is already complete
            if any(out.iterdir()):
                _refuse_other_key(out, key_digest)
                raise InputError(
                    "output directory already holds a different dataset or other files; "
                    "choose another OUT or remove it",
                    file=out,
                )
        work = out.with_name(out.name + ".partial")
        cache = work / "records"
        marker = work / "fingerprint"
        if work.exists() and (not marker.is_file() or marker.read_text() != fingerprint):
            shutil.rmtree(work)  # cached work from other options/source/key: not reusable
        cache.mkdir(parents=True, exist_ok=True)
        remove_stale(cache)  # rows a killed run was writing
        marker.write_text(fingerprint)
        todo = [r for r in records if not (cache / _cache_name(r.key, key_digest)).is_file()]
        worker = worker or cache_record
        jobs = [(r, options, key, str(cache), key_digest) for r in todo]
        from tqdm import tqdm

        bar = tqdm(
            total=len(records),
            initial=len(records) - len(todo),
            desc=f"ingest {source.kind}",
            unit="img",
            disable=not progress,
        )
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
            return _assemble(source, src, out, work, records, skips, options, fingerprint, key_digest)
        finally:
            if not progress and not was_disabled:
                datasets.enable_progress_bars()


def _assemble(
    source: Source,
    src: Path,
    out: Path,
    work: Path,
    records: list[Record],
    skips: list[Skip],
    options: IngestOptions,
    fingerprint: str,
    key_digest: str,
) -> Path:
    import datasets

    from mammosynth.builders.core.schema import prepared_features

    cache = work / "records"
    all_skips = list(skips)

    def rows(cache_dir: str, keys: list[str], source_name: str, key_digest: str):
        for k in keys:
            with open(Path(cache_dir) / _cache_name(k, key_digest), "rb") as fh:
                result = pickle.load(fh)
            if not isinstance(result, Skip):
                yield {**{c: result[c] for c in PREPARED_COLUMNS}, SOURCE_COLUMN: source_name}

    for r in records:
        with open(cache / _cache_name(r.key, key_digest), "rb") as fh:
            result = pickle.load(fh)
        if isinstance(result, Skip):
            all_skips.append(result)
    n_ok = len(records) - (len(all_skips) - len(skips))
    if n_ok == 0:
        raise InputError(
            f"no usable images ({len(all_skips)} skipped; first: {all_skips[0].reason if all_skips else 'none'})",
            file=src,
        )
    # Streamed to Arrow (a full VinDr ingest does not fit in memory), cached inside the work dir.
    ds = datasets.Dataset.from_generator(
        rows,
        features=prepared_features(with_source=True),
        cache_dir=str(work / "arrow"),
        gen_kwargs={
            "cache_dir": str(cache),
            "keys": [r.key for r in records],
            "source_name": source.name,
            "key_digest": key_digest,
        },
    )
    with atomic_dir(out) as staged:  # OUT, if there, is empty (checked before the run)
        ds.save_to_disk(str(staged))
        write_skipped(staged, ([s.record, s.file, s.field, s.reason] for s in all_skips))
        info = {
            "format_version": FORMAT_VERSION,
            "source": {"kind": source.kind, "name": source.name, "path": str(src.resolve())},
            "sources": {source.name: source.licence.to_json()},
            "options": options.model_dump(),
            "pseudonym_key": "custom" if os.environ.get(PSEUDONYM_KEY_ENV) else "default",
            "pseudonym_key_digest": key_digest,
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


def _ingest(
    source: Source,
    src: str | Path,
    list_records: Callable[[Path], tuple[list[Record], list[Skip]]],
    out: str | Path,
    options: IngestOptions,
    progress: bool,
) -> Path:
    src = Path(src)
    if not src.is_dir():
        raise InputError("source directory not found", file=src)
    refuse_nested(Path(out), src)  # before listing: the source must not list the output's files
    records, skips = list_records(src)
    return run_ingest(source, src, out, records, skips, options, progress=progress)


def ingest_vindr(
    src: str | Path, out: str | Path, options: IngestOptions | None = None, *, progress: bool = True
) -> Path:
    """VinDr-Mammo layout (or a phantom) -> prepared training set at `out`."""
    return _ingest(vindr.vindr_source(Path(src)), src, vindr.vindr_records, out, options or IngestOptions(), progress)


def ingest_dicom(
    src: str | Path, out: str | Path, options: IngestOptions | None = None, *, progress: bool = True
) -> Path:
    """A folder of mammography DICOMs -> prepared training set; laterality/view from the tags
    (CBIS-DDSM names as fallback), BI-RADS = `options.birads` for every image. Its licence is
    `unknown` (CC BY 3.0 for the CBIS-DDSM samples) unless `options.licence` declares one."""
    options = options or IngestOptions()

    def list_records(folder: Path) -> tuple[list[Record], list[Skip]]:
        return dicom_folder.dicom_records(folder, birads=options.birads, split=options.split)

    return _ingest(dicom_folder.dicom_source(Path(src)), src, list_records, out, options, progress)
