"""Small releases for the release tests: a spec, a hand-written validation report of the validation
stage's shape, and both with fake generated shards (`synthetic.generate_fake`, no generator run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from helpers.synthetic import generate_fake
from mammosynth.builders.core.spec import ReleaseSpec, load_spec


def spec_dict(tmp: Path, *, version: str = "1.0", redistribution: bool = True, n: int = 2, **extra: Any) -> dict:
    ckpt = tmp / "ckpt"
    for b in (3, 4, 5):
        (ckpt / f"inpaint-b{b}").mkdir(parents=True, exist_ok=True)
    (ckpt / "sd35").mkdir(parents=True, exist_ok=True)
    d = {
        "name": "tiny-mammo",
        "version": version,
        "pretty_name": "Tiny synthetic mammograms",
        "description": "A tiny release used by the tests.",
        "authors": ["Test Author"],
        "contact": "test@example.org",
        "license": "cc-by-nc-4.0",
        "source": {
            "name": "CBIS-DDSM",
            "prepared": "prepared",
            "license": "cc-by-3.0",
            "redistribution_allowed": redistribution,
        },
        "methods": {
            "text2image": {
                "counts": [{"birads": [1, 2], "view": "CC", "n": n}],
                "text2image": {"base_model": "./ckpt/sd35", "steps": 2},
            },
            "inpainting": {
                "counts": [{"birads": [3, 4], "laterality": "L", "n": n}],
                "inpainting": {"checkpoints": {3: "./ckpt/inpaint-b3", 4: "./ckpt/inpaint-b4"}},
            },
            "poisson": {"counts": [{"birads": 5, "view": "MLO", "n": n}]},
        },
        "output": {"shard_size": 4},
        "hub": {"repo_id": "org/tiny-mammo", "visibility": "private"},
        "output_dir": f"out-{version}",
    }
    d.update(extra)
    return d


def write_spec(tmp: Path, d: dict, name: str = "spec.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def write_report(report_dir: Path, *, passed: bool = True, failed: list[str] = ()) -> Path:
    """A validation report as the validation stage shapes it, built with its own rules (so that it
    reads verified): a sanity gate over ``failed`` (a failing counts gate when ``passed`` is false
    and nothing is flagged), and the row hashes of the shards generated beside ``report_dir``."""
    import hashlib

    import pyarrow.parquet as pq

    from mammosynth.validation import checks as C
    from mammosynth.validation import rules
    from mammosynth.validation.realism import not_configured
    from mammosynth.validation.report import REPORT_VERSION, Flag, ValidationReport, write_json
    from mammosynth.validation.thresholds import Thresholds

    report_dir.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for shard in sorted((report_dir.parent / "generated").glob("*/shard-*.parquet")):
        for row in pq.read_table(shard, columns=["image_id", "image"]).to_pylist():
            hashes[row["image_id"]] = hashlib.sha256(row["image"]["bytes"]).hexdigest()
    th = Thresholds()
    flags = [Flag(image_id=i, check=C.BLANK, reason="no breast mask") for i in failed]
    n_rows = len(hashes)
    gates = {
        C.GATE_SANITY: rules.flagged_gate(C.GATE_SANITY, flags, C.SANITY_CHECKS, n_rows, th),
        C.GATE_MEMORIZATION: rules.flagged_gate(
            C.GATE_MEMORIZATION,
            [],
            C.MEMORIZATION_CHECKS,
            n_rows,
            th,
            calibration={"reference_other_patient_nn": 0.2, "overridden": {"nn_distance": False}},
        ),
        C.GATE_COUNTS: rules.judged_gate(
            C.GATE_COUNTS,
            th,
            "as requested",
            {"expected_total": n_rows, "observed_total": n_rows, "mismatched_cells": []},
        ),
        C.GATE_CANARIES: rules.judged_gate(
            C.GATE_CANARIES,
            th,
            "fake canaries",
            {
                "images": 1,
                "planted": 17,
                "caught": 17,
                "recall": 1.0,
                "per_perturbation": {"exact": {"caught": 17, "planted": 17, "recall": 1.0}},
                "held_out": {"patients": 1, "images": 1, "false_positives": 0, "false_positive_rate": 0.0},
            },
        ),
    }
    empty = {
        C.GATE_CATEGORICAL: {"columns": {}},
        C.GATE_BOX_SIZE: {"per_birads": {}},
        C.GATE_INTENSITY: {"per_method": {}},
        C.GATE_AREA: {"per_view": {}},
        C.GATE_DIVERSITY: {"note": "not measured (fake report)"},
    }
    for name, figures in empty.items():
        gates[name] = rules.judged_gate(name, th, "not measured (fake report)", figures)
    if not passed and not failed:
        cell = {
            "method": "poisson",
            "birads": 5,
            "view": "MLO",
            "laterality": "L",
            "expected": 2,
            "observed": 1,
            "skipped_with_reason": 0,
        }
        gates[C.GATE_COUNTS] = rules.judged_gate(
            C.GATE_COUNTS,
            th,
            "1 cell differs",
            {"expected_total": n_rows + 1, "observed_total": n_rows, "mismatched_cells": [cell]},
        )
    report = ValidationReport(
        passed=rules.overall(g.status for g in gates.values()),
        report_version=REPORT_VERSION,
        realism=not_configured(),
        gates=gates,
        flagged=flags,
        failed_image_ids=sorted(failed),
        thresholds=th.model_dump(mode="json"),
        n_rows=n_rows,
        row_hashes=hashes,
    )
    write_json(report, report_dir / "report.json")
    (report_dir / "report.md").write_text("# Validation\n\nAll gates listed in report.json.\n")
    return report_dir / "report.json"


def make_release_inputs(tmp: Path, **kw: Any) -> ReleaseSpec:
    """Spec on disk + generated shards + a passing report in <output_dir>/validation."""
    spec = load_spec(write_spec(tmp, spec_dict(tmp, **kw)))
    generate_fake(spec)
    write_report(Path(spec.output_dir) / "validation")
    return spec
