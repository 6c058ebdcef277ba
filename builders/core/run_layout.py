"""Where one release's run keeps its files: the only place that spells these paths.

``<output_dir>/generated/<method>/``  shards from ``generate``
``<output_dir>/validation/``          report.json, report.md, plots
``<output_dir>/card/``                README.md + croissant.json
``<output_dir>/release/``             the Hub-layout folder (a git repo)
``<output_dir>/stages/<stage>.json``  up-to-date stamps of ``build``
``<output_dir>/cache/``               derived data worth keeping between runs (lesion bank)
``<output_dir>/shipped/``             after ``build --drop-failed``: the rows left, while they are validated
``<output_dir>/validation-shipped/``  the report of exactly those rows (what the card and release describe)

In a release folder, ``validation/`` is the report of exactly the released rows and, after
``--drop-failed``, ``validation/candidate/`` the report the dropped rows were dropped on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CARD_FILE = "README.md"
CROISSANT_FILE = "croissant.json"
CANDIDATE_DIR = "candidate"  # in a release's validation/: the report the dropped rows were dropped on


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def generated(self, method: str | None = None) -> Path:
        base = self.root / "generated"
        return base / method if method else base

    @property
    def validation(self) -> Path:
        return self.root / "validation"

    @property
    def report_json(self) -> Path:
        return self.validation / REPORT_JSON

    @property
    def card(self) -> Path:
        return self.root / "card"

    @property
    def release(self) -> Path:
        return self.root / "release"

    def stage_stamp(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def shipped_rows(self) -> Path:
        return self.root / "shipped"

    @property
    def shipped_validation(self) -> Path:
        return self.root / "validation-shipped"


def report_json(folder: str | Path) -> Path:
    """The report inside a report folder (a run's ``validation/`` or a release's)."""
    return Path(folder) / REPORT_JSON


__all__ = ["RunLayout", "REPORT_JSON", "REPORT_MD", "CARD_FILE", "CROISSANT_FILE", "CANDIDATE_DIR", "report_json"]
