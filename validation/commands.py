"""``mammosynth validate``: a thin click layer over :func:`validate_release`."""

from __future__ import annotations

from pathlib import Path

import click

from mammosynth.builders.core.errors import GateFailed
from mammosynth.builders.core.run_layout import REPORT_MD, RunLayout, report_json


@click.command("validate")
@click.argument("release")
@click.option("--reference", "reference", required=True, type=click.Path(path_type=Path), help="prepared training set")
@click.option("--baseline", default=None, help="previous release (folder or ORG/NAME@revision) for drift")
@click.option(
    "--spec", "spec", default=None, type=click.Path(path_type=Path), help="release spec (default RELEASE/spec.yaml)"
)
@click.option("--config", "config", default=None, type=click.Path(path_type=Path), help="thresholds YAML/JSON")
@click.option(
    "--report",
    "report_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="report folder, replaced by each run (default RUN/validation for a generation run folder, else "
    "./validation-report); image panels go to its local-only sibling FOLDER-local",
)
@click.option("--no-progress", is_flag=True, help="no progress bars")
def validate(
    release: str,
    reference: Path,
    baseline: str | None,
    spec: Path | None,
    config: Path | None,
    report_dir: Path | None,
    no_progress: bool,
) -> None:
    """Check RELEASE against the training images: sanity, memorization, distributions.

    Exit 0 when every gate passes, 1 when a gate fails, 2 on bad input.
    """
    from mammosynth.validation.gate import validate_release

    if report_dir is None:
        run = RunLayout(Path(release))
        # inside a run folder only: a release folder (a git repo that is published) gets no report
        report_dir = run.validation if run.generated().is_dir() else Path("validation-report")
    report = validate_release(
        release, reference, baseline=baseline, spec=spec, config=config, report_dir=report_dir, progress=not no_progress
    )
    for name, gate in report.gates.items():
        click.echo(f"{gate.status:>4}  {name}: {gate.summary}")
    click.echo(f"report: {report_json(report_dir)}")
    if not report.passed:
        raise GateFailed(f"gate(s) failed: {', '.join(report.failed_gates())}; see {report_dir / REPORT_MD}")
