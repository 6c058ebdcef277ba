"""Re-derive a report's statuses from its own figures and recorded thresholds.

A report.json is read by the card, the release build and publishing; a status (or ``passed``) that
its figures do not support, by hand edit or by a bug, must not slip through. Every status is
recomputed with the very rules the checks used (``rules.judge``), and the figures those rules read
are checked against the figures they derive from (the flagged fraction against the flagged rows,
an excess against its effect and noise floor, the failed ids against the findings).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammosynth.builders.core.config_io import validate_model
from mammosynth.builders.core.errors import InputError
from mammosynth.validation import checks as C
from mammosynth.validation import rules
from mammosynth.validation.report import ValidationReport
from mammosynth.validation.thresholds import Thresholds

# an excess is stored rounded, as are the effect and floor it derives from: they may differ by
# the rounding of each (half a unit in the last place, three times)
EXCESS_TOLERANCE = 1.5 * 10.0**-rules.FIGURE_DECIMALS + 1e-12


@dataclass(frozen=True)
class Disagreement:
    """One figure or status of the report that its other figures do not support."""

    field: str  # dotted, as in report.json: "gates.sanity.status", "passed", ...
    stored: Any
    derived: Any

    def message(self) -> str:
        return f"the report says {self.stored!r}, its figures say {self.derived!r}"


def _status_paths(stored: Any, derived: Any, path: str) -> list[Disagreement]:
    """Nested ``status`` entries of one gate's figures that its judge set otherwise."""
    out: list[Disagreement] = []
    if isinstance(stored, dict) and isinstance(derived, dict):
        for k, v in stored.items():
            sub = f"{path}.{k}"
            if k == "status" and path.count(".") > 1:  # the gate's own status is compared first
                if v != derived.get(k):
                    out.append(Disagreement(sub, v, derived.get(k)))
            elif k in derived:
                out += _status_paths(v, derived[k], sub)
    elif isinstance(stored, list) and isinstance(derived, list):
        for i, (a, b) in enumerate(zip(stored, derived)):
            out += _status_paths(a, b, f"{path}.{i}")
    return out


def _excess_paths(fig: Any, path: str) -> list[Disagreement]:
    """Every stored excess must be its effect above its noise floor."""
    out: list[Disagreement] = []
    if isinstance(fig, dict):
        if {"excess", "value", "noise_floor"} <= set(fig):
            want = rules.excess(fig["value"], fig["noise_floor"])
            if not abs(fig["excess"] - want) <= EXCESS_TOLERANCE:
                out.append(Disagreement(f"{path}.excess", fig["excess"], want))
        for k, v in fig.items():
            out += _excess_paths(v, f"{path}.{k}")
    elif isinstance(fig, list):
        for i, v in enumerate(fig):
            out += _excess_paths(v, f"{path}.{i}")
    return out


PER_IMAGE_GATES = {C.GATE_SANITY: C.SANITY_CHECKS, C.GATE_MEMORIZATION: C.MEMORIZATION_CHECKS}


def _flagged_paths(report: ValidationReport, name: str, fig: dict[str, Any]) -> list[Disagreement]:
    """A per-image gate's counts against the findings of its checks that the report lists."""
    path = f"gates.{name}"
    checks = PER_IMAGE_GATES[name]
    out = []
    if sorted(fig["checks"]) != sorted(checks):
        out.append(Disagreement(f"{path}.checks", fig["checks"], sorted(checks)))
    mine = [f for f in report.flagged if f.check in checks]
    want_images = len({f.image_id for f in mine})
    if fig["flagged_images"] != want_images:
        out.append(Disagreement(f"{path}.flagged_images", fig["flagged_images"], want_images))
    want_fraction = rules.flagged_fraction(want_images, report.n_rows)
    if not math.isclose(fig["flagged_fraction"], want_fraction, rel_tol=1e-9, abs_tol=1e-12):
        out.append(Disagreement(f"{path}.flagged_fraction", fig["flagged_fraction"], want_fraction))
    by_check = dict(Counter(f.check for f in mine))
    if fig.get("by_check", {}) != by_check:
        out.append(Disagreement(f"{path}.by_check", fig.get("by_check"), by_check))
    return out


def _canary_paths(fig: dict[str, Any]) -> list[Disagreement]:
    """The canaries' totals against their per-perturbation counts, and the recall and
    false-positive rate against the counts they derive from."""
    path = f"gates.{C.GATE_CANARIES}"
    out = []
    per = fig["per_perturbation"].values()
    for key in ("caught", "planted"):
        total = sum(int(v[key]) for v in per)
        if fig[key] != total:
            out.append(Disagreement(f"{path}.{key}", fig[key], total))
    if fig["planted"] and fig["recall"] != round(fig["caught"] / fig["planted"], 4):
        out.append(Disagreement(f"{path}.recall", fig["recall"], round(fig["caught"] / fig["planted"], 4)))
    held = fig["held_out"]
    if held["images"] and held["false_positive_rate"] != round(held["false_positives"] / held["images"], 4):
        want = round(held["false_positives"] / held["images"], 4)
        out.append(Disagreement(f"{path}.held_out.false_positive_rate", held["false_positive_rate"], want))
    return out


def thresholds_of(report: ValidationReport, source: str | Path | None = None) -> Thresholds:
    """The thresholds the report was judged with, as it records them."""
    try:
        return validate_model(Thresholds, report.thresholds, source=source)
    except InputError as exc:
        raise InputError(exc.reason, file=source, field=f"thresholds.{exc.field}") from None


def disagreements(report: ValidationReport, source: str | Path | None = None) -> list[Disagreement]:
    """Everything in ``report`` that its own figures and thresholds do not support, in the order
    it is reported: missing or unknown gates, gate statuses, ``passed``, nested statuses, derived
    figures. Malformed figures (a rule's input missing) raise InputError naming the gate."""
    if not report.thresholds:  # the defaults are not necessarily what the gates were judged with
        return [Disagreement("thresholds", {}, "the thresholds the gates were judged with")]
    th = thresholds_of(report, source)
    out: list[Disagreement] = []
    want_gates = rules.required_gates(report.report_version, report.baseline is not None)
    if C.GATE_CANARIES in report.gates:  # an older report may have it; then it is judged too
        want_gates.add(C.GATE_CANARIES)
    for name in sorted(want_gates - set(report.gates)):
        out.append(Disagreement(f"gates.{name}", None, "a gate every report has"))
    for name in sorted(set(report.gates) - want_gates):
        out.append(Disagreement(f"gates.{name}", name, "no such gate here"))
    if out:
        return out
    stored = {name: g.model_dump(mode="json") for name, g in report.gates.items()}
    derived: dict[str, dict[str, Any]] = {}
    statuses: dict[str, str] = {}
    for name, fig in stored.items():
        derived[name] = copy.deepcopy(fig)
        try:
            statuses[name] = rules.judge(name, derived[name], th)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(
                f"figures the status rule needs are missing or malformed ({exc!r})", file=source, field=f"gates.{name}"
            ) from None
        if fig["status"] != statuses[name]:
            out.append(Disagreement(f"gates.{name}.status", fig["status"], statuses[name]))
    if report.passed != rules.overall(statuses.values()):
        out.append(Disagreement("passed", report.passed, rules.overall(statuses.values())))
    for name in stored:
        out += _status_paths(stored[name], derived[name], f"gates.{name}")
    for name in stored:
        out += _excess_paths(stored[name], f"gates.{name}")
    known = set().union(*PER_IMAGE_GATES.values())
    for i, f in enumerate(report.flagged):
        if f.check not in known:  # a finding no gate counts
            out.append(Disagreement(f"flagged.{i}.check", f.check, sorted(known)))
    for name in PER_IMAGE_GATES:
        try:
            out += _flagged_paths(report, name, stored[name])
        except (KeyError, TypeError) as exc:
            raise InputError(f"per-image figures missing ({exc!r})", file=source, field=f"gates.{name}") from None
    if C.GATE_CANARIES in stored:
        try:
            out += _canary_paths(stored[C.GATE_CANARIES])
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(
                f"canary figures missing ({exc!r})", file=source, field=f"gates.{C.GATE_CANARIES}"
            ) from None
    failed = sorted({f.image_id for f in report.flagged})
    if sorted(report.failed_image_ids) != failed:
        out.append(Disagreement("failed_image_ids", report.failed_image_ids, failed))
    if len(report.row_hashes) != report.n_rows:
        out.append(Disagreement("row_hashes", f"{len(report.row_hashes)} rows", f"n_rows {report.n_rows}"))
    file_rows = [f.get("rows") for files in report.data_files.values() for f in files]
    if file_rows and all(isinstance(r, int) for r in file_rows) and sum(file_rows) != report.n_rows:
        out.append(Disagreement("n_rows", report.n_rows, f"{sum(file_rows)} rows in release.files"))
    return out


def verify(report: ValidationReport, source: str | Path | None = None) -> ValidationReport:
    """``report`` when its statuses follow from its figures; else InputError naming ``source`` and
    the first field that disagrees (``gates.<name>.status``, ``passed``, a figure)."""
    found = disagreements(report, source)
    if found:
        d = found[0]
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        raise InputError(d.message() + more, file=source, field=d.field)
    return report


__all__ = ["Disagreement", "EXCESS_TOLERANCE", "thresholds_of", "disagreements", "verify"]
