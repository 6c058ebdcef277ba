"""``validate ORG/NAME@rev``: the release's spec.yaml and every config come from the Hub (an
in-process stand-in on 127.0.0.1) through huggingface_hub into the Hugging Face cache; a Hub that
says no, or cannot be reached, is one InputError naming the endpoint; a path-like argument that
does not exist is "no such folder" and never reaches the Hub."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import synthetic as S
from helpers.hub_standin import HubStandin, Repo
from mammosynth.builders.cli import main
from mammosynth.builders.core.errors import InputError
from mammosynth.validation.gate import validate_release
from mammosynth.validation.release_io import load_release, looks_like_path, release_ref

TOKEN = "hf_standin_secret_token"
SHARD = "train-00000-of-00001.parquet"


def _rows(method: str, seed: int) -> list[dict]:
    """One image per (BI-RADS 1/2, CC/MLO, L/R) cell, named like engine tasks."""
    rows = []
    for r in S.reference_rows(2, seed, prefix=method):
        b, v, lat = r["birads"], r["view"], r["laterality"]
        image_id = f"{method}-b{b}-{v.lower()}-{lat.lower()}-00000"
        rows.append(S.release_row(r["image"]["bytes"], image_id, method, b, v, lat, density=r["density"]))
    return rows


def _spec_yaml(n_per_cell: int) -> bytes:
    spec = {
        "name": "t",
        "version": "1.0",
        "pretty_name": "t",
        "description": "t",
        "authors": ["a"],
        "source": {"name": "s", "prepared": "p", "license": "cc0", "redistribution_allowed": True},
        "methods": {
            "text2image": {
                "counts": [{"birads": [1, 2], "n": n_per_cell}],
                "text2image": {"base_model": "x", "resolution": 320},
            }
        },
    }
    return yaml.safe_dump(spec).encode()


def _shard_bytes(tmp: Path, method: str, rows: list[dict]) -> bytes:
    S.write_generated(tmp / method, {method: rows})
    return (tmp / method / "generated" / method / "shard-00000.parquet").read_bytes()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("shards")
    t2i, inp = _rows("text2image", 77), _rows("text2image", 78)
    inp = [dict(r, method="inpainting", image_id=r["image_id"].replace("text2image", "inpainting")) for r in inp]
    return {
        "text2image": _shard_bytes(tmp, "text2image", t2i),
        "inpainting": _shard_bytes(tmp, "inpainting", inp),
        # ``all`` repeats the method configs: reading it as well would double every row
        "all": _shard_bytes(tmp, "all", [*t2i, *inp]),
    }


def _push(hub: HubStandin, repo_id: str, files: dict[str, bytes], *, private: bool = False, tag: str = "v1.0") -> str:
    """A repo with one commit holding ``files`` (data files as LFS), tagged ``tag``."""
    repo = Repo(repo_id, private)
    oid = hashlib.sha1(repo_id.encode() + b"".join(p.encode() + files[p] for p in sorted(files))).hexdigest()
    lfs = {p for p in files if p.endswith(".parquet")}
    repo.commits.append({"oid": oid, "files": dict(files), "lfs": lfs, "summary": "release"})
    repo.branches["main"] = oid
    repo.tags[tag] = oid
    hub.state.repos[repo_id] = repo
    return oid


def _point_at(monkeypatch, url: str) -> None:
    """huggingface_hub's endpoint, as HF_ENDPOINT set before its import would make it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The stand-in, with huggingface_hub pointed at it, online, and a fresh cache and no token."""
    from huggingface_hub import constants

    with HubStandin(TOKEN) as h:
        _point_at(monkeypatch, h.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        yield h


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return S.write_reference_set(tmp_path_factory.mktemp("ref") / "prep", n_studies=6, seed=0)


def test_hub_release_reads_spec_and_every_config_not_all(hub, shards, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    files = {f"data/{c}/{SHARD}": b for c, b in shards.items()}
    _push(hub, "org/rel", {**files, "spec.yaml": _spec_yaml(1), "README.md": b"---\n---\n"})
    rel = load_release("org/rel@v1.0")
    assert rel.kind == "hub" and rel.name == "org/rel@v1.0"
    assert sorted(rel.files) == ["inpainting", "text2image"]
    assert rel.num_rows == 16 and sorted({m for m in rel.dataset["method"]}) == [0, 1]
    assert rel.spec_path is not None and rel.spec_path.read_bytes() == _spec_yaml(1)
    # downloaded into the Hugging Face cache, ``all`` never requested
    assert Path(os.path.realpath(rel.data_paths[0])).is_relative_to(Path(hub_cache()).resolve())
    fetched = [p for m, p in hub.state.requests if m == "GET" and "/resolve/" in p]
    assert fetched and not any("/data/all/" in p for p in fetched)
    assert rel.row_hashes() and not (tmp_path / "datasets-cache").exists()  # no copy into the datasets cache
    # a repo that holds only ``all`` is read from it
    _push(hub, "org/only-all", {f"data/all/{SHARD}": shards["all"]})
    assert load_release("org/only-all@v1.0").num_rows == 16


def hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def test_validate_on_a_hub_id_runs_the_counts_gate_from_the_repo_spec(hub, shards, ref):
    files = {f"data/text2image/{SHARD}": shards["text2image"], f"data/all/{SHARD}": shards["all"]}
    _push(hub, "org/t2i", {**files, "spec.yaml": _spec_yaml(1)})
    rep = validate_release("org/t2i@v1.0", ref, progress=False, plots=False)
    counts = rep.gates["counts"]
    assert counts.status == "pass", counts
    assert rep.release["spec"] == "spec.yaml" and rep.release["spec_digest"]
    # the spec in the repo decides: one asking for two images per cell fails the same rows
    _push(hub, "org/t2i-more", {**files, "spec.yaml": _spec_yaml(2)})
    assert validate_release("org/t2i-more@v1.0", ref, progress=False, plots=False).gates["counts"].status == "fail"


def test_hub_refusals_name_the_endpoint(hub, shards, monkeypatch):
    _push(hub, "org/secret", {f"data/text2image/{SHARD}": shards["text2image"]}, private=True)
    _push(hub, "org/rel", {f"data/text2image/{SHARD}": shards["text2image"]})
    cases = {
        "org/missing@v1.0": "no such dataset repo",
        "org/secret@v1.0": "private",
        "org/rel@v9.9": "no revision 'v9.9'",
    }
    for ref_text, reason in cases.items():
        with pytest.raises(InputError) as e:
            load_release(ref_text)
        assert hub.url in str(e.value) and reason in str(e.value) and ref_text in str(e.value), str(e.value)
        assert "\n" not in str(e.value)
    # an empty repo (no data files) is not a release
    _push(hub, "org/empty", {"README.md": b"hi"})
    with pytest.raises(InputError, match="no parquet files"):
        load_release("org/empty")


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_and_offline_are_input_errors_and_the_cache_serves_offline(hub, shards, monkeypatch):
    from huggingface_hub import constants

    _push(hub, "org/rel", {f"data/text2image/{SHARD}": shards["text2image"], "spec.yaml": _spec_yaml(1)})
    dead = _closed_port()
    _point_at(monkeypatch, dead)
    with pytest.raises(InputError) as e:
        load_release("org/rel@v1.0")
    assert dead in str(e.value) and "unreachable" in str(e.value)
    _point_at(monkeypatch, hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match="offline .* not in the Hugging Face cache"):
        load_release("org/rel@v1.0")
    # once downloaded, the cache is enough: offline, with the spec
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    online = load_release("org/rel@v1.0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = load_release("org/rel@v1.0")
    assert offline.row_hashes() == online.row_hashes() and offline.spec_path is not None


def test_path_like_arguments_never_go_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    for text in ("demo/relase", "./demo/relase", "../x/y", "/no/such/dir", "~/no-such-release", "a/b/c", "org/name/"):
        assert looks_like_path(text), text
        with pytest.raises(InputError, match="no such folder"):
            release_ref(text)
    assert release_ref("org/name@v1.0") == ("org/name", "v1.0")
    assert release_ref("org/name") == ("org/name", None)
    assert release_ref("demo") == Path("demo")


def test_cli_mistyped_folder_is_one_line_exit_2_without_network(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    # any Hub call would fail differently: the argument must be refused before one is made
    _point_at(monkeypatch, _closed_port())
    with pytest.raises(SystemExit) as e:
        main(["validate", "demo/relase", "--reference", str(tmp_path / "ref")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == ["error: demo/relase: no such folder"]


def test_cli_validate_hub_id_in_a_subprocess(tmp_path, shards, ref):
    """HF_ENDPOINT read by the CLI as a user sets it; the result line and the report name the repo."""
    with HubStandin(TOKEN) as hub:
        _push(hub, "org/rel", {f"data/text2image/{SHARD}": shards["text2image"], "spec.yaml": _spec_yaml(1)})
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(
            HF_ENDPOINT=hub.url,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_OFFLINE="0",
            HF_HOME=str(tmp_path / "hf-home"),
            NO_PROXY="127.0.0.1",
            no_proxy="127.0.0.1",
        )
        cmd = [sys.executable, "-m", "mammosynth.builders.cli", "validate"]
        report = tmp_path / "report"
        run = subprocess.run(
            [*cmd, "org/rel@v1.0", "--reference", str(ref), "--report", str(report), "--quiet"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        assert run.returncode in (0, 1), run.stderr
        assert run.stdout.strip().splitlines() == [
            f"{'passed' if run.returncode == 0 else 'failed'}; report: {report / 'report.json'}"
        ]
        data = json.loads((report / "report.json").read_text())
        assert data["release"]["source"] == "org/rel@v1.0" and data["release"]["kind"] == "hub"
        assert data["gates"]["counts"]["status"] == "pass"
        missing = subprocess.run(
            [*cmd, "org/missing@v1.0", "--reference", str(ref)], capture_output=True, text=True, env=env, timeout=300
        )
        assert missing.returncode == 2
        lines = missing.stderr.strip().splitlines()
        assert len(lines) == 1 and hub.url in lines[0] and "org/missing@v1.0" in lines[0], missing.stderr
