"""The `mammosynth` command: a thin click layer over the Python API.

Each command lives beside the code it drives (``<package>/commands.py`` or similar) and is loaded
lazily, so `mammosynth --help` stays fast and a missing optional piece cannot break the others.
Exit codes: 0 success, 1 a validation gate failed, 2 bad input or usage.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from mammosynth.builders.errors import GateFailed, InputError

# command name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "phantom": "mammosynth.builders.source_commands:phantom",
    "ingest": "mammosynth.builders.source_commands:ingest",
    "train": "mammosynth.training.commands:train",
    "generate": "mammosynth.generators.commands:generate",
    "validate": "mammosynth.validation.commands:validate",
    "card": "mammosynth.dataset_cards.commands:card",
    "publish": "mammosynth.builders.release_commands:publish",
    "build": "mammosynth.builders.release_commands:build",
    "demo": "mammosynth.builders.demo:demo",
}

_state = {"debug": False}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mammosynth")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


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
@click.version_option(_version(), "--version", prog_name="mammosynth")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """Build, validate and publish synthetic mammography datasets."""
    _state["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps errors to exit codes and one clear line on stderr."""
    args = sys.argv[1:] if argv is None else argv
    _state["debug"] = "--debug" in args
    try:
        rv = cli.main(args=args, prog_name="mammosynth", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except InputError as exc:
        if _state["debug"]:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except GateFailed as exc:
        click.echo(f"validation failed: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
