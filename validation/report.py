"""The typed validation report and its JSON / Markdown renderings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import pydantic


class Gate(pydantic.BaseModel):
    """One gate: its status plus whatever figures it measured (kept flat, as in report.json)."""

    model_config = pydantic.ConfigDict(extra="allow")

    status: Literal["pass", "warn", "fail"]
    summary: str = ""


class Flag(pydantic.BaseModel):
    image_id: str
    check: str
    reason: str
    method: str | None = None
    nearest_training_id: str | None = None
    nearest_release_id: str | None = None
    distance: float | None = None


class ValidationReport(pydantic.BaseModel):
    passed: bool
    created: str
    release: dict[str, Any]
    reference: dict[str, Any]
    baseline: dict[str, Any] | None = None
    implementations: dict[str, str]
    thresholds: dict[str, Any]
    n_rows: int
    gates: dict[str, Gate]
    flagged: list[Flag]
    failed_image_ids: list[str]
    timings_s: dict[str, float] = {}
    plots: list[str] = []

    def failed_gates(self) -> list[str]:
        return [k for k, g in self.gates.items() if g.status == "fail"]


def write_json(report: ValidationReport, path: Path) -> None:
    _atomic_text(path, json.dumps(report.model_dump(mode="json"), indent=1, default=str))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


_ICON = {"pass": "✅ pass", "warn": "⚠️ warn", "fail": "❌ fail"}


def render_markdown(report: ValidationReport, plots_rel: str = "") -> str:
    """Compact summary for the dataset card and the CI page."""
    lines = [
        f"## Validation: {'PASSED' if report.passed else 'FAILED'}",
        "",
        f"Release `{report.release.get('source')}` ({report.n_rows} images) against reference "
        f"`{report.reference.get('source')}` ({report.reference.get('n')} images, content hash "
        f"`{str(report.reference.get('content_hash', ''))[:12]}`)"
        + (f"; baseline `{report.baseline.get('source')}`" if report.baseline else "")
        + ".",
        "",
        "| gate | status | summary |",
        "|---|---|---|",
    ]
    for name, g in report.gates.items():
        lines.append(f"| {name} | {_ICON[g.status]} | {g.summary.replace('|', '/')} |")
    lines += ["", f"Flagged images: {len(report.failed_image_ids)} of {report.n_rows}."]
    if report.flagged:
        lines += ["", "| image | check | reason | nearest training image |", "|---|---|---|---|"]
        for f in report.flagged[:25]:
            lines.append(f"| {f.image_id} | {f.check} | {f.reason.replace('|', '/')} | {f.nearest_training_id or ''} |")
        if len(report.flagged) > 25:
            lines.append(f"| … | | {len(report.flagged) - 25} more in report.json | |")
    lines += [
        "",
        "Implementations: " + ", ".join(f"{k}: {v}" for k, v in report.implementations.items()) + ".",
        "Effect sizes are judged above a bootstrap noise floor of the reference against itself.",
    ]
    if report.plots:
        lines += ["", " ".join(f"![{Path(p).stem}]({plots_rel}{Path(p).name})" for p in report.plots)]
    return "\n".join(lines) + "\n"


def write_markdown(report: ValidationReport, path: Path) -> str:
    text = render_markdown(report)
    _atomic_text(path, text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(text)
    return text
