"""`mammosynth check SPEC`: the spec and its inputs checked without running anything, and the plan.

What is checked, cheapest first: the spec loads (field-level errors); the prepared set is there and
consistent (``verify_prepared`` with PNG headers only, no full decodes); every local checkpoint
folder exists and looks like what its field needs (a diffusers pipeline, a LoRA adapter); every
requested (BI-RADS, view, laterality) cell has the backgrounds and lesions its method draws from
(inpainting and Poisson backgrounds of ``background_birads`` with the cell's view and laterality;
finding boxes of the cell's BI-RADS for inpainting box sizes and Poisson lesion donors).

The plan lists rows per method and cell, what is available for each, the checkpoints, and an
estimate of GPU-hours from recorded GPU benchmarks (``benchmarks/results``); CPU figures do not
estimate GPU time, so without a GPU record the plan says there is no estimate.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.spec import PoissonParams, ReleaseSpec, load_spec

PIPELINE_FILE = "model_index.json"  # what every diffusers pipeline folder holds
ADAPTER_FILES = ("adapter_config.json", "pytorch_lora_weights.safetensors")  # a LoRA from `train sd35-lora`
MIN_SIDE_PX = 6  # lesion boxes smaller than this are not used as Poisson donors (as generators.lesion_bank)
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@dataclass
class Checkpoint:
    field: str
    ref: str
    kind: str  # "pipeline" or "adapter"
    where: str  # "local" or "hub"
    found: bool | None  # None: a Hub id, not fetched by a check
    cached: bool = False  # a Hub id whose files are in the local huggingface_hub cache

    @property
    def status(self) -> str:
        if self.found is None:
            return "hub id, in the local cache" if self.cached else "hub id, not in the local cache (fetched when used)"
        return "found" if self.found else "MISSING"


@dataclass
class Cell:
    method: str
    birads: int
    view: str
    laterality: str
    rows: int
    backgrounds: int | None = None  # None: the method draws no background
    lesions: int | None = None  # finding boxes of the cell's BI-RADS it draws from


@dataclass
class Plan:
    spec: str
    prepared: str
    prepared_images: int
    checkpoints: list[Checkpoint] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    gpu_hours: float | None = None
    estimate: str = ""
    problems: list[InputError] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = [str(p) for p in self.problems]
        for c, item in zip(self.checkpoints, data["checkpoints"]):
            item["status"] = c.status
        return data


# --- the checks ----------------------------------------------------------------------------------------------


def _checkpoints(spec: ReleaseSpec, spec_file: Path) -> tuple[list[Checkpoint], list[InputError]]:
    local = spec.local_checkpoints()
    found, problems = [], []
    refs: list[tuple[str, str, str]] = []
    for method, m in spec.methods.items():
        if m.text2image:
            refs.append((f"methods.{method}.text2image.base_model", m.text2image.base_model, "pipeline"))
            if m.text2image.lora:
                refs.append((f"methods.{method}.text2image.lora", m.text2image.lora, "adapter"))
        if m.inpainting:
            for b, p in sorted(m.inpainting.checkpoints.items()):
                refs.append((f"methods.{method}.inpainting.checkpoints.{b}", p, "pipeline"))
    for name, ref, kind in refs:
        if name not in local:
            found.append(Checkpoint(name, ref, kind, "hub", None, cached=_in_hub_cache(ref, kind)))
            continue
        folder = Path(ref).expanduser()
        wanted = (PIPELINE_FILE,) if kind == "pipeline" else ADAPTER_FILES
        ok = folder.is_dir() and any((folder / f).is_file() for f in wanted)
        found.append(Checkpoint(name, ref, kind, "local", ok))
        if not ok:
            what = "no such folder" if not folder.is_dir() else f"not a {kind} folder (no {' or '.join(wanted)})"
            problems.append(InputError(f"checkpoint {ref}: {what}", file=spec_file, field=name))
    return found, problems


def _in_hub_cache(repo_id: str, kind: str) -> bool:
    """Whether the checkpoint's index file is in the local cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    name = PIPELINE_FILE if kind == "pipeline" else ADAPTER_FILES[0]
    return isinstance(try_to_load_from_cache(repo_id, name), str)


def _available(prepared_path: Path) -> tuple[int, Counter, Counter]:
    """Rows of the prepared set: (count, rows per (BI-RADS, view, laterality), usable finding boxes
    per BI-RADS)."""
    from mammosynth.builders.core.prepared import open_prepared

    ds = open_prepared(prepared_path, field="source.prepared")
    cols = ds.select_columns(["birads", "view", "laterality", "findings"]).with_format("arrow")[:].to_pydict()
    per_cell: Counter = Counter(zip(cols["birads"], cols["view"], cols["laterality"]))
    boxes: Counter = Counter()
    for findings in cols["findings"]:
        for f in findings or []:
            bbox = f.get("bbox")
            if (
                bbox
                and f.get("finding_birads") is not None
                and min(bbox[2] - bbox[0], bbox[3] - bbox[1]) >= MIN_SIDE_PX
            ):
                boxes[int(f["finding_birads"])] += 1
    return len(ds), per_cell, boxes


def _cells(
    spec: ReleaseSpec, spec_file: Path, per_cell: Counter, boxes: Counter
) -> tuple[list[Cell], list[InputError]]:
    cells, problems = [], []
    for method, m in spec.methods.items():
        backgrounds_of: list[int] | None = None  # text-to-image draws no background
        if method == "inpainting" and m.inpainting is not None:
            backgrounds_of = list(m.inpainting.background_birads)
        elif method == "poisson":
            backgrounds_of = list((m.poisson or PoissonParams()).background_birads)
        for (birads, view, lat), n in sorted(spec.cell_counts(method).items()):
            if n == 0:
                continue
            cell = Cell(method, birads, view, lat, n)
            if backgrounds_of is not None:
                cell.backgrounds = sum(per_cell[(b, view, lat)] for b in backgrounds_of)
                cell.lesions = boxes[birads]
                if cell.backgrounds == 0:
                    problems.append(
                        InputError(
                            f"{method} BI-RADS {birads} {view} {lat}: no background with BI-RADS in {backgrounds_of}, "
                            f"view {view}, laterality {lat} in the prepared set",
                            file=spec_file,
                            field=f"methods.{method}.{method}.background_birads",
                        )
                    )
                if cell.lesions == 0:
                    use = "lesion donors" if method == "poisson" else "box sizes"
                    problems.append(
                        InputError(
                            f"{method} BI-RADS {birads}: no BI-RADS {birads} finding box in the prepared set ({use})",
                            file=spec_file,
                            field=f"methods.{method}.counts",
                        )
                    )
            cells.append(cell)
    return cells, problems


# --- the GPU-hours estimate ----------------------------------------------------------------------------------


def gpu_seconds_per_image(results: Path = BENCHMARKS) -> dict[str, float]:
    """Seconds per image per method from recorded generation benchmarks run on a GPU (the fastest
    variant's median); CPU records are ignored."""
    import statistics

    best: dict[str, float] = {}
    for file in sorted(results.glob("*.json")) if results.is_dir() else []:
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("benchmark") != "generate":
            continue
        machine = record.get("machine") or {}
        if record.get("device") != "cuda" and not machine.get("gpu"):
            continue
        for method, fig in (record.get("figures") or {}).items():
            images = fig.get("images") if isinstance(fig, dict) else None
            for variant in (fig.get("variants") or {}).values() if images else []:
                seconds = variant.get("seconds") if isinstance(variant, dict) else None
                if seconds:
                    per = statistics.median(seconds) / images
                    best[method] = min(best.get(method, per), per)
    return best


def _estimate(rows: dict[str, int], results: Path) -> tuple[float | None, str]:
    rates = gpu_seconds_per_image(results)
    if not rates:
        return None, "no GPU benchmark recorded: no estimate"
    missing = [m for m in rows if rows[m] and m not in rates]
    hours = sum(rows[m] * rates[m] for m in rows if m in rates) / 3600
    note = f"{hours:.2f} GPU-hours from recorded GPU benchmarks (one GPU)"
    if missing:
        note += f"; no GPU figure for {', '.join(missing)}"
    return hours, note


# --- the API and the command ---------------------------------------------------------------------------------


def check_spec(spec_file: str | Path, *, benchmarks: Path = BENCHMARKS) -> Plan:
    """Check ``spec_file`` and its inputs; the plan lists what was found and every problem. A spec
    that does not load, or a prepared set that is missing or inconsistent, raises at once."""
    from mammosynth.builders.core.prepared import verify_prepared

    spec_file = Path(spec_file)
    spec = load_spec(spec_file)
    prepared = Path(spec.source.prepared)
    if not prepared.is_dir():
        raise InputError("prepared training set not found", file=prepared, field="source.prepared")
    verify_prepared(prepared, decode=0)  # counts, licences, ids, PNG headers, boxes: no full decode
    images, per_cell, boxes = _available(prepared)
    plan = Plan(spec=str(spec_file), prepared=str(prepared), prepared_images=images)
    plan.checkpoints, problems = _checkpoints(spec, spec_file)
    plan.cells, cell_problems = _cells(spec, spec_file, per_cell, boxes)
    plan.problems = problems + cell_problems
    plan.rows = {m: spec.total(m) for m in spec.methods}
    plan.gpu_hours, plan.estimate = _estimate(plan.rows, benchmarks)
    return plan


def format_plan(plan: Plan) -> str:
    lines = [f"spec {plan.spec}", f"prepared set {plan.prepared}: {plan.prepared_images} images (verified)", ""]
    lines.append("  method       BI-RADS  view  side      rows  backgrounds  lesions")
    for c in plan.cells:
        bg = "-" if c.backgrounds is None else str(c.backgrounds)
        les = "-" if c.lesions is None else str(c.lesions)
        lines.append(f"  {c.method:<12} {c.birads:>7}  {c.view:<4}  {c.laterality:<4} {c.rows:>8}  {bg:>11}  {les:>7}")
    lines.append("  " + ", ".join(f"{m} {n}" for m, n in plan.rows.items()) + f"; total {sum(plan.rows.values())} rows")
    lines.append("")
    lines.append("  checkpoints:")
    for ck in plan.checkpoints:
        lines.append(f"    {ck.field}: {ck.ref} ({ck.kind}, {ck.status})")
    lines.append("")
    lines.append(f"  estimate: {plan.estimate}")
    for p in plan.problems:
        lines.append(f"  problem: {p}")
    return "\n".join(lines)


@click.command("check")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON on stdout.")
def check(spec: Path, as_json: bool) -> None:
    """Check release SPEC and its inputs (prepared set, checkpoints, backgrounds and lesions per
    cell) and print the plan; runs nothing. Exit 2 on any problem."""
    plan = check_spec(spec)
    click.echo(json.dumps(plan.as_json(), indent=1) if as_json else format_plan(plan))
    if plan.problems:
        more = f" (and {len(plan.problems) - 1} more, listed above)" if len(plan.problems) > 1 else ""
        raise InputError(f"{plan.problems[0]}{more}")


__all__ = ["Plan", "Cell", "Checkpoint", "check_spec", "format_plan", "gpu_seconds_per_image", "check"]
