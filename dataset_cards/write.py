"""Writing a release's card: the one function ``mammosynth card`` and ``mammosynth build`` call, so
both produce the same README.md and croissant.json from the same inputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mammosynth.builders.core import atomic
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.release_data import ReleaseData
from mammosynth.builders.core.run_layout import CARD_FILE, CROISSANT_FILE, RunLayout
from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.dataset_cards.card import Override, lint_card, render_card
from mammosynth.dataset_cards.croissant import write_croissant
from mammosynth.validation.report import ValidationReport

SHIPPED_ROWS = "shipped"  # under a run's root: the rows left after dropping, while they are validated
SHIPPED_VALIDATION = "validation-shipped"  # under a run's root: the report of exactly those rows
CANDIDATE_DIR = "candidate"  # in a release's validation/: the report the dropped rows were dropped on


def shipped_report_dir(layout: RunLayout) -> Path:
    """Where ``build --drop-failed`` keeps the validation report of the rows it ships."""
    return layout.root / SHIPPED_VALIDATION


def write_card(
    spec: ReleaseSpec,
    data: ReleaseData,
    report: ValidationReport | None,
    out: str | Path,
    *,
    overrides: Sequence[Override] = (),
    previous: dict[str, Any] | None = None,
    candidate: ValidationReport | None = None,
    extra_sections: Sequence[str] = (),
) -> Path:
    """Render, lint and write ``README.md`` + ``croissant.json`` into the folder ``out``. Both are
    checked before either replaces its old version (lint, Croissant validation), so a failure
    leaves the previous card; other files in ``out`` are left alone."""
    text = render_card(
        spec,
        data,
        report,
        overrides=list(overrides),
        previous=previous,
        candidate=candidate,
        extra_sections=extra_sections,
    )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("the card's output must be a folder, not a file", file=out, field="--out")
    lint_card(text, source=out / CARD_FILE)
    out.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_file(out / CROISSANT_FILE) as croissant:
        write_croissant(spec, data, croissant)
        atomic.write_text(out / CARD_FILE, text)
    return out / CARD_FILE


__all__ = ["write_card", "shipped_report_dir", "SHIPPED_ROWS", "SHIPPED_VALIDATION", "CANDIDATE_DIR"]
