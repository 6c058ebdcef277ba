from pathlib import Path

from mammosynth.builders.config_reference import MODELS, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_documented_model_imports() -> None:
    text = render()
    for title, _, _ in MODELS:
        assert f"## {title}" in text, f"{title} missing: its model no longer imports"


def test_committed_reference_is_up_to_date() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: python -m mammosynth.builders.config_reference > docs/configuration.md"
    )
