"""How to cite: a BibTeX entry for the release itself (name, version, tag, authors, Hub URL), the
source's attribution and citation from the source's record, authors and contact from the spec."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers.release_helpers import spec_dict, write_report, write_spec  # noqa: E402
from helpers.synthetic import generate_fake  # noqa: E402
from mammosynth.builders.core.release_data import load_release_data
from mammosynth.builders.core.spec import load_spec
from mammosynth.builders.sources.dicom_folder import CBIS_DDSM_LICENCE
from mammosynth.dataset_cards.card import lint_card, parse_card, render_card
from mammosynth.dataset_cards.citations import release_bibtex


def _section(body: str, title: str) -> str:
    return body.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _cbis_prepared(tmp: Path) -> None:
    """A prepared set whose ingest record names CBIS-DDSM's terms (what `ingest dicom` writes)."""
    import numpy as np

    from helpers import synthetic as S

    img = np.zeros((16, 16), np.uint8)
    ids = [f"bg-{i:04d}" for i in range(2)] + [f"lesion-{i:04d}" for i in range(2)]
    S.write_prepared(tmp / "prepared", [S.prepared_row(img, i, view="CC", laterality="L", birads=1) for i in ids])
    (tmp / "prepared" / "ingest.json").write_text(json.dumps({"sources": {"CBIS-DDSM": CBIS_DDSM_LICENCE.to_json()}}))


def test_release_bibtex_and_source_attribution(tmp_path: Path) -> None:
    _cbis_prepared(tmp_path)
    d = spec_dict(tmp_path, n=1, authors=["Ada Lovelace", "R&D Lab_1"], contact="data@example.org", version="2.1")
    spec = load_spec(write_spec(tmp_path, d))
    generate_fake(spec)
    write_report(spec.layout.validation)
    text = render_card(spec, load_release_data(spec), None)
    lint_card(text)
    _, body = parse_card(text)
    cite = _section(body, "How to cite this dataset")
    entry = re.search(r"```bibtex\n(@misc\{.*?\n\})\n```", cite, re.S).group(1)
    assert entry == release_bibtex(spec)
    assert entry.startswith("@misc{tiny_mammo_2_1,")
    assert "author       = {Ada Lovelace and R\\&D Lab\\_1}" in entry
    assert "version      = {2.1}" in entry and "git tag v2.1" in entry
    assert "url          = {https://huggingface.co/datasets/org/tiny-mammo/tree/v2.1}" in entry
    assert "@inproceedings{alshihri2026synthetic" in cite  # the methods' papers follow
    source = cite.split("### Source data", 1)[1]
    assert f"Attribution it asks for: {CBIS_DDSM_LICENCE.attribution}" in source
    assert f"Cite: {CBIS_DDSM_LICENCE.citation}" in source
    contact = _section(body, "Contact")
    assert "Authors: Ada Lovelace, R&D Lab_1." in contact and "Contact: data@example.org." in contact


def test_release_without_hub_id_has_no_url() -> None:
    from mammosynth.builders.core.spec import ReleaseSpec

    spec = ReleaseSpec.model_validate(
        {
            "name": "local",
            "version": "1.0",
            "pretty_name": "Local",
            "description": "d",
            "authors": ["a"],
            "source": {"name": "s", "prepared": "p", "license": "cc0", "redistribution_allowed": True},
            "methods": {"text2image": {"counts": [{"birads": 1, "n": 1}], "text2image": {"base_model": "x"}}},
        }
    )
    entry = release_bibtex(spec, year=2030)
    assert re.search(r"year\s+= \{2030\}", entry) and "url" not in entry and "Hugging Face" not in entry
