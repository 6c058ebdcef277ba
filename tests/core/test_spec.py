"""Release spec: field-level errors for typos, counts that must add up, checkpoints per BI-RADS."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers.release_helpers import spec_dict, write_spec  # noqa: E402
from mammosynth.builders import cli
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.spec import load_spec
from mammosynth.builders.release.build import preflight

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_load_and_reproduce_the_paper_shape() -> None:
    paper = load_spec(EXAMPLES / "paper-release.yaml")
    assert set(paper.methods) == {"text2image", "inpainting", "poisson"}
    birads = {b for m in paper.methods for (b, _, _) in paper.cell_counts(m)}
    assert birads == {1, 2, 3, 4, 5}
    for m in paper.methods:
        cells = paper.cell_counts(m)
        assert {v for _, v, _ in cells} == {"CC", "MLO"} and {lat for _, _, lat in cells} == {"L", "R"}
    demo = load_spec(EXAMPLES / "demo-release.yaml")
    assert demo.total() < paper.total() and demo.total() <= 64


def test_typo_names_the_field(tmp_path: Path) -> None:
    d = spec_dict(tmp_path)
    d["methods"]["text2image"]["text2image"]["stepz"] = 3
    with pytest.raises(InputError) as e:
        load_spec(write_spec(tmp_path, d))
    assert e.value.field == "methods.text2image.text2image.stepz" and "typo" in str(e.value)


def test_counts_that_do_not_add_up(tmp_path: Path) -> None:
    d = spec_dict(tmp_path)
    d["methods"]["poisson"]["total"] = 5  # 1 BI-RADS x 1 view x 2 lateralities x 2 = 4
    with pytest.raises(InputError, match="add up to 4, not 5"):
        load_spec(write_spec(tmp_path, d))
    d["methods"]["poisson"]["total"] = 4
    assert load_spec(write_spec(tmp_path, d)).total("poisson") == 4


def test_inpainting_counts_need_a_checkpoint_per_birads(tmp_path: Path) -> None:
    d = spec_dict(tmp_path)
    d["methods"]["inpainting"]["counts"].append({"birads": 5, "n": 1})
    with pytest.raises(InputError, match=r"no checkpoint for BI-RADS \[5\]"):
        load_spec(write_spec(tmp_path, d))


def test_missing_checkpoint_folder_is_refused_before_work(tmp_path: Path) -> None:
    d = spec_dict(tmp_path)
    d["methods"]["inpainting"]["inpainting"]["checkpoints"][4] = "./ckpt/does-not-exist"
    (tmp_path / "prepared").mkdir()
    spec = load_spec(write_spec(tmp_path, d))
    with pytest.raises(InputError) as e:
        preflight(spec, push=False, repo=None, token=None)
    assert e.value.field == "methods.inpainting.inpainting.checkpoints.4"


def test_malformed_repo_id_and_cli_exit_code(tmp_path: Path) -> None:
    d = spec_dict(tmp_path)
    d["hub"]["repo_id"] = "no slash here"
    path = write_spec(tmp_path, d)
    with pytest.raises(InputError, match="malformed repo id"):
        load_spec(path)
    with pytest.raises(SystemExit) as e:
        cli.main(["build", str(path)])
    assert e.value.code == 2
    r = CliRunner().invoke(cli.cli, ["card", str(path)])
    assert isinstance(r.exception, InputError) and r.exception.field == "hub.repo_id"
