"""The VinDr-Mammo format: its file names and columns (the phantom writes the same) and the
parsing of its three CSVs into records. Problems with one row skip that image (a broken finding
row skips the whole image, whose labels would otherwise be wrong); a missing CSV or column is one
`InputError` for the whole source."""

from __future__ import annotations

import ast
import csv
import difflib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.prepared import SourceLicence
from mammosynth.builders.core.schema import LATERALITIES, SPLITS, VIEWS, parse_birads, parse_density
from mammosynth.builders.sources.records import Finding, Record, Skip, SkipRecord, Source

BREAST_CSV = "breast-level_annotations.csv"
FINDING_CSV = "finding_annotations.csv"
METADATA_CSV = "metadata.csv"
BREAST_COLUMNS = (
    "study_id",
    "series_id",
    "image_id",
    "laterality",
    "view_position",
    "height",
    "width",
    "breast_birads",
    "breast_density",
    "split",
)
FINDING_COLUMNS = (
    "study_id",
    "series_id",
    "image_id",
    "laterality",
    "view_position",
    "height",
    "width",
    "breast_birads",
    "breast_density",
    "finding_categories",
    "finding_birads",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "split",
)
METADATA_COLUMNS = (
    "SOP Instance UID",
    "Series Instance UID",
    "Patient's Age",
    "Rows",
    "Columns",
    "Photometric Interpretation",
    "Pixel Padding Value",
    "Window Center",
    "Window Width",
    "Manufacturer",
    "Manufacturer's Model Name",
)

# Written by `mammosynth phantom` beside the CSVs: the folder holds synthetic images, no patient's.
PHANTOM_MARKER = "mammosynth-phantom.json"

VINDR_LICENCE = SourceLicence(
    licence="PhysioNet Restricted Health Data License 1.5.0",
    redistribution_allowed=False,  # restricted access: only credentialed users who signed the DUA
    citation=(
        "Pham, H. H., Nguyen Trung, H., & Nguyen, H. Q. (2022). VinDr-Mammo: A large-scale benchmark "
        "dataset for computer-aided detection and diagnosis in full-field digital mammography (version "
        "1.0.0). PhysioNet. https://doi.org/10.13026/br2v-7517. Nguyen, H. T., Nguyen, H. Q., Pham, H. H., "
        "et al. (2023). VinDr-Mammo: A large-scale benchmark dataset for computer-aided diagnosis in "
        "full-field digital mammography. Scientific Data, 10, 277. https://doi.org/10.1038/s41597-023-02100-7. "
        "Goldberger, A. L., et al. (2000). PhysioBank, PhysioToolkit, and PhysioNet. Circulation, 101(23), "
        "e215-e220."
    ),
    url="https://physionet.org/content/vindr-mammo/1.0.0/",
)
PHANTOM_LICENCE = SourceLicence(
    licence="synthetic (mammosynth phantom, no patient data)",
    redistribution_allowed=True,
)

SOURCE = Source(
    kind="vindr", name="VinDr-Mammo", licence=VINDR_LICENCE, index_files=(BREAST_CSV, FINDING_CSV, METADATA_CSV)
)
PHANTOM_SOURCE = Source(
    kind="vindr",
    name="mammosynth phantom",
    licence=PHANTOM_LICENCE,
    index_files=(BREAST_CSV, FINDING_CSV, METADATA_CSV, PHANTOM_MARKER),
)


def vindr_source(src: Path) -> Source:
    """VinDr-Mammo, or the phantom when `mammosynth phantom` wrote the folder."""
    return PHANTOM_SOURCE if (Path(src) / PHANTOM_MARKER).is_file() else SOURCE


def read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Rows with stripped keys and values; InputError for a missing file or column (with the
    closest column name as a hint: real downloads have been renamed by hand)."""
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


def parse_box(row: dict[str, str]) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a finding row, finite and ordered."""
    try:
        x0, y0, x1, y1 = (float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError:
        raise SkipRecord("xmin", "box coordinates are not numbers") from None
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise SkipRecord("xmin", "box coordinates are not finite")
    if x0 >= x1:
        raise SkipRecord("xmin", f"box has xmin >= xmax ({x0} >= {x1})")
    if y0 >= y1:
        raise SkipRecord("ymin", f"box has ymin >= ymax ({y0} >= {y1})")
    return x0, y0, x1, y1


def parse_categories(text: str) -> list[str]:
    """VinDr writes categories as a Python list literal (``"['Mass', 'Suspicious Calcification']"``)."""
    try:
        value = ast.literal_eval(text) if text.startswith("[") else [text]
    except (ValueError, SyntaxError):
        raise SkipRecord("finding_categories", f"cannot parse category list {text!r}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SkipRecord("finding_categories", f"not a list of strings: {text!r}")
    return [v.strip() for v in value]


def vindr_records(src: Path) -> tuple[list[Record], list[Skip]]:
    """Parse the three CSVs into records; per-record problems become skips."""
    breast_csv, finding_csv = src / BREAST_CSV, src / FINDING_CSV
    breast = read_csv(breast_csv, BREAST_COLUMNS)
    findings = read_csv(finding_csv, FINDING_COLUMNS)
    meta: dict[str, dict[str, str]] = {}
    if (src / METADATA_CSV).is_file():
        for row in read_csv(src / METADATA_CSV, ("SOP Instance UID",)):
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
                raise SkipRecord("image_id", "empty image_id")
            if counts[image_id] > 1:
                raise SkipRecord("image_id", f"duplicate image_id ({counts[image_id]} rows): labels are ambiguous")
            try:
                birads = parse_birads(row["breast_birads"])
            except ValueError as exc:
                raise SkipRecord("breast_birads", str(exc)) from None
            try:
                density = parse_density(row["breast_density"])
            except ValueError as exc:
                raise SkipRecord("breast_density", str(exc)) from None
            lat, view = row["laterality"].upper(), row["view_position"].upper()
            if lat not in LATERALITIES:
                raise SkipRecord("laterality", f"unknown laterality {row['laterality']!r}")
            if view not in VIEWS:
                raise SkipRecord("view_position", f"unknown view {row['view_position']!r}")
            split = row["split"].lower()
            if split not in SPLITS:
                raise SkipRecord("split", f"unknown split {row['split']!r}")
            try:
                expect = (int(float(row["height"])), int(float(row["width"])))
            except ValueError:
                raise SkipRecord("height", "height/width are not numbers") from None
            if not path.is_file():
                raise SkipRecord("file", "image listed in the CSV is missing on disk")
        except SkipRecord as exc:
            skips.append(Skip(ref, str(path), exc.field, exc.reason))
            continue
        m = meta.get(image_id, {})
        records[image_id] = Record(
            key=image_id,
            path=str(path),
            study_id=row["study_id"],
            laterality=lat,
            view=view,
            birads=birads,
            density=density,
            split=split,
            manufacturer=m.get("Manufacturer") or None,
            model_name=m.get("Manufacturer's Model Name") or None,
            expect_size=expect,
        )
    bad: dict[str, Skip] = {}
    for i, row in enumerate(findings, start=2):
        image_id = row["image_id"]
        ref = f"{FINDING_CSV}:{i} {image_id}"
        rec = records.get(image_id)
        if rec is None:
            if counts.get(image_id, 0) == 0:
                skips.append(Skip(ref, "", "image_id", f"finding for an image not in {BREAST_CSV}"))
            continue
        try:
            cats = parse_categories(row["finding_categories"])
            if cats == ["No Finding"] or not cats:
                continue
            box = parse_box(row)
            fb_text = row["finding_birads"]
            try:
                fb = parse_birads(fb_text) if fb_text else None  # empty for lymph nodes, skin, nipple
            except ValueError as exc:
                raise SkipRecord("finding_birads", str(exc)) from None
        except SkipRecord as exc:
            bad.setdefault(image_id, Skip(ref, rec.path, exc.field, exc.reason))
            continue
        rec.findings.append(Finding(box, cats, fb))
    # An image with a broken finding row would be trained on with wrong labels: skip the image.
    for image_id, skip in bad.items():
        records.pop(image_id, None)
        skips.append(skip)
    return list(records.values()), skips
