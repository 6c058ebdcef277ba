"""Packaging and CLI basics: the wheel installs as mammosynth.* only and the CLI maps errors to codes."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mammosynth.builders import cli
from mammosynth.builders.core.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ["builders", "generators", "training", "dataset_cards", "validation", "examples"]


@pytest.mark.slow
def test_wheel_installs_namespaced_subpackages(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheel_dir), str(ROOT)],
        check=True,
    )
    (wheel,) = wheel_dir.glob("mammosynth-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"mammosynth"}, f"wheel installs generic top-level names: {tops}"
    assert "mammosynth/__init__.py" not in names  # a namespace, no folder of its own
    assert "mammosynth/examples/demo-release.yaml" in names  # the demo reads its spec from the package
    assert "mammosynth/dataset_cards/templates/README.md.j2" in names

    # A fresh venv that sees the dependencies (via a plain path, so the editable finder is NOT loaded)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.check_output(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
    )
    code = (
        "import importlib\n"
        + "".join(
            f"m = importlib.import_module('mammosynth.{p}'); assert m.__file__.startswith({str(site)!r}), m.__file__\n"
            for p in SUBPACKAGES
        )
        + "import mammosynth.builders.core.schema, mammosynth.builders.cli\nprint('ok')\n"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_version_and_help() -> None:
    runner = CliRunner()
    result = runner.invoke(cli.cli, ["--version"])
    assert result.exit_code == 0 and "mammosynth, version" in result.output
    result = runner.invoke(cli.cli, ["--help"])
    for command in ["phantom", "ingest", "train", "generate", "validate", "card", "publish", "build", "demo"]:
        assert command in result.output


def test_console_script_maps_input_errors_to_exit_2(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nversoin: 1.0\n")
    proc = subprocess.run(
        [sys.executable, "-c", "from mammosynth.builders.cli import main; main()", "card", str(spec)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")


def test_input_error_names_file_record_field() -> None:
    err = InputError("unknown BI-RADS value 'BI-RADS 7'", file="a.csv", record=12, field="breast_birads")
    assert str(err) == "a.csv: record 12: field 'breast_birads': unknown BI-RADS value 'BI-RADS 7'"
