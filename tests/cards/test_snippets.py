"""The Python snippets consumers copy, run against a real small release folder: every ```python
block of the rendered card, and those of the README's "Using a release" section, for every config
(8-bit and 16-bit images, null densities and strings)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README_SECTION = "Using a release"
CONFIGS = ["text2image", "inpainting", "poisson", "all"]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def section(markdown: str, title: str) -> str | None:
    """The text under the heading ``title`` (any level), up to the next heading of that level or above."""
    m = re.search(rf"^(#+) {re.escape(title)}\s*$", markdown, flags=re.M)
    if m is None:
        return None
    rest = markdown[m.end() :]
    end = re.search(rf"^#{{1,{len(m.group(1))}}} ", rest, flags=re.M)
    return rest[: end.start()] if end else rest


def run_snippets(blocks: list[str], folder: Path, config: str, monkeypatch, cache: Path) -> dict:
    """Run ``blocks`` in one namespace, each ``load_dataset("ORG/NAME", ...)`` pointed at ``folder``
    and at ``config``, with a fresh datasets cache."""
    monkeypatch.setattr(datasets, "load_dataset", functools.partial(datasets.load_dataset, cache_dir=str(cache)))
    ns: dict = {}
    for code in blocks:
        code = re.sub(r'load_dataset\(\s*"[^"]+"(\s*,\s*"[^"]+")?', f'load_dataset("{folder}", "{config}"', code)
        exec(compile(code, f"<snippet {config}>", "exec"), ns)  # noqa: S102 - the snippets under test
    return ns


def check_namespace(ns: dict, config: str, ds: datasets.Dataset) -> None:
    """What the snippets promise: arrays at the stored bit depth, label names, a DataLoader whose
    every batch stacks (null densities and strings included), pixels scaled to [0, 1]."""
    if "pixels" in ns:
        want = np.uint16 if ds[0]["image"].mode == "I;16" else np.uint8
        assert ns["pixels"].dtype == want, (config, ns["pixels"].dtype)
    if "birads" in ns:
        assert ns["birads"] in ds.features["birads"].names
    if "loader" in ns:
        n = 0
        for batch in ns["loader"]:
            x = batch["pixel_values"]
            assert x.dtype == torch.float32 and x.ndim == 4 and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
            if config == "poisson":  # 16-bit values 300..4000 scaled by 65535, not clipped to white
                assert 300 / 65535 - 1e-3 <= float(x.min()) and float(x.max()) <= 4000 / 65535 + 1e-3
            n += len(batch["image_id"])
        assert n == len(ds)


@pytest.mark.parametrize("config", CONFIGS)
def test_card_snippets_run_on_every_config(small_release, config, monkeypatch, tmp_path) -> None:
    card = (small_release.folder / "README.md").read_text()
    blocks = python_blocks(card)
    assert len(blocks) >= 3, "the card lost its usage snippets"
    assert f'"{small_release.spec.hub.repo_id}"' in blocks[0]
    ns = run_snippets(blocks, small_release.folder, config, monkeypatch, tmp_path / "cache")
    assert {"ds", "pixels", "loader", "batch"} <= set(ns)
    check_namespace(ns, config, ns["ds"])
    if config == "inpainting":  # the fixture's unknown densities reach the batch as -1, by the snippet's choice
        densities = torch.cat([b["density"] for b in ns["loader"]])
        assert (densities == -1).any() and (densities >= 0).any()


@pytest.mark.parametrize("config", CONFIGS)
def test_readme_snippets_run_on_every_config(small_release, config, monkeypatch, tmp_path) -> None:
    text = section((ROOT / "README.md").read_text(), README_SECTION)
    if text is None:
        pytest.skip(f'README.md has no "{README_SECTION}" section')
    blocks = python_blocks(text)
    assert blocks, f'README.md\'s "{README_SECTION}" section has no python snippet'
    ns = run_snippets(blocks, small_release.folder, config, monkeypatch, tmp_path / "cache")
    assert "ds" in ns, "the README's snippets should load the release as `ds`"
    check_namespace(ns, config, ns["ds"])


def test_card_states_the_contract(small_release) -> None:
    card = (small_release.folder / "README.md").read_text()
    assert "16-bit greyscale PNG (PIL mode I;16)" in card and "8-bit greyscale PNG (PIL mode L)" in card
    assert 'Never call `.convert("L")`' in card
    assert "`density` is null when it is" in card and "-1 when unknown" not in card
    assert (
        "| `density` | ClassLabel(A, B, C, D) | prompt density or the background's (A–D); null when unknown |" in card
    )
