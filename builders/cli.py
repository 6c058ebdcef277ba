"""The `mammosynth` command: a thin click layer over the Python API.

Each command lives beside the code it drives (``<package>/commands.py``) and is loaded lazily, so
`mammosynth --help` stays fast and a missing optional piece cannot break the others. Exit codes
come from the one mapping in ``core.errors``.
"""

from __future__ import annotations

import importlib
import sys

import click

from mammosynth.builders.core.errors import InputError, run_click
from mammosynth.builders.core.provenance import package_version

# command name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "phantom": "mammosynth.builders.sources.commands:phantom",
    "ingest": "mammosynth.builders.sources.commands:ingest",
    "train": "mammosynth.training.commands:train",
    "generate": "mammosynth.generators.commands:generate",
    "validate": "mammosynth.validation.commands:validate",
    "card": "mammosynth.dataset_cards.commands:card",
    "publish": "mammosynth.builders.release.commands:publish",
    "build": "mammosynth.builders.release.commands:build",
    "demo": "mammosynth.builders.release.demo:demo",
}


def _not_available(name: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True}, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def placeholder(args: tuple[str, ...]) -> None:
        raise InputError(f"'mammosynth {name}' is not yet available in this version")

    placeholder.help = "(not yet available)"
    return placeholder


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return _not_available(name)
            raise
        command = getattr(module, attr, None)
        return command if command is not None else _not_available(name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), "--version", prog_name="mammosynth")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """Build, validate and publish synthetic mammography datasets."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = sys.argv[1:] if argv is None else argv
    run_click(cli, args, "mammosynth", debug="--debug" in args)


if __name__ == "__main__":  # pragma: no cover
    main()
