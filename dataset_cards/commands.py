"""`mammosynth card SPEC`: render README.md and croissant.json for a generated, validated release."""

from __future__ import annotations

import json
from pathlib import Path

import click


def write_card(spec_path: Path, *, drop_failed: bool = False, out: Path | None = None) -> Path:
    """Render the card into ``out`` (default ``<output_dir>/card``); lint and validate before returning."""
    from mammosynth.builders.core.release_data import failed_ids_from_report, load_release_data
    from mammosynth.builders.core.spec import load_spec
    from mammosynth.dataset_cards.card import lint_card, previous_release_info, render_card
    from mammosynth.dataset_cards.croissant import write_croissant

    spec = load_spec(spec_path)
    report_path = Path(spec.output_dir) / "validation" / "report.json"  # type: ignore[arg-type]
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    drop = failed_ids_from_report(report) if drop_failed and report else set()
    data = load_release_data(spec, drop)
    previous = previous_release_info(spec.previous_release) if spec.previous_release else None
    text = render_card(spec, data, report, previous=previous)
    out = out or Path(spec.output_dir) / "card"  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    lint_card(text, source=out / "README.md")
    tmp = out / ".README.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out / "README.md")
    write_croissant(spec, data, out / "croissant.json")
    return out / "README.md"


@click.command("card")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--drop-failed", is_flag=True, help="Describe the release without rows that failed validation.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder (default <output_dir>/card).")
def card(spec: Path, drop_failed: bool, out: Path | None) -> None:
    """Render the dataset card (README.md) and croissant.json for SPEC."""
    path = write_card(spec, drop_failed=drop_failed, out=out)
    click.echo(f"card written: {path} (+ croissant.json)")
