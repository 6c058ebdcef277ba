"""`mammosynth train sd35-lora|inpaint CONFIG`: thin click layer over the trainers' Python API.

The same group runs as ``accelerate launch -m mammosynth.training sd35-lora|inpaint CONFIG`` for
multi-GPU / multi-node training (``training/__main__.py``). Imports go one way: this layer imports
the trainers, never the reverse.
"""

from __future__ import annotations

from pathlib import Path

import click

from mammosynth.builders.core import progress

_resume = click.option(
    "--resume",
    default=None,
    metavar="latest|DIR",
    help="Continue from the newest checkpoint ('latest') or a checkpoint folder.",
)
_force = click.option("--force", is_flag=True, help="Resume even if the checkpoint's config differs.")
_stop = click.option(
    "--stop-after",
    type=click.IntRange(min=1),
    default=None,
    help="End this run after N optimizer steps (resume later with --resume latest).",
)


@click.group("train")
def train() -> None:
    """Train the generators on a prepared set (SD3.5 LoRA, BI-RADS-specific SD2 inpainting)."""


@train.command("sd35-lora")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@_resume
@_force
@_stop
@progress.console_options
def sd35_lora_command(config_path: Path, resume: str | None, force: bool, stop_after: int | None) -> None:
    """LoRA fine-tune of SD3.5 on captions built from the prepared set."""
    from mammosynth.training.config import SD35LoraConfig, load_config
    from mammosynth.training.sd35_lora import train_sd35_lora

    config = load_config(SD35LoraConfig, config_path)
    result = train_sd35_lora(config, resume=resume, force=force, stop_after=stop_after, config_file=config_path)
    _report(result)


@train.command("inpaint")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option(
    "--birads",
    type=click.Choice(["3", "4", "5"]),
    default=None,
    help="Lesion class to train (overrides the config's 'birads').",
)
@_resume
@_force
@_stop
@progress.console_options
def inpaint_command(
    config_path: Path, birads: str | None, resume: str | None, force: bool, stop_after: int | None
) -> None:
    """Fine-tune the SD2-inpainting UNet on one BI-RADS class's lesion boxes."""
    from mammosynth.training.config import InpaintConfig, load_config
    from mammosynth.training.inpaint import train_inpaint

    config = load_config(InpaintConfig, config_path)
    result = train_inpaint(
        config,
        birads=int(birads) if birads else None,
        resume=resume,
        force=force,
        stop_after=stop_after,
        config_file=config_path,
    )
    _report(result)


def _report(result) -> None:
    if not result.is_main:  # the final line is the main process's; the others' bars end in labelled lines
        return
    if result.final_dir is not None:
        progress.result(f"trained {result.global_step} steps; final model in {result.final_dir}")
    else:
        progress.result(f"stopped at step {result.global_step}; rerun with --resume latest to continue")
