"""`mammosynth inspect RELEASE|ORG/NAME@rev`: counts, gates (re-derived), licence, generators, tag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.hub_standin import HubStandin
from helpers.release_helpers import spec_dict, write_report, write_spec
from helpers.synthetic import generate_fake
from mammosynth.builders.core.errors import InputError, run_click
from mammosynth.builders.core.spec import load_spec
from mammosynth.builders.release.build import build
from mammosynth.builders.release.inspect import format_inspection, inspect, inspect_release

TOKEN = "hf_standin_secret_token"


def _release(tmp: Path, *, passed: bool = True) -> Path:
    spec = load_spec(write_spec(tmp, spec_dict(tmp)))
    (tmp / "prepared").mkdir(exist_ok=True)
    return build(
        spec,
        generate_fn=generate_fake,
        validate_fn=lambda s, d: write_report(d, passed=passed),
        force=not passed,
        reason=None if passed else "test override",
        progress=False,
        echo=lambda s: None,
    ).release


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _release(tmp_path_factory.mktemp("inspect"))


def test_a_release_folder(release: Path) -> None:
    r = inspect_release(release)
    # spec_dict: n=2 per cell; text2image 2 BI-RADS x CC x 2 sides, inpainting 2 x 2 views x L, poisson 1 x MLO x 2
    assert r.counts == {"inpainting": 8, "poisson": 4, "text2image": 8, "all": 20}
    assert r.passed is True and r.gates["sanity"] == "pass" and set(r.gates) >= {"counts", "memorization"}
    assert r.tag == "v1.0" and r.revision and len(r.revision) == 40
    assert r.licence == "cc-by-nc-4.0"
    assert [s["name"] for s in r.sources] == ["CBIS-DDSM"] and r.sources[0]["licence"] == "cc-by-3.0"
    assert all(r.generators[c] for c in ("text2image", "inpainting", "poisson"))
    table = format_inspection(r)
    assert "PASSED" in table and "text2image" in table and "cc-by-3.0" in table


def test_a_failed_release_shows_failed_gates(tmp_path: Path) -> None:
    r = inspect_release(_release(tmp_path, passed=False))
    assert r.passed is False and r.gates["counts"] == "fail"
    assert "FAILED" in format_inspection(r)


def test_an_edited_gate_status_is_not_shown_as_a_pass(tmp_path: Path) -> None:
    folder = _release(tmp_path, passed=False)
    report = folder / "validation" / "report.json"
    data = json.loads(report.read_text())
    data["gates"]["counts"]["status"] = "pass"
    data["passed"] = True
    report.write_text(json.dumps(data))
    with pytest.raises(InputError) as exc:
        inspect_release(folder)
    assert "report.json" in str(exc.value)


def test_json_and_a_mistyped_path(release: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as code:
        run_click(inspect, [str(release), "--json"], "mammosynth inspect")
    assert code.value.code == 0
    assert json.loads(capsys.readouterr().out)["counts"]["all"] == 20
    (tmp_path / "demo").mkdir()
    os.chdir(tmp_path)  # "demo/relase" beside a demo/ folder is a mistyped path, not a repo id
    try:
        with pytest.raises(SystemExit) as code:
            run_click(inspect, ["demo/relase"], "mammosynth inspect")
    finally:
        os.chdir(Path(__file__).parent)
    assert code.value.code == 2 and "no such folder" in capsys.readouterr().err


def _cli(hub: HubStandin, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(home),
        HF_TOKEN=TOKEN,
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
    )
    return subprocess.run(
        [sys.executable, "-m", "mammosynth.builders.cli", *args], capture_output=True, text=True, env=env, timeout=180
    )


@pytest.mark.slow
def test_a_hub_release_at_a_tag(release: Path, tmp_path: Path) -> None:
    with HubStandin(TOKEN) as hub:
        pushed = _cli(hub, tmp_path / "hf", "publish", str(release), "--repo", "org/tiny-mammo", "--quiet")
        assert pushed.returncode == 0, pushed.stderr
        # --quiet: the one result line, nothing else (no upload bar or summary line, no library noise)
        assert pushed.stderr == "" and pushed.stdout.splitlines() == [
            f'{hub.url}/datasets/org/tiny-mammo at v1.0: load_dataset("org/tiny-mammo", "all", revision="v1.0")'
        ]
        proc = _cli(hub, tmp_path / "hf", "inspect", "org/tiny-mammo@v1.0", "--json")
        assert proc.returncode == 0, proc.stderr
        r = json.loads(proc.stdout)
        assert r["counts"] == {"inpainting": 8, "poisson": 4, "text2image": 8, "all": 20}
        assert r["passed"] is True and r["tag"] == "v1.0"
        assert r["revision"] == hub.repo("org/tiny-mammo").resolve("v1.0")["oid"]
        missing = _cli(hub, tmp_path / "hf", "inspect", "org/tiny-mammo@v9.9")
        assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
