"""Phantom source: VinDr layout, value formats and quirks, vendor formats, image content."""

from __future__ import annotations

import ast
import csv
import filecmp
import re

import numpy as np
import pydicom
import pytest

from mammosynth.builders.sources.dicom_io import read_display
from mammosynth.builders.sources.phantom import write_phantom
from mammosynth.builders.sources.vindr import BREAST_COLUMNS, FINDING_COLUMNS

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _columns(path):
    with open(path, newline="") as fh:
        return tuple(next(csv.reader(fh)))


def test_layout_columns_and_ids(phantom_source):
    assert _columns(phantom_source / "breast-level_annotations.csv") == BREAST_COLUMNS
    assert _columns(phantom_source / "finding_annotations.csv") == FINDING_COLUMNS
    assert _columns(phantom_source / "metadata.csv")[0] == "SOP Instance UID"
    breast = _rows(phantom_source / "breast-level_annotations.csv")
    assert len(breast) == 48 and len({r["image_id"] for r in breast}) == 48
    for r in breast:
        assert HEX32.match(r["study_id"]) and HEX32.match(r["image_id"]) and HEX32.match(r["series_id"])
        assert (phantom_source / "images" / r["study_id"] / f"{r['image_id']}.dicom").is_file()
        assert r["breast_birads"] in {f"BI-RADS {i}" for i in range(1, 6)}
        assert r["breast_density"] in {f"DENSITY {c}" for c in "ABCD"}
        assert r["split"] in {"training", "test"}
    # every BI-RADS 3-5 present (guaranteed for >= 3 studies)
    assert {"BI-RADS 3", "BI-RADS 4", "BI-RADS 5"} <= {r["breast_birads"] for r in breast}


def test_finding_quirks(phantom_source):
    findings = _rows(phantom_source / "finding_annotations.csv")
    breast = {r["image_id"]: r for r in _rows(phantom_source / "breast-level_annotations.csv")}
    assert {r["image_id"] for r in findings} == set(breast)
    for r in findings:
        cats = ast.literal_eval(r["finding_categories"])
        if cats == ["No Finding"]:
            assert r["finding_birads"] == "" and r["xmin"] == "" and r["ymax"] == ""
        else:
            assert float(r["xmin"]) < float(r["xmax"]) and float(r["ymin"]) < float(r["ymax"])
        if int(breast[r["image_id"]]["breast_birads"][-1]) >= 3:
            assert cats != ["No Finding"], "BI-RADS 3-5 images carry a lesion box"
    raw = (phantom_source / "finding_annotations.csv").read_text()
    assert "\"['Mass', 'Suspicious Calcification']\"" in raw or "['Suspicious Lymph Node']" in raw
    outside = [
        r
        for r in findings
        if r["xmin"]
        and (
            float(r["xmin"]) < 0
            or float(r["ymin"]) < 0
            or float(r["xmax"]) > int(r["width"])
            or float(r["ymax"]) > int(r["height"])
        )
    ]
    assert outside, "some boxes spill past the image edge, as in VinDr"


def test_deterministic(tmp_path):
    a = write_phantom(tmp_path / "a", 2, seed=3, size_scale=0.05)
    b = write_phantom(tmp_path / "b", 2, seed=3, size_scale=0.05)
    c = write_phantom(tmp_path / "c", 2, seed=4, size_scale=0.05)
    for name in ("breast-level_annotations.csv", "finding_annotations.csv", "metadata.csv"):
        assert filecmp.cmp(a / name, b / name, shallow=False)
    assert not filecmp.cmp(a / "metadata.csv", c / "metadata.csv", shallow=False)
    for r in _rows(a / "breast-level_annotations.csv"):
        rel = f"images/{r['study_id']}/{r['image_id']}.dicom"
        assert filecmp.cmp(a / rel, b / rel, shallow=False)


def test_right_breasts_on_right_edge_and_labels(phantom_source):
    for r in _rows(phantom_source / "breast-level_annotations.csv"):
        img = read_display(phantom_source / "images" / r["study_id"] / f"{r['image_id']}.dicom").pixels
        h, w = img.shape
        mid = img[h // 4 : 3 * h // 4].astype(float)
        left, right = mid[:, : w // 4].mean(), mid[:, -w // 4 :].mean()
        assert (right > left) == (r["laterality"] == "R"), r
        # burned-in label: bright pixels in the top corner away from the chest wall
        corner = img[: h // 10, : w // 3] if r["laterality"] == "R" else img[: h // 10, -w // 3 :]
        assert corner.max() > max(50000, np.percentile(img[img > 0], 90))
        if r["view_position"] == "MLO":  # pectoral muscle: bright top corner at the chest wall
            chest = img[: h // 10, -w // 10 :] if r["laterality"] == "R" else img[: h // 10, : w // 10]
            assert np.median(chest) > np.median(img[img > 0])


def test_vendor_formats(tmp_path):
    planmed = write_phantom(tmp_path / "p", 1, seed=1, size_scale=0.1, vendors=("Planmed",))
    ims = write_phantom(tmp_path / "i", 1, seed=1, size_scale=0.1, vendors=("IMS GIOTTO S.p.A.",))
    r = _rows(planmed / "breast-level_annotations.csv")[0]
    path = planmed / "images" / r["study_id"] / f"{r['image_id']}.dicom"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.PixelPaddingValue == 10000
    assert (ds.Rows, ds.Columns) == (281, 201) and ds.BitsAllocated == 16
    raw = ds.pixel_array
    disp = read_display(path).pixels
    assert (disp[raw == 10000] == 0).all() and (raw == 10000).mean() > 0.1  # padding -> black
    meta = _rows(ims / "metadata.csv")[0]
    assert len(ast.literal_eval(meta["Window Center"])) == 5
    r = _rows(ims / "breast-level_annotations.csv")[0]
    ds = pydicom.dcmread(ims / "images" / r["study_id"] / f"{r['image_id']}.dicom", stop_before_pixels=True)
    assert len(ds.WindowCenter) == 5 and ds.Rows == 358


def test_density_follows_label(tmp_path):
    def in_breast_mean(src):
        vals = []
        for r in _rows(src / "breast-level_annotations.csv"):
            img = read_display(src / "images" / r["study_id"] / f"{r['image_id']}.dicom").pixels
            vals.append(img[img > 2000].mean())
        return np.mean(vals)

    fatty = write_phantom(tmp_path / "a", 2, seed=5, size_scale=0.06, density_weights=(1, 0, 0, 0))
    dense = write_phantom(tmp_path / "d", 2, seed=5, size_scale=0.06, density_weights=(0, 0, 0, 1))
    assert in_breast_mean(dense) > in_breast_mean(fatty) * 1.15


@pytest.mark.slow
def test_full_size(tmp_path):
    src = write_phantom(tmp_path / "f", 1, seed=2, vendors=("SIEMENS",))
    r = _rows(src / "breast-level_annotations.csv")[0]
    assert (r["height"], r["width"]) == ("3518", "2800")
    ds = pydicom.dcmread(src / "images" / r["study_id"] / f"{r['image_id']}.dicom")
    assert ds.pixel_array.shape == (3518, 2800) and ds.pixel_array.dtype == np.uint16


def test_refuses_non_empty_output(tmp_path):
    from mammosynth.builders.core.errors import InputError

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        write_phantom(tmp_path / "x", 1, size_scale=0.05)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
