"""Dataset card: YAML metadata that matches the data, sections filled, lint catches placeholders."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from datasets.info import DatasetInfo

from helpers.release_helpers import make_release_inputs, write_report  # noqa: E402
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.release_data import load_release_data
from mammosynth.builders.core.schema import release_features
from mammosynth.dataset_cards.card import Override, lint_card, parse_card, record_override, render_card
from mammosynth.dataset_cards.commands import card_for_spec as write_card
from mammosynth.dataset_cards.croissant import validate_croissant
from mammosynth.validation.report import ValidationReport


@pytest.fixture
def release_inputs(tmp_path: Path):
    spec = make_release_inputs(tmp_path)
    return spec, tmp_path / "spec.yaml"


def test_card_yaml_matches_the_data(release_inputs) -> None:
    spec, spec_path = release_inputs
    readme = write_card(spec_path)
    meta, body = parse_card(readme.read_text())
    assert {"medical", "mammography", "synthetic"} <= set(meta["tags"])
    assert meta["license"] == "cc-by-nc-4.0" and meta["source_datasets"] == ["CBIS-DDSM"]
    assert meta["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"text2image", "inpainting", "poisson", "all"}
    assert configs["all"]["default"] is True and "default" not in configs["poisson"]
    data = load_release_data(spec)
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    for cfg in configs:
        info = DatasetInfo._from_yaml_dict(infos[cfg])
        assert info.features == release_features()
        assert info.splits["train"].num_examples == data.num_examples(cfg)
        assert info.splits["train"].num_bytes == data.num_bytes(cfg) > 0
    assert infos["all"]["splits"][0]["num_examples"] == 8 + 8 + 4
    # sections filled from the spec and the report
    assert "| BI-RADS 5 | 0 | 0 | 2 | 2 | 4 |" in body  # poisson: MLO only, both lateralities
    assert "poisson-tiny@sha256:abababababababab" in body
    assert "`steps` | `2`" in body and "Not for clinical diagnosis" in body
    assert "Memorization statement" in body and "| memorization | pass |" in body
    assert "Real patient pixels" in body and "First version." in body
    assert "@inproceedings{alshihri2026synthetic" in body
    assert "/tmp/" not in readme.read_text()  # no machine paths
    validate_croissant(readme.with_name("croissant.json"))
    croissant = json.loads(readme.with_name("croissant.json").read_text())
    assert {rs["name"] for rs in croissant["recordSet"] if not rs["name"].endswith("_names")} == set(configs)


def test_dropped_rows_and_overrides_are_recorded(release_inputs) -> None:
    spec, spec_path = release_inputs
    report_path = write_report(
        Path(spec.output_dir) / "validation",
        passed=False,
        failed=["poisson-b5-mlo-l-00000", "inpainting-b3-cc-l-00001"],
    )
    report = ValidationReport.read(report_path)
    data = load_release_data(spec, report.failed_ids())
    assert data.num_examples("poisson") == 3 and data.num_examples("all") == 18
    text = render_card(spec, data, report, candidate=report, overrides=[Override("validation", "pilot study")])
    lint_card(text)
    assert "2 generated rows failed a validation check and were removed" in text
    assert "| poisson | blank | 1 | no breast mask |" in text
    assert "Overall: **FAILED**" in text and "pilot study" in text
    meta, _ = parse_card(text)
    assert {i["config_name"]: i["splits"][0]["num_examples"] for i in meta["dataset_info"]}["poisson"] == 3


def test_lint_catches_placeholders_and_empty_sections(release_inputs, tmp_path: Path) -> None:
    spec, spec_path = release_inputs
    good = write_card(spec_path).read_text()
    lint_card(good)
    for bad in (
        good.replace("## Uses\n", "## Uses\n[More Information Needed]\n"),
        good.replace("First version.", "{{ changes }}"),
        good.replace("First version.", "TODO"),
        good.replace("First version.", ""),
    ):
        with pytest.raises(InputError):
            lint_card(bad)
    with pytest.raises(InputError, match="tag 'synthetic' is missing"):
        lint_card(good.replace("- synthetic\n", ""))
    readme = tmp_path / "README.md"
    readme.write_text(good)
    record_override(readme, Override("licence", "written permission"))
    record_override(readme, Override("licence", "written permission"))  # idempotent
    assert readme.read_text().count("written permission") == 1
    lint_card(readme.read_text())


def test_card_cli_needs_generated_rows(tmp_path: Path) -> None:
    from helpers.release_helpers import spec_dict, write_spec

    path = write_spec(tmp_path, spec_dict(tmp_path))
    with pytest.raises(InputError, match="no generated shards"):
        write_card(path)
    assert datasets.__version__


def test_bad_outputs_and_previous_releases_are_exit_2(release_inputs, tmp_path, capsys) -> None:
    from mammosynth.builders.cli import main

    spec, spec_path = release_inputs
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        main(["card", str(spec_path), "--out", str(target)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "must be a folder" in err and "Traceback" not in err
    assert target.read_text() == "not a folder"

    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "README.md").write_text("---\nlicense: [unclosed\n---\n# card\n")
    spec_text = spec_path.read_text() + f"\nprevious_release: {previous}\n"
    spec_path.write_text(spec_text)
    with pytest.raises(SystemExit) as info:
        main(["card", str(spec_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "previous release's card metadata is malformed" in err and "Traceback" not in err


def test_memorization_statement_and_realism_come_from_the_report(release_inputs) -> None:
    """The card quotes the canary figures and the realism metrics of the report it describes: an
    edit of the figures changes the card, and no encoder means "Not configured", never a number."""
    spec, spec_path = release_inputs
    body = parse_card(write_card(spec_path).read_text())[1]
    assert "This check caught 17/17 planted copies of 1 training images" in body
    assert "Not configured" in body.split("### Realism metrics", 1)[1].split("##", 1)[0]

    path = Path(spec.output_dir) / "validation" / "report.json"
    raw = json.loads(path.read_text())
    gate = raw["gates"]["canaries"]
    gate.update(caught=15, recall=round(15 / 17, 4))
    gate["per_perturbation"]["exact"].update(caught=15, recall=round(15 / 17, 4))
    gate["status"] = "fail"  # the verified read re-derives it; the card follows the figures
    raw["passed"] = False
    raw["realism"] = {
        "configured": True,
        "extractor": {
            "name": "tiny-dinov2",
            "kind": "transformers",
            "content_hash": "ab" * 32,
            "feature_dim": 16,
            "image_size": 32,
        },
        "k": 3,
        "min_images": 5,
        "n_release": 20,
        "n_reference": 40,
        "unreadable": {"release": 0, "reference": 0},
        "strata": {
            "overall": {
                "n_release": 20,
                "n_reference": 40,
                "fid": 12.3456,
                "kid": 0.0123,
                "kid_std": 0.001,
                "kid_subset_size": 20,
                "precision": 0.75,
                "recall": 0.5,
                "warnings": [],
            }
        },
        "drift": None,
    }
    path.write_text(json.dumps(raw))
    body = parse_card(write_card(spec_path).read_text())[1]
    assert "This check caught 15/17 planted copies" in body and "| canaries | fail |" in body
    realism = body.split("### Realism metrics", 1)[1].split("\n## ", 1)[0]
    assert "tiny-dinov2" in realism and "12.3" in realism and "0.75" in realism


def test_card_refuses_a_report_judged_with_other_thresholds(release_inputs) -> None:
    spec, spec_path = release_inputs
    path = Path(spec.output_dir) / "validation" / "report.json"
    raw = json.loads(path.read_text())
    raw["thresholds"]["max_flagged_fraction"] = 0.99
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError, match="other thresholds than the spec's") as err:
        write_card(spec_path)
    assert err.value.field == "thresholds"
