"""The one exception -> exit-code mapping, through a real entry point."""

from __future__ import annotations

import errno
import subprocess
import sys

import click
import pytest

from mammosynth.builders.core.errors import GateFailed, InputError, exit_code, run_click


@pytest.mark.parametrize(
    "exc, code",
    [
        (InputError("bad", file="spec.yaml", record=3, field="methods"), 2),
        (GateFailed("memorization"), 1),
        (OSError(errno.ENOSPC, "No space left on device", "/out/shard.parquet"), 2),
        (PermissionError(errno.EACCES, "Permission denied", "/ro/x"), 2),
        (KeyError("bug"), 3),
        (KeyboardInterrupt(), 130),
    ],
)
def test_each_kind_of_failure_has_its_status(exc: BaseException, code: int) -> None:
    lines: list[str] = []
    assert exit_code(exc, echo=lines.append) == code
    assert len(lines) == 1  # one line, never a traceback on the terminal


def test_input_error_names_file_record_and_field() -> None:
    lines: list[str] = []
    exit_code(InputError("must be CC or MLO", file="a.csv", record=7, field="view"), echo=lines.append)
    assert lines == ["error: a.csv: record 7: field 'view': must be CC or MLO"]


def test_a_crash_exits_3_with_the_traceback_in_a_file(capsys) -> None:
    @click.command()
    def broken() -> None:
        {}["missing"]

    with pytest.raises(SystemExit) as info:
        run_click(broken, [], "x")
    assert info.value.code == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("internal error: KeyError") and "traceback in " in err
    path = err.rsplit("traceback in ", 1)[1].rstrip(")")
    text = open(path, encoding="utf-8").read()
    assert "Traceback" in text and "broken" in text


def test_cli_usage_error_exits_2() -> None:
    run = subprocess.run([sys.executable, "-m", "mammosynth.builders.cli", "validate"], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
