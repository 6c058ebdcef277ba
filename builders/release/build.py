"""`mammosynth build`: generate -> validate -> card -> package (-> publish), resumable per stage.

Each stage records a stamp in ``<output_dir>/stages/<stage>.json`` holding the fingerprint of its
inputs; a rerun skips a stage whose output exists and whose stamp matches, so a killed build
resumes where it stopped and an edited spec or changed rows redo exactly the stages they affect.
Generation and validation are called through their public APIs; tests and notebooks may pass
their own callables with the same signatures.

With ``--drop-failed`` the rows left after dropping are validated again (``validate_shipped``), and
that report is the one the card describes and the release ships: its row hashes are exactly the
release's rows. Dropping is not passing: when the shipped rows still fail a gate (the counts gate
does whenever rows were dropped), the release is packaged for inspection and ``build`` raises
GateFailed (exit 1) instead of publishing, unless ``--force --reason`` records an override.
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mammosynth.builders.core import atomic
from mammosynth.builders.core.errors import GateFailed, InputError
from mammosynth.builders.core.hashing import sha256_file, sha256_json
from mammosynth.builders.core.locks import folder_lock
from mammosynth.builders.core.release_data import ReleaseData, load_release_data
from mammosynth.builders.core.run_layout import CARD_FILE, REPORT_JSON
from mammosynth.builders.core.shard_writer import ShardWriter
from mammosynth.builders.core.spec import REPO_ID, ReleaseSpec, load_spec
from mammosynth.builders.release.package import CHECKSUMS, package, spec_yaml, write_parquet_shards
from mammosynth.generators.engine import shard_slices
from mammosynth.validation.report import ValidationReport

GenerateFn = Callable[[ReleaseSpec], Any]
ValidateFn = Callable[[ReleaseSpec, Path], Any]  # (spec, report_dir) -> anything; writes report.json
# (spec, folder holding data/<method>/*.parquet of the rows to ship, report_dir); writes report.json
ValidateShippedFn = Callable[[ReleaseSpec, Path, Path], Any]


@dataclass
class BuildResult:
    release: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    dropped: int = 0
    published: Any = None


def _up_to_date(spec: ReleaseSpec, stage: str, key: str, output: Path) -> bool:
    """The stage ran with these inputs AND its output is byte for byte what it wrote: an edited
    report.json, README.md or release makes the stage run again instead of being trusted."""
    path = spec.layout.stage_stamp(stage)
    if not (output.is_file() and path.is_file()):
        return False
    stamp = json.loads(path.read_text())
    return stamp.get("key") == key and stamp.get("output") == sha256_file(output)


def _stamp(spec: ReleaseSpec, stage: str, key: str, output: Path) -> None:
    path = spec.layout.stage_stamp(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, {"key": key, "output": sha256_file(output)})


def _files_key(folder: Path, pattern: str = "**/*") -> list[tuple[str, int, int]]:
    return sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.glob(pattern)
        if p.is_file()
    )


def preflight(spec: ReleaseSpec, *, push: bool, repo: str | None, token: str | None) -> None:
    """Refuse bad input before any work: missing checkpoints, no repo or token for a push."""
    for field_name, ref in spec.local_checkpoints().items():
        if not Path(ref).exists():
            raise InputError(f"checkpoint not found: {ref}", field=field_name)
    if not Path(spec.source.prepared).exists():
        raise InputError(f"prepared source set not found: {spec.source.prepared}", field="source.prepared")
    if push:
        repo_id = repo or spec.hub.repo_id
        if not repo_id or not REPO_ID.match(repo_id):
            raise InputError(
                f"malformed or missing repo id {repo_id!r}; set hub.repo_id (ORG/NAME)", field="hub.repo_id"
            )
        from mammosynth.builders.release.publish import resolve_token

        if not resolve_token(token):
            raise InputError("no Hugging Face token for --push: set HF_TOKEN or log in", field="token")


def generation_complete(spec: ReleaseSpec) -> bool:
    from mammosynth.generators.engine import plan

    for method in spec.methods:
        writer = ShardWriter(spec.layout.generated(method))
        n = len(shard_slices(len(plan(spec, method)), spec.output.shard_size))
        if not all(writer.is_done(k) for k in range(n)):
            return False
    return True


def _default_generate(spec: ReleaseSpec) -> Any:
    from mammosynth.generators.api import generate

    return generate(spec)


def _default_validate(spec: ReleaseSpec, report_dir: Path, *, progress: bool = True) -> Any:
    from mammosynth.validation.gate import validate_release

    return validate_release(
        spec.layout.generated(), spec.source.prepared, spec=spec, report_dir=report_dir, progress=progress
    )


def _default_validate_shipped(spec: ReleaseSpec, rows: Path, report_dir: Path, *, progress: bool = True) -> Any:
    from mammosynth.validation.gate import validate_release
    from mammosynth.validation.release_io import load_release

    loaded = load_release(rows)
    # the generator's recorded skips explain missing rows of the shipped set too; dropped rows do not
    loaded.skipped = [s for m in spec.methods for s in ShardWriter(spec.layout.generated(m)).skipped()]
    return validate_release(loaded, spec.source.prepared, spec=spec, report_dir=report_dir, progress=progress)


def _validate_shipped(
    spec: ReleaseSpec, data: ReleaseData, key: str, fn: ValidateShippedFn, result: BuildResult
) -> Path:
    """Validate exactly the rows ``data`` holds (the candidate less the dropped rows); returns the
    report folder. The rows are written as the release will hold them, validated, then removed."""
    report_dir = spec.layout.shipped_validation
    report = report_dir / REPORT_JSON
    if _up_to_date(spec, "validate-shipped", key, report):
        result.skipped.append("validate-shipped")
        return report_dir
    rows = spec.layout.shipped_rows
    shutil.rmtree(rows, ignore_errors=True)
    try:
        max_bytes = int(spec.output.max_shard_mb * 1_000_000)
        for m in data.methods:
            write_parquet_shards(data, m, rows / "data" / m, max_bytes)
        fn(spec, rows, report_dir)
    finally:
        shutil.rmtree(rows, ignore_errors=True)
    if not report.is_file():
        raise RuntimeError(f"validation of the shipped rows wrote no {REPORT_JSON} in {report_dir}")
    _stamp(spec, "validate-shipped", key, report)
    result.ran.append("validate-shipped")
    return report_dir


def _check_describes(report: ValidationReport, data: ReleaseData, path: Path) -> None:
    """The report validated exactly the rows to be released, byte for byte, and no others."""
    hashes = {i: h for m in data.methods for i, h in data.image_hashes(m).items()}
    unvalidated = report.rows_not_validated(hashes)
    if unvalidated:
        raise InputError(
            f"the validation report does not describe {len(unvalidated)} row(s) to be released "
            f"(e.g. {unvalidated[0]}); validate again",
            file=path,
            field="row_hashes",
        )
    extra = sorted(set(report.row_hashes) - set(hashes))
    if extra:
        raise InputError(
            f"the validation report describes {len(extra)} row(s) that are not released (e.g. {extra[0]}); "
            "its gates would not describe the release",
            file=path,
            field="row_hashes",
        )


def build(
    spec: ReleaseSpec | str | Path,
    *,
    push: bool = False,
    drop_failed: bool = False,
    force: bool = False,
    reason: str | None = None,
    repo: str | None = None,
    token: str | None = None,
    generate_fn: GenerateFn | None = None,
    validate_fn: ValidateFn | None = None,
    validate_shipped_fn: ValidateShippedFn | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> BuildResult:
    """Run the release chain for ``spec``; returns where the release is and which stages ran.
    One build per output folder at a time (a second one exits 2 naming the first's pid)."""
    if not isinstance(spec, ReleaseSpec):
        spec = load_spec(spec)
    if force and not (reason and reason.strip()):
        raise InputError('--force needs --reason "..." (it is recorded in the card)', field="--reason")
    preflight(spec, push=push, repo=repo, token=token)
    with folder_lock(spec.layout.root, "build"):
        return _run_stages(
            spec,
            push=push,
            drop_failed=drop_failed,
            force=force,
            reason=reason,
            repo=repo,
            token=token,
            generate_fn=generate_fn,
            validate_fn=validate_fn,
            validate_shipped_fn=validate_shipped_fn,
            progress=progress,
            echo=echo,
        )


def _run_stages(
    spec: ReleaseSpec,
    *,
    push: bool,
    drop_failed: bool,
    force: bool,
    reason: str | None,
    repo: str | None,
    token: str | None,
    generate_fn: GenerateFn | None,
    validate_fn: ValidateFn | None,
    validate_shipped_fn: ValidateShippedFn | None,
    progress: bool,
    echo: Callable[[str], None],
) -> BuildResult:
    from mammosynth.dataset_cards.card import Override, previous_release_info
    from mammosynth.dataset_cards.write import write_card
    from mammosynth.validation.gate import require_spec_thresholds

    layout = spec.layout
    result = BuildResult(release=layout.release)

    # 1. generate (the generator itself skips finished shards; this skips loading models at all)
    if generation_complete(spec):
        result.skipped.append("generate")
    else:
        echo("generate ...")
        (generate_fn or _default_generate)(spec)
        if not generation_complete(spec):
            raise RuntimeError("generation finished without writing every shard")
        result.ran.append("generate")

    # 2. validate
    report_dir = layout.validation
    gen_key = sha256_json(spec_yaml(spec), [_files_key(layout.generated(m), "shard-*") for m in spec.methods])
    if _up_to_date(spec, "validate", gen_key, layout.report_json):
        result.skipped.append("validate")
    else:
        echo("validate ...")
        (validate_fn or functools.partial(_default_validate, progress=progress))(spec, report_dir)
        if not layout.report_json.is_file():
            raise RuntimeError(f"validation wrote no {layout.report_json.name} in {report_dir}")
        _stamp(spec, "validate", gen_key, layout.report_json)
        result.ran.append("validate")
    report = ValidationReport.read_verified(layout.report_json)  # statuses re-derived from its figures
    require_spec_thresholds(report, spec, layout.report_json)
    if not report.passed and not (drop_failed or force):
        raise GateFailed(
            f"validation failed (see {report_dir / 'report.md'}); use --drop-failed to package "
            "only the rows that passed, or --force --reason"
        )

    # 3. the rows to ship; after dropping, the gates are computed again on exactly those rows
    drop = report.failed_ids() if drop_failed else set()
    data: ReleaseData = load_release_data(spec, drop)
    result.dropped = sum(len(v) for v in data.dropped.values())
    candidate: ValidationReport | None = None
    if result.dropped:
        echo(f"dropping {result.dropped} row(s) that failed validation; validating the rows left ...")
        candidate = report
        shipped_fn = validate_shipped_fn or functools.partial(_default_validate_shipped, progress=progress)
        report_dir = _validate_shipped(spec, data, sha256_json(gen_key, data.fingerprint()), shipped_fn, result)
        report = ValidationReport.read_verified(report_dir / REPORT_JSON)
        require_spec_thresholds(report, spec, report_dir / REPORT_JSON)
    _check_describes(report, data, report_dir / REPORT_JSON)
    overrides: list[Override] = []
    if not report.passed and force:
        overrides.append(Override("validation", reason or ""))

    card_dir = layout.card
    previous = previous_release_info(spec.previous_release) if spec.previous_release else None
    card_key = sha256_json(
        gen_key,
        data.fingerprint(),
        report.model_dump(mode="json"),
        candidate.model_dump(mode="json") if candidate else None,
        [o.__dict__ for o in overrides],
        previous,
        _files_key(spec.reader_study) if spec.reader_study and spec.reader_study.is_dir() else None,  # rescored study
    )
    if _up_to_date(spec, "card", card_key, card_dir / CARD_FILE):
        result.skipped.append("card")
    else:
        echo("card ...")
        write_card(spec, data, report, card_dir, overrides=overrides, previous=previous, candidate=candidate)
        _stamp(spec, "card", card_key, card_dir / CARD_FILE)
        result.ran.append("card")

    # 4. package (+ load_dataset round trip; a failure raises and leaves the previous release intact)
    candidate_dir = layout.validation if candidate else None
    pkg_key = sha256_json(
        card_key, _files_key(card_dir), _files_key(report_dir), _files_key(candidate_dir) if candidate_dir else None
    )
    if _up_to_date(spec, "package", pkg_key, result.release / CHECKSUMS):
        result.skipped.append("package")
    else:
        echo("package ...")
        package(
            spec,
            data,
            card_dir=card_dir,
            report_dir=report_dir,
            out=result.release,
            progress=progress,
            candidate_dir=candidate_dir,
        )
        _stamp(spec, "package", pkg_key, result.release / CHECKSUMS)
        result.ran.append("package")
    if not report.passed and not force:
        raise GateFailed(
            f"the {data.num_examples('all')} shipped row(s) fail gate(s) {', '.join(report.failed_gates())} "
            f"(see {report_dir / 'report.md'}); the release in {result.release} is for inspection, not for "
            "publishing (dropping rows is not passing; --force --reason records an override)"
        )
    echo(f"release ready: {result.release}")

    # 5. publish
    if push:
        from mammosynth.builders.release.publish import publish

        result.published = publish(
            result.release, repo or spec.hub.repo_id or "", force=force, reason=reason, token=token, echo=echo
        )
        result.ran.append("publish")
    return result


__all__ = ["build", "BuildResult", "preflight", "generation_complete"]
