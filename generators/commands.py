"""`mammosynth generate SPEC [--method M]`: a thin layer over ``generators.api.generate``."""

from __future__ import annotations

import click

from mammosynth.builders.core import progress
from mammosynth.builders.core.schema import METHODS


@click.command("generate")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--method",
    "methods",
    type=click.Choice(list(METHODS)),
    multiple=True,
    help="Generate only this method (repeatable); default: every method of the spec.",
)
@click.option(
    "--process-index", type=int, default=None, help="This process's rank (default: from accelerate/torchrun)."
)
@click.option(
    "--num-processes", type=int, default=None, help="Number of processes (default: from accelerate/torchrun)."
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the denoiser (pays off for long GPU runs).")
@click.option("--vae-tiling", is_flag=True, help="Decode in tiles (saves GPU memory at large resolutions).")
@progress.console_options
def generate(
    spec: str,
    methods: tuple[str, ...],
    process_index: int | None,
    num_processes: int | None,
    compile_: bool,
    vae_tiling: bool,
) -> None:
    """Generate the synthetic images of release SPEC into <output_dir>/generated/<method>/.

    Resumable: rerun the same command after a kill. Multi-GPU:
    `accelerate launch -m mammosynth.generators SPEC`.
    """
    from mammosynth.generators.api import generate as run_generate
    from mammosynth.generators.pipelines import Runtime

    results = run_generate(
        spec,
        list(methods) or None,
        process_index,
        num_processes,
        runtime=Runtime(compile=compile_, vae_tiling=vae_tiling),
    )
    env = progress.current_rank()
    rank = progress.Rank(
        env.rank if process_index is None else process_index, env.world_size if num_processes is None else num_processes
    )
    for method, r in results.items():  # the result: one line per method and rank, in every mode
        click.echo(
            rank.label(
                f"{method}: {r.rows} images in {len(r.written)} new shards "
                f"({len(r.already_done)} already done), {len(r.skipped)} skipped, {r.images_per_second:.2f} img/s"
            )
        )
