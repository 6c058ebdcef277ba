"""Small releases for the release tests: a spec, a hand-written validation report of the validation
stage's shape, and both with fake generated shards (`synthetic.generate_fake`, no generator run)."""

from __future__ import annotations

import json
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
    report_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "passed": passed,
        "gates": {
            "sanity": {"status": "fail" if failed else "pass"},
            "memorization": {"status": "pass"},
            "counts": {"status": "pass" if passed else "fail"},
        },
        "flagged": [
            {"image_id": i, "check": "sanity.blank", "reason": "no breast mask", "nearest_training_id": None}
            for i in failed
        ],
        "failed_image_ids": list(failed),
    }
    (report_dir / "report.json").write_text(json.dumps(report))
    (report_dir / "report.md").write_text("# Validation\n\nAll gates listed in report.json.\n")
    return report_dir / "report.json"


def make_release_inputs(tmp: Path, **kw: Any) -> ReleaseSpec:
    """Spec on disk + generated shards + a passing report in <output_dir>/validation."""
    spec = load_spec(write_spec(tmp, spec_dict(tmp, **kw)))
    generate_fake(spec)
    write_report(Path(spec.output_dir) / "validation")
    return spec
