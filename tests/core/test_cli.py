"""The click table: `--help` lists every command without importing any (fast), and every entry
resolves to a real command."""

from __future__ import annotations

import subprocess
import sys

import click

from mammosynth.builders.cli import COMMANDS, cli


def test_help_imports_no_command_module() -> None:
    code = (
        "import sys\nfrom mammosynth.builders.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'datasets', 'diffusers', 'cv2') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for name in COMMANDS:
        assert name in out


def test_every_entry_is_a_real_command() -> None:
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.help != "(not yet available)", name
