"""Release formats, counts against the spec, bad input, CLI exit codes, the reference cache."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import yaml

from helpers import synthetic as S
from mammosynth.builders.cli import main
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.validation.gate import validate_release
from mammosynth.validation.reference import CACHE_DIR_NAME, reference_index
from mammosynth.validation.release_io import load_release
from mammosynth.validation.stats import parse_task_id
from mammosynth.validation.thresholds import Thresholds, load_thresholds, validate_overrides


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return S.write_reference_set(tmp_path_factory.mktemp("ref") / "prep", n_studies=6, seed=0)


def _t2i_rows(n_studies=2, seed=77):
    rows = []
    for r in S.reference_rows(n_studies, seed):
        rows.append(
            S.release_row(
                r["image"]["bytes"], "", "text2image", r["birads"], r["view"], r["laterality"], density=r["density"]
            )
        )
    return rows


def _spec(counts: list[dict]) -> ReleaseSpec:
    return ReleaseSpec.model_validate(
        {
            "name": "t",
            "version": "1.0",
            "pretty_name": "t",
            "description": "t",
            "authors": ["a"],
            "source": {"name": "s", "prepared": "p", "license": "cc0", "redistribution_allowed": True},
            "methods": {"text2image": {"counts": counts, "text2image": {"base_model": "x", "resolution": 320}}},
        }
    )


@pytest.fixture(scope="module")
def counted_release(tmp_path_factory):
    """Rows named like engine tasks: 1 text2image image per (BI-RADS 1/2, CC/MLO, L/R) cell."""
    rows = []
    for r in S.reference_rows(2, 77):
        b, v, lat = r["birads"], r["view"], r["laterality"]
        row = S.release_row(
            r["image"]["bytes"],
            f"text2image-b{b}-{v.lower()}-{lat.lower()}-00000",
            "text2image",
            b,
            v,
            lat,
            density=r["density"],
        )
        rows.append(row)
    return rows


def test_task_id_parsing():
    assert parse_task_id("inpainting-b3-cc-l-00012") == ("inpainting", 3, "CC", "L")
    assert parse_task_id("something-else") is None


def test_counts_exact_and_explained_shortfall(ref, counted_release, tmp_path):
    spec = _spec([{"birads": [1, 2], "n": 1}])
    rel = S.write_generated(tmp_path / "ok", {"text2image": counted_release})
    rep = validate_release(rel, ref, spec=spec, progress=False, plots=False)
    assert rep.gates["counts"].status == "pass", rep.gates["counts"]
    # one row missing, with the generator's recorded reason: a warning, not a failure
    missing = counted_release[0]["image_id"]
    rel2 = S.write_generated(
        tmp_path / "short",
        {"text2image": counted_release[1:]},
        {"text2image": [{"image_id": missing, "reason": "no placement"}]},
    )
    g = validate_release(rel2, ref, spec=spec, progress=False, plots=False).gates["counts"]
    assert g.status == "warn" and g.mismatched_cells[0]["skipped_with_reason"] == 1
    # missing without a reason, and a spec asking for more: failures
    rel3 = S.write_generated(tmp_path / "unexplained", {"text2image": counted_release[1:]})
    assert validate_release(rel3, ref, spec=spec, progress=False, plots=False).gates["counts"].status == "fail"
    rep4 = validate_release(rel, ref, spec=_spec([{"birads": [1, 2], "n": 2}]), progress=False, plots=False)
    assert rep4.gates["counts"].status == "fail" and not rep4.passed


def test_spec_checks_size_and_bit_depth(ref, counted_release, tmp_path):
    spec = _spec([{"birads": [1, 2], "n": 1}])
    spec.methods["text2image"].text2image.resolution = 512
    rel = S.write_generated(tmp_path / "ok", {"text2image": counted_release})
    rep = validate_release(rel, ref, spec=spec, progress=False, plots=False)
    assert {f.check for f in rep.flagged} == {"size"}


def test_release_layouts_load_the_same(counted_release, tmp_path):
    gen = S.write_generated(tmp_path / "gen", {"text2image": counted_release})
    a = load_release(gen)
    hub = tmp_path / "hub" / "data" / "text2image"
    hub.mkdir(parents=True)
    a.dataset.cast_column("image", datasets.Image()).to_parquet(str(hub / "train-00000-of-00001.parquet"))
    b = load_release(tmp_path / "hub")
    a.dataset.save_to_disk(str(tmp_path / "saved"))
    c = load_release(tmp_path / "saved")
    assert (a.kind, b.kind, c.kind) == ("generated", "hub-folder", "saved")
    assert a.dataset["image_id"] == b.dataset["image_id"] == c.dataset["image_id"]
    assert a.dataset[0]["image"]["bytes"] == b.dataset[0]["image"]["bytes"] == c.dataset[0]["image"]["bytes"]


def test_release_with_wrong_features_is_input_error(tmp_path):
    datasets.Dataset.from_dict({"image_id": ["a"], "pixels": [1]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(InputError, match="missing"):
        load_release(tmp_path / "bad")
    with pytest.raises(InputError):
        load_release(tmp_path / "nothing-here")


def test_reference_missing_or_wrong_schema(counted_release, tmp_path):
    rel = S.write_generated(tmp_path / "gen", {"text2image": counted_release})
    with pytest.raises(InputError, match="not found"):
        validate_release(rel, tmp_path / "no-ref", progress=False)
    datasets.Dataset.from_dict({"image_id": ["a"]}).save_to_disk(str(tmp_path / "wrong"))
    with pytest.raises(InputError, match="not a prepared training set"):
        validate_release(rel, tmp_path / "wrong", progress=False)


def test_corrupt_image_is_a_finding(ref, counted_release, tmp_path):
    rows = [dict(r) for r in counted_release]
    rows[2] = dict(rows[2], image={"bytes": b"\x89PNG\r\n\x1a\n broken", "path": None})
    rel = S.write_generated(tmp_path / "gen", {"text2image": rows})
    rep = validate_release(rel, ref, progress=False, plots=False)
    assert [f.check for f in rep.flagged if f.image_id == rows[2]["image_id"]] == ["unreadable"]
    assert rep.n_rows == len(rows) and rep.failed_image_ids == [rows[2]["image_id"]]


def test_thresholds_model_and_spec_overrides(tmp_path):
    th = validate_overrides({"dedup": {"nn_distance": 0.1}, "stats": {"box_size": {"warn": 0.2, "fail": 0.3}}})
    assert th.dedup.nn_distance == 0.1 and th.stats.box_size.fail == 0.3 and th.stats.intensity.fail == 0.1
    with pytest.raises(InputError, match=r"dedup\.nn_distanc"):
        validate_overrides({"dedup": {"nn_distanc": 0.1}})
    with pytest.raises(InputError, match=r"stats\.box_size"):
        validate_overrides({"stats": {"box_size": {"warn": 0.5, "fail": 0.1}}})
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({"sanity": {"blank_std": 0.05}}))
    assert load_thresholds(p, {"seed": 3}).sanity.blank_std == 0.05
    assert Thresholds().stats.categorical.warn == 0.05


def test_cli_exit_codes_reports_and_step_summary(ref, counted_release, tmp_path, monkeypatch, capsys):
    rel = S.write_generated(tmp_path / "gen", {"text2image": counted_release})
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    with pytest.raises(SystemExit) as e:
        main(["validate", str(rel), "--reference", str(ref), "--report", str(tmp_path / "r0"), "--no-progress"])
    data = json.loads((tmp_path / "r0" / "report.json").read_text())
    assert e.value.code == (0 if data["passed"] else 1)
    assert "## Validation" in summary.read_text()
    # plant a training copy: exit 1
    ds = datasets.load_from_disk(str(ref))
    copy = S.release_row(
        ds.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"], "copy", "text2image", 1, "CC", "L"
    )
    rel2 = S.write_generated(tmp_path / "gen2", {"text2image": [*counted_release, copy]})
    with pytest.raises(SystemExit) as e:
        main(["validate", str(rel2), "--reference", str(ref), "--report", str(tmp_path / "r1"), "--no-progress"])
    assert e.value.code == 1
    assert "copy" in json.loads((tmp_path / "r1" / "report.json").read_text())["failed_image_ids"]
    # thresholds file with an unknown key / a bad value: exit 2, one line naming the field
    bad = tmp_path / "bad.yaml"
    for content, field in (
        ({"dedup": {"radius": 3}}, "dedup.radius"),
        ({"sanity": {"blank_std": -1}}, "sanity.blank_std"),
    ):
        bad.write_text(yaml.safe_dump(content))
        with pytest.raises(SystemExit) as e:
            main(["validate", str(rel), "--reference", str(ref), "--config", str(bad), "--no-progress"])
        assert e.value.code == 2
        assert field in capsys.readouterr().err


def test_cli_quiet_prints_the_result_only_and_no_progress_draws_no_bar(ref, counted_release, tmp_path, capsys):
    rel = S.write_generated(tmp_path / "gen", {"text2image": counted_release})
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["validate", str(rel), "--reference", str(ref), "--report", str(tmp_path / "r"), "--quiet"])
    out, err = capsys.readouterr()
    verdict = "passed" if e.value.code == 0 else "failed"
    assert e.value.code in (0, 1) and err == ""
    assert out.splitlines() == [f"{verdict}; report: {tmp_path / 'r' / 'report.json'}"]
    with pytest.raises(SystemExit) as e:
        main(["validate", str(rel), "--reference", str(ref), "--report", str(tmp_path / "r"), "--no-progress"])
    out, err = capsys.readouterr()
    gates = json.loads((tmp_path / "r" / "report.json").read_text())["gates"]
    assert [line.split(":")[0].split()[-1] for line in out.splitlines()[:-1]] == list(gates)
    assert out.splitlines()[-1].endswith("report.json") and "\r" not in err and "img/s]" not in err


def test_reference_index_cached_and_invalidated(tmp_path):
    ref = S.write_reference_set(tmp_path / "prep", n_studies=2, seed=5)
    a, _ = reference_index(ref, progress=False)
    files = list((ref / CACHE_DIR_NAME).glob("index-*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    b, _ = reference_index(ref, progress=False)
    assert files[0].stat().st_mtime_ns == mtime and np.array_equal(a.emb, b.emb)
    # the reference changes in place: a new key, the old index removed
    import shutil

    ds = datasets.load_from_disk(str(ref))
    ds.select(range(ds.num_rows - 1)).save_to_disk(str(tmp_path / "prep2"))
    del ds
    for f in ref.iterdir():
        if f.is_file():
            f.unlink()
    for f in (tmp_path / "prep2").iterdir():
        shutil.copy(f, ref / f.name)
    c, _ = reference_index(ref, progress=False)
    assert c.n == a.n - 1 and c.meta["content_hash"] != a.meta["content_hash"]
    assert [p.name for p in (ref / CACHE_DIR_NAME).glob("index-*.npz")] != [files[0].name]
    assert len(list((ref / CACHE_DIR_NAME).glob("index-*.npz"))) == 1
