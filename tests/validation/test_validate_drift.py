"""--baseline: drift against a previous release, and a bad baseline rejected as bad input up front."""

from __future__ import annotations

import pytest

from helpers import synthetic as S
from mammosynth.builders.core.errors import InputError
from mammosynth.validation.gate import validate_release


@pytest.fixture(scope="module")
def ref_and_release(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift")
    ref = S.write_reference_set(tmp / "ref", n_studies=3, seed=0)
    rows = [
        S.release_row(
            r["image"]["bytes"], f"t-{k}", "text2image", r["birads"], r["view"], r["laterality"], density=r["density"]
        )
        for k, r in enumerate(S.reference_rows(2, 77))
    ]
    return ref, S.write_generated(tmp / "rel", {"text2image": rows})


def test_release_against_itself_shows_no_drift(ref_and_release):
    ref, rel = ref_and_release
    drift = validate_release(rel, ref, baseline=rel, progress=False, plots=False).gates["drift"]
    assert drift.status == "pass"
    assert drift.intensity["value"] == 0.0 and drift.area["value"] == 0.0
    assert drift.categorical["view"]["value"] == 0.0


def test_bad_baseline_is_input_error_before_any_report(ref_and_release, tmp_path):
    ref, rel = ref_and_release
    not_a_release = tmp_path / "previous.txt"
    not_a_release.write_text("x")
    with pytest.raises(InputError, match="folder"):
        validate_release(rel, ref, baseline=not_a_release, report_dir=tmp_path / "report", progress=False)
    assert not (tmp_path / "report").exists()
