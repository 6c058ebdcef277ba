"""`reader-study score`: the paper's Table 1 and Table 2 from an imported answer set built to its
counts; per-reader AUROC against scikit-learn on independently mapped ratings; intervals, BI-RADS
agreement, Fleiss' kappa, the iMRMC file, the markdown."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from reader_study import paper
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from mammosynth.builders.cli import main
from mammosynth.validation.reader_study.scoring import rank_auc, rating


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    layout, cases = paper.write_study(root / "study")
    answers = paper.write_answers(root / "answers.csv", cases)
    with pytest.raises(SystemExit) as done:
        main(["reader-study", "import", str(layout.root), str(root / "answers.csv")])
    assert done.value.code == 0
    with pytest.raises(SystemExit) as done:
        main(["reader-study", "score", str(layout.root), "--out", str(root / "scores"), "--bootstrap", "200"])
    assert done.value.code == 0
    return json.loads((root / "scores" / "scores.json").read_text()), answers, cases, root / "scores"


def test_table1_and_table2_reproduce_the_paper(scored):
    scores, *_ = scored
    t1 = scores["table1"]
    assert (t1["real"]["n"], t1["real"]["correct"], t1["real"]["misclassified"]) == (1062, 751, 311)
    assert (t1["synthetic"]["n"], t1["synthetic"]["correct"], t1["synthetic"]["misclassified"]) == (1134, 716, 418)
    assert round(100 * t1["real"]["accuracy"], 1) == 70.7
    assert round(100 * t1["synthetic"]["accuracy"]) == 63
    t2 = scores["table2"]
    assert {m: (t2[m]["n"], t2[m]["correct"]) for m in t2} == {
        "text2image": (421, 261),
        "inpainting": (347, 203),
        "poisson": (366, 252),
    }
    # the paper truncates to two decimals (261/421 = 61.995...%)
    assert [math.floor(10000 * t2[m]["accuracy"]) / 100 for m in ("text2image", "inpainting", "poisson")] == [
        61.99,
        58.50,
        68.85,
    ]


def test_wilson_intervals(scored):
    scores, *_ = scored
    lo, hi = proportion_confint(751, 1062, method="wilson")
    assert scores["table1"]["real"]["ci95"] == pytest.approx([lo, hi])
    assert scores["table1"]["real"]["ci95"][0] < 751 / 1062 < scores["table1"]["real"]["ci95"][1]


def test_per_reader_auroc_equals_scikit_learn(scored):
    scores, answers, cases, _ = scored
    truth = {c.case_id: c.truth for c in cases}
    # the rating, spelled out independently of the implementation
    table = {
        ("real", 3): 1,
        ("real", 2): 2,
        ("real", 1): 3,
        ("synthetic", 1): 4,
        ("synthetic", 2): 5,
        ("synthetic", 3): 6,
    }
    per_reader = scores["auroc"]["per_reader"]
    assert sorted(per_reader) == paper.READERS
    for reader in paper.READERS:
        mine = [a for a in answers if a["reader_id"] == reader]
        y = [truth[a["case_id"]] == "synthetic" for a in mine]
        r = [table[(a["judged"], a["confidence"])] for a in mine]
        assert per_reader[reader] == pytest.approx(roc_auc_score(y, r), abs=1e-12)
    assert scores["auroc"]["mean"] == pytest.approx(np.mean(list(per_reader.values())))
    lo, hi = scores["auroc"]["ci95"]
    assert lo < scores["auroc"]["mean"] < hi and hi - lo < 0.2
    for reader, (lo, hi) in scores["auroc"]["per_reader_ci95"].items():
        assert lo <= per_reader[reader] <= hi


def test_rating_mapping():
    assert [rating("real", c) for c in (3, 2, 1)] == [1, 2, 3]
    assert [rating("synthetic", c) for c in (1, 2, 3)] == [4, 5, 6]


def test_rank_auc_equals_scikit_learn_with_ties_and_gaps():
    rng = np.random.default_rng(0)
    scores = rng.integers(1, 7, (5, 60)).astype(float)
    scores[rng.random(scores.shape) < 0.2] = np.nan
    positive = rng.random(60) < 0.4
    got = rank_auc(scores, positive)
    for i in range(5):
        seen = ~np.isnan(scores[i])
        assert got[i] == pytest.approx(roc_auc_score(positive[seen], scores[i][seen]))


def test_judged_real_strata_and_birads_agreement(scored):
    scores, answers, cases, _ = scored
    by_method = scores["judged_real"]["method"]
    assert by_method["real"]["k"] == 751 and by_method["real"]["n"] == 1062
    assert by_method["inpainting"]["k"] == 347 - 203
    birads_real = scores["judged_real"]["birads"]["real"]
    assert sum(v["n"] for v in birads_real.values()) == 1062
    assert set(scores["judged_real"]["view"]["synthetic"]) == {"CC", "MLO"}
    key = {c.case_id: c for c in cases}
    pairs = [(key[a["case_id"]].birads, a["birads"]) for a in answers if a["birads"] != ""]
    intended = scores["birads_agreement"]["intended"]["all"]
    assert intended["n"] == len(pairs)
    assert intended["accuracy"] == pytest.approx(np.mean([a == b for a, b in pairs]))
    assert intended["kappa_quadratic"] == pytest.approx(cohen_kappa_score(*zip(*pairs), weights="quadratic"))
    # each case was read once: no case was read by all readers, so no Fleiss' kappa
    assert scores["birads_agreement"]["fleiss_readers"] is None
    assert scores["time_per_case"]["all"]["n"] == 2196


def test_fleiss_kappa_between_readers(tmp_path):
    """Readers who all agree give kappa 1; the figure is statsmodels' for the same table."""
    from mammosynth.validation.reader_study.layout import Case
    from mammosynth.validation.reader_study.scoring import Read, fleiss

    case = Case("0" * 16, "real", "", 1, "", "CC", "L", "x")
    reads = [Read(r, f"{c:016x}", case, "real", 3, 1 + c % 5, 1.0, True, 1) for r in ("A", "B", "C") for c in range(10)]
    assert fleiss(reads, lambda r: r.birads)["kappa"] == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    noisy = [Read(r.reader_id, r.trial_id, case, "real", 3, int(rng.integers(1, 6)), 1.0, True, 1) for r in reads]
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    grid = np.array(
        [
            [next(x.birads for x in noisy if x.trial_id == f"{c:016x}" and x.reader_id == r) for r in "ABC"]
            for c in range(10)
        ]
    )
    assert fleiss(noisy, lambda r: r.birads)["kappa"] == pytest.approx(
        fleiss_kappa(aggregate_raters(grid - 1, n_cat=5)[0])
    )


def test_imrmc_export(scored):
    _, answers, cases, out = scored
    text = (out / "imrmc.imrmc").read_text().splitlines()
    assert "NR: 7" in text and "N0: 1062" in text and "N1: 1134" in text and "NM: 1" in text
    data = text[text.index("BEGIN DATA:") + 1 :]
    truth_lines = [line for line in data if line.startswith("-1,")]
    assert len(truth_lines) == 2196 and sum(line.endswith(",1") for line in truth_lines) == 1134
    reads = [line.split(",") for line in data if not line.startswith("-1,")]
    assert len(reads) == 2196 and {int(r[3]) for r in reads} <= set(range(1, 7))
    numbers = dict(line.split(",") for line in (out / "imrmc_cases.csv").read_text().splitlines()[1:])
    truth = {c.case_id: c.truth for c in cases}
    for line in truth_lines:
        _, number, _, t = line.split(",")
        assert (truth[numbers[number]] == "synthetic") == (t == "1")


def test_markdown_and_plot(scored):
    _, _, _, out = scored
    md = (out / "scores.md").read_text()
    assert "| Correctly identified real | 751 | 70.7% |" in md
    assert "| Inpainting | 347 | 203 | 58.50% |" in md
    assert "## AUROC per reader" in md and "## Caveats" in md
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_without_answers_is_exit_2(tmp_path, capsys):
    layout, _ = paper.write_study(tmp_path / "study")
    with pytest.raises(SystemExit) as done:
        main(["reader-study", "score", str(layout.root), "--out", str(tmp_path / "o")])
    assert done.value.code == 2
    assert "no answers" in capsys.readouterr().err


def test_survey_answers_are_counted_not_quoted(tmp_path):
    from mammosynth.validation.reader_study.scoring import write_scores
    from mammosynth.validation.reader_study.store import Answer, AnswerStore

    layout, cases = paper.write_study(tmp_path / "study")
    store = AnswerStore(layout.answers_db)
    store.insert_all([Answer("R1", c.case_id, c.truth, 3, 2, 1.0) for c in cases[:50]])
    store.save_survey(
        "R1",
        {
            "gender": "Female",
            "years_practice": 12.0,
            "setting": ["Private hospital"],
            "strategy_change": "Dr X said so",
        },
    )
    store.save_survey("R2", {"gender": "Female", "years_practice": 4.0, "setting.other": "mobile unit"})
    scores = write_scores(layout.root, tmp_path / "out", replicates=10)
    survey = scores["survey"]
    assert survey["gender"]["counts"] == {"Male": 0, "Female": 2}
    assert (survey["years_practice"]["min"], survey["years_practice"]["median"], survey["years_practice"]["max"]) == (
        4.0,
        8.0,
        12.0,
    )
    assert survey["setting"]["counts"]["Private hospital"] == 1 and survey["setting"]["other"] == 1
    assert survey["strategy_change"] == {"text": "If yes, describe", "kind": "text", "answered": 1}
    md = (tmp_path / "out" / "scores.md").read_text()
    assert "| Gender | Female: 2 |" in md
    assert "Dr X" not in md and "Dr X" not in (tmp_path / "out" / "scores.json").read_text()
