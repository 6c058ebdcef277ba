"""A report can be trusted: it names the data it judged, its statuses follow from its own figures,
it carries no machine paths and no training pixels, each run writes it afresh, and bad report or
baseline paths are bad input (exit 2, one line)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from helpers import synthetic as S
from mammosynth.builders.cli import main
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import sha256_file
from mammosynth.builders.core.shard_writer import ShardWriter
from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.validation.gate import validate_release
from mammosynth.validation.report import (
    FLAGGED_PANEL,
    LOCAL_MARKER,
    SHIPPABLE_PLOTS,
    ValidationReport,
    local_dir,
    spec_digest,
)
from mammosynth.validation.thresholds import Thresholds


def _spec(n: int = 1) -> ReleaseSpec:
    return ReleaseSpec.model_validate(
        {
            "name": "t",
            "version": "1.0",
            "pretty_name": "t",
            "description": "t",
            "authors": ["a"],
            "source": {"name": "s", "prepared": "p", "license": "cc0", "redistribution_allowed": True},
            "methods": {
                "text2image": {
                    "counts": [{"birads": [1, 2], "n": n}],
                    "text2image": {"base_model": "x", "resolution": 320},
                }
            },
        }
    )


def _counted_rows(copy_of: dict | None = None) -> list[dict]:
    """One text2image row per (BI-RADS 1/2, view, laterality) cell, named like engine tasks; with
    ``copy_of``, the first row's image is that training image (same labels): an exact copy."""
    rows = []
    for r in S.reference_rows(2, 77):
        b, v, lat = r["birads"], r["view"], r["laterality"]
        rows.append(
            S.release_row(
                r["image"]["bytes"],
                f"text2image-b{b}-{v.lower()}-{lat.lower()}-00000",
                "text2image",
                b,
                v,
                lat,
                density=r["density"],
            )
        )
    if copy_of is not None:
        assert (copy_of["view"], copy_of["laterality"], copy_of["birads"]) == ("CC", "L", 1)
        rows[0] = dict(rows[0], image=copy_of["image"])
    return rows


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """A release with a training copy (memorization fails) and one row short of the spec with the
    generator's reason (counts warn), validated with a spec into a report folder."""
    tmp = tmp_path_factory.mktemp("trust")
    ref = S.write_reference_set(tmp / "ref", n_studies=3, seed=0)
    rows = _counted_rows(copy_of=S.reference_rows(3, 0)[0])
    short = rows.pop()
    rel = S.write_generated(
        tmp / "run", {"text2image": rows}, {"text2image": [{"image_id": short["image_id"], "reason": "no placement"}]}
    )
    spec = _spec()
    report_dir = tmp / "run" / "validation"
    rep = validate_release(rel, ref, spec=spec, report_dir=report_dir, progress=False)
    return {"tmp": tmp, "ref": ref, "rel": rel, "rows": rows, "spec": spec, "dir": report_dir, "report": rep}


def _edited(scenario, tmp_path, edit) -> Path:
    data = json.loads((scenario["dir"] / "report.json").read_text())
    edit(data)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    return path


def _refused(path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        ValidationReport.read_verified(path)
    assert info.value.file == str(path)
    return info.value


# --- 1. the report names the data it judged ------------------------------------------------------


def test_report_records_files_spec_and_row_hashes(scenario):
    rep = ValidationReport.read(scenario["dir"] / "report.json")
    shard = scenario["rel"] / "generated" / "text2image" / "shard-00000.parquet"
    record = ShardWriter(shard.parent).record(0)
    assert rep.data_files == {
        "text2image": [
            {
                "name": shard.name,
                "rows": len(scenario["rows"]),
                "bytes": shard.stat().st_size,
                "sha256": record["sha256"],
            }
        ]
    }
    assert record["sha256"] == sha256_file(shard)
    assert rep.release["spec_digest"] == spec_digest(scenario["spec"]) and rep.is_for_spec(scenario["spec"])
    assert not rep.is_for_spec(_spec(n=2))
    assert rep.reference["content_hash"] and rep.thresholds["max_flagged_fraction"] == 0.0
    hashes = {r["image_id"]: hashlib.sha256(r["image"]["bytes"]).hexdigest() for r in scenario["rows"]}
    assert rep.row_hashes == hashes
    assert rep.rows_not_validated(hashes) == []
    first = scenario["rows"][0]["image_id"]
    altered = dict(hashes, **{first: hashlib.sha256(b"other bytes").hexdigest(), "never-validated": "0" * 64})
    assert rep.rows_not_validated(altered) == sorted([first, "never-validated"])


def test_release_folder_parquet_is_hashed(scenario, tmp_path):
    """A Hub-layout folder has no shard records: its files' rows and sha256 are computed."""
    import datasets

    from mammosynth.validation.release_io import load_release

    gen = load_release(scenario["rel"])
    out = tmp_path / "hub" / "data" / "text2image"
    out.mkdir(parents=True)
    path = out / "train-00000-of-00001.parquet"
    gen.dataset.cast_column("image", datasets.Image()).to_parquet(str(path))
    rel = load_release(tmp_path / "hub")
    entry = {
        "name": path.name,
        "rows": len(scenario["rows"]),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }
    assert rel.files == {"text2image": [entry]}
    assert rel.row_hashes() == gen.row_hashes()


# --- 2. statuses are re-derived from the figures ------------------------------------------------


def test_real_report_reads_verified(scenario):
    rep = ValidationReport.read_verified(scenario["dir"] / "report.json")
    assert rep.model_dump() == scenario["report"].model_dump()
    # the scenario exercises the rules: a failing per-image gate, an explained shortfall (warn)
    assert rep.gates["memorization"].status == "fail" and rep.gates["counts"].status == "warn"
    assert not rep.passed


@pytest.mark.parametrize(
    "field, edit",
    [
        ("passed", lambda d: d.update(passed=True)),
        ("gates.memorization.status", lambda d: d["gates"]["memorization"].update(status="pass")),
        ("gates.counts.status", lambda d: d["gates"]["counts"].update(status="pass")),
        (  # a nested status: the gate's own stays right (the column is not gated)
            "gates.categorical.columns.birads.status",
            lambda d: d["gates"]["categorical"]["columns"]["birads"].update(status="fail"),
        ),
    ],
)
def test_flipped_status_is_refused(scenario, tmp_path, field, edit):
    assert _refused(_edited(scenario, tmp_path, edit)).field == field


def _over_the_limit(d):
    """The intensity effect of text2image far above its noise floor, its status left at pass."""
    fig = d["gates"]["intensity"]["per_method"]["text2image"]
    fig["value"] = fig["noise_floor"] + 0.5
    fig["excess"] = 0.5


def _wrong_excess(d):
    d["gates"]["intensity"]["per_method"]["text2image"]["value"] += 0.5  # excess no longer adds up


def _more_rows(d, hashes=True):
    """Rows that were never validated, to dilute the flagged share (the shares made to agree)."""
    d["n_rows"] *= 10
    for name in ("sanity", "memorization"):
        d["gates"][name]["flagged_fraction"] = d["gates"][name]["flagged_images"] / d["n_rows"]
    if hashes:
        d["row_hashes"].update({f"made-up-{k}": "0" * 64 for k in range(d["n_rows"] - len(d["row_hashes"]))})


def _checks_left_out(d):
    """The copy's checks dropped from the gate, its counts, status and ``passed`` made to agree."""
    d["gates"]["memorization"].update(checks=["background_altered"], flagged_images=0, flagged_fraction=0.0)
    d["gates"]["memorization"].update(by_check={}, status="pass")
    d["passed"] = all(g["status"] != "fail" for g in d["gates"].values())


@pytest.mark.parametrize(
    "field, edit",
    [
        ("gates.intensity.status", _over_the_limit),
        ("gates.intensity.per_method.text2image.excess", _wrong_excess),
        ("gates.memorization.status", lambda d: d["gates"]["memorization"].update(flagged_fraction=0.0)),
        ("gates.memorization.flagged_images", lambda d: d["gates"]["memorization"].update(flagged_images=0)),
        ("gates.counts.status", lambda d: d["gates"]["counts"]["mismatched_cells"][0].update(skipped_with_reason=0)),
        ("gates.diversity", lambda d: d["gates"].pop("diversity")),
        ("failed_image_ids", lambda d: d.update(failed_image_ids=[])),
        ("gates.memorization.checks", _checks_left_out),
        ("flagged.0.check", lambda d: d["flagged"][0].update(check="not_a_check")),
        ("row_hashes", lambda d: _more_rows(d, hashes=False)),
        ("n_rows", _more_rows),
        ("thresholds", lambda d: d.update(thresholds={})),
        ("thresholds.max_flagged_fraction", lambda d: d["thresholds"].update(max_flagged_fraction=2)),
        ("gates.memorization", lambda d: d["gates"]["memorization"].pop("flagged_fraction")),
    ],
)
def test_figure_that_does_not_match_its_status_is_refused(scenario, tmp_path, field, edit):
    assert scenario["report"].gates["intensity"].status == "pass"
    assert _refused(_edited(scenario, tmp_path, edit)).field == field


def test_ungated_categorical_column_may_exceed_its_limit(scenario, tmp_path):
    """Columns outside ``categorical_gated`` are reported, not gated: a verdict that judged them
    anyway would refuse this (true) report; gating the column makes the same figures fail."""

    def birads_far_off(d):
        col = d["gates"]["categorical"]["columns"]["birads"]
        col["value"] = col["noise_floor"] + 0.5
        col["excess"] = 0.5

    assert scenario["report"].gates["categorical"].columns["birads"]["gated"] is False
    ValidationReport.read_verified(_edited(scenario, tmp_path, birads_far_off))

    def gated_too(d):
        birads_far_off(d)
        d["thresholds"]["stats"]["categorical_gated"] = ["density", "birads"]

    assert _refused(_edited(scenario, tmp_path, gated_too)).field in (
        "gates.categorical.status",
        "gates.categorical.columns.birads.status",
    )


def test_uncalibrated_memorization_warns_and_verifies(tmp_path):
    """A reference of one patient cannot calibrate the distance ceiling: the gate warns at best,
    and the verdict applies the same rule (an override of the ceiling lifts it)."""
    ref = S.write_reference_set(tmp_path / "ref", n_studies=1, seed=0)
    rel = S.write_generated(tmp_path / "run", {"text2image": _counted_rows()})
    th = Thresholds.model_validate({"dedup": {"within_release": False}})  # similar phantoms under the wide ceiling
    validate_release(rel, ref, config=th, report_dir=tmp_path / "report", progress=False, plots=False)
    rep = ValidationReport.read_verified(tmp_path / "report" / "report.json")
    assert rep.gates["memorization"].status == "warn" and rep.gates["memorization"].flagged_images == 0
    assert rep.gates["counts"].status == "warn"  # no spec: counts not checked
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    data["gates"]["memorization"]["calibration"]["overridden"]["nn_distance"] = True
    (tmp_path / "edited.json").write_text(json.dumps(data))
    assert _refused(tmp_path / "edited.json").field == "gates.memorization.status"


# --- 3. no machine paths ------------------------------------------------------------------------


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_report_has_no_machine_paths(scenario):
    tmp = str(scenario["tmp"])
    data = json.loads((scenario["dir"] / "report.json").read_text())
    bad = [s for s in _strings(data) if s.startswith("/") or tmp in s]
    assert bad == []
    md = (scenario["dir"] / "report.md").read_text()
    assert tmp not in md and "`/" not in md and "](/" not in md
    assert data["release"]["source"] == "run" and data["reference"]["source"] == "ref"
    assert data["plots"] == list(SHIPPABLE_PLOTS)


# --- 4. each run writes its report afresh ---------------------------------------------------------


def test_each_run_replaces_the_report_folders(scenario, tmp_path):
    out = tmp_path / "report"
    validate_release(scenario["rel"], scenario["ref"], report_dir=out, progress=False)  # a flagged row
    (out / "stale.png").write_bytes(b"an earlier run's plot")
    local_dir(out).mkdir(exist_ok=True)
    (local_dir(out) / "stale.png").write_bytes(b"an earlier run's panel")
    clean = S.write_generated(tmp_path / "clean", {"text2image": _counted_rows()})
    rep = validate_release(clean, scenario["ref"], report_dir=out, progress=False)
    assert not (out / "stale.png").exists() and not (out / FLAGGED_PANEL).exists()
    assert rep.flagged == [] and rep.local_plots == []
    assert not (local_dir(out) / "stale.png").exists() and not (local_dir(out) / FLAGGED_PANEL).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "report", "report-local"]  # nothing staged left
    # a run that fails (bad baseline) leaves the previous report as it was
    before = (out / "report.json").read_bytes()
    (tmp_path / "bad-base").mkdir()
    with pytest.raises(InputError):
        validate_release(clean, scenario["ref"], report_dir=out, baseline=tmp_path / "bad-base", progress=False)
    assert (out / "report.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-base", "clean", "report", "report-local"]


# --- 5. restricted pixels stay local ------------------------------------------------------------


def test_training_pixels_stay_in_the_local_folder(scenario):
    out, local = scenario["dir"], local_dir(scenario["dir"])
    rep = scenario["report"]
    assert rep.failed_image_ids and rep.local_plots == [FLAGGED_PANEL]
    assert local == out.parent / "validation-local"
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(
        ["report.json", "report.md", *SHIPPABLE_PLOTS]
    )
    assert sorted(p.name for p in local.iterdir()) == sorted([FLAGGED_PANEL, LOCAL_MARKER])
    # the panel holds the flagged row's nearest training image; nothing in the shippable folder does
    import cv2
    import numpy as np

    panel = cv2.imread(str(local / FLAGGED_PANEL), cv2.IMREAD_GRAYSCALE)
    assert panel is not None and panel.std() > 10  # image content, not an empty figure
    for name in SHIPPABLE_PLOTS:
        img = cv2.imread(str(out / name), cv2.IMREAD_GRAYSCALE)
        assert img is not None
        # a plot: mostly a flat white background, unlike a mammogram panel
        assert np.mean(img > 245) > 0.5, name
    assert "![flagged" not in (out / "report.md").read_text()  # named as kept locally, not linked


# --- 6. bad report folders and baselines are bad input ------------------------------------------


def _cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(["validate", *map(str, args), "--no-progress"])
    return e.value.code, capsys.readouterr().err


def _one_line_exit_2(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_report_that_is_a_file_is_input_error(scenario, tmp_path, capsys):
    target = tmp_path / "report.txt"
    target.write_text("not a folder")
    for report in (target, target / "sub"):
        line = _one_line_exit_2(*_cli(capsys, scenario["rel"], "--reference", scenario["ref"], "--report", report))
        assert str(target) in line and "folder" in line
    assert target.read_text() == "not a folder"
    # a folder that holds other files is not replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    _one_line_exit_2(*_cli(capsys, scenario["rel"], "--reference", scenario["ref"], "--report", other))
    assert (other / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize(
    "name, content",
    [
        ("shard json", b"{not json"),
        ("shard bytes", b"\xff\xfe\x00\x81garbage"),
        ("shard skipped entries", b'{"skipped": [1]}'),
    ],
)
def test_baseline_with_broken_json_is_input_error(scenario, tmp_path, capsys, name, content):
    base = S.write_generated(tmp_path / "base", {"text2image": scenario["rows"]})
    stats = base / "generated" / "text2image" / "shard-00000.json"
    stats.write_bytes(content)
    code, err = _cli(
        capsys, scenario["rel"], "--reference", scenario["ref"], "--report", tmp_path / "r", "--baseline", base
    )
    assert str(stats) in _one_line_exit_2(code, err)
    assert not (tmp_path / "r").exists()


def test_baseline_saved_dataset_with_broken_json_is_input_error(scenario, tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    (base / "dataset_dict.json").write_text("{broken")
    code, err = _cli(
        capsys, scenario["rel"], "--reference", scenario["ref"], "--report", tmp_path / "r", "--baseline", base
    )
    assert str(base) in _one_line_exit_2(code, err)
