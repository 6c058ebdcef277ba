"""Report files from the worker pool land where the caller asked, relative paths included."""

from __future__ import annotations

import json

from mammosynth.validation import gate
from mammosynth.validation import synthetic as S
from mammosynth.validation.gate import validate_release


def test_plots_drawn_on_the_pool_follow_a_relative_report_dir(tmp_path, monkeypatch):
    ref = S.write_prepared(tmp_path / "ref", n_studies=3, seed=0)
    rows = [
        S.release_row(r["image"]["bytes"], f"t-{k}", "text2image", r["birads"], r["view"], r["laterality"], density=r["density"])
        for k, r in enumerate(S.prepared_rows(4, 77))
    ]
    assert len(rows) >= gate._MIN_ROWS_FOR_POOL  # the pool path, not the in-process one
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
    assert rep.plots[:3] == [f"report/{n}" for n in names]
    assert json.loads((tmp_path / "b" / "report" / "report.json").read_text())["plots"][:3] == rep.plots[:3]
