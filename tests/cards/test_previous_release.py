"""`previous_release: ORG/NAME@rev` (as documented): the card's "Changes" table reads the previous
release's card and spec.yaml from the Hub (here the in-process stand-in); failures are one
InputError naming the field."""

from __future__ import annotations

import hashlib

import huggingface_hub
import huggingface_hub.constants
import pytest

from helpers.hub_standin import HubStandin, Repo  # noqa: E402
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.release_data import load_release_data
from mammosynth.dataset_cards.card import previous_release_info, render_card


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The stand-in as the configured endpoint: what HF_ENDPOINT does when set before the import
    (the CLI test below sets it for real, in a subprocess)."""
    with HubStandin() as h:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", h.url)
        monkeypatch.setattr(
            huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", h.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        yield h


def _publish(hub: HubStandin, repo_id: str, files: dict[str, bytes], tag: str) -> None:
    oid = hashlib.sha1(repr(sorted(files)).encode() + tag.encode()).hexdigest()
    repo = Repo(repo_id, private=False, commits=[{"oid": oid, "files": files, "lfs": set(), "summary": tag}])
    repo.branches["main"] = oid
    repo.tags[tag] = oid
    hub.state.repos[repo_id] = repo


def test_previous_release_from_a_hub_id(small_release, hub) -> None:
    folder = small_release.folder
    spec_text = (folder / "spec.yaml").read_text().replace("version: '1.0'", "version: '0.9'")
    assert "version: '0.9'" in spec_text
    files = {"README.md": (folder / "README.md").read_bytes(), "spec.yaml": spec_text.encode()}
    _publish(hub, "org/previous", files, "v0.9")

    info = previous_release_info("org/previous@v0.9")
    assert info == {"version": "0.9", "num_examples": {"text2image": 8, "inpainting": 8, "poisson": 4, "all": 20}}
    spec = small_release.spec
    text = render_card(spec, load_release_data(spec), None, previous=info)
    assert "version 0.9 → 1.0" in text and "| all | 20 | 20 |" in text
    assert ("GET", "/datasets/org/previous/resolve/v0.9/spec.yaml") in hub.state.requests

    # a repo without spec.yaml: the revision names the version
    _publish(hub, "org/no-spec", {"README.md": files["README.md"]}, "v0.8")
    assert previous_release_info("org/no-spec@v0.8")["version"] == "v0.8"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("org/missing@v1", "no dataset org/missing"),
        ("org/previous@v9.9", "has no revision 'v9.9'"),
        ("./demo/relase", "no such folder"),
        ("org/bad-card@v1", "card metadata is malformed"),
    ],
)
def test_hub_failures_name_the_field(small_release, hub, ref, message) -> None:
    _publish(hub, "org/previous", {"README.md": (small_release.folder / "README.md").read_bytes()}, "v0.9")
    _publish(hub, "org/bad-card", {"README.md": b"---\nlicense: [unclosed\n---\n# card\n"}, "v1")
    with pytest.raises(InputError, match=message) as info:
        previous_release_info(ref)
    assert info.value.field == "previous_release"


def test_offline_is_one_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(InputError, match="offline") as info:
        previous_release_info("org/previous@v1.0")
    assert info.value.field == "previous_release"


def test_card_cli_with_a_hub_previous_release(small_release, tmp_path) -> None:
    """`mammosynth card` with HF_ENDPOINT set for real: the Changes table, and exit 2 for a missing repo."""
    import os
    import subprocess
    import sys

    from helpers.release_helpers import spec_dict, write_report, write_spec
    from helpers.synthetic import generate_fake
    from mammosynth.builders.core.spec import load_spec

    with HubStandin() as hub:
        files = {"README.md": (small_release.folder / "README.md").read_bytes()}
        files["spec.yaml"] = (
            (small_release.folder / "spec.yaml").read_bytes().replace(b"version: '1.0'", b"version: '0.9'")
        )
        _publish(hub, "org/previous", files, "v0.9")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf-home"))
        (tmp_path / "prepared").mkdir()
        for ref, code in (("org/previous@v0.9", 0), ("org/missing@v0.9", 2)):
            spec_path = write_spec(tmp_path, spec_dict(tmp_path, previous_release=ref, version="1.1"))
            spec = load_spec(spec_path)
            if code == 0:
                generate_fake(spec)
                write_report(spec.layout.validation)
            run = subprocess.run(
                [sys.executable, "-m", "mammosynth.builders.cli", "card", str(spec_path)],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp_path,
            )
            assert run.returncode == code, run.stderr
            if code == 0:
                card = (spec.layout.card / "README.md").read_text()
                assert "version 0.9 → 1.1" in card and "| all | 20 | 20 |" in card
            else:
                assert "no dataset org/missing" in run.stderr and "previous_release" in run.stderr
                assert "Traceback" not in run.stderr
