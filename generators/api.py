"""Python API of generation: ``generate(spec)`` makes every method of a release spec into
``<output_dir>/generated/<method>/`` (sharded, resumable), one process or many.

Every sampler is built, which checks the spec against checkpoints and the prepared set, before
any method starts, so bad input fails before any model work. Under ``accelerate launch`` each
process reads its rank from the environment and takes a disjoint slice of the shards.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.locks import folder_lock
from mammosynth.builders.core.schema import METHODS
from mammosynth.builders.core.shard_writer import ShardWriter
from mammosynth.builders.core.spec import ReleaseSpec, load_spec
from mammosynth.generators.engine import RunResult, Sampler, plan, run
from mammosynth.generators.pipelines import Runtime

SAMPLERS: dict[str, str] = {
    "text2image": "mammosynth.generators.text2image:Text2ImageSampler",
    "inpainting": "mammosynth.generators.inpainting:InpaintingSampler",
    "poisson": "mammosynth.generators.poisson:PoissonSampler",
}


def distributed_rank() -> tuple[int, int]:
    """(process_index, num_processes) as ``accelerate launch``/torchrun set them; (0, 1) alone."""
    index = os.environ.get("RANK", os.environ.get("PROCESS_INDEX", "0"))
    world = os.environ.get("WORLD_SIZE", os.environ.get("NUM_PROCESSES", "1"))
    return int(index), int(world)


def make_sampler(
    spec: ReleaseSpec, method: str, *, runtime: Runtime | None = None, spec_file: str | Path | None = None
) -> Sampler:
    """The sampler of ``method``, constructed (and so validated against its inputs)."""
    module_name, attr = SAMPLERS[method].split(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if method == "poisson":
        return cls(spec)
    return cls(spec, runtime, spec_file=spec_file)


def generate(
    spec: ReleaseSpec | str | Path,
    methods: list[str] | None = None,
    process_index: int | None = None,
    num_processes: int | None = None,
    *,
    runtime: Runtime | None = None,
    progress: bool = True,
) -> dict[str, RunResult]:
    """Generate ``methods`` (default: every method of the spec) and return a RunResult each."""
    spec_file = None
    if not isinstance(spec, ReleaseSpec):
        spec_file = Path(spec)
        spec = load_spec(spec_file)
    env_index, env_world = distributed_rank()
    process_index = env_index if process_index is None else process_index
    num_processes = env_world if num_processes is None else num_processes
    if not 0 <= process_index < num_processes:
        raise InputError(f"process index {process_index} outside 0..{num_processes - 1}", field="process_index")
    wanted = list(spec.methods) if methods is None else list(methods)
    for m in wanted:
        if m not in METHODS:
            raise InputError(f"unknown method {m!r}; one of {list(METHODS)}", file=spec_file, field="method")
        if m not in spec.methods:
            raise InputError(
                f"the spec has no method {m!r} (it has {list(spec.methods)})", file=spec_file, field="methods"
            )
    with folder_lock(spec.layout.generated(), "generate", key=f"rank{process_index}"):
        return _generate(
            spec, wanted, process_index, num_processes, runtime=runtime, spec_file=spec_file, progress=progress
        )


def _generate(
    spec: ReleaseSpec,
    wanted: list[str],
    process_index: int,
    num_processes: int,
    *,
    runtime: Runtime | None,
    spec_file: Path | None,
    progress: bool,
) -> dict[str, RunResult]:
    samplers = {m: make_sampler(spec, m, runtime=runtime, spec_file=spec_file) for m in wanted}
    results: dict[str, RunResult] = {}
    for m, sampler in samplers.items():
        results[m] = run(
            plan(spec, m),
            sampler,
            spec.layout.generated(m),
            shard_size=spec.output.shard_size,
            process_index=process_index,
            num_processes=num_processes,
            progress=progress,
        )
    return results


def load_generated(spec: ReleaseSpec, method: str):
    """The rows generated so far for ``method``, as one ``datasets.Dataset`` in plan order."""
    return ShardWriter(spec.layout.generated(method)).load()
