"""Licences travel with the data: each source's terms in ingest.json (`sources`), each row's source in
the `source` column, kept per row through merge; `core.prepared.licences` / `row_source` read them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.prepared import (
    SourceLicence,
    licences,
    open_prepared,
    read_ingest_info,
    row_source,
    verify_prepared,
)
from mammosynth.builders.core.schema import PREPARED_COLUMNS, SOURCE_COLUMN, prepared_features
from mammosynth.builders.sources.dicom_folder import sample_dicom_dir
from mammosynth.builders.sources.ingest import IngestOptions, ingest_vindr
from mammosynth.builders.sources.merge import merge_prepared
from mammosynth.builders.sources.vindr import PHANTOM_MARKER, VINDR_LICENCE

SMALL = IngestOptions(size=64, bit_depth=8)


def _sources(path: Path) -> set[str]:
    return set(datasets.load_from_disk(str(path))[SOURCE_COLUMN])


def test_vindr_is_restricted_and_the_phantom_is_not(phantom_copy, tmp_path) -> None:
    phantom = ingest_vindr(phantom_copy, tmp_path / "phantom", SMALL, progress=False)
    terms = licences(phantom)
    assert list(terms) == ["mammosynth phantom"] and terms["mammosynth phantom"].redistribution_allowed
    (phantom_copy / PHANTOM_MARKER).unlink()  # now it reads as a VinDr-Mammo download
    vindr = ingest_vindr(phantom_copy, tmp_path / "vindr", SMALL, progress=False)
    assert licences(vindr) == {"VinDr-Mammo": VINDR_LICENCE}
    assert not VINDR_LICENCE.redistribution_allowed and "PhysioNet" in VINDR_LICENCE.licence
    assert _sources(vindr) == {"VinDr-Mammo"}
    info = read_ingest_info(vindr)
    assert info["sources"]["VinDr-Mammo"]["redistribution_allowed"] is False
    assert {row_source(r, info) for r in open_prepared(vindr)} == {"VinDr-Mammo"}


def test_cbis_samples_are_cc_by_with_attribution(cbis_prepared) -> None:
    terms = licences(cbis_prepared)["CBIS-DDSM"]
    assert terms.licence == "CC BY 3.0" and terms.redistribution_allowed
    assert terms.attribution == (
        "Data from: Curated Breast Imaging Subset of DDSM. The Cancer Imaging Archive. "
        "DOI 10.7937/K9/TCIA.2016.7O02S9CY"
    )
    assert "Lee" in terms.citation and "2017" in terms.citation and "Scientific Data" in terms.citation
    assert _sources(cbis_prepared) == {"CBIS-DDSM"}


def _folder(tmp_path: Path, name: str, n: int = 2) -> Path:
    src = tmp_path / name
    src.mkdir(parents=True)
    for path in sorted(sample_dicom_dir().rglob("*.dcm"))[:n]:
        shutil.copy(path, src / path.name)
    return src


def test_plain_folder_is_unknown_unless_declared(cli, tmp_path) -> None:
    src = _folder(tmp_path, "my-dicoms")
    res = cli("ingest", "dicom", src, tmp_path / "a", "--size", "64", "--bit-depth", "8")
    assert res.code == 0, res.err
    assert licences(tmp_path / "a") == {"my-dicoms": SourceLicence("unknown", False)}
    assert _sources(tmp_path / "a") == {"my-dicoms"}
    res = cli(
        "ingest",
        "dicom",
        src,
        tmp_path / "b",
        "--size",
        "64",
        "--bit-depth",
        "8",
        "--licence",
        "CC BY 4.0",
        "--redistribution-allowed",
        "--attribution",
        "Courtesy of X",
        "--source-name",
        "X",
    )
    assert res.code == 0, res.err
    assert licences(tmp_path / "b") == {"X": SourceLicence("CC BY 4.0", True, "Courtesy of X")}
    res = cli("ingest", "dicom", src, tmp_path / "c", "--size", "32", "--licence", "CC BY 4.0")
    assert res.code == 0 and licences(tmp_path / "c") == {"my-dicoms": SourceLicence("CC BY 4.0", False)}
    # redistribution without a licence is no declaration: refused, nothing written
    cli("ingest", "dicom", src, tmp_path / "d", "--redistribution-allowed").one_line_error("redistribution_allowed")
    assert not (tmp_path / "d").exists()


def test_merge_keeps_each_rows_licence(prepared_set, cbis_prepared, tmp_path) -> None:
    out = merge_prepared([prepared_set, cbis_prepared], tmp_path / "merged", progress=False)
    terms = licences(out)
    assert terms == {**licences(prepared_set), **licences(cbis_prepared)}
    info = read_ingest_info(out)
    by_id = {r["image_id"]: row_source(r, info) for r in datasets.load_from_disk(str(out))}
    assert {by_id[i] for i in datasets.load_from_disk(str(cbis_prepared))["image_id"]} == {"CBIS-DDSM"}
    assert {by_id[i] for i in datasets.load_from_disk(str(prepared_set))["image_id"]} == {"mammosynth phantom"}
    assert verify_prepared(out).images == len(by_id)


def test_merge_refuses_one_name_under_two_licences(cli, tmp_path) -> None:
    a, b = _folder(tmp_path / "one", "dicoms", 1), _folder(tmp_path / "two", "dicoms", 2)
    b.joinpath(sorted(p.name for p in b.iterdir())[0]).unlink()  # no image in both
    assert cli("ingest", "dicom", a, tmp_path / "pa", "--size", "32").code == 0
    assert cli("ingest", "dicom", b, tmp_path / "pb", "--size", "32", "--licence", "CC BY 4.0").code == 0
    line = cli("ingest", "merge", tmp_path / "m", tmp_path / "pa", tmp_path / "pb").one_line_error(
        "sources.dicoms", tmp_path / "pb" / "ingest.json"
    )
    assert "'unknown'" in line and "'CC BY 4.0'" in line
    assert not (tmp_path / "m").exists()
    assert cli("ingest", "merge", tmp_path / "m", tmp_path / "pa", tmp_path / "pa2").code == 2  # missing input


def _old_set(path: Path, info: dict, rows: int = 2) -> Path:
    """A set as written before the source column (from_list with the required columns only)."""
    import numpy as np

    from mammosynth.builders.core.imageio import encode_png

    png = encode_png(np.full((8, 8), 100, np.uint8))
    data = [
        {
            "image": {"bytes": png, "path": None},
            "image_id": f"{path.name}-{i}",
            "study_id": "s",
            "laterality": "L",
            "view": "CC",
            "birads": 1,
            "density": None,
            "manufacturer": None,
            "model_name": None,
            "split": "training",
            "orig_height": 8,
            "orig_width": 8,
            "findings": [],
            "flipped": False,
        }
        for i in range(rows)
    ]
    datasets.Dataset.from_list(data, features=prepared_features()).save_to_disk(str(path))
    (path / "ingest.json").write_text(json.dumps(info))
    return path


def test_sets_without_the_column_fall_back_to_their_single_source(tmp_path) -> None:
    assert SOURCE_COLUMN not in PREPARED_COLUMNS  # sets without it still open
    legacy = _old_set(
        tmp_path / "legacy", {"source": {"kind": "vindr"}, "licence": "some licence", "counts": {"images": 2}}
    )
    ds = open_prepared(legacy)
    assert SOURCE_COLUMN not in ds.column_names
    info = read_ingest_info(legacy)
    assert licences(legacy) == {"vindr": SourceLicence("some licence", False)}
    assert row_source(ds[0], info) == "vindr"
    named = _old_set(
        tmp_path / "named",
        {"sources": {"A": {"licence": "CC0", "redistribution_allowed": True}}, "counts": {"images": 2}},
    )
    assert row_source(open_prepared(named)[0], read_ingest_info(named)) == "A"
    two = {
        "sources": {
            "A": {"licence": "x", "redistribution_allowed": True},
            "B": {"licence": "y", "redistribution_allowed": False},
        }
    }
    with pytest.raises(InputError, match="lists 2") as exc:
        row_source({"image_id": "r1"}, two)
    assert exc.value.field == SOURCE_COLUMN and exc.value.record == "r1"
    with pytest.raises(InputError, match="not listed"):
        row_source({"image_id": "r1", SOURCE_COLUMN: "C"}, two)
    merged = merge_prepared([legacy, named], tmp_path / "merged", progress=False)
    assert sorted(licences(merged)) == ["A", "vindr"]
    assert sorted(datasets.load_from_disk(str(merged))[SOURCE_COLUMN]) == ["A", "A", "vindr", "vindr"]


def test_verify_refuses_a_row_source_without_licence(cbis_prepared, tmp_path) -> None:
    copy = Path(shutil.copytree(cbis_prepared, tmp_path / "copy"))
    info = json.loads((copy / "ingest.json").read_text())
    info["sources"] = {"someone else": info["sources"]["CBIS-DDSM"]}
    (copy / "ingest.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="'CBIS-DDSM' is not listed") as exc:
        verify_prepared(copy)
    assert exc.value.field == SOURCE_COLUMN and exc.value.record
