"""The card's reader-study section: a scored study (`mammosynth reader-study score --out DIR`,
attached to a release by the spec's ``reader_study``) as markdown: how the study was run, the
source paper's Table 1 and Table 2 for this release, AUROC per reader with intervals, judged-real
rates, BI-RADS agreement, time per case, caveats."""

from __future__ import annotations

from pathlib import Path

from mammosynth.builders.core.errors import InputError
from mammosynth.validation.reader_study.scoring import read_scores
from mammosynth.validation.reader_study.summary import scores_markdown


def reader_study_section(scored: str | Path | None, *, level: int = 2) -> str:
    """Markdown of the section ("" when no study is attached), its heading at ``level``.
    InputError (saying it comes from the spec's ``reader_study``, naming the scores file and its
    field) when the folder holds no readable scores."""
    if scored is None:
        return ""
    try:
        scores = read_scores(scored)
    except InputError as exc:
        raise InputError(f"spec field reader_study: {exc.reason}", file=exc.file, field=exc.field) from None
    return scores_markdown(scores, level=level)
