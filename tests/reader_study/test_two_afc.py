"""2afc mode end to end: pairs served side by side, answered left/right, scored as proportion
correct (the 2AFC AUROC), per method."""

from __future__ import annotations

import csv

import pytest
from reader_study.server import serving

from mammosynth.validation.reader_study.create import CreateOptions, create_study
from mammosynth.validation.reader_study.importing import import_answers
from mammosynth.validation.reader_study.layout import StudyLayout
from mammosynth.validation.reader_study.scoring import write_scores


@pytest.fixture
def pairs(study_inputs, tmp_path):
    release, real = study_inputs
    create_study(release, real, tmp_path / "s", CreateOptions(6, 6, 2, mode="2afc", seed=2, workers=1))
    return tmp_path / "s"


def test_pairs_are_served_and_answered_by_side(pairs):
    layout = StudyLayout(pairs)
    token = layout.readers()["R1"]
    with serving(pairs) as s:
        state = s.json(f"/r/{token}/state")
        assert state["mode"] == "2afc" and len(state["trial"]["images"]) == 2
        trial = state["trial"]["id"]
        body = {"trial_id": trial, "judged": "real", "confidence": 2, "birads": None, "seconds": 3.0}
        assert s.request(f"/r/{token}/answer", body)[0] == 422
        assert s.request(f"/r/{token}/answer", {**body, "judged": "left", "birads": 3})[0] == 422
        state = s.json(f"/r/{token}/answer", {**body, "judged": "left"})
        assert state["answered"] == 1 and state["trial"]["id"] != trial


def test_two_afc_scores_are_proportions_correct(pairs, tmp_path):
    layout = StudyLayout(pairs)
    key = layout.key()
    trials = layout.trials("2afc", key)
    right_side = {
        t.trial_id: ("left", "right")[[key[c].truth for c in t.cases].index("synthetic")] for t in trials.values()
    }
    wrong = {"left": "right", "right": "left"}
    ids = sorted(trials)
    with open(tmp_path / "a.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["reader_id", "case_id", "judged", "confidence", "birads", "seconds"])
        for i, t in enumerate(ids):  # R1: 5 of 6 right, R2: 3 of 6
            w.writerow(["R1", t, right_side[t] if i < 5 else wrong[right_side[t]], 2, "", 1.0])
            w.writerow(["R2", t, right_side[t] if i % 2 else wrong[right_side[t]], 1, "", ""])
    assert import_answers(pairs, tmp_path / "a.csv") == 12
    scores = write_scores(pairs, tmp_path / "scores", replicates=50)
    assert scores["auroc"]["per_reader"] == {"R1": pytest.approx(5 / 6), "R2": pytest.approx(3 / 6)}
    assert scores["auroc"]["mean"] == pytest.approx(4 / 6)
    assert scores["table1"]["synthetic"]["n"] == 12 and scores["table1"]["synthetic"]["correct"] == 8
    assert sum(row["n"] for row in scores["table2"].values()) == 12
    assert scores["files"]["imrmc"] is None and not (tmp_path / "scores" / "imrmc.imrmc").exists()
    assert "2AFC" in (tmp_path / "scores" / "scores.md").read_text()
