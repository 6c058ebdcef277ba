"""Writing a release's card: the one function ``mammosynth card`` and ``mammosynth build`` call, so
both produce the same README.md and croissant.json from the same inputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mammosynth.builders.core import atomic
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.release_data import ReleaseData
from mammosynth.builders.core.run_layout import CARD_FILE, CROISSANT_FILE
from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.dataset_cards.card import Override, lint_card, render_card
from mammosynth.dataset_cards.croissant import write_croissant
from mammosynth.dataset_cards.reader_study_section import reader_study_section
from mammosynth.validation.report import ValidationReport


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
    leaves the previous card; other files in ``out`` are left alone. A reader study the spec
    attaches (``reader_study``) becomes a section of its own."""
    study = reader_study_section(spec.reader_study)
    extra_sections = [*extra_sections, study] if study else list(extra_sections)
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


__all__ = ["write_card"]
