"""Publish a packaged release to the Hugging Face Hub: create_repo -> upload_folder -> create_tag.

Everything that can refuse is checked before the first write, so a refusal leaves nothing
half-published: malformed repo id, tampered release (checksum manifest), missing or failed
validation report (unless forced with a reason), a public push of source pixels whose licence
forbids redistribution (unless overridden with a reason), no token, and a version tag that already
exists on the Hub with different content. Overrides are written into the card before upload.
The token is passed to the client and never printed or logged.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mammosynth.builders.core import progress
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.licensing import SOURCES_FILE
from mammosynth.builders.core.locks import folder_lock
from mammosynth.builders.core.spec import REPO_ID, ReleaseSpec
from mammosynth.builders.release.package import CHECKSUMS, git, git_commit_release, write_checksums
from mammosynth.builders.release.release import Release

# A release tag: v1.0, v1.0.2, v2.1-rc1 (never a branch name like "main", a path or whitespace)
TAG = re.compile(r"^v\d+(\.\d+){1,2}(-[0-9A-Za-z]+)?$")

# Folders whose files a new version replaces wholesale (stale shards of the previous one must go).
REPLACED = ["data/**", "validation/**"]


@dataclass
class PublishPlan:
    repo_id: str
    tag: str
    visibility: str  # public / private / gated
    files: list[str]
    size_bytes: int
    overrides: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        mb = self.size_bytes / 1e6
        out = [
            f"create_repo {self.repo_id} (dataset, {self.visibility}, exist_ok)",
            *(["update_repo_settings gated=auto"] if self.visibility == "gated" else []),
            f"upload_folder {len(self.files)} files, {mb:.1f} MB (replacing {', '.join(REPLACED)})",
            f"create_tag {self.tag} at the uploaded commit",
        ]
        out += [f"record override in card: {kind}: {reason}" for kind, reason in self.overrides]
        return out


@dataclass
class PublishResult:
    url: str
    commit: str | None
    tag: str
    load_line: str
    already_published: bool = False


@contextlib.contextmanager
def hub_errors(endpoint: str) -> Iterator[None]:
    """Hub refusals and network faults as one line naming the endpoint (exit 2), not a traceback."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled:
        raise InputError("HF_HUB_OFFLINE is set; unset it to publish", file=endpoint) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise InputError(
                f"the Hub refused the token ({status}); check HF_TOKEN or run `hf auth login`",
                file=endpoint,
                field="token",
            ) from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"the Hub answered {status}: {first}", file=endpoint) from None
    except (ConnectionError, TimeoutError) as exc:
        raise InputError(f"cannot reach the Hub ({type(exc).__name__})", file=endpoint) from None
    except Exception as exc:
        if any(c.__name__ in ("TransportError", "ConnectError", "TimeoutException") for c in type(exc).__mro__):
            raise InputError(f"cannot reach the Hub ({type(exc).__name__})", file=endpoint) from None
        raise


def resolve_token(token: str | None) -> str | None:
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def plan_publish(
    release: Path,
    repo_id: str,
    *,
    tag: str | None = None,
    private: bool | None = None,
    force: bool = False,
    reason: str | None = None,
    allow_restricted: bool = False,
) -> tuple[PublishPlan, ReleaseSpec]:
    """All refusal checks; returns what would be done. Writes nothing."""
    rel = Release(release)
    if not REPO_ID.match(repo_id or ""):
        raise InputError(f"malformed repo id {repo_id!r}; expected ORG/NAME", field="--repo")
    if (force or allow_restricted) and not (reason and reason.strip()):
        raise InputError('an override needs --reason "..." (it is recorded in the card)', field="--reason")
    spec = rel.spec
    rel.verify()
    tag = tag or spec.tag()
    if not TAG.match(tag):
        raise InputError(f"tag {tag!r} is not a release tag; use v<version>, e.g. {spec.tag()}", field="--tag")
    visibility = "private" if private else spec.hub.visibility if private is None else "public"
    if private is False and spec.hub.visibility == "gated":
        visibility = "gated"
    overrides: list[tuple[str, str]] = []
    report = rel.report  # read verified: every status re-derived from its figures
    if report is not None:
        from mammosynth.validation.gate import require_spec_thresholds

        require_spec_thresholds(report, spec, rel.report_path)  # ... judged with the release spec's thresholds
        unvalidated = report.rows_not_validated(rel.row_hashes())
        if unvalidated:
            raise InputError(
                f"the validation report does not describe {len(unvalidated)} released row(s) "
                f"(e.g. {unvalidated[0]}); build the release again",
                file=rel.report_path,
                field="row_hashes",
            )
    if report is None or not report.passed:
        what = "missing" if report is None else "failed"
        if not force:
            raise InputError(
                f'validation report is {what}; fix the release or pass --force --reason "..."',
                file=rel.report_path,
            )
        overrides.append(("validation", reason or ""))
    blocked = rel.restricted_sources() if visibility != "private" else {}
    if blocked:
        if not allow_restricted:
            terms = ", ".join(
                f"{n} (licence {u.licence.licence}, {sum(u.rows.values())} rows)" for n, u in blocked.items()
            )
            raise InputError(
                f"rows embed pixels of {terms}, whose terms forbid redistribution; a {visibility} push is "
                'refused (publish --private, or override with --allow-restricted-source --reason "...")',
                file=rel.folder / SOURCES_FILE,
                field="redistribution_allowed",
            )
        overrides.append(("licence", reason or ""))
    files = rel.files()
    size = sum((rel.folder / f).stat().st_size for f in files)
    return PublishPlan(repo_id, tag, visibility, files, size, overrides), spec


def apply_overrides(release: Path, plan: PublishPlan) -> None:
    """Record overrides in the card, refresh the manifest and amend the release's one commit."""
    if not plan.overrides:
        return
    from mammosynth.dataset_cards.card import Override, record_override

    for kind, reason in plan.overrides:
        record_override(release / "README.md", Override(kind, reason))
    write_checksums(release)
    if (release / ".git").exists():
        git(release, "add", "-A")
        git(release, "commit", "-q", "--amend", "--no-edit")
        git(release, "tag", "-a", "-f", plan.tag, "-m", f"Release {plan.tag}")
    else:
        git_commit_release(release, plan.tag, f"Release {plan.tag}")


def publish(
    release: str | Path,
    repo_id: str,
    *,
    tag: str | None = None,
    private: bool | None = None,
    dry_run: bool = False,
    force: bool = False,
    reason: str | None = None,
    allow_restricted: bool = False,
    token: str | None = None,
    echo: Callable[[str], None] = print,
) -> PublishResult | PublishPlan:
    release = Path(release)
    if dry_run:
        return _publish(
            release,
            repo_id,
            tag=tag,
            private=private,
            dry_run=True,
            force=force,
            reason=reason,
            allow_restricted=allow_restricted,
            token=token,
            echo=echo,
        )
    with folder_lock(release, "publish"):  # overrides amend the release's commit: one publisher at a time
        return _publish(
            release,
            repo_id,
            tag=tag,
            private=private,
            dry_run=False,
            force=force,
            reason=reason,
            allow_restricted=allow_restricted,
            token=token,
            echo=echo,
        )


def _publish(
    release: Path,
    repo_id: str,
    *,
    tag: str | None,
    private: bool | None,
    dry_run: bool,
    force: bool,
    reason: str | None,
    allow_restricted: bool,
    token: str | None,
    echo: Callable[[str], None],
) -> PublishResult | PublishPlan:
    plan, spec = plan_publish(
        release, repo_id, tag=tag, private=private, force=force, reason=reason, allow_restricted=allow_restricted
    )
    if dry_run:
        for line in plan.lines():
            echo(f"[dry-run] {line}")
        return plan
    token = resolve_token(token)
    if not token:
        raise InputError("no Hugging Face token: set HF_TOKEN or run `hf auth login`", field="token")

    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    with hub_errors(os.environ.get("HF_ENDPOINT", "https://huggingface.co")):
        api = HfApi(token=token)
        load_line = f'load_dataset("{repo_id}", "all", revision="{plan.tag}")'
        url = f"{api.endpoint}/datasets/{repo_id}"
        # A tag is immutable: same content -> nothing to do; different content -> refuse.
        try:
            tags = {t.name: t.target_commit for t in api.list_repo_refs(repo_id, repo_type="dataset").tags}
        except RepositoryNotFoundError:
            tags = {}
        if plan.tag in tags:
            with tempfile.TemporaryDirectory() as cache:
                try:
                    remote = Path(
                        hf_hub_download(
                            repo_id, CHECKSUMS, repo_type="dataset", revision=plan.tag, cache_dir=cache, token=token
                        )
                    ).read_text()
                except EntryNotFoundError:
                    remote = None
            from mammosynth.dataset_cards.card import Override, override_recorded

            # a forced rerun of a release already published with its overrides recorded is a no-op
            apply_local = remote is not None and not all(
                override_recorded(release / "README.md", Override(kind, why)) for kind, why in plan.overrides
            )
            if remote is not None and remote == (release / CHECKSUMS).read_text() and not apply_local:
                echo(f"{repo_id}@{plan.tag} is already published with the same content: {url}")
                echo(load_line)
                return PublishResult(url, tags[plan.tag], plan.tag, load_line, already_published=True)
            raise InputError(
                f"{repo_id} already has tag {plan.tag} with different content; bump the version in the spec",
                field="version",
            )
        apply_overrides(release, plan)
        for line in plan.lines():
            echo(line)
        api.create_repo(repo_id, repo_type="dataset", private=plan.visibility == "private", exist_ok=True)
        if plan.visibility == "gated":
            api.update_repo_settings(repo_id, repo_type="dataset", gated="auto")
        with progress.bar(desc=f"upload {len(plan.files)} files", total=plan.size_bytes, unit="B") as stage:
            commit = api.upload_folder(
                folder_path=str(release),
                repo_id=repo_id,
                repo_type="dataset",
                commit_message=f"Release {plan.tag}: {spec.pretty_name}",
                delete_patterns=REPLACED,
                ignore_patterns=[".git/**", ".gitattributes"],
            )
            stage.update(plan.size_bytes)  # one commit: done when the Hub has it
        api.create_tag(
            repo_id, tag=plan.tag, revision=commit.oid, repo_type="dataset", tag_message=f"Release {plan.tag}"
        )
    echo(f"published {url} at {plan.tag} ({commit.oid})")
    echo(load_line)
    return PublishResult(url, commit.oid, plan.tag, load_line)


__all__ = ["publish", "plan_publish", "PublishPlan", "PublishResult"]
