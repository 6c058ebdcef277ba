"""`build --drop-failed`: the card and the shipped report describe exactly the rows that ship, the
dropped rows have their own section, and dropping is not passing (exit 1 while a gate of the
shipped rows fails)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.release_helpers import spec_dict, write_report, write_spec  # noqa: E402
from helpers.synthetic import generate_fake  # noqa: E402
from mammosynth.builders.core.errors import GateFailed, InputError
from mammosynth.builders.core.spec import load_spec
from mammosynth.builders.release.build import build
from mammosynth.builders.release.release import Release
from mammosynth.dataset_cards.card import parse_card
from mammosynth.validation import checks as C
from mammosynth.validation import rules
from mammosynth.validation.analysis import Rows
from mammosynth.validation.distribution import counts_gate
from mammosynth.validation.release_io import load_release
from mammosynth.validation.report import ValidationReport
from mammosynth.validation.thresholds import Thresholds

QUIET = {"progress": False, "echo": lambda s: None}
FAILED = ["text2image-b1-cc-l-00000", "poisson-b5-mlo-r-00001"]


def validate_rows(spec, rows: Path, report_dir: Path, *, counts: bool = True) -> None:
    """What validation finds on the rows of ``rows`` (a folder of data/<method>/*.parquet): the
    counts gate is the validator's own (``counts_gate`` against the spec); the rows that failed
    sanity were dropped, so sanity and memorization pass."""
    loaded = load_release(rows)
    hashes = loaded.row_hashes()
    th = Thresholds()
    n = len(hashes)
    gates = {
        C.GATE_SANITY: rules.flagged_gate(C.GATE_SANITY, [], C.SANITY_CHECKS, n, th),
        C.GATE_MEMORIZATION: rules.flagged_gate(
            C.GATE_MEMORIZATION,
            [],
            C.MEMORIZATION_CHECKS,
            n,
            th,
            calibration={"reference_other_patient_nn": 0.2, "overridden": {"nn_distance": False}},
        ),
    }
    if counts:
        gates[C.GATE_COUNTS] = counts_gate(Rows.of(loaded), spec, [], th)
    else:  # as if the spec asked for what is left
        figures = {"expected_total": n, "observed_total": n, "mismatched_cells": []}
        gates[C.GATE_COUNTS] = rules.judged_gate(C.GATE_COUNTS, th, "as requested", figures)
    not_measured = {
        C.GATE_CATEGORICAL: {"columns": {}},
        C.GATE_BOX_SIZE: {"per_birads": {}},
        C.GATE_INTENSITY: {"per_method": {}},
        C.GATE_AREA: {"per_view": {}},
        C.GATE_DIVERSITY: {"note": "not measured"},
    }
    for name, figures in not_measured.items():
        gates[name] = rules.judged_gate(name, th, "not measured", figures)
    report = ValidationReport(
        passed=rules.overall(g.status for g in gates.values()),
        gates=gates,
        thresholds=th.model_dump(mode="json"),
        n_rows=n,
        row_hashes=hashes,
        release={"files": loaded.files},
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "report.json").write_text(report.model_dump_json())
    (report_dir / "report.md").write_text("# Validation of the shipped rows\n")


def _spec(tmp: Path):
    (tmp / "prepared").mkdir(parents=True, exist_ok=True)
    return load_spec(write_spec(tmp, spec_dict(tmp)))


def _build_dropping(spec, **kw):
    """``build --drop-failed`` with the fake candidate report and the real re-validation of the rows left."""
    return build(
        spec,
        generate_fn=generate_fake,
        validate_fn=_candidate,
        validate_shipped_fn=validate_rows,
        drop_failed=True,
        **QUIET,
        **kw,
    )


def _candidate(spec, d: Path) -> None:
    write_report(d, passed=False, failed=FAILED)


def test_dropping_is_not_passing_and_the_card_describes_the_shipped_rows(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    with pytest.raises(GateFailed, match="shipped row"):
        _build_dropping(spec)
    release = Release(spec.layout.release)  # packaged for inspection, not published
    shipped = release.report
    assert shipped is not None and not shipped.passed
    assert shipped.gates["counts"].status == "fail" and shipped.gates["sanity"].status == "pass"
    assert shipped.row_hashes == release.row_hashes()  # the report describes exactly what ships
    assert len(shipped.row_hashes) == 18 and not set(FAILED) & set(shipped.row_hashes)
    candidate = ValidationReport.read(release.folder / "validation" / "candidate" / "report.json")
    assert set(candidate.failed_image_ids) == set(FAILED)

    text = (release.folder / "README.md").read_text()
    _, body = parse_card(text)
    validation = body.split("## Validation", 1)[1].split("\n## ", 1)[0]
    assert "Gates computed on the 18 rows this release ships" in validation
    assert "Overall: **FAILED**" in validation and "| counts | fail |" in validation
    assert "| sanity | pass |" in validation
    assert "passed its validation gates" not in text  # no "None: passed" under a failed release
    dropped = validation.split("### Dropped rows", 1)[1]
    assert "2 generated rows failed a validation check" in dropped
    assert f"| text2image | {C.BLANK} | 1 | no breast mask |" in dropped
    assert f"| poisson | {C.BLANK} | 1 | no breast mask |" in dropped
    meta, _ = parse_card(text)
    assert {i["config_name"]: i["splits"][0]["num_examples"] for i in meta["dataset_info"]}["all"] == 18

    # a rerun is up to date and still says no
    with pytest.raises(GateFailed):
        _build_dropping(spec)


def test_forced_drop_records_the_override_and_a_passing_shipped_set_exits_0(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    res = build(
        spec,
        generate_fn=generate_fake,
        validate_fn=_candidate,
        validate_shipped_fn=validate_rows,
        drop_failed=True,
        force=True,
        reason="pilot",
        **QUIET,
    )
    text = (res.release / "README.md").read_text()
    assert "Maintainer's reason: pilot" in text and "Overall: **FAILED**" in text

    other = _spec(tmp_path / "b")
    generate_fake(other)
    with pytest.raises(GateFailed):  # without --drop-failed: nothing is packaged
        build(other, generate_fn=generate_fake, validate_fn=_candidate, **QUIET)
    assert not other.layout.release.exists()
    res = build(
        other,
        generate_fn=generate_fake,
        validate_fn=_candidate,
        validate_shipped_fn=lambda s, r, d: validate_rows(s, r, d, counts=False),
        drop_failed=True,
        **QUIET,
    )
    assert res.dropped == 2 and res.skipped == ["generate", "validate"] and "validate-shipped" in res.ran
    text = (res.release / "README.md").read_text()
    assert "Overall: **passed**" in text and "None: the release passed its validation gates" in text
    assert "### Dropped rows" in text


def test_a_shipped_report_of_other_rows_is_refused(tmp_path: Path) -> None:
    spec = _spec(tmp_path)

    def stale(s, rows: Path, d: Path) -> None:  # validates one row more than ships
        validate_rows(s, rows, d, counts=False)
        report = json.loads((d / "report.json").read_text())
        report["row_hashes"]["extra-row"] = "0" * 64
        report["n_rows"] += 1
        report["release"] = {}
        (d / "report.json").write_text(json.dumps(report))

    with pytest.raises(InputError, match="not released"):
        build(
            spec,
            generate_fn=generate_fake,
            validate_fn=_candidate,
            validate_shipped_fn=stale,
            drop_failed=True,
            **QUIET,
        )
    assert not spec.layout.release.exists()


def test_failing_gate_without_flagged_rows_exits_1_under_drop_failed(tmp_path: Path) -> None:
    """Nothing to drop, a gate fails: --drop-failed used to package it and exit 0."""
    spec = _spec(tmp_path)
    with pytest.raises(GateFailed, match="counts"):
        build(
            spec,
            generate_fn=generate_fake,
            validate_fn=lambda s, d: write_report(d, passed=False),
            drop_failed=True,
            **QUIET,
        )
    assert pq.read_metadata(next(spec.layout.release.glob("data/poisson/*.parquet"))).num_rows == 4


@pytest.mark.slow
def test_the_validator_itself_judges_the_rows_left(tmp_path: Path) -> None:
    """No stand-ins: validate_release on the candidate and again on the rows left after dropping."""
    import numpy as np

    from helpers import synthetic as S
    from mammosynth.builders.core.shard_writer import ShardWriter
    from mammosynth.generators.engine import plan

    S.write_reference_set(tmp_path / "prepared", n_studies=6, seed=0)
    d = spec_dict(tmp_path)
    d["methods"] = {
        "text2image": {
            "counts": [{"birads": [1, 2], "n": 1}],
            "text2image": {"base_model": "./ckpt/sd35", "resolution": 320},
        }
    }
    spec = load_spec(write_spec(tmp_path, d))
    blank = "text2image-b1-cc-l-00000"

    def generate(s) -> None:  # other patients' mammogram-like images, one of them blank
        refs = {(r["birads"], r["view"], r["laterality"]): r for r in S.reference_rows(2, 77)}
        rows = []
        for task in plan(s, "text2image"):
            img = refs[(task.birads, task.view, task.laterality)]["image"]["bytes"]
            if task.image_id == blank:
                img = np.zeros((320, 256), np.uint8)
            rows.append(S.release_row(img, task.image_id, "text2image", task.birads, task.view, task.laterality))
        size = s.output.shard_size
        for k in range(0, len(rows), size):
            ShardWriter(s.layout.generated("text2image")).write(k // size, rows[k : k + size], [], 0.0)

    with pytest.raises(GateFailed, match="counts"):
        build(spec, generate_fn=generate, drop_failed=True, **QUIET)
    candidate = ValidationReport.read_verified(spec.layout.report_json)
    assert blank in candidate.failed_ids() and candidate.gates["sanity"].status == "fail"
    release = Release(spec.layout.release)
    shipped = release.report
    assert shipped.row_hashes == release.row_hashes() and blank not in shipped.row_hashes
    assert shipped.gates["sanity"].status == "pass" and shipped.gates["counts"].status == "fail"
    assert shipped.n_rows == 7 == candidate.n_rows - 1


def test_card_command_after_dropping_describes_the_shipped_report(tmp_path: Path) -> None:
    from mammosynth.dataset_cards.commands import card_for_spec

    spec = _spec(tmp_path)
    generate_fake(spec)
    _candidate(spec, spec.layout.validation)
    with pytest.raises(InputError, match="no validation report describes the rows left"):
        card_for_spec(tmp_path / "spec.yaml", drop_failed=True)
    with pytest.raises(GateFailed):
        _build_dropping(spec)
    card = card_for_spec(tmp_path / "spec.yaml", drop_failed=True, out=tmp_path / "card-again").read_text()
    assert card == (spec.layout.release / "README.md").read_text()  # the card `build` shipped
    assert "Gates computed on the 18 rows" in card and "### Dropped rows" in card
