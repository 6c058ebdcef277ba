"""The run engine shared by every generation method.

A spec becomes a deterministic plan (a list of SampleTask); the plan is cut into shards; each
process takes every n-th shard (``accelerate launch`` gives the rank) and asks a Sampler for the
rows of its tasks. No coordination is needed beyond the plan, a rerun skips finished shards, and
the result does not depend on the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mammosynth.builders.core.progress import Rank
from mammosynth.builders.core.progress import bar as progress_bar
from mammosynth.builders.core.seeds import mask_seed, sampling_seed
from mammosynth.builders.core.shard_writer import ShardWriter
from mammosynth.builders.core.spec import ReleaseSpec


@dataclass(frozen=True)
class SampleTask:
    """One image to make. ``index`` counts within its (method, BI-RADS, view, laterality) cell."""

    method: str
    birads: int
    view: str
    laterality: str
    index: int
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def image_id(self) -> str:
        return f"{self.method}-b{self.birads}-{self.view.lower()}-{self.laterality.lower()}-{self.index:05d}"

    @property
    def file_name(self) -> str:
        return f"{self.image_id}.png"

    @property
    def seed(self) -> int:
        return sampling_seed(self.file_name)

    @property
    def mask_seed(self) -> int:
        return mask_seed(self.file_name)


@dataclass
class Skip:
    """A task that could not be made, with the reason (e.g. no lesion position qualifies)."""

    image_id: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"image_id": self.image_id, "reason": self.reason}


class Sampler(Protocol):
    """A generation method. ``generate`` returns, per task and in order, a row or a Skip.

    A sampler may also carry ``fingerprint`` (str): what its output depends on (parameters,
    checkpoint hashes). ``run`` records it and refuses to resume a folder made with another.
    """

    method: str

    def generate(self, tasks: list[SampleTask]) -> list[dict[str, Any] | Skip]: ...


def plan(spec: ReleaseSpec, method: str) -> list[SampleTask]:
    """Every task of ``method`` in a fixed order: BI-RADS, view, laterality, index."""
    tasks = []
    for (birads, view, laterality), n in sorted(spec.cell_counts(method).items()):
        tasks.extend(SampleTask(method, birads, view, laterality, i) for i in range(n))
    return tasks


def shard_slices(n_tasks: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n_tasks)) for s in range(0, n_tasks, shard_size)]


def my_shards(n_shards: int, process_index: int, num_processes: int) -> list[int]:
    """Disjoint round-robin slice of shard indices for one process."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} outside 0..{num_processes - 1}")
    return list(range(process_index, n_shards, num_processes))


@dataclass
class RunResult:
    written: list[int]
    already_done: list[int]
    rows: int
    skipped: list[dict[str, str]]
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def run_fingerprint(tasks: list[SampleTask], sampler: Sampler, shard_size: int) -> str:
    """Identity of a run: the plan, its cut into shards and the sampler's own fingerprint."""
    plan_ids = hashlib.sha256("\n".join(t.image_id for t in tasks).encode()).hexdigest()
    return json.dumps(
        {
            "method": sampler.method,
            "plan": plan_ids,
            "tasks": len(tasks),
            "shard_size": shard_size,
            "sampler": getattr(sampler, "fingerprint", None),
        },
        sort_keys=True,
    )


def run(
    tasks: list[SampleTask],
    sampler: Sampler,
    out_dir: str | Path,
    *,
    shard_size: int,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = True,
) -> RunResult:
    """Make this process's shards of ``tasks`` with ``sampler`` into ``out_dir``; resumable."""
    writer = ShardWriter(out_dir)
    writer.claim(run_fingerprint(tasks, sampler, shard_size))
    t_start = time.perf_counter()
    slices = shard_slices(len(tasks), shard_size)
    mine = my_shards(len(slices), process_index, num_processes)
    todo = [k for k in mine if not writer.is_done(k)]
    done_before = [k for k in mine if writer.is_done(k)]
    result = RunResult(written=[], already_done=done_before, rows=0, skipped=[])
    bar = progress_bar(
        total=sum(slices[k][1] - slices[k][0] for k in mine),
        initial=sum(slices[k][1] - slices[k][0] for k in done_before),
        desc=f"generate {sampler.method}",
        unit="img",
        enabled=progress,
        rank=Rank(process_index, num_processes),
    )
    for k in todo:
        start, stop = slices[k]
        t0 = time.perf_counter()
        outputs = sampler.generate(tasks[start:stop])
        if len(outputs) != stop - start:
            raise RuntimeError(f"{sampler.method} sampler returned {len(outputs)} results for {stop - start} tasks")
        rows = [o for o in outputs if not isinstance(o, Skip)]
        skipped = [o.as_dict() for o in outputs if isinstance(o, Skip)]
        writer.write(k, rows, skipped, time.perf_counter() - t0)
        result.written.append(k)
        result.rows += len(rows)
        result.skipped.extend(skipped)
        bar.update(stop - start)
        bar.set_postfix_str(f"shard {k}")
    bar.close()
    result.seconds = time.perf_counter() - t_start
    return result
