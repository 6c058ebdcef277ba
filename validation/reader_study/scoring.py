"""`mammosynth reader-study score`: the study's answers against its key.

Counts are over reads (one reader's answer on one case). ``scores.json`` holds the source
paper's Table 1 (real and synthetic: n, correct, misclassified) and Table 2 (per method: n,
correct, accuracy), AUROC per reader (the rating 1-6 from judgement x confidence: judged real
with confidence 3, 2, 1 = 1, 2, 3; judged synthetic with confidence 1, 2, 3 = 4, 5, 6; synthetic
is the positive class) and their mean, with confidence intervals (Wilson for proportions, a
bootstrap over readers and cases for AUROC), judged-real rates by method, BI-RADS, density and
view, BI-RADS agreement with the intended category (accuracy, quadratic-weighted kappa) and
between readers (Fleiss' kappa), time per case; beside it ``scores.md``, ``roc.png`` and the
iMRMC input file.

In 2afc mode a read is a pair, correct when the reader picked the synthetic image; a reader's
proportion correct is their AUROC (the 2AFC identity), so ``auroc`` holds those.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import rankdata  # noqa: E402
from sklearn.metrics import cohen_kappa_score, roc_auc_score, roc_curve  # noqa: E402
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

from mammosynth.builders.core.atomic import atomic_dir, atomic_file, write_json, write_text
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.schema import METHODS
from mammosynth.validation.reader_study.imrmc import write_imrmc
from mammosynth.validation.reader_study.layout import Case, StudyLayout, Trial
from mammosynth.validation.reader_study.store import Answer, AnswerStore
from mammosynth.validation.reader_study.summary import scores_markdown
from mammosynth.validation.reader_study.survey import load_survey

SCORES_JSON = "scores.json"
SCORES_MD = "scores.md"
ROC_PNG = "roc.png"
IMRMC_FILE = "imrmc.imrmc"
IMRMC_CASES = "imrmc_cases.csv"
SCORES_VERSION = 1
BOOTSTRAP = 2000
CI_LEVEL = 0.95


@dataclass(frozen=True)
class Read:
    """One reader's answer on one case (single) or one pair (2afc), joined with the key."""

    reader_id: str
    trial_id: str
    case: Case  # the case read; in 2afc the pair's synthetic case
    judged: str
    confidence: int
    birads: int | None
    seconds: float | None
    correct: bool
    rating: int  # 1-6 (single); 2afc: 1 correct, 0 not


def rating(judged: str, confidence: int) -> int:
    """The ROC rating: judged real with confidence 3, 2, 1 = 1, 2, 3; synthetic 1, 2, 3 = 4, 5, 6."""
    return 4 - confidence if judged == "real" else 3 + confidence


def wilson(k: int, n: int) -> list[float] | None:
    if n == 0:
        return None
    lo, hi = proportion_confint(k, n, alpha=1 - CI_LEVEL, method="wilson")
    return [float(lo), float(hi)]


def proportion(k: int, n: int) -> dict[str, Any]:
    return {"n": n, "k": k, "rate": k / n if n else None, "ci95": wilson(k, n)}


def reads_of(mode: str, key: dict[str, Case], trials: dict[str, Trial], answers: Iterable[Answer]) -> list[Read]:
    out = []
    for a in answers:
        trial = trials.get(a.trial_id)
        if trial is None:
            raise InputError("an answer names a case that is not in key.csv", record=a.trial_id, field="trial_id")
        if mode == "single":
            case = key[trial.cases[0]]
            correct = a.judged == case.truth
            r = rating(a.judged, a.confidence)
        else:
            side = next(i for i, c in enumerate(trial.cases) if key[c].truth == "synthetic")
            case = key[trial.cases[side]]
            correct = a.judged == ("left", "right")[side]
            r = int(correct)
        out.append(Read(a.reader_id, a.trial_id, case, a.judged, a.confidence, a.birads, a.seconds, correct, r))
    return out


# --- tables ---------------------------------------------------------------------------------------


def _method_order(name: str) -> tuple[int, str]:
    """Real first, then the methods in the schema's order (the paper's), then anything else."""
    order = ("real", *METHODS)
    return (order.index(name) if name in order else len(order), name)


def table1(reads: list[Read], mode: str) -> dict[str, Any]:
    out = {}
    for truth in ("real", "synthetic"):
        group = reads if mode == "2afc" else [r for r in reads if r.case.truth == truth]
        n, k = len(group), sum(r.correct for r in group)
        out[truth] = {
            "n": n,
            "correct": k,
            "misclassified": n - k,
            "accuracy": k / n if n else None,
            "ci95": wilson(k, n),
        }
    return out


def table2(reads: list[Read]) -> dict[str, Any]:
    by: dict[str, list[Read]] = defaultdict(list)
    for r in reads:
        if r.case.truth == "synthetic":
            by[r.case.method].append(r)
    out = {}
    for method in sorted(by, key=_method_order):
        n, k = len(by[method]), sum(r.correct for r in by[method])
        out[method] = {"n": n, "correct": k, "accuracy": k / n, "ci95": wilson(k, n)}
    return out


def judged_real(reads: list[Read], mode: str) -> dict[str, Any]:
    """Share of reads judged real, by method (``real`` for the real cases), BI-RADS, density and
    view; the last three split by truth. 2afc: share of pairs where the synthetic one was missed."""
    missed = (lambda r: not r.correct) if mode == "2afc" else (lambda r: r.judged == "real")

    def rates(group: list[Read], value: Callable[[Read], Any]) -> dict[str, Any]:
        by: dict[str, list[Read]] = defaultdict(list)
        for r in group:
            v = value(r)
            by["unknown" if v in (None, "") else str(v)].append(r)
        return {k: proportion(sum(missed(r) for r in by[k]), len(by[k])) for k in sorted(by, key=_method_order)}

    out: dict[str, Any] = {"method": rates(reads, lambda r: r.case.method or "real")}
    for dim, value in (
        ("birads", lambda r: r.case.birads),
        ("density", lambda r: r.case.density),
        ("view", lambda r: r.case.view),
    ):
        out[dim] = {t: rates([r for r in reads if r.case.truth == t], value) for t in ("real", "synthetic")}
        out[dim] = {t: v for t, v in out[dim].items() if v}
    return out


# --- AUROC ----------------------------------------------------------------------------------------


def rank_auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``scores`` (NaN = not read) for the ``positive`` columns, by the
    Mann-Whitney rank sum (ties count a half, as in ``roc_auc_score``); NaN where a row lacks a class."""
    ranks = rankdata(scores, axis=-1, nan_policy="omit")
    seen = ~np.isnan(scores)
    pos = positive & seen
    n1 = pos.sum(axis=-1)
    n0 = (seen & ~positive).sum(axis=-1)
    u = np.nansum(np.where(pos, ranks, 0.0), axis=-1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)


def auroc(reads: list[Read], mode: str, *, replicates: int, seed: int) -> dict[str, Any]:
    readers = sorted({r.reader_id for r in reads})
    trial_ids = sorted({r.trial_id for r in reads})
    col = {t: i for i, t in enumerate(trial_ids)}
    row = {r: i for i, r in enumerate(readers)}
    matrix = np.full((len(readers), len(trial_ids)), np.nan)
    truth = np.zeros(len(trial_ids), bool)
    for r in reads:
        matrix[row[r.reader_id], col[r.trial_id]] = r.rating
        truth[col[r.trial_id]] = r.case.truth == "synthetic"
    per_reader: dict[str, float | None] = {}
    for reader in readers:
        mine = [r for r in reads if r.reader_id == reader]
        if mode == "2afc":
            per_reader[reader] = float(np.mean([r.correct for r in mine]))
        else:
            y = [r.case.truth == "synthetic" for r in mine]
            per_reader[reader] = float(roc_auc_score(y, [r.rating for r in mine])) if len(set(y)) == 2 else None
    values = [v for v in per_reader.values() if v is not None]
    out: dict[str, Any] = {
        "per_reader": per_reader,
        "mean": float(np.mean(values)) if values else None,
        "positive": "synthetic",
        "rating": "2afc proportion correct" if mode == "2afc" else "1-6: real 3,2,1 = 1,2,3; synthetic 1,2,3 = 4,5,6",
    }
    if not values or replicates < 1:
        out.update(ci95=None, per_reader_ci95={r: None for r in readers}, bootstrap=None)
        return out
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = np.flatnonzero(truth), np.flatnonzero(~truth)
    means = np.empty(replicates)
    reader_values = np.empty((replicates, len(readers)))
    for b in range(replicates):
        # cases resampled within each class (every replicate keeps both), readers resampled too
        cases = (
            np.concatenate([rng.choice(pos_idx, len(pos_idx)), rng.choice(neg_idx, len(neg_idx))])
            if mode == "single"
            else rng.choice(len(trial_ids), len(trial_ids))
        )
        sub = matrix[:, cases]
        if mode == "single":
            reader_values[b] = rank_auc(sub, truth[cases])
        else:
            with np.errstate(invalid="ignore"):
                reader_values[b] = np.nanmean(sub, axis=1) if sub.size else np.nan
        picked = reader_values[b, rng.choice(len(readers), len(readers))]
        means[b] = np.nanmean(picked) if np.isfinite(picked).any() else np.nan
    alpha = (1 - CI_LEVEL) / 2

    def ci(x: np.ndarray) -> list[float] | None:
        x = x[np.isfinite(x)]
        return [float(np.quantile(x, alpha)), float(np.quantile(x, 1 - alpha))] if len(x) else None

    out["ci95"] = ci(means)
    out["per_reader_ci95"] = {r: ci(reader_values[:, i]) for i, r in enumerate(readers)}
    out["bootstrap"] = {"replicates": replicates, "seed": seed, "over": "readers and cases (cases within class)"}
    return out


# --- BI-RADS, agreement, time -----------------------------------------------------------------


def birads_agreement(reads: list[Read]) -> dict[str, Any]:
    """Reader BI-RADS against the intended category (the key's), per truth and overall."""

    def agree(group: list[Read]) -> dict[str, Any] | None:
        pairs = [(r.case.birads, r.birads) for r in group if r.case.birads and r.birads]
        if not pairs:
            return None
        truth, said = zip(*pairs)
        same = sum(a == b for a, b in pairs)
        kappa = cohen_kappa_score(truth, said, weights="quadratic", labels=[1, 2, 3, 4, 5])
        return {
            "n": len(pairs),
            "accuracy": same / len(pairs),
            "ci95": wilson(same, len(pairs)),
            "kappa_quadratic": None if np.isnan(kappa) else float(kappa),
        }

    out: dict[str, Any] = {"all": agree(reads)}
    for truth in ("real", "synthetic"):
        out[truth] = agree([r for r in reads if r.case.truth == truth])
    out["per_reader"] = {
        rid: agree([r for r in reads if r.reader_id == rid]) for rid in sorted({r.reader_id for r in reads})
    }
    return out


def fleiss(reads: list[Read], value: Callable[[Read], Any]) -> dict[str, Any] | None:
    """Fleiss' kappa over the cases every reader with answers rated (``value`` per read)."""
    readers = sorted({r.reader_id for r in reads})
    if len(readers) < 2:
        return None
    by_case: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in reads:
        v = value(r)
        if v is not None:
            by_case[r.trial_id][r.reader_id] = v
    complete = [c for c in sorted(by_case) if len(by_case[c]) == len(readers)]
    if not complete:
        return None
    data = np.array([[by_case[c][rid] for rid in readers] for c in complete])
    categories = sorted({x for x in data.ravel()})
    codes = np.vectorize(categories.index)(data)
    table, _ = aggregate_raters(codes, n_cat=len(categories))
    kappa = fleiss_kappa(table, method="fleiss")
    return {"kappa": None if np.isnan(kappa) else float(kappa), "cases": len(complete), "readers": len(readers)}


def time_per_case(reads: list[Read]) -> dict[str, Any]:
    def summary(group: list[Read]) -> dict[str, Any] | None:
        s = np.array([r.seconds for r in group if r.seconds is not None], float)
        if not len(s):
            return None
        q1, med, q3 = np.quantile(s, [0.25, 0.5, 0.75])
        return {"n": int(len(s)), "mean": float(s.mean()), "median": float(med), "q1": float(q1), "q3": float(q3)}

    return {
        "all": summary(reads),
        "real": summary([r for r in reads if r.case.truth == "real"]),
        "synthetic": summary([r for r in reads if r.case.truth == "synthetic"]),
        "per_reader": {
            rid: summary([r for r in reads if r.reader_id == rid]) for rid in sorted({r.reader_id for r in reads})
        },
    }


def survey_summary(survey: Any, answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per question: how many readers chose each option (single and multiple choice), the spread
    of numbers, or how many wrote text (free text stays in answers.sqlite: it may name people)."""
    out: dict[str, Any] = {}
    for q in survey.questions:
        given = [a[q.id] for a in answers.values() if q.id in a]
        entry: dict[str, Any] = {"text": q.text, "kind": q.kind, "answered": len(given)}
        if q.kind in ("single", "multi"):
            chosen = [v for g in given for v in (g if isinstance(g, list) else [g])]
            entry["counts"] = {o: chosen.count(o) for o in q.options}
            if q.other:
                entry["other"] = sum(1 for a in answers.values() if a.get(f"{q.id}.other"))
        elif q.kind == "number" and given:
            x = np.asarray(given, float)
            entry.update(min=float(x.min()), median=float(np.median(x)), max=float(x.max()))
        out[q.id] = entry
    return out


# --- the command --------------------------------------------------------------------------------


def score(study: str | Path, *, replicates: int = BOOTSTRAP, seed: int = 0) -> tuple[dict[str, Any], list[Read]]:
    """The scores of ``study`` and the reads they were computed from."""
    layout = StudyLayout(study)
    layout.check()
    info = layout.info()
    mode = info["mode"]
    key = layout.key()
    trials = layout.trials(mode, key)
    reads = reads_of(mode, key, trials, AnswerStore(layout.answers_db).answers())
    if not reads:
        raise InputError("the study has no answers yet (serve it, or import answers)", file=layout.answers_db)
    readers = sorted({r.reader_id for r in reads})
    store = AnswerStore(layout.answers_db)
    survey = store.surveys()
    imported = sum(1 for a in store.answers() if a.origin == "import")
    return {
        "version": SCORES_VERSION,
        "study": {
            "mode": mode,
            "release": info.get("release"),
            "real_set": info.get("real_set"),
            "cases": {
                "real": sum(c.truth == "real" for c in key.values()),
                "synthetic": sum(c.truth == "synthetic" for c in key.values()),
            },
            "readers": len(readers),
            "reads": len(reads),
            "surveys": len(survey),
            "image": info.get("image"),
            "stratify": info.get("stratify"),
            "real_matching": info.get("real_matching"),
            "real_is_training_set": bool(info.get("real_is_training_set")),
            "notes": list(info.get("notes") or []),
            "imported_reads": imported,
        },
        "table1": table1(reads, mode),
        "table2": table2(reads),
        "auroc": auroc(reads, mode, replicates=replicates, seed=seed),
        "judged_real": judged_real(reads, mode),
        "birads_agreement": {
            "intended": birads_agreement(reads) if mode == "single" else None,
            "fleiss_readers": fleiss(reads, lambda r: r.birads) if mode == "single" else None,
        },
        "judgement_agreement": {"fleiss_readers": fleiss(reads, lambda r: r.judged)},
        "time_per_case": time_per_case(reads),
        "survey": survey_summary(load_survey(layout.survey_yaml), survey) if survey else None,
        "files": {"markdown": SCORES_MD, "roc": ROC_PNG, "imrmc": IMRMC_FILE if mode == "single" else None},
    }, reads


def write_scores(study: str | Path, out: str | Path, *, replicates: int = BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Score ``study`` into the folder ``out`` (replaced as a whole): scores.json, scores.md,
    roc.png and, in single mode, the iMRMC input file with its case-number table."""
    scores, reads = score(study, replicates=replicates, seed=seed)
    with atomic_dir(out) as tmp:
        write_json(tmp / SCORES_JSON, scores, indent=2, sort_keys=False)
        write_text(tmp / SCORES_MD, scores_markdown(scores))
        _roc_plot(reads, scores, tmp / ROC_PNG)
        if scores["study"]["mode"] == "single":
            write_imrmc(reads, tmp / IMRMC_FILE, tmp / IMRMC_CASES)
    return scores


def _roc_plot(reads: list[Read], scores: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    if scores["study"]["mode"] == "single":
        for reader, value in scores["auroc"]["per_reader"].items():
            mine = [r for r in reads if r.reader_id == reader]
            if value is None:
                continue
            fpr, tpr, _ = roc_curve([r.case.truth == "synthetic" for r in mine], [r.rating for r in mine])
            ax.plot(fpr, tpr, lw=1.5, label=f"{reader} (AUROC {value:.2f})")
        ax.set_xlabel("real judged synthetic (false-positive rate)")
        ax.set_ylabel("synthetic judged synthetic (true-positive rate)")
    else:
        for reader, value in scores["auroc"]["per_reader"].items():
            ax.scatter([1 - value], [value], label=f"{reader} (2AFC {value:.2f})")
        ax.set_xlabel("1 - proportion correct")
        ax.set_ylabel("proportion correct")
    mean = scores["auroc"]["mean"]
    ax.set_title(f"Reader ROC (mean AUROC {mean:.2f})" if mean is not None else "Reader ROC")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    finally:
        plt.close(fig)


def read_scores(folder: str | Path) -> dict[str, Any]:
    """``scores.json`` of a scored study folder; InputError naming the file and the first missing
    or malformed field."""
    path = Path(folder) / SCORES_JSON
    if not path.is_file():
        raise InputError(
            "no scores.json: score the study first (mammosynth reader-study score STUDY --out DIR)", file=path
        )
    try:
        scores = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read JSON ({exc})".splitlines()[0], file=path) from None
    if not isinstance(scores, dict) or scores.get("version") != SCORES_VERSION:
        raise InputError(f"not scores of format version {SCORES_VERSION}", file=path, field="version")
    required = {
        "study": ("mode", "cases", "readers", "reads"),
        "table1": ("real", "synthetic"),
        "table2": (),
        "auroc": ("per_reader", "mean"),
        "judged_real": ("method",),
    }
    for section, keys in required.items():
        if not isinstance(scores.get(section), dict):
            raise InputError("missing or not an object", file=path, field=section)
        for k in keys:
            if k not in scores[section]:
                raise InputError("missing", file=path, field=f"{section}.{k}")
    for truth in ("real", "synthetic"):
        for k in ("n", "correct", "misclassified"):
            if not isinstance(scores["table1"][truth].get(k), int):
                raise InputError("must be an integer", file=path, field=f"table1.{truth}.{k}")
    return scores
