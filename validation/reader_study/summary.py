"""Markdown of a scored study (``scores.json``'s content): how it was run, tables like the source
paper's Table 1 and Table 2, AUROC with intervals, judged-real rates, BI-RADS agreement, time per
case and caveats. ``scores.md`` and the card's reader-study section are both this text."""

from __future__ import annotations

from typing import Any

METHOD_LABELS = {"text2image": "SD3.5 text-to-image", "inpainting": "Inpainting", "poisson": "Poisson blending"}


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _ci(ci: list[float] | None, pct: bool = True) -> str:
    if not ci:
        return "-"
    return f"{_pct(ci[0])}–{_pct(ci[1])}" if pct else f"{ci[0]:.3f}–{ci[1]:.3f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def scores_markdown(scores: dict[str, Any], *, level: int = 1) -> str:
    h = "#" * level
    s = scores["study"]
    mode = s["mode"]
    reads_word = "pairs read" if mode == "2afc" else "reads"
    lines = [f"{h} Reader study", ""]
    lines += _how(scores)
    t1 = scores["table1"]
    real, synth = t1["real"], t1["synthetic"]
    total = real["n"] + synth["n"] if mode == "single" else real["n"]
    lines += [
        f"{h}# Real or synthetic (Table 1)",
        "",
        "| Category | Count | Percentage | 95% CI (Wilson) |",
        "|---|---:|---:|---|",
        f"| Total {reads_word} | {total} | 100% | |",
    ]
    if mode == "single":
        lines += [
            f"| Real images | {real['n']} | {_pct(real['n'] / total if total else None)} | |",
            f"| Synthetic images | {synth['n']} | {_pct(synth['n'] / total if total else None)} | |",
            f"| Correctly identified real | {real['correct']} | {_pct(real['accuracy'])} | {_ci(real['ci95'])} |",
            f"| Misclassified real | {real['misclassified']} | {_pct(1 - real['accuracy'] if real['n'] else None)} | |",
        ]
    lines += [
        f"| Correctly identified synthetic | {synth['correct']} | {_pct(synth['accuracy'])} | {_ci(synth['ci95'])} |",
        f"| Misclassified synthetic | {synth['misclassified']} | {_pct(1 - synth['accuracy'] if synth['n'] else None)} | |",
        "",
        f"{h}# Synthetic images identified, per method (Table 2)",
        "",
        "| Technique | Total | Correctly identified | Accuracy | 95% CI (Wilson) |",
        "|---|---:|---:|---:|---|",
    ]
    for method, row in scores["table2"].items():
        label = METHOD_LABELS.get(method, method)
        lines.append(f"| {label} | {row['n']} | {row['correct']} | {_pct(row['accuracy'], 2)} | {_ci(row['ci95'])} |")
    a = scores["auroc"]
    lines += [
        "",
        f"{h}# AUROC per reader",
        "",
        (
            "Synthetic is the positive class; the rating is judgement x confidence (judged real with "
            "confidence 3, 2, 1 = 1, 2, 3; judged synthetic with confidence 1, 2, 3 = 4, 5, 6). "
            "0.5 means readers could not tell real from synthetic."
            if mode == "single"
            else "In 2AFC a reader's proportion of pairs where they picked the synthetic image is their AUROC."
        ),
        "",
        "| Reader | AUROC | 95% CI (bootstrap over cases) |",
        "|---|---:|---|",
    ]
    for reader, value in a["per_reader"].items():
        lines.append(f"| {reader} | {_num(value)} | {_ci((a.get('per_reader_ci95') or {}).get(reader), pct=False)} |")
    lines.append(f"| **mean** | **{_num(a['mean'])}** | {_ci(a.get('ci95'), pct=False)} (over readers and cases) |")
    lines += ["", f"{h}# Judged real, by method", "", "| Cases | Reads | Judged real | 95% CI |", "|---|---:|---:|---|"]
    for method, p in scores["judged_real"]["method"].items():
        lines.append(f"| {METHOD_LABELS.get(method, method)} | {p['n']} | {_pct(p['rate'])} | {_ci(p['ci95'])} |")
    for dim, title in (("birads", "BI-RADS"), ("density", "density"), ("view", "view")):
        strata = scores["judged_real"].get(dim) or {}
        if not strata:
            continue
        lines += [
            "",
            f"Judged real by {title}:",
            "",
            f"| Truth | {title} | Reads | Judged real | 95% CI |",
            "|---|---|---:|---:|---|",
        ]
        for truth, by in strata.items():
            for value, p in by.items():
                lines.append(f"| {truth} | {value} | {p['n']} | {_pct(p['rate'])} | {_ci(p['ci95'])} |")
    agreement = scores.get("birads_agreement") or {}
    intended = agreement.get("intended")
    if intended:
        lines += [
            "",
            f"{h}# BI-RADS",
            "",
            "Readers' BI-RADS against the category each image was made (synthetic) or reported (real) with.",
            "",
            "| Cases | Reads | Same category | Quadratic-weighted kappa |",
            "|---|---:|---:|---:|",
        ]
        for group in ("real", "synthetic", "all"):
            g = intended.get(group)
            if g:
                lines.append(
                    f"| {group} | {g['n']} | {_pct(g['accuracy'])} ({_ci(g['ci95'])}) | {_num(g['kappa_quadratic'])} |"
                )
        f = agreement.get("fleiss_readers")
        if f:
            lines += [
                "",
                f"Between readers (Fleiss' kappa, {f['cases']} cases read by all {f['readers']}): {_num(f['kappa'])}.",
            ]
    j = (scores.get("judgement_agreement") or {}).get("fleiss_readers")
    if j:
        lines += [
            "",
            f"Agreement between readers on real/synthetic (Fleiss' kappa, {j['cases']} cases): {_num(j['kappa'])}.",
        ]
    t = (scores.get("time_per_case") or {}).get("all")
    if t:
        lines += [
            "",
            f"Time per case: median {t['median']:.1f} s (interquartile {t['q1']:.1f}–{t['q3']:.1f} s, mean {t['mean']:.1f} s, {t['n']} timed reads).",
        ]
    survey = scores.get("survey")
    if survey:
        lines += ["", f"{h}# Reader survey", "", f"{s['surveys']} readers answered the survey.", ""]
        lines += ["| Question | Answers |", "|---|---|"]
        for q in survey.values():
            if q.get("counts"):
                shown = ", ".join(f"{o}: {n}" for o, n in q["counts"].items() if n)
                if q.get("other"):
                    shown += f"{', ' if shown else ''}other: {q['other']}"
            elif "median" in q:
                shown = f"median {q['median']:g} (range {q['min']:g}–{q['max']:g})"
            else:
                shown = f"{q['answered']} wrote an answer"
            if q["answered"]:
                lines.append(f"| {q['text'].replace('|', '/')} | {shown or '-'} |")
    lines += ["", f"{h}# Caveats", ""]
    lines += [f"- {c}" for c in caveats(scores)]
    return "\n".join(lines) + "\n"


def _how(scores: dict[str, Any]) -> list[str]:
    s = scores["study"]
    cases = s["cases"]
    image = s.get("image") or {}
    imported = s.get("imported_reads") or 0
    task = (
        "one image at a time, deciding real or synthetic with a confidence (low, medium, high) and assigning a BI-RADS category"
        if s["mode"] == "single"
        else "two images at a time (one real, one synthetic, sides at random), picking the synthetic one with a confidence"
    )
    how = (
        f"{s['readers']} readers read {cases['real']} real and {cases['synthetic']} synthetic images "
        f"({s['reads']} {'pairs' if s['mode'] == '2afc' else 'reads'}), {task}. "
        f"Every image went through the same preparation ({image.get('size', '?')} x {image.get('size', '?')} pixels, "
        f"{image.get('bit_depth', 8)}-bit grey PNG without metadata, opaque random names) and each reader had their own random order."
    )
    if imported < s["reads"]:
        how += (
            " Readers read in a browser (mammosynth reader-study serve) with zoom, pan and window/level; the page "
            "never showed the proportion of synthetic images or any answer."
        )
    if imported:
        how += f" {'All' if imported == s['reads'] else imported} of the reads were collected with another tool and imported."
    return [how, ""]


def caveats(scores: dict[str, Any]) -> list[str]:
    s = scores["study"]
    out = [
        "Counts are over reads (one reader's answer on one image), not over images; reads of the same image by several readers are not independent.",
        "Fooling readers shows visual realism only; it does not show that synthetic images are diagnostically equivalent to real ones.",
    ]
    out += list(s.get("notes") or [])
    if s["readers"] < 5:
        out.append(f"Only {s['readers']} reader(s): the intervals are wide and reader effects cannot be told apart.")
    return out
