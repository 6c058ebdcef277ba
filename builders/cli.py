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

# command name -> ("module:attribute" of a click command or group, one-line help for `--help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("mammosynth.builders.sources.commands:phantom", "Write a VinDr-format phantom (DICOM + CSVs)."),
    "ingest": ("mammosynth.builders.sources.commands:ingest", "Turn a source into a prepared training set."),
    "train": ("mammosynth.training.commands:train", "Train SD3.5 LoRA or a BI-RADS inpainting model."),
    "generate": ("mammosynth.generators.commands:generate", "Generate a release candidate from a spec."),
    "validate": (
        "mammosynth.validation.commands:validate",
        "Validate a candidate or release; exit 1 on a failed gate.",
    ),
    "card": ("mammosynth.dataset_cards.commands:card", "Render the dataset card and Croissant metadata."),
    "publish": ("mammosynth.builders.release.commands:publish", "Upload a release to the Hub and tag it."),
    "build": ("mammosynth.builders.release.commands:build", "generate -> validate -> card -> package (-> publish)."),
    "demo": ("mammosynth.builders.release.demo:demo", "The whole chain on the embedded default, on CPU."),
    "check": ("mammosynth.builders.release.check:check", "Check a spec and its inputs; print the plan, run nothing."),
    "inspect": ("mammosynth.builders.release.inspect:inspect", "Counts, gates, licence and tag of a release."),
    "reader-study": (
        "mammosynth.validation.reader_study.commands:reader_study",
        "Blinded real-vs-synthetic reader studies: create, serve, import, score.",
    ),
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

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the table: `mammosynth --help` imports no command (torch, datasets)."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[name][0].split(":")
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
