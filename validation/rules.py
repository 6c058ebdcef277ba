"""The status rules of every gate, each in one place: the checks call them to set the statuses they
write, and ``verdict`` calls the same functions on a report's stored figures to re-derive them.

A rule reads only figures that the report stores (rounded as stored), so a status re-derived from
report.json is the status the check wrote. ``judge(gate, figures, thresholds)`` sets the
nested statuses of one gate's figures in place and returns the gate's own status.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from mammosynth.validation import checks as C
from mammosynth.validation.report import Flag, Gate
from mammosynth.validation.thresholds import EffectLimits, Thresholds

STATUS_ORDER = {"pass": 0, "warn": 1, "fail": 2}
FIGURE_DECIMALS = 4  # effect sizes, floors and excesses are stored (and judged) at this precision


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=lambda s: STATUS_ORDER.get(s, 0), default="pass")


def excess(value: float, noise_floor: float) -> float:
    """An effect above the reference's noise floor, as stored: the figure the limits judge."""
    return round(max(0.0, value - noise_floor), FIGURE_DECIMALS)


def effect_status(figure: dict[str, Any], limits: EffectLimits) -> str:
    """One measured effect: its stored ``excess`` against the limits; a figure that measured
    nothing (too few values: a ``note`` instead of an excess) passes."""
    if "excess" in figure:
        return limits.status(figure["excess"])
    if "note" in figure:
        return "pass"
    raise KeyError("excess")


def flagged_status(flagged_fraction: float, max_flagged_fraction: float) -> str:
    """A per-image gate fails when more than the allowed share of rows is flagged."""
    return "fail" if flagged_fraction > max_flagged_fraction else "pass"


def flagged_fraction(flagged_images: int, n_rows: int) -> float:
    """The share of rows flagged, stored unrounded (its rule compares it with the limit)."""
    return flagged_images / max(1, n_rows)


def uncalibrated(figures: dict[str, Any]) -> bool:
    """The memorization distance ceiling was neither calibrated (a reference of one patient has no
    other-patient distances) nor given."""
    cal = figures["calibration"]
    return cal["reference_other_patient_nn"] is None and not cal["overridden"]["nn_distance"]


def count_cell_status(expected: int, observed: int, skipped_with_reason: int) -> str:
    """Rows of one (method, BI-RADS, view, laterality) cell against the spec: exact passes, a
    shortfall explained by generator skips with a recorded reason warns, anything else fails."""
    if observed == expected:
        return "pass"
    if observed < expected and observed + skipped_with_reason >= expected:
        return "warn"
    return "fail"


# --- one judge per gate --------------------------------------------------------------------------

Judge = Callable[[dict[str, Any], Thresholds], str]


def _sanity(fig: dict[str, Any], th: Thresholds) -> str:
    return flagged_status(fig["flagged_fraction"], th.max_flagged_fraction)


def _memorization(fig: dict[str, Any], th: Thresholds) -> str:
    status = flagged_status(fig["flagged_fraction"], th.max_flagged_fraction)
    return "warn" if status == "pass" and uncalibrated(fig) else status


def _counts(fig: dict[str, Any], th: Thresholds) -> str:
    if fig.get("expected_total") is None:  # no spec: counts not checked
        return "warn"
    for cell in fig["mismatched_cells"]:
        cell["status"] = count_cell_status(cell["expected"], cell["observed"], cell["skipped_with_reason"])
    return worst(c["status"] for c in fig["mismatched_cells"])


def _categorical(fig: dict[str, Any], th: Thresholds) -> str:
    """Only the ``categorical_gated`` columns can fail: the spec fixes the others on purpose."""
    st = th.stats
    for name, col in fig["columns"].items():
        if name in st.categorical_gated:
            col["status"] = effect_status(col, st.categorical)
        else:
            col["gated"] = False
            col["status"] = "pass"
    return worst(c["status"] for name, c in fig["columns"].items() if name in st.categorical_gated)


def _judge_all(figures: Iterable[dict[str, Any]], limits: EffectLimits) -> str:
    figures = list(figures)
    for f in figures:
        f["status"] = effect_status(f, limits)
    return worst(f["status"] for f in figures)


def _box_size(fig: dict[str, Any], th: Thresholds) -> str:
    return _judge_all((d for v in fig["per_birads"].values() for d in v.values()), th.stats.box_size)


def _intensity(fig: dict[str, Any], th: Thresholds) -> str:
    return _judge_all(fig["per_method"].values(), th.stats.intensity)


def _area(fig: dict[str, Any], th: Thresholds) -> str:
    return _judge_all(fig["per_view"].values(), th.stats.area)


def _diversity(fig: dict[str, Any], th: Thresholds) -> str:
    """Mean MS-SSIM within prompt groups: too similar images warn or fail."""
    if "mean_msssim" in fig:
        return th.stats.diversity_msssim.status(fig["mean_msssim"])
    if "note" in fig:
        return "pass"
    raise KeyError("mean_msssim")


def _canaries(fig: dict[str, Any], th: Thresholds) -> str:
    """The memorization check's own recall on planted copies (from the integer counts) under the
    minimum, or its false-positive rate on held-out real images over the maximum, fails; no copy
    planted fails (the check's recall is unknown); no patient to hold out warns."""
    c = th.canaries
    if not fig["planted"] or fig["caught"] / fig["planted"] < c.min_recall:
        return "fail"
    held = fig["held_out"]
    if not held["images"]:
        return "warn"
    return "fail" if held["false_positives"] / held["images"] > c.max_false_positive_rate else "pass"


DRIFT_GATED = ("intensity", "area", "box_width")  # category shares are reported, not gated


def _drift(fig: dict[str, Any], th: Thresholds) -> str:
    for col in fig["categorical"].values():
        col["status"] = "pass"
    return _judge_all((fig[k] for k in DRIFT_GATED), th.stats.drift)


JUDGES: dict[str, Judge] = {
    C.GATE_SANITY: _sanity,
    C.GATE_MEMORIZATION: _memorization,
    C.GATE_COUNTS: _counts,
    C.GATE_CATEGORICAL: _categorical,
    C.GATE_BOX_SIZE: _box_size,
    C.GATE_INTENSITY: _intensity,
    C.GATE_AREA: _area,
    C.GATE_DIVERSITY: _diversity,
    C.GATE_CANARIES: _canaries,
    C.GATE_DRIFT: _drift,
}
# every report has these gates; drift only with a baseline, canaries from report version 2 on
REQUIRED_GATES: tuple[str, ...] = tuple(g for g in JUDGES if g != C.GATE_DRIFT)
GATES_SINCE: dict[str, int] = {C.GATE_CANARIES: 2}


def required_gates(report_version: int, baseline: bool) -> set[str]:
    """The gates a report of ``report_version`` must have."""
    want = {g for g in REQUIRED_GATES if GATES_SINCE.get(g, 1) <= report_version}
    return want | ({C.GATE_DRIFT} if baseline else set())


def judge(gate: str, figures: dict[str, Any], th: Thresholds) -> str:
    """Set the nested statuses of ``figures`` (one gate's, as report.json stores them) and return the
    gate's status."""
    return JUDGES[gate](figures, th)


def judged_gate(gate: str, th: Thresholds, summary: str, figures: dict[str, Any]) -> Gate:
    """The gate ``gate`` with its figures, its status (and theirs) set by its judge: how every
    check makes its gate."""
    figures = {k: v for k, v in figures.items() if k not in ("status", "summary")}
    return Gate(status=judge(gate, figures, th), summary=summary, **figures)


def flagged_gate(
    gate: str, flags: list[Flag], checks: Iterable[str], n_rows: int, th: Thresholds, **figures: Any
) -> Gate:
    """A per-image gate over ``flags`` (findings of ``checks``): it fails when more than
    ``max_flagged_fraction`` of the rows are flagged."""
    ids = {f.image_id for f in flags}
    frac = flagged_fraction(len(ids), n_rows)
    by_check = dict(Counter(f.check for f in flags))
    summary = f"{len(ids)} image(s) flagged ({frac:.1%})" + (f": {by_check}" if by_check else "")
    return judged_gate(
        gate,
        th,
        summary,
        {
            "flagged_images": len(ids),
            "flagged_fraction": frac,
            "by_check": by_check,
            "checks": sorted(checks),
            **figures,
        },
    )


def overall(statuses: Iterable[str]) -> bool:
    """The release passes when no gate fails (warnings pass)."""
    return all(s != "fail" for s in statuses)


__all__ = [
    "STATUS_ORDER",
    "FIGURE_DECIMALS",
    "worst",
    "excess",
    "effect_status",
    "flagged_status",
    "flagged_fraction",
    "uncalibrated",
    "count_cell_status",
    "DRIFT_GATED",
    "JUDGES",
    "REQUIRED_GATES",
    "GATES_SINCE",
    "required_gates",
    "judge",
    "judged_gate",
    "flagged_gate",
    "overall",
]
