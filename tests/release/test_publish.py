"""Publish against the in-process Hub stand-in: create, upload, tag, second version, refusals.

The publish CLI runs in a subprocess so HF_ENDPOINT / HF_HUB_DISABLE_XET are set before
huggingface_hub is imported; the stand-in binds 127.0.0.1, so nothing reaches the network.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.hub_standin import HubStandin  # noqa: E402
from helpers.release_helpers import spec_dict, write_report, write_spec  # noqa: E402
from helpers.synthetic import generate_fake  # noqa: E402
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.spec import load_spec
from mammosynth.builders.release.build import build
from mammosynth.builders.release.publish import publish

TOKEN = "hf_standin_secret_token"


def _build(tmp: Path, *, version: str = "1.0", passed: bool = True, **kw) -> Path:
    spec = load_spec(write_spec(tmp, spec_dict(tmp, version=version, **kw), f"spec-{version}.yaml"))
    (tmp / "prepared").mkdir(exist_ok=True)
    res = build(
        spec,
        generate_fn=generate_fake,
        validate_fn=lambda s, d: write_report(d, passed=passed),
        force=not passed,
        reason=None if passed else "test override",
        progress=False,
        echo=lambda s: None,
    )
    return res.release


def _cli(hub: HubStandin, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_OFFLINE="0",
        HF_HOME=str(Path(hub.home)),
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
    )
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "mammosynth.builders.cli", "publish", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


@pytest.fixture
def hub(tmp_path: Path):
    with HubStandin(TOKEN) as h:
        h.home = tmp_path / "hf-home"
        yield h


@pytest.mark.slow
def test_publish_create_upload_tag_then_second_version(tmp_path: Path, hub: HubStandin) -> None:
    v1 = _build(tmp_path, version="1.0")
    r = _cli(hub, str(v1), "--repo", "org/tiny-mammo")
    assert r.returncode == 0, r.stderr
    assert TOKEN not in r.stdout + r.stderr
    assert f"{hub.url}/datasets/org/tiny-mammo" in r.stdout
    assert 'load_dataset("org/tiny-mammo", "all", revision="v1.0")' in r.stdout
    repo = hub.repo("org/tiny-mammo")
    assert repo.private  # spec says private
    assert repo.tags["v1.0"] == repo.branches["main"]
    files = hub.files_at("org/tiny-mammo", "v1.0")
    local = {
        p.relative_to(v1).as_posix(): p.read_bytes()
        for p in v1.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(v1).parts and p.name != ".gitattributes"
    }
    for rel, content in local.items():
        assert hashlib.sha256(files[rel]).digest() == hashlib.sha256(content).digest(), rel
    assert ".git/HEAD" not in files

    # same version again: nothing new, no error
    r = _cli(hub, str(v1), "--repo", "org/tiny-mammo")
    assert r.returncode == 0 and "already published" in r.stdout
    assert len(repo.commits) == 2

    # second version with fewer poisson rows: v1 tag stays, stale shards are replaced, card lists changes
    v2 = _build(tmp_path, version="1.1", n=1, previous_release=str(v1), changes="Halved every cell.")
    r = _cli(hub, str(v2), "--repo", "org/tiny-mammo")
    assert r.returncode == 0, r.stderr
    assert set(repo.tags) == {"v1.0", "v1.1"} and repo.tags["v1.0"] != repo.tags["v1.1"]
    new = hub.files_at("org/tiny-mammo", "v1.1")
    assert "Halved every cell." in new["README.md"].decode()
    assert "| all | 20 | 10 |" in new["README.md"].decode()
    assert set(p for p in new if p.startswith("data/")) == {p for p in local if p.startswith("data/")}
    assert hub.files_at("org/tiny-mammo", "v1.0")["README.md"] == local["README.md"]

    # v1.1 again but with different content (rebuilt with other rows) -> refused, exit 2, nothing pushed
    commits_before = len(repo.commits)
    other = tmp_path / "other"
    other.mkdir()
    v2b = _build(other, version="1.1", n=1)
    r = _cli(hub, str(v2b), "--repo", "org/tiny-mammo")
    assert r.returncode == 2 and "already has tag v1.1 with different content" in r.stderr
    assert len(repo.commits) == commits_before


@pytest.mark.slow
def test_forced_public_push_of_restricted_source_records_overrides(tmp_path: Path, hub: HubStandin) -> None:
    release = _build(tmp_path, passed=False, redistribution=False)
    r = _cli(hub, str(release), "--repo", "org/restricted", "--public")
    assert r.returncode == 2 and "validation report is failed" in r.stderr
    r = _cli(hub, str(release), "--repo", "org/restricted", "--public", "--force", "--reason", "reader study")
    assert r.returncode == 2 and "forbid redistribution" in r.stderr
    assert "org/restricted" not in hub.state.repos
    r = _cli(
        hub,
        str(release),
        "--repo",
        "org/restricted",
        "--public",
        "--force",
        "--allow-restricted-source",
        "--reason",
        "licence holder agreed in writing",
    )
    assert r.returncode == 0, r.stderr
    card = hub.files_at("org/restricted", "v1.0")["README.md"].decode()
    assert "licence holder agreed in writing" in card
    assert "forbids" in card and "validation report was missing or failed" in card
    assert not hub.repo("org/restricted").private
    yaml.safe_load(card.split("---")[1])
    commits = len(hub.repo("org/restricted").commits)
    again = _cli(
        hub,
        str(release),
        "--repo",
        "org/restricted",
        "--public",
        "--force",
        "--allow-restricted-source",
        "--reason",
        "licence holder agreed in writing",
    )
    assert again.returncode == 0 and "already published with the same content" in again.stdout, again.stderr
    assert len(hub.repo("org/restricted").commits) == commits  # a forced rerun of an unchanged release is a no-op


def test_refusals_before_any_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = _build(tmp_path)
    with pytest.raises(InputError, match="malformed repo id"):
        publish(release, "not a repo", echo=lambda s: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "empty-home" / "token"))
    with pytest.raises(InputError, match="no Hugging Face token"):
        publish(release, "org/x", echo=lambda s: None)
    lines: list[str] = []
    plan = publish(release, "org/x", dry_run=True, echo=lines.append)
    assert any("create_repo org/x (dataset, private" in ln for ln in lines)
    assert any(ln.startswith("[dry-run] create_tag v1.0") for ln in lines)
    assert "README.md" in plan.files and "data/poisson/train-00000-of-00001.parquet" in plan.files
    # missing report
    (release / "validation" / "report.json").unlink()
    with pytest.raises(InputError, match="checksum|differ"):  # tampering is caught first
        publish(release, "org/x", dry_run=True, echo=lambda s: None)
    from mammosynth.builders.release.package import write_checksums

    write_checksums(release)  # a consistent release that simply has no report
    with pytest.raises(InputError, match="validation report is missing"):
        publish(release, "org/x", dry_run=True, echo=lambda s: None)
    with pytest.raises(InputError, match="needs --reason"):
        publish(release, "org/x", dry_run=True, force=True, echo=lambda s: None)


def test_hub_and_input_failures_are_one_line_exit_2(tmp_path: Path, hub: HubStandin) -> None:
    release = _build(tmp_path)
    wrong = _cli(hub, str(release), "--repo", "org/x", token="hf_wrong")
    assert wrong.returncode == 2 and "refused the token (401)" in wrong.stderr and hub.url in wrong.stderr
    assert "Traceback" not in wrong.stderr and "hf_wrong" not in wrong.stderr

    class Gone:  # an endpoint nobody listens on
        url, home = "http://127.0.0.1:9", hub.home

    unreachable = _cli(Gone, str(release), "--repo", "org/x")  # type: ignore[arg-type]
    assert unreachable.returncode == 2 and "cannot reach the Hub" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    for tag in ("main", "../x y"):
        bad = _cli(hub, str(release), "--repo", "org/x", "--tag", tag)
        assert bad.returncode == 2 and "field '--tag'" in bad.stderr and "not a release tag" in bad.stderr
    assert "org/x" not in hub.state.repos  # nothing was created by any of them
    (release / "spec.yaml").write_text("name: [unclosed\n")
    broken = _cli(hub, str(release), "--repo", "org/x")
    assert broken.returncode == 2 and "spec.yaml: not valid YAML" in broken.stderr


def _restricted_prepared(tmp: Path, n: int = 4) -> None:
    """A prepared set holding the fake rows' backgrounds and donors, recorded at ingest as a source
    whose terms forbid redistribution."""
    import json

    import numpy as np

    from helpers import synthetic as S

    img = np.zeros((16, 16), np.uint8)
    ids = [f"bg-{i:04d}" for i in range(n)] + [f"lesion-{i:04d}" for i in range(n)]
    S.write_prepared(tmp / "prepared", [S.prepared_row(img, i, view="CC", laterality="L", birads=1) for i in ids])
    terms = {"licence": "PhysioNet Restricted Health Data License 1.5.0", "redistribution_allowed": False}
    (tmp / "prepared" / "ingest.json").write_text(json.dumps({"sources": {"VinDr-Mammo": terms}}))


def test_licence_comes_from_the_source_record_not_the_spec(tmp_path: Path, hub: HubStandin) -> None:
    import json

    (tmp_path / "prepared").mkdir()
    _restricted_prepared(tmp_path)
    release = _build(tmp_path, redistribution=True)  # the spec claims the pixels may be published
    sources = json.loads((release / "sources.json").read_text())
    assert sources["VinDr-Mammo"]["redistribution_allowed"] is False and sources["VinDr-Mammo"]["rows"]
    assert "VinDr-Mammo: licence `PhysioNet Restricted" in (release / "README.md").read_text()
    public = _cli(hub, str(release), "--repo", "org/leak", "--public")
    assert public.returncode == 2 and "VinDr-Mammo" in public.stderr and "forbid redistribution" in public.stderr

    # renaming the method folder (manifest regenerated) does not hide the pixels
    from mammosynth.builders.release.package import write_checksums

    (release / "data" / "poisson").rename(release / "data" / "Poisson")
    write_checksums(release)
    renamed = _cli(hub, str(release), "--repo", "org/leak", "--public")
    assert renamed.returncode == 2 and "forbid redistribution" in renamed.stderr
    assert "org/leak" not in hub.state.repos
    assert _cli(hub, str(release), "--repo", "org/leak", "--private").returncode == 0  # private is fine


def test_a_hand_edited_report_does_not_publish(tmp_path: Path) -> None:
    """The 'passed: true' edit of issue #1: statuses are re-derived from the figures, and the
    report must describe exactly the released rows' bytes."""
    import json

    from mammosynth.builders.release.package import write_checksums

    release = _build(tmp_path, passed=False)  # a forced build of a failed release
    path = release / "validation" / "report.json"
    report = json.loads(path.read_text())
    report["passed"] = True
    for gate in report["gates"].values():
        gate["status"] = "pass"
    path.write_text(json.dumps(report))
    write_checksums(release)  # the manifest regenerated too
    with pytest.raises(InputError, match="report.json: field 'gates.counts.status'"):
        publish(release, "org/x", dry_run=True, echo=lambda s: None)

    report = json.loads(path.read_text())  # a consistent report, but of other bytes
    report["passed"], report["gates"]["counts"]["status"] = False, "fail"
    first = sorted(report["row_hashes"])[0]
    report["row_hashes"][first] = "0" * 64
    path.write_text(json.dumps(report))
    write_checksums(release)
    with pytest.raises(InputError, match="does not describe 1 released row"):
        publish(release, "org/x", dry_run=True, force=True, reason="test", echo=lambda s: None)


def test_a_report_judged_with_laxer_thresholds_does_not_publish(tmp_path: Path) -> None:
    """Figures and thresholds edited together re-derive consistently; the release spec's
    thresholds are what the report must have been judged with."""
    import json

    from mammosynth.builders.release.package import write_checksums

    release = _build(tmp_path)
    publish(release, "org/x", dry_run=True, echo=lambda s: None)  # as built: accepted
    path = release / "validation" / "report.json"
    report = json.loads(path.read_text())
    report["thresholds"]["max_flagged_fraction"] = 0.99  # a laxer gate, consistent with every status
    path.write_text(json.dumps(report))
    write_checksums(release)
    with pytest.raises(InputError, match="report.json: field 'thresholds'"):
        publish(release, "org/x", dry_run=True, echo=lambda s: None)
