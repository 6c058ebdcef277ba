"""`mammosynth inspect RELEASE|ORG/NAME@rev`: what a release holds, in a terminal table or JSON.

Counts per config and the generators are read from the parquet files themselves (their footers
and the ``generator`` column); the gates are re-derived from the report's own figures
(``ValidationReport.read_verified`` via ``Release.report``), so an edited status does not show as a
pass; the licence is the release's and each source's terms (``sources.json``). A Hub id is
downloaded at its revision with ``huggingface_hub`` (the configured endpoint and cache) and then
read the same way as a folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.spec import REPO_ID

HUB_TARGET = re.compile(r"^(?P<repo>[^@\s]+)(@(?P<rev>[^@\s]+))?$")


@dataclass
class Inspection:
    target: str
    name: str
    version: str
    tag: str
    revision: str | None  # the git commit (local release) or the Hub commit
    counts: dict[str, int] = field(default_factory=dict)  # config -> rows ("all" included)
    generators: dict[str, list[str]] = field(default_factory=dict)  # config -> generator names
    passed: bool | None = None  # None: no validation report
    gates: dict[str, str] = field(default_factory=dict)
    licence: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _git_head(folder: Path) -> tuple[str | None, list[str]]:
    """(HEAD commit, tags pointing at it) of a release's git repository; (None, []) without one."""
    if not (folder / ".git").exists():
        return None, []
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        tags = subprocess.run(
            ["git", "-C", str(folder), "tag", "--points-at", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None, []
    return head, tags


def inspect_folder(folder: str | Path, *, target: str | None = None, revision: str | None = None) -> Inspection:
    """Inspect a release folder (the output of `mammosynth build`, or a downloaded Hub snapshot)."""
    import pyarrow.parquet as pq

    from mammosynth.builders.release.release import Release

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder", file=folder)
    rel = Release(folder)
    spec = rel.spec
    head, tags = _git_head(folder)
    out = Inspection(
        target=target or str(folder),
        name=spec.name,
        version=spec.version,
        tag=spec.tag(),
        revision=revision or head,
        licence=spec.license,
    )
    if revision is None and head is not None and spec.tag() not in tags:
        out.tag += " (not tagged in the release's git repository)"
    total = 0
    for config in rel.methods:
        files = sorted((folder / "data" / config).glob("*.parquet"))
        rows = sum(pq.read_metadata(f).num_rows for f in files)
        names: set[str] = set()
        for f in files:
            names.update(v for v in pq.read_table(f, columns=["generator"]).column(0).to_pylist() if v)
        out.counts[config] = rows
        out.generators[config] = sorted(names)
        total += rows
    out.counts["all"] = total
    report = rel.report  # statuses re-derived from the figures; a disagreement is an InputError
    if report is not None:
        out.passed = report.passed
        out.gates = {name: gate.status for name, gate in report.gates.items()}
    for name, use in sorted(rel.sources.items()):
        lic = use.licence
        out.sources.append(
            {
                "name": name,
                "licence": lic.licence,
                "redistribution_allowed": lic.redistribution_allowed,
                "rows": sum(use.rows.values()),
            }
        )
    return out


def parse_hub_target(target: str) -> tuple[str, str]:
    """ "ORG/NAME@rev" -> (repo id, revision); the revision defaults to main."""
    m = HUB_TARGET.match(target)
    if not m or not REPO_ID.match(m["repo"]):
        raise InputError(f"not a release folder or a Hub id ORG/NAME[@rev]: {target!r}", field="RELEASE")
    return m["repo"], m["rev"] or "main"


def inspect_hub(target: str, *, token: str | None = None) -> Inspection:
    """Download ``ORG/NAME@rev`` (the configured endpoint, HF_ENDPOINT) and inspect it."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from mammosynth.builders.release.publish import hub_errors

    repo_id, revision = parse_hub_target(target)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    with hub_errors(endpoint):
        try:
            commit = HfApi(token=token).dataset_info(repo_id, revision=revision).sha
            local = snapshot_download(repo_id, repo_type="dataset", revision=revision, token=token)
        except RepositoryNotFoundError:
            raise InputError(f"no dataset repository {repo_id} (or no access to it)", file=endpoint) from None
        except RevisionNotFoundError:
            raise InputError(f"{repo_id} has no revision {revision!r}", file=endpoint) from None
    out = inspect_folder(local, target=target, revision=commit)
    out.tag = revision if revision != "main" else out.tag
    return out


def looks_like_path(text: str) -> bool:
    """A path, not a Hub id: ./, / or ~ prefixed, not ORG/NAME, or ORG is a local folder ("demo/relase"
    beside a demo/ folder is a mistyped path, not a repository)."""
    if text.startswith((".", "/", "~")) or text.endswith("/"):
        return True
    repo = text.split("@", 1)[0]
    return not REPO_ID.match(repo) or Path(repo.split("/")[0]).is_dir()


def inspect_release(target: str | Path, *, token: str | None = None) -> Inspection:
    """A folder when ``target`` is one, otherwise a Hub id ``ORG/NAME@rev``; something that looks
    like a path and is not a folder is an error, never sent to the Hub."""
    text = str(target)
    if Path(text).is_dir():
        return inspect_folder(text)
    if looks_like_path(text):
        raise InputError("no such folder", file=text)
    return inspect_hub(text, token=token)


def format_inspection(r: Inspection) -> str:
    lines = [f"{r.name} {r.version}  ({r.target})", f"  tag       {r.tag}"]
    if r.revision:
        lines.append(f"  revision  {r.revision}")
    lines.append(f"  licence   {r.licence}")
    for s in r.sources:
        may = "redistribution allowed" if s["redistribution_allowed"] else "redistribution NOT allowed"
        lines.append(f"    source {s['name']}: {s['licence']}, {may}, {s['rows']} rows embed its pixels")
    lines.append("")
    lines.append("  config       rows  generators")
    for config, n in r.counts.items():
        gens = ", ".join(r.generators.get(config, [])) if config != "all" else ""
        lines.append(f"  {config:<12} {n:>4}  {gens}")
    lines.append("")
    if r.passed is None:
        lines.append("  validation: no report in the release")
    else:
        lines.append(f"  validation: {'PASSED' if r.passed else 'FAILED'}")
        lines.append("  gates: " + ", ".join(f"{k}={v}" for k, v in r.gates.items()))
    return "\n".join(lines)


@click.command("inspect")
@click.argument("release")
@click.option("--json", "as_json", is_flag=True, help="The result as JSON on stdout.")
def inspect(release: str, as_json: bool) -> None:
    """Counts per config, gates, licence, generators and tag of RELEASE (a folder written by
    `mammosynth build`) or of a Hub dataset ORG/NAME[@rev]."""
    result = inspect_release(release)
    click.echo(json.dumps(result.as_json(), indent=1) if as_json else format_inspection(result))


__all__ = [
    "Inspection",
    "format_inspection",
    "inspect",
    "inspect_folder",
    "inspect_hub",
    "inspect_release",
    "looks_like_path",
]
