"""`mammosynth card SPEC`: render README.md and croissant.json for a generated, validated release."""

from __future__ import annotations

from pathlib import Path

import click

from mammosynth.builders.core import progress


def card_for_spec(spec_path: Path, *, drop_failed: bool = False, out: Path | None = None) -> Path:
    """The card of SPEC's generated rows (less the failed ones with ``drop_failed``), written into
    ``out`` (default the run's ``card/`` folder). After dropping, the card describes the report of
    the rows left (``build --drop-failed`` writes it), never the candidate's gates."""
    from mammosynth.builders.core.errors import InputError
    from mammosynth.builders.core.release_data import load_release_data
    from mammosynth.builders.core.run_layout import REPORT_JSON
    from mammosynth.builders.core.spec import load_spec
    from mammosynth.dataset_cards.card import previous_release_info
    from mammosynth.dataset_cards.write import write_card
    from mammosynth.validation.gate import require_spec_thresholds
    from mammosynth.validation.report import ValidationReport

    spec = load_spec(spec_path)
    report_path = spec.layout.report_json
    report = ValidationReport.read_verified(report_path) if report_path.is_file() else None
    if report is not None:
        require_spec_thresholds(report, spec, report_path)
    drop = report.failed_ids() if drop_failed and report else set()
    data = load_release_data(spec, drop)
    candidate = None
    if any(data.dropped.values()):
        shipped = spec.layout.shipped_validation / REPORT_JSON
        hashes = {i: h for m in data.methods for i, h in data.image_hashes(m).items()}
        kept = ValidationReport.read_verified(shipped) if shipped.is_file() else None
        if kept is None or kept.rows_not_validated(hashes) or set(kept.row_hashes) != set(hashes):
            raise InputError(
                "no validation report describes the rows left after dropping; run `mammosynth build "
                "--drop-failed`, which validates them again",
                file=shipped,
                field="--drop-failed",
            )
        candidate, report = report, kept
    previous = previous_release_info(spec.previous_release) if spec.previous_release else None
    return write_card(spec, data, report, out or spec.layout.card, previous=previous, candidate=candidate)


@click.command("card")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--drop-failed", is_flag=True, help="Describe the release without rows that failed validation.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder (default <output_dir>/card).")
@progress.console_options
def card(spec: Path, drop_failed: bool, out: Path | None) -> None:
    """Render the dataset card (README.md) and croissant.json for SPEC."""
    path = card_for_spec(spec, drop_failed=drop_failed, out=out)
    progress.result(f"card written: {path} (+ croissant.json)")
