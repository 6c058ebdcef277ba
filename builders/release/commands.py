"""Click commands `mammosynth build` and `mammosynth publish` (thin layers over build.py/publish.py)."""

from __future__ import annotations

from pathlib import Path

import click

from mammosynth.builders.core import progress


@click.command("build")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--push", is_flag=True, help="Publish to spec.hub.repo_id after packaging.")
@click.option("--repo", default=None, help="ORG/NAME overriding spec.hub.repo_id for --push.")
@click.option(
    "--drop-failed", is_flag=True, help="Package only rows that passed validation (the card says how many went)."
)
@click.option("--force", is_flag=True, help="Package/publish despite a failed validation (needs --reason).")
@click.option("--reason", default=None, help="Why the override is justified; recorded in the card.")
@progress.console_options
def build(spec: Path, push: bool, repo: str | None, drop_failed: bool, force: bool, reason: str | None) -> None:
    """generate -> validate -> card -> package (-> publish); rerun to resume."""
    from mammosynth.builders.release.build import build as run_build

    result = run_build(
        spec,
        push=push,
        repo=repo,
        drop_failed=drop_failed,
        force=force,
        reason=reason,
        progress=progress.bars_shown(),
        echo=progress.say,
    )
    dropped = f", {result.dropped} row(s) dropped" if result.dropped else ""
    published = f", published {result.published.url}" if getattr(result.published, "url", None) else ""
    progress.result(f"release {result.release}{dropped}{published}")


@click.command("publish")
@click.argument("release", type=click.Path(path_type=Path))
@click.option("--repo", required=True, help="Target dataset repo, ORG/NAME.")
@click.option("--tag", default=None, help="Tag to create (default v<version> of the release's spec).")
@click.option("--private/--public", "private", default=None, help="Visibility (default: the spec's hub.visibility).")
@click.option("--dry-run", is_flag=True, help="Print the planned operations and stop.")
@click.option("--force", is_flag=True, help="Publish despite a missing or failed validation report (needs --reason).")
@click.option(
    "--allow-restricted-source",
    is_flag=True,
    help="Publish source pixels publicly although the source licence forbids it (needs --reason).",
)
@click.option("--reason", default=None, help="Why the override is justified; recorded in the card.")
@progress.console_options
def publish(
    release: Path,
    repo: str,
    tag: str | None,
    private: bool | None,
    dry_run: bool,
    force: bool,
    allow_restricted_source: bool,
    reason: str | None,
) -> None:
    """Upload RELEASE (a `mammosynth build` folder) to the Hub and tag it."""
    from mammosynth.builders.release.publish import publish as run_publish

    done = run_publish(
        release,
        repo,
        tag=tag,
        private=private,
        dry_run=dry_run,
        force=force,
        reason=reason,
        allow_restricted=allow_restricted_source,
        # the plan, the URL and the load line are the result; --quiet keeps the last line only
        echo=click.echo if dry_run or not progress.console().quiet else lambda line: None,
    )
    if progress.console().quiet and not dry_run:
        progress.result(f"{done.url} at {done.tag}: {done.load_line}")
