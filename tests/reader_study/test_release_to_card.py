"""A study from a built release folder (Hub layout, spec.yaml inside, as `mammosynth build` and the
demo write it) and the prepared set it was made from, scored, and rendered as the card's
reader-study section."""

from __future__ import annotations

import csv

import pytest

from helpers.release_helpers import spec_dict, write_report, write_spec
from helpers.synthetic import generate_fake, write_reference_set
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.release_data import load_release_data
from mammosynth.builders.core.spec import load_spec
from mammosynth.builders.release.build import build
from mammosynth.dataset_cards.reader_study_section import reader_study_section
from mammosynth.dataset_cards.write import write_card
from mammosynth.validation.reader_study.create import CreateOptions, create_study
from mammosynth.validation.reader_study.importing import import_answers
from mammosynth.validation.reader_study.layout import StudyLayout
from mammosynth.validation.reader_study.scoring import write_scores


def test_release_folder_to_card_section(tmp_path):
    write_reference_set(tmp_path / "prepared", n_studies=3, seed=2)
    spec = load_spec(write_spec(tmp_path, spec_dict(tmp_path)))
    release = build(
        spec, generate_fn=generate_fake, validate_fn=lambda s, d: write_report(d), progress=False, echo=lambda s: None
    ).release
    spec.reader_study = tmp_path / "scored"  # attached once the study is scored
    assert (release / "spec.yaml").is_file() and list(release.glob("data/*/*.parquet"))

    made = create_study(release, tmp_path / "prepared", tmp_path / "study", CreateOptions(6, 6, 2, seed=1, workers=1))
    assert any("training set" in n for n in made.notes)  # the packaged spec names the prepared set
    layout = StudyLayout(made.root)
    key = layout.key()
    with open(tmp_path / "answers.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["reader_id", "case_id", "judged", "confidence", "birads", "seconds"])
        for reader in ("R1", "R2"):
            for i, case in enumerate(sorted(key.values(), key=lambda c: c.case_id)):
                w.writerow([reader, case.case_id, case.truth if i % 3 else "real", 1 + i % 3, 1 + i % 5, 4.0])
    assert import_answers(made.root, tmp_path / "answers.csv") == 24
    scores = write_scores(made.root, spec.reader_study, replicates=50)
    assert scores["table1"]["real"]["n"] == 12 and scores["study"]["readers"] == 2

    section = reader_study_section(spec.reader_study)
    assert section.startswith("## Reader study\n")
    assert "### Real or synthetic (Table 1)" in section
    assert f"| Correctly identified real | {scores['table1']['real']['correct']} |" in section
    assert "### AUROC per reader" in section and "| R1 |" in section
    assert "training set" in section  # the caveat travels into the card
    for case in key.values():
        assert case.case_id not in section and case.source_id not in section
    assert reader_study_section(None) == ""

    # the spec's reader_study becomes a card section (once), and the card's lint passes
    card = write_card(spec, load_release_data(spec), None, tmp_path / "card")
    text = card.read_text()
    assert text.count("## Reader study") == 1 and "### Real or synthetic (Table 1)" in text
    spec.reader_study = None
    assert "## Reader study" not in write_card(spec, load_release_data(spec), None, tmp_path / "card2").read_text()


def test_card_section_names_a_broken_scores_file(tmp_path):
    with pytest.raises(InputError, match="spec field reader_study") as err:
        reader_study_section(tmp_path)
    assert err.value.file.endswith("scores.json")
    (tmp_path / "scores.json").write_text('{"version": 1, "study": {}}')
    with pytest.raises(InputError) as err:
        reader_study_section(tmp_path)
    assert err.value.field == "study.mode"
