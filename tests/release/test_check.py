"""`mammosynth check SPEC`: the plan from the spec and its inputs, and exit 2 with one line on any
problem (missing checkpoint, a cell without backgrounds or lesions, a bad spec field)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import datasets
import pytest

from helpers.release_helpers import spec_dict, write_spec
from mammosynth.builders.core.errors import run_click
from mammosynth.builders.release.check import check, check_spec


def _spec(tmp: Path, prepared: Path, **edits) -> Path:
    d = spec_dict(tmp)
    d["source"]["prepared"] = str(prepared)
    for folder in ("sd35", "inpaint-b3", "inpaint-b4"):
        (tmp / "ckpt" / folder / "model_index.json").write_text("{}")
    for path, value in edits.items():
        node = d
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return write_spec(tmp, d)


def _expected(prepared: Path) -> tuple[Counter, Counter]:
    """Backgrounds per (BI-RADS, view, laterality) and finding boxes per BI-RADS, counted here by rows."""
    ds = datasets.load_from_disk(str(prepared))
    cells = Counter((r["birads"], r["view"], r["laterality"]) for r in ds)
    boxes = Counter(f["finding_birads"] for r in ds for f in r["findings"] if f["finding_birads"] is not None)
    return cells, boxes


@pytest.fixture
def invoke(capsys: pytest.CaptureFixture):
    """The command through the CLI's exit-code mapping: (status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            run_click(check, list(args), "mammosynth check")
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return run


def test_the_plan_counts_what_each_cell_draws_from(tmp_path: Path, prepared_set: Path, invoke) -> None:
    spec = _spec(tmp_path, prepared_set)
    plan = check_spec(spec)
    assert plan.problems == []
    cells, boxes = _expected(prepared_set)
    by_cell = {(c.method, c.birads, c.view, c.laterality): c for c in plan.cells}
    # spec_dict: text2image BI-RADS 1-2 CC; inpainting BI-RADS 3-4 left; poisson BI-RADS 5 MLO; n=2 each
    assert len(by_cell) == 4 + 4 + 2 and all(c.rows == 2 for c in plan.cells)
    assert plan.rows == {"text2image": 8, "inpainting": 8, "poisson": 4}
    assert by_cell[("text2image", 1, "CC", "R")].backgrounds is None
    for view in ("CC", "MLO"):
        # inpainting and poisson backgrounds are BI-RADS 1 rows of the cell's view and side
        assert by_cell[("inpainting", 3, view, "L")].backgrounds == cells[(1, view, "L")]
        assert by_cell[("inpainting", 4, view, "L")].lesions == boxes[4]
    assert by_cell[("poisson", 5, "MLO", "R")].backgrounds == cells[(1, "MLO", "R")] != cells[(1, "MLO", "L")]
    assert by_cell[("poisson", 5, "MLO", "L")].lesions == boxes[5] > 0
    assert plan.prepared_images == len(datasets.load_from_disk(str(prepared_set)))
    assert {c.field: c.status for c in plan.checkpoints} == {
        "methods.text2image.text2image.base_model": "found",
        "methods.inpainting.inpainting.checkpoints.3": "found",
        "methods.inpainting.inpainting.checkpoints.4": "found",
    }
    assert plan.estimate == "no GPU benchmark recorded: no estimate" and plan.gpu_hours is None

    code, out, err = invoke(str(spec))
    assert code == 0, err
    assert "poisson" in out and "no GPU benchmark recorded: no estimate" in out and err == ""
    data = json.loads(invoke(str(spec), "--json")[1])
    assert data["rows"] == plan.rows and data["problems"] == []
    assert len(data["cells"]) == len(plan.cells)


def test_a_missing_checkpoint_is_exit_2_naming_its_field(tmp_path: Path, prepared_set: Path, invoke) -> None:
    spec = _spec(tmp_path, prepared_set)
    shutil.rmtree(tmp_path / "ckpt" / "inpaint-b4")
    code, out, err = invoke(str(spec))
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "methods.inpainting.inpainting.checkpoints.4" in err and "no such folder" in err
    assert "MISSING" in out  # the plan still shows what was found


def test_a_folder_that_is_not_a_pipeline_is_reported(tmp_path: Path, prepared_set: Path) -> None:
    spec = _spec(tmp_path, prepared_set)
    (tmp_path / "ckpt" / "sd35" / "model_index.json").unlink()
    plan = check_spec(spec)
    assert [p.field for p in plan.problems] == ["methods.text2image.text2image.base_model"]
    assert "not a pipeline folder" in str(plan.problems[0])


def test_a_cell_without_backgrounds_is_reported(tmp_path: Path, prepared_set: Path, invoke) -> None:
    cells, _ = _expected(prepared_set)
    # a BI-RADS class with MLO rows on one side only: the poisson cell of the other side has no background
    b, empty = next(
        (b, s)
        for b in (2, 3, 4, 5)
        for s in "LR"
        if not cells[(b, "MLO", s)] and cells[(b, "MLO", "LR".replace(s, ""))]
    )
    spec = _spec(tmp_path, prepared_set, **{"methods.poisson.poisson": {"background_birads": [b]}})
    plan = check_spec(spec)
    assert [p.field for p in plan.problems] == ["methods.poisson.poisson.background_birads"]
    assert f"MLO {empty}:" in str(plan.problems[0])
    assert invoke(str(spec))[0] == 2


def test_a_cell_without_lesions_is_reported(tmp_path: Path, prepared_set: Path) -> None:
    ds = datasets.load_from_disk(str(prepared_set))
    no_boxes = ds.map(lambda r: {"findings": []})
    no_boxes.save_to_disk(str(tmp_path / "plain"))
    shutil.copy(prepared_set / "ingest.json", tmp_path / "plain" / "ingest.json")
    shutil.copy(prepared_set / "skipped.csv", tmp_path / "plain" / "skipped.csv")
    plan = check_spec(_spec(tmp_path, tmp_path / "plain"))
    lesion_problems = [str(p) for p in plan.problems if "finding box" in str(p)]
    assert any("poisson BI-RADS 5" in p for p in lesion_problems)
    assert any("inpainting BI-RADS 3" in p for p in lesion_problems)


def test_a_bad_spec_field_and_a_missing_prepared_set_are_exit_2(tmp_path: Path, prepared_set: Path, invoke) -> None:
    spec = _spec(tmp_path, prepared_set, **{"methods.poisson.poisson": {"blend": "sideways"}})
    code, _, err = invoke(str(spec))
    assert code == 2 and "blend" in err and len(err.splitlines()) == 1
    spec = _spec(tmp_path, tmp_path / "nowhere")
    code, _, err = invoke(str(spec))
    assert code == 2 and "source.prepared" in err


def test_only_gpu_benchmarks_estimate_gpu_hours(tmp_path: Path, prepared_set: Path) -> None:
    spec = _spec(tmp_path, prepared_set)
    results = tmp_path / "results"
    results.mkdir()

    def record(name: str, device: str, seconds: list[float], images: int = 4) -> None:
        fig = {"images": images, "variants": {"default": {"seconds": seconds}}}
        data = {"benchmark": "generate", "device": device, "machine": {"gpu": "H100" if device == "cuda" else None}}
        data["figures"] = {"text2image": fig, "inpainting": fig}
        (results / f"{name}.json").write_text(json.dumps(data))

    record("cpu", "cpu", [400.0, 400.0, 400.0])
    plan = check_spec(spec, benchmarks=results)
    assert plan.gpu_hours is None and plan.estimate.startswith("no GPU benchmark recorded")
    record("gpu", "cuda", [36.0, 72.0, 54.0])  # median 54 s for 4 images: 13.5 s per image
    plan = check_spec(spec, benchmarks=results)
    # 8 text-to-image + 8 inpainting rows at 13.5 s; poisson has no GPU figure
    assert plan.gpu_hours == pytest.approx(16 * 13.5 / 3600)
    assert "no GPU figure for poisson" in plan.estimate


def test_a_hub_checkpoint_is_listed_without_fetching(tmp_path: Path, prepared_set: Path) -> None:
    spec = _spec(tmp_path, prepared_set, **{"methods.text2image.text2image": {"base_model": "org/sd35-never-cached"}})
    plan = check_spec(spec)
    assert plan.problems == []
    ck = next(c for c in plan.checkpoints if c.field == "methods.text2image.text2image.base_model")
    assert ck.where == "hub" and ck.status == "hub id, not in the local cache (fetched when used)"
