"""The one place for Accelerate glue: accelerator setup, seeding, logging, checkpoints, resume,
base-model checks, the optimizer-step loop the trainers share and the metadata written beside every
trained artefact."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mammosynth.builders.core.atomic import write_json
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import hash_tree
from mammosynth.training.config import TrainingConfig, resume_fingerprint

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
METADATA_FILE = "training_metadata.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path | None
    global_step: int
    losses: list[float] = field(default_factory=list)  # per optimizer step, this run
    probe_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, fixed-batch loss)
    resumed_from: int | None = None
    is_main: bool = True  # False on the other ranks of a distributed run: they report nothing


# --- accelerator ---------------------------------------------------------------------------------------

def make_accelerator(config: TrainingConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    log_with = None
    if config.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError as exc:
            raise InputError("report_to: tensorboard needs the tensorboard package", field="report_to") from exc
    if config.mixed_precision != "no" and not torch.cuda.is_available() and config.mixed_precision == "fp16":
        raise InputError("fp16 mixed precision needs a GPU; use bf16 or no on CPU", field="mixed_precision")
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(config.output_dir), logging_dir=str(config.output_dir / "logs")),
    )
    set_seed(config.seed, device_specific=False)
    return accelerator


def weight_dtype(accelerator) -> torch.dtype:
    """dtype of the frozen modules (trainable parameters stay float32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def optimizer_and_schedule(params, config: TrainingConfig, num_processes: int):
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.weight_decay, eps=config.adam_epsilon,
    )
    # a prepared scheduler steps once per process per optimizer step
    schedule = get_scheduler(
        config.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=config.max_train_steps * num_processes,
    )
    return optimizer, schedule


class JsonlLog:
    """Append-only training log (loss, lr, throughput); main process only; survives resume."""

    def __init__(self, path: Path, enabled: bool, accelerator=None):
        self.path, self.enabled, self.accelerator = path, enabled, accelerator
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.accelerator is not None and self.accelerator.log_with:
            step = record.get("step")
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=step)


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- base models -----------------------------------------------------------------------------------------

def check_base_model(base: str, components: tuple[str, ...]) -> Path | None:
    """A local base folder must hold model_index.json and every component; hub ids pass through."""
    path = Path(base).expanduser()
    looks_local = path.exists() or base.startswith((".", "/", "~")) or base.count("/") > 1 or os.sep + os.sep in base
    if not looks_local:
        return None
    if not path.is_dir():
        raise InputError("base model folder not found", file=path, field="base_model")
    if not (path / "model_index.json").is_file():
        raise InputError("not a diffusers pipeline folder (no model_index.json)", file=path, field="base_model")
    for name in components:
        sub = path / name
        if not sub.is_dir() or not any(sub.iterdir()):
            raise InputError(f"base model is missing component '{name}'", file=path, field="base_model")
    return path


def base_identity(base: str, revision: str | None, local: Path | None) -> dict[str, str | None]:
    if local is not None:
        return {"base_model": str(local), "base_revision": None, "base_sha256": hash_tree(local)}
    return {"base_model": base, "base_revision": revision or "main", "base_sha256": None}


def load_component(cls, base: str, subfolder: str, revision: str | None, **kwargs):
    try:
        return cls.from_pretrained(base, subfolder=subfolder, revision=revision, **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load component '{subfolder}': {exc}".splitlines()[0], file=base, field="base_model") from None


# --- LoRA ---------------------------------------------------------------------------------------------------

def lora_targets_matched(model: torch.nn.Module, targets: list[str]) -> list[str]:
    """Module names matched by PEFT-style suffix targets."""
    names = [n for n, _ in model.named_modules()]
    return [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]


def add_lora(model: torch.nn.Module, options, *, file: str | Path | None = None) -> None:
    from peft import LoraConfig

    matched = lora_targets_matched(model, options.target_modules)
    if not matched:
        raise InputError(
            f"LoRA target modules {options.target_modules} match no layer of {type(model).__name__}",
            file=file, field="lora.target_modules",
        )
    model.add_adapter(LoraConfig(
        r=options.rank, lora_alpha=options.alpha or options.rank, lora_dropout=options.dropout,
        init_lora_weights="gaussian", target_modules=options.target_modules,
    ))


def save_adapter(model: torch.nn.Module, folder: Path) -> None:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(folder / "adapter_model.safetensors"))


def load_adapter(model: torch.nn.Module, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")), adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise InputError(f"adapter does not fit the model: unexpected keys {unexpected[:3]}", file=folder)


# --- checkpoints and resume ---------------------------------------------------------------------------------

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


def resolve_resume(config: TrainingConfig, resume: str | None, *, force: bool = False, extra: dict | None = None):
    """``None`` | ``"latest"`` | a checkpoint folder -> (folder, step) or None. Refuses a checkpoint
    written with a different config (fields outside RESUME_SAFE_FIELDS) unless ``force``."""
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
            file=path / STATE_FILE, field=diff[0],
        )
    return path, int(step)


def save_checkpoint(accelerator, config: TrainingConfig, step: int, *, extra: dict | None = None) -> Path:
    """accelerator.save_state into a temporary folder, then rename; prune old checkpoints.

    Not ``atomic_dir``: every rank writes its own files into the one staging folder, so its name
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
        state = {"global_step": step, "fingerprint": {**resume_fingerprint(config), **(extra or {})}}
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


# --- the training loop --------------------------------------------------------------------------------------

def resume_loader(accelerator, config: TrainingConfig, dataset, resume_point: tuple[Path, int] | None
                  ) -> tuple[Iterator[dict], int]:
    """The batch iterator positioned after the resumed step, and that step (0 on a fresh start)."""
    from mammosynth.training import data as tdata

    # the loader iterator draws a seed from the global RNG: create it before load_state restores the RNG
    start_step = resume_point[1] if resume_point is not None else 0
    batches = tdata.shard_batches(
        len(dataset), config.train_batch_size, process_index=accelerator.process_index,
        num_processes=accelerator.num_processes, seed=config.seed,
        start_batch=start_step * config.gradient_accumulation_steps,
    )
    loader = iter(tdata.make_loader(dataset, batches, config.dataloader_num_workers))
    if resume_point is not None:
        accelerator.load_state(str(resume_point[0]))
    return loader, start_step


def run_steps(
    accelerator, config: TrainingConfig, model: torch.nn.Module, params, optimizer, lr_schedule,
    loader: Iterator[dict], *, start_step: int, resumed_from: int | None,
    loss: Callable[[dict], torch.Tensor], probe: Callable[[], float],
    validation_images: Callable[[torch.nn.Module, int], Any], write_final: Callable[[torch.nn.Module, int], Path],
    tracker: str, desc: str, extra: dict | None = None, stop_after: int | None = None,
) -> TrainResult:
    """The optimizer-step loop both trainers share, as in diffusers' training examples: ``loss(batch)``
    is one micro-batch's loss; every ``log_every`` / ``checkpointing_steps`` / ``validation_steps``
    optimizer steps it logs, checkpoints, probes and writes ``validation_images(model, step)``. After
    ``max_train_steps`` it checkpoints and calls ``write_final(model, step)`` (main process only);
    ``stop_after`` ends this run early (resume later)."""
    main = accelerator.is_main_process
    log = JsonlLog(config.output_dir / "logs" / "train.jsonl", main, accelerator)
    if main and accelerator.log_with:
        accelerator.init_trackers(tracker)
    global_step = start_step
    result = TrainResult(config.output_dir, None, global_step, resumed_from=resumed_from, is_main=main)
    result.probe_losses.append((global_step, probe()))
    bar = tqdm(total=config.max_train_steps, initial=global_step, disable=not main, desc=desc, unit="step")
    steps_this_run = 0
    model.train()
    while global_step < config.max_train_steps:
        t0 = time.perf_counter()
        step_loss = torch.zeros((), device=accelerator.device)
        for _ in range(config.gradient_accumulation_steps):
            batch = next(loader)
            with accelerator.accumulate(model):
                micro_loss = loss(batch)
                accelerator.backward(micro_loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                lr_schedule.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += micro_loss.detach() / config.gradient_accumulation_steps
        # one all-reduce per optimizer step: the logged loss is the global batch's, not rank 0's share
        step_loss = float(accelerator.reduce(step_loss, "mean"))
        global_step += 1
        steps_this_run += 1
        elapsed = time.perf_counter() - t0
        result.losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if global_step % config.log_every == 0:
            log.write({"step": global_step, "loss": step_loss, "lr": lr_schedule.get_last_lr()[0],
                       "samples_per_s_per_device": config.train_batch_size * config.gradient_accumulation_steps / elapsed})
        if global_step % config.checkpointing_steps == 0 and global_step < config.max_train_steps:
            save_checkpoint(accelerator, config, global_step, extra=extra)
        if config.validation_steps and global_step % config.validation_steps == 0:
            result.probe_losses.append((global_step, probe()))
            log.write({"step": global_step, "probe_loss": result.probe_losses[-1][1]})
            if main:
                validation_images(accelerator.unwrap_model(model), global_step)
        if stop_after is not None and steps_this_run >= stop_after:
            break
    bar.close()
    result.global_step = global_step
    if global_step < config.max_train_steps:
        return result  # stopped early; resume later
    if result.probe_losses[-1][0] != global_step:
        result.probe_losses.append((global_step, probe()))
        log.write({"step": global_step, "probe_loss": result.probe_losses[-1][1]})
    save_checkpoint(accelerator, config, global_step, extra=extra)
    if main:
        trained = accelerator.unwrap_model(model)
        result.final_dir = write_final(trained, global_step)
        validation_images(trained, global_step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def write_metadata(folder: Path, data: dict[str, Any]) -> None:
    write_json(folder / METADATA_FILE, data, indent=2, default=str)


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
