"""``mammosynth validate``: a thin click layer over :func:`validate_release`."""

from __future__ import annotations

from pathlib import Path

import click

from mammosynth.builders.core import progress
from mammosynth.builders.core.errors import GateFailed
from mammosynth.builders.core.run_layout import REPORT_MD, RunLayout, report_json


@click.command("validate")
@click.argument("release")
@click.option("--reference", "reference", required=True, type=click.Path(path_type=Path), help="prepared training set")
@click.option("--baseline", default=None, help="previous release (folder or ORG/NAME@revision) for drift")
@click.option(
    "--spec",
    "spec",
    default=None,
    type=click.Path(path_type=Path),
    help="release spec (default: RELEASE/spec.yaml, for a Hub release the repo's spec.yaml)",
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
@progress.console_options
def validate(
    release: str,
    reference: Path,
    baseline: str | None,
    spec: Path | None,
    config: Path | None,
    report_dir: Path | None,
) -> None:
    """Check RELEASE (a folder or ORG/NAME@revision) against the training images: sanity,
    memorization, distributions.

    Exit 0 when every gate passes, 1 when a gate fails, 2 on bad input.
    """
    from mammosynth.validation.gate import validate_release
    from mammosynth.validation.release_io import load_release

    rel = load_release(release)  # a mistyped folder or an unreadable Hub repo: exit 2 before any work
    if report_dir is None:
        run = RunLayout(Path(rel.source)) if rel.kind != "hub" else None
        # inside a run folder only: a release folder (a git repo that is published) gets no report
        report_dir = run.validation if run is not None and run.generated().is_dir() else Path("validation-report")
    report = validate_release(
        rel,
        reference,
        baseline=baseline,
        spec=spec,
        config=config,
        report_dir=report_dir,
        progress=progress.console().bars,
    )
    if not progress.console().quiet:
        for name, gate in report.gates.items():
            click.echo(f"{gate.status:>4}  {name}: {gate.summary}")
    progress.result(f"{'passed' if report.passed else 'failed'}; report: {report_json(report_dir)}")
    if not report.passed:
        raise GateFailed(f"gate(s) failed: {', '.join(report.failed_gates())}; see {report_dir / REPORT_MD}")
