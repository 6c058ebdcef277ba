"""Resumable checkpoints: where they live, which one ``--resume`` means, whether this run may
continue it, and the Accelerate save/load hooks that put the trained weights into them.

A checkpoint is ``accelerator.save_state`` (optimizer, LR schedule, every rank's RNG) plus the
trained weights, written by the main process only, and ``trainer_state.json`` (step, config
fingerprint, number of processes) written last: a folder without it is incomplete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mammosynth.builders.core.atomic import write_json
from mammosynth.builders.core.errors import InputError
from mammosynth.training.config import TrainingConfig, resume_fingerprint

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    step: int
    num_processes: int | None  # None: written before the count was recorded


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    folder = output_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _CKPT.match(p.name)
        if m and (p / STATE_FILE).is_file():  # the state file is written last: complete checkpoints only
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_resume(
    config: TrainingConfig, resume: str | None, *, force: bool = False, extra: dict | None = None
) -> ResumePoint | None:
    """``None`` | ``"latest"`` | a checkpoint folder -> the point to resume, or None. Refuses a
    checkpoint written with a different config (fields outside RESUME_SAFE_FIELDS) unless ``force``."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(config.output_dir)
        if not found:
            return None  # nothing to resume yet: a fresh start, so the same command works every time
        step, path = found[-1]
    else:
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise InputError("not a complete checkpoint folder", file=path, field="resume")
        step = None
    state = json.loads((path / STATE_FILE).read_text())
    step = state["global_step"] if step is None else step
    want = {**resume_fingerprint(config), **(extra or {})}
    have = state.get("fingerprint", {})
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if diff and not force:
        raise InputError(
            f"checkpoint was written with a different config ({', '.join(diff[:5])}); pass --force to resume anyway",
            file=path / STATE_FILE,
            field=diff[0],
        )
    return ResumePoint(path, int(step), state.get("num_processes"))


def check_world_size(point: ResumePoint | None, num_processes: int) -> None:
    """The global batch (per-device batch x processes x accumulation), the data shards and the LR
    schedule (stepped once per process) all depend on the number of processes: a checkpoint
    continues only under the count that wrote it."""
    if point is None or point.num_processes is None or point.num_processes == num_processes:
        return
    raise InputError(
        f"checkpoint was written by {point.num_processes} processes, this run has {num_processes}; "
        f"resume with --num_processes {point.num_processes} (the global batch and LR schedule depend on it)",
        file=point.path / STATE_FILE,
        field="num_processes",
    )


def save_checkpoint(accelerator, config: TrainingConfig, step: int, *, extra: dict | None = None) -> Path:
    """accelerator.save_state into a temporary folder, then rename; prune old checkpoints.

    Not ``atomic_dir``: every rank writes its own RNG file into the one staging folder, so its name
    is the step's (not a process id) and only the main process renames it."""
    root = config.output_dir / CHECKPOINTS
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {
            "global_step": step,
            "num_processes": accelerator.num_processes,
            "fingerprint": {**resume_fingerprint(config), **(extra or {})},
        }
        write_json(tmp / STATE_FILE, state, indent=2)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        limit = config.checkpoints_total_limit
        if limit:
            for _, old in list_checkpoints(config.output_dir)[:-limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def register_weight_hooks(
    accelerator, save: Callable[[torch.nn.Module, Path], None], load: Callable[[torch.nn.Module, Path], None]
) -> None:
    """Trained weights go into checkpoints through ``save(model, folder)`` on the main process only
    (every rank holds the same weights; N ranks writing one path race), and come back through
    ``load(model, folder)`` on every rank. Accelerate's own copy of the weights is skipped."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                save(accelerator.unwrap_model(model), Path(output_dir))
        weights.clear()  # on every rank: accelerate then writes no second copy

    def load_hook(models, input_dir):
        while models:
            load(accelerator.unwrap_model(models.pop()), Path(input_dir))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
