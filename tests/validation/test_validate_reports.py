"""Report files from the worker pool land where the caller asked, relative paths included; a
report.json reads back as the typed report."""

from __future__ import annotations

import json

import pytest

from helpers import synthetic as S
from mammosynth.builders.core.errors import InputError
from mammosynth.validation import analysis
from mammosynth.validation.gate import validate_release
from mammosynth.validation.report import ValidationReport


def test_plots_drawn_on_the_pool_follow_a_relative_report_dir(tmp_path, monkeypatch):
    ref = S.write_reference_set(tmp_path / "ref", n_studies=3, seed=0)
    rows = [
        S.release_row(
            r["image"]["bytes"], f"t-{k}", "text2image", r["birads"], r["view"], r["laterality"], density=r["density"]
        )
        for k, r in enumerate(S.reference_rows(4, 77))
    ]
    assert len(rows) >= analysis.MIN_ROWS_FOR_POOL  # the pool path, not the in-process one
    rel = S.write_generated(tmp_path / "rel", {"text2image": rows})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    validate_release(rel, ref, report_dir="report", progress=False)  # the pool may start here
    monkeypatch.chdir(tmp_path / "b")
    rep = validate_release(rel, ref, report_dir="report", progress=False)
    names = ["intensity_histograms.png", "box_sizes.png", "class_counts.png"]
    for name in names:
        assert (tmp_path / "b" / "report" / name).stat().st_size > 0, name
    assert rep.plots[:3] == names  # names in the report folder: no machine paths
    assert json.loads((tmp_path / "b" / "report" / "report.json").read_text())["plots"][:3] == rep.plots[:3]


def test_report_reads_back_typed_with_its_failed_ids(tmp_path):
    ref = S.write_reference_set(tmp_path / "ref", n_studies=2, seed=0)
    copy = S.reference_rows(2, 0)[0]  # a training image: flagged
    rows = [
        S.release_row(r["image"]["bytes"], f"t-{k}", "text2image", r["birads"], r["view"], r["laterality"])
        for k, r in enumerate([copy, *S.reference_rows(1, 77)])
    ]
    rel = S.write_generated(tmp_path / "rel", {"text2image": rows})
    rep = validate_release(rel, ref, report_dir=tmp_path / "report", progress=False, plots=False)
    back = ValidationReport.read(tmp_path / "report" / "report.json")
    assert back.model_dump(mode="json") == rep.model_dump(mode="json")
    assert "t-0" in back.failed_ids() and back.failed_ids() == set(rep.failed_image_ids)


def test_older_report_falls_back_to_failing_flags(tmp_path):
    path = tmp_path / "report.json"
    flag = {"check": "blank", "reason": "r"}
    path.write_text(
        json.dumps(
            {
                "passed": False,
                "gates": {"sanity": {"status": "fail"}},
                "flagged": [
                    {"image_id": "a", "severity": "warn", **flag},
                    {"image_id": "b", "severity": "fail", **flag},
                    {"image_id": "c", **flag},
                ],
            }
        )
    )
    assert ValidationReport.read(path).failed_ids() == {"b", "c"}


@pytest.mark.parametrize(
    "text, field",
    [
        ("not json", None),
        ("[1]", None),
        ('{"gates": {}}', "passed"),
        ('{"passed": true, "gates": {"x": {"status": "maybe"}}}', "gates.x.status"),
    ],
)
def test_malformed_report_is_input_error(tmp_path, text, field):
    path = tmp_path / "report.json"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        ValidationReport.read(path)
    assert info.value.file == str(path) and info.value.field == field
    with pytest.raises(InputError, match="not found"):
        ValidationReport.read(tmp_path / "absent.json")
