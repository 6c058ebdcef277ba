"""What ingest and merge refuse, each with exit 2 and one line naming the file, record or field, and
without losing what is already written: another pseudonym key, broken DICOMs, broken prepared sets,
mixed bit depths, nested folders, a second run on the same folder; and the temporaries they clean."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.locks import lock_path
from mammosynth.builders.core.prepared import open_prepared, read_skipped
from mammosynth.builders.sources import ingest as ing
from mammosynth.builders.sources import vindr
from mammosynth.builders.sources.dicom_folder import sample_dicom_dir
from mammosynth.builders.sources.records import PSEUDONYM_KEY_ENV, pseudonymize

SMALL = ["--size", "64", "--bit-depth", "8"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_set(small_phantom, tmp_path, cli) -> Path:
    """The small phantom ingested (64 px, 8-bit) under the default key."""
    res = cli("ingest", "vindr", small_phantom, tmp_path / "a", *SMALL)
    assert res.code == 0, res.err
    return tmp_path / "a"


# --- 2: the pseudonym key ------------------------------------------------------------------------


def test_another_pseudonym_key_is_refused_on_an_existing_set(small_phantom, tiny_set, cli, monkeypatch) -> None:
    before = _snapshot(tiny_set)
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "another secret key")
    cli("ingest", "vindr", small_phantom, tiny_set, *SMALL).one_line_error(tiny_set, PSEUDONYM_KEY_ENV)
    assert _snapshot(tiny_set) == before
    monkeypatch.delenv(PSEUDONYM_KEY_ENV)
    assert cli("ingest", "vindr", small_phantom, tiny_set, *SMALL).code == 0  # the same run: a no-op
    assert _snapshot(tiny_set) == before
    assert "another secret key" not in (tiny_set / "ingest.json").read_text()


def test_a_resumed_run_under_another_key_reuses_nothing(phantom_copy, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    source = vindr.vindr_source(phantom_copy)
    records, skips = vindr.vindr_records(phantom_copy)
    options = ing.IngestOptions(size=64, bit_depth=8)
    done: list[str] = []

    def failing(job):
        if len(done) == 5:
            raise RuntimeError("injected crash")
        done.append(job[0].key)
        return ing.cache_record(job)

    with pytest.raises(RuntimeError, match="injected"):
        ing.run_ingest(source, phantom_copy, out, records, skips, options, progress=False, worker=failing)
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "key two")
    redo: list[str] = []

    def counting(job):
        redo.append(job[0].key)
        return ing.cache_record(job)

    ing.run_ingest(source, phantom_copy, out, records, skips, options, progress=False, worker=counting)
    assert len(redo) == len(records)  # nothing cached under the first key was used
    ids = set(datasets.load_from_disk(str(out))["image_id"])
    assert ids == {pseudonymize(r.key, "key two") for r in records}


# --- 3 and 4: broken DICOMs, other modalities -----------------------------------------------------


def test_broken_and_foreign_dicoms_are_skipped_or_refused(make_dicom, cli, tmp_path) -> None:
    src = tmp_path / "dicoms"
    src.mkdir()
    shutil.copy(sorted(sample_dicom_dir().rglob("*.dcm"))[0], src / "good.dcm")
    make_dicom(src / "ww0.dcm", WindowCenter=2048, WindowWidth=0, ImageLaterality="R", PatientID="P2")
    make_dicom(src / "b32.dcm", np.full((16, 16), 1 << 30, np.uint32), BitsAllocated=32, BitsStored=32, HighBit=31)
    make_dicom(src / "ct.dcm", Modality="CT")
    res = cli("ingest", "dicom", src, tmp_path / "out", *SMALL)
    assert res.code == 0, res.err
    assert len(open_prepared(tmp_path / "out")) == 2  # the good one and the window-0 one (pixel range)
    skipped = {r[0]: (r[2], r[3]) for r in read_skipped(tmp_path / "out")}
    assert skipped["b32.dcm"][0] == "BitsAllocated" and "32" in skipped["b32.dcm"][1]
    assert skipped["ct.dcm"] == ("Modality", "Modality 'CT' is not mammography (MG)")
    for name, field in (("b32.dcm", "BitsAllocated"), ("ct.dcm", "no mammograms")):
        alone = tmp_path / f"only-{name}"
        alone.mkdir()
        shutil.copy(src / name, alone / name)
        cli("ingest", "dicom", alone, tmp_path / f"out-{name}", *SMALL).one_line_error(alone, name, field)
        assert not (tmp_path / f"out-{name}").exists()


# --- 3: broken prepared sets given to merge -------------------------------------------------------


def test_truncated_arrow_file_is_named(tiny_set, cbis_prepared, cli, tmp_path) -> None:
    broken = Path(shutil.copytree(tiny_set, tmp_path / "broken"))
    arrow = next(broken.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated or unreadable") as exc:
        open_prepared(broken)
    assert exc.value.file == str(arrow)
    cli("ingest", "merge", tmp_path / "m", cbis_prepared, broken).one_line_error(arrow)
    assert not (tmp_path / "m").exists()


def test_merge_into_an_existing_file(tiny_set, cbis_prepared, cli, tmp_path) -> None:
    target = tmp_path / "merged"
    target.write_text("keep me")
    cli("ingest", "merge", target, cbis_prepared, tiny_set).one_line_error(target, "is a file")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    "text, field",
    [
        ('{"format_version": 1, "counts": ', None),
        ('{"options": "x", "counts": {"images": 12}}', "options"),
        ('{"sources": {"A": ["CC0"]}, "counts": {"images": 12}}', "sources.A"),
        ('{"sources": {"A": {"licence": "CC0"}}}', "sources.A.redistribution_allowed"),
        ('{"options": {"bit_depth": 12}}', "options.bit_depth"),
    ],
)
def test_malformed_ingest_json(text, field, tiny_set, cbis_prepared, cli, tmp_path) -> None:
    bad = Path(shutil.copytree(tiny_set, tmp_path / "bad"))
    (bad / "ingest.json").write_text(text)
    line = cli("ingest", "merge", tmp_path / "m", cbis_prepared, bad).one_line_error(bad / "ingest.json")
    if field:
        assert f"field '{field}'" in line
    assert not (tmp_path / "m").exists()


def test_merge_refuses_mixed_bit_depths(small_phantom, tiny_set, cli, tmp_path) -> None:
    deep = tmp_path / "deep"
    assert cli("ingest", "vindr", small_phantom, deep, "--size", "64", "--bit-depth", "16").code == 0
    cli("ingest", "merge", tmp_path / "m", tiny_set, deep).one_line_error("bit_depth", "8-bit", "16-bit", deep)
    assert not (tmp_path / "m").exists()


# --- 4: nested folders ----------------------------------------------------------------------------


def test_output_inside_the_source_or_source_inside_the_output(phantom_copy, cli, tmp_path) -> None:
    before = _snapshot(phantom_copy)
    cli("ingest", "vindr", phantom_copy, phantom_copy / "prep", *SMALL).one_line_error(
        phantom_copy / "prep", "inside the source folder"
    )
    cli("ingest", "vindr", phantom_copy, phantom_copy, *SMALL).one_line_error("inside the source folder")
    assert _snapshot(phantom_copy) == before and not list(phantom_copy.glob(".*"))
    outer = tmp_path / "outer"
    shutil.copytree(sample_dicom_dir(), outer / "cases")
    cli("ingest", "dicom", outer / "cases", outer, *SMALL).one_line_error(outer / "cases", "inside the output")
    assert sorted(p.name for p in outer.iterdir()) == ["cases"]


# --- 5: one ingest per folder at a time ------------------------------------------------------------

SLOW_INGEST = """
import sys, time
from mammosynth.builders.sources import ingest as ing
slow = ing.process_record
def process_record(*a, **k):
    time.sleep(0.4)
    return slow(*a, **k)
ing.process_record = process_record
ing.ingest_vindr(sys.argv[1], sys.argv[2], ing.IngestOptions(size=64, bit_depth=8), progress=False)
"""


def test_a_second_ingest_into_the_same_folder_names_the_first(small_phantom, cli, tmp_path) -> None:
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-c", SLOW_INGEST, str(small_phantom), str(out)])
    try:
        owner = lock_path(out.resolve()).with_name(lock_path(out).name + ".owner")
        deadline = time.time() + 60
        while not owner.is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert owner.is_file(), "the first ingest never took the lock"
        cli("ingest", "vindr", small_phantom, out, *SMALL).one_line_error(f"in use by pid {first.pid} (ingest)")
        cli("ingest", "merge", out, small_phantom, small_phantom).one_line_error(f"pid {first.pid}")
        assert first.wait(timeout=120) == 0  # the first one finishes undisturbed
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
            first.wait()
    assert len(open_prepared(out)) == 12


# --- 6: a killed run's temporaries ----------------------------------------------------------------


def test_only_this_targets_temporaries_are_removed(small_phantom, cli, tmp_path) -> None:
    mine = [tmp_path / ".out.tmp-99999", tmp_path / ".out.tmp-1"]
    others = [tmp_path / ".out2.tmp-5", tmp_path / ".other.tmp-7", tmp_path / ".out.tmp-abc", tmp_path / ".out.old-3"]
    mine[0].mkdir()
    (mine[0] / "data-00000-of-00001.arrow").write_bytes(b"half")
    mine[1].write_text("x")
    for p in others:
        p.mkdir()
    assert cli("ingest", "vindr", small_phantom, tmp_path / "out", *SMALL).code == 0
    assert not any(p.exists() for p in mine)
    assert all(p.is_dir() for p in others)
    (tmp_path / ".merged.tmp-123").mkdir()
    assert cli("ingest", "merge", tmp_path / "merged", tmp_path / "out", _cbis_small(cli, tmp_path)).code == 0
    assert not (tmp_path / ".merged.tmp-123").exists() and all(p.is_dir() for p in others)


def _cbis_small(cli, tmp_path: Path) -> Path:
    out = tmp_path / "cbis"
    assert cli("ingest", "dicom", sample_dicom_dir(), out, *SMALL).code == 0
    return out


def test_ingest_json_names_the_key_only_by_digest(tiny_set) -> None:
    info = json.loads((tiny_set / "ingest.json").read_text())
    assert info["pseudonym_key"] == "default" and len(info["pseudonym_key_digest"]) == 32
    assert os.environ.get(PSEUDONYM_KEY_ENV) is None
