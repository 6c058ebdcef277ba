"""The README's first command: `mammosynth demo` end to end at reduced size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from mammosynth.builders.release.demo import DemoSizes, format_summary, run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    sizes = DemoSizes(studies=4, train_steps=2)
    result = run_demo(out, sizes, echo=lambda s: None)

    # The untrained text-to-image model's rows are rejected by the gate and not packaged.
    assert result.generated["text2image"] == 8
    assert result.failed_by_method["text2image"] == 8
    assert result.packaged.get("text2image", 0) == 0
    # Poisson rows (real lesions on real backgrounds) pass and are packaged.
    assert result.packaged["poisson"] == result.generated["poisson"] - result.failed_by_method["poisson"] > 0
    assert result.packaged["all"] == sum(result.generated.values()) - sum(result.failed_by_method.values())

    # The release is a git repo with the version tag, and loads as a consumer would.
    tags = subprocess.run(["git", "-C", str(result.release), "tag"], capture_output=True, text=True, check=True)
    assert tags.stdout.split() == ["v0.1"]
    ds = datasets.load_dataset(str(result.release), "all", split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == result.packaged["all"]
    assert ds.features["birads"].names[0] == "BI-RADS 1"
    card = (result.release / "README.md").read_text()
    assert "dropped" in card.lower()
    report = json.loads((result.release / "validation" / "report.json").read_text())
    assert report["passed"] is False  # honest: the gate failed, only passing rows were packaged
    assert result.grid is not None and result.grid.stat().st_size > 0

    summary = format_summary(result)
    assert "text2image" in summary and "README.md" in summary and "report.md" in summary
    # the gates it prints are those of the rows that ship (the card's), not the candidate's
    shipped = {name: g["status"] for name, g in report["gates"].items()}
    assert result.gates == shipped
    assert "gates of the packaged rows: " + ", ".join(f"{k}={v}" for k, v in shipped.items()) in summary

    # A second run finds every stage complete and produces the same release.
    head = subprocess.run(
        ["git", "-C", str(result.release), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout
    again = run_demo(out, sizes, echo=lambda s: None)
    assert again.packaged == result.packaged
    assert (
        subprocess.run(["git", "-C", str(result.release), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        == head
    )


def test_demo_refuses_a_file_as_output(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "mammosynth.builders.cli", "demo", "--out", str(target)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "must be a folder" in proc.stderr


@pytest.mark.slow
def test_demo_output_fits_on_one_screen(tmp_path: Path) -> None:
    """stdout + stderr of a fresh `mammosynth demo`: about 25 lines, no library bars or warnings."""
    proc = subprocess.run(
        [sys.executable, "-m", "mammosynth.builders.cli", "demo", "--out", str(tmp_path / "d"), "--studies", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=900,
    )
    output = proc.stdout.decode()  # bytes: text mode would turn a bar's "\r" into a newline
    assert proc.returncode == 0, output[-3000:]
    lines = output.split("\n")[:-1]
    assert len(lines) <= 25, output
    for noise in ("Loading pipeline components", "Generating train split", "Warning", "kept in float32", "\r"):
        assert noise not in output, noise  # "\r": a progress bar written into a log
    assert lines[-1].startswith("  load it: datasets.load_dataset(")
