"""The one place for Accelerate glue: precision checks, accelerator setup, seeding, logging,
base-model checks and loading, LoRA adapters, the optimizer-step loop the trainers share and the
metadata written beside every trained artefact. Checkpoints and resume: ``training.checkpoints``."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammosynth.builders.core.atomic import write_json
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import hash_tree
from mammosynth.builders.core.progress import Rank
from mammosynth.builders.core.progress import bar as progress_bar
from mammosynth.builders.core.provenance import TRAINING_METADATA
from mammosynth.builders.core.workers import cpu_count
from mammosynth.training import checkpoints
from mammosynth.training.config import TrainingConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT layout: beside adapter_config.json
PEFT_PREFIX = "base_model.model."


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path | None
    global_step: int
    losses: list[float] = field(default_factory=list)  # per optimizer step, this run
    probe_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, fixed-batch loss)
    resumed_from: int | None = None
    is_main: bool = True  # False on the other ranks of a distributed run: they report nothing


# --- precision, accelerator, seeds ------------------------------------------------------------------


def check_precision(config: TrainingConfig, *, file: str | Path | None = None) -> None:
    """Refuse, before anything is loaded or written, a precision this machine cannot run."""
    mp = config.mixed_precision
    if mp == "fp16" and not torch.cuda.is_available():
        raise InputError("fp16 mixed precision needs a GPU; use bf16 or no on CPU", file=file, field="mixed_precision")
    if mp == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise InputError(
            f"bf16 mixed precision is not supported by this GPU ({torch.cuda.get_device_name()}); use fp16 or no",
            file=file,
            field="mixed_precision",
        )


def make_accelerator(config: TrainingConfig, resume: checkpoints.ResumePoint | None = None):
    """The run's Accelerator, seeded alike on every rank (identical weight init); refuses a resume
    under another number of processes before anything is written."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration, set_seed

    log_with = None
    if config.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError as exc:
            raise InputError("report_to: tensorboard needs the tensorboard package", field="report_to") from exc
    check_precision(config)
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    # the precision is per run: a second run in this process (Python API, tests) may choose another
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=log_with,
        project_config=ProjectConfiguration(
            project_dir=str(config.output_dir), logging_dir=str(config.output_dir / "logs")
        ),
    )
    checkpoints.check_world_size(resume, accelerator.num_processes)
    set_seed(config.seed, device_specific=False)
    return accelerator


def rank_seed(seed: int, process_index: int) -> int:
    """The training-RNG seed of one rank: distinct per rank, fixed by (seed, rank)."""
    return int(np.random.SeedSequence([seed, process_index, 0x7A11]).generate_state(1)[0])


def seed_ranks(accelerator, seed: int) -> None:
    """From here on every rank draws its own noise, timesteps and dropout masks (one seed for all
    would give a 192-sample global batch on 8 GPUs only 24 distinct draws)."""
    from accelerate.utils import set_seed

    set_seed(rank_seed(seed, accelerator.process_index))


@contextlib.contextmanager
def isolated(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) with the RNG forked: probes and validation images draw nothing from
    the training RNG, so a resumed run draws exactly what an uninterrupted run draws."""
    was_training = model.training
    model.eval()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def on_device(module: torch.nn.Module, device) -> Iterator[torch.nn.Module]:
    """An offloaded module on ``device`` for the block, then back where it was."""
    home = next(module.parameters()).device
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


def weight_dtype(accelerator) -> torch.dtype:
    """dtype of the frozen modules (trainable parameters stay float32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def optimizer_and_schedule(params, config: TrainingConfig, num_processes: int):
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(
        params,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.weight_decay,
        eps=config.adam_epsilon,
    )
    # a prepared scheduler steps once per process per optimizer step
    schedule = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
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
            self.accelerator.log(
                {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=step
            )


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- base models -----------------------------------------------------------------------------------------

# Components built in memory instead of read from a folder (benchmarks: real-size architectures
# with random weights, which would take minutes to write and read back). Each is handed out once.
_PRELOADED: dict[str, dict[str, Any]] = {}


@contextlib.contextmanager
def preloaded_components(base: str, components: dict[str, Any]) -> Iterator[None]:
    """While the block runs, ``load_component(.., base, name, ..)`` returns ``components[name]``
    (and ``base`` needs no folder): the trainers run unchanged on models built in memory."""
    _PRELOADED[base] = dict(components)
    try:
        yield
    finally:
        _PRELOADED.pop(base, None)


def check_base_model(base: str, components: tuple[str, ...]) -> Path | None:
    """A local base folder must hold model_index.json and every component; hub ids pass through."""
    if base in _PRELOADED:
        return None
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
    if subfolder in _PRELOADED.get(base, {}):
        component = _PRELOADED[base].pop(subfolder)
        if not isinstance(component, cls) and hasattr(component, "config") and hasattr(cls, "from_config"):
            component = cls.from_config(component.config)  # a scheduler, as from_pretrained would build it
        dtype = kwargs.get("dtype")
        return component.to(dtype) if dtype is not None and isinstance(component, torch.nn.Module) else component
    try:
        return cls.from_pretrained(base, subfolder=subfolder, revision=revision, **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load component '{subfolder}': {exc}".splitlines()[0], file=base, field="base_model"
        ) from None


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
            file=file,
            field="lora.target_modules",
        )
    model.add_adapter(
        LoraConfig(
            r=options.rank,
            lora_alpha=options.alpha or options.rank,
            lora_dropout=options.dropout,
            init_lora_weights="gaussian",
            target_modules=options.target_modules,
        )
    )


def lora_config(model: torch.nn.Module) -> dict[str, Any]:
    """The adapter's PEFT config (rank, alpha, targets) as JSON-ready data: saved with the weights,
    so a reload scales by alpha / rank as training did."""
    data = model.peft_config["default"].to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in data.items()}


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors without the PEFT adapter name, float32 on the CPU."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in get_peft_model_state_dict(model).items()}


def save_adapter(model: torch.nn.Module, folder: Path) -> None:
    """A standard PEFT folder: adapter_model.safetensors (``base_model.model.`` keys) and
    adapter_config.json (alpha included), which ``PeftModel.from_pretrained`` and generation read."""
    from safetensors.torch import save_file

    state = {PEFT_PREFIX + k: v for k, v in adapter_state(model).items()}
    save_file(state, str(folder / ADAPTER_WEIGHTS))
    write_json(folder / "adapter_config.json", lora_config(model), indent=2)


def load_adapter(model: torch.nn.Module, folder: Path) -> None:
    """Inverse of ``save_adapter`` (also reads the unprefixed keys older checkpoints hold); every
    LoRA tensor of the model must be in the file and every tensor of the file in the model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = folder / ADAPTER_WEIGHTS
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(path)).items()}
    result = set_peft_model_state_dict(model, state, adapter_name="default")
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    missing = [k for k in getattr(result, "missing_keys", None) or [] if "lora_" in k]
    if unexpected or missing:
        raise InputError(
            f"adapter does not fit the model: unexpected keys {unexpected[:3]}, missing keys {missing[:3]}", file=path
        )


# --- the training loop --------------------------------------------------------------------------------------


def loader_workers(config: TrainingConfig, accelerator) -> int:
    """``dataloader_num_workers``, or by default min(4, cores per local process - 1), at least 1."""
    if config.dataloader_num_workers is not None:
        return config.dataloader_num_workers
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes if accelerator.num_processes else 1))
    return max(1, min(4, cpu_count() // max(1, local) - 1))


def resume_loader(
    accelerator, config: TrainingConfig, dataset, resume_point: checkpoints.ResumePoint | None
) -> tuple[Iterator[dict], int]:
    """The batch iterator positioned after the resumed step, and that step (0 on a fresh start).
    From here on each rank has its own RNG stream (restored from the checkpoint on resume)."""
    from mammosynth.training import data as tdata

    seed_ranks(accelerator, config.seed)
    # the loader iterator draws a seed from the global RNG: create it before load_state restores the RNG
    start_step = resume_point.step if resume_point is not None else 0
    batches = tdata.shard_batches(
        len(dataset),
        config.train_batch_size,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
        seed=config.seed,
        start_batch=start_step * config.gradient_accumulation_steps,
    )
    loader = iter(tdata.make_loader(dataset, batches, loader_workers(config, accelerator)))
    if resume_point is not None:
        accelerator.load_state(str(resume_point.path))
    return loader, start_step


def run_steps(
    accelerator,
    config: TrainingConfig,
    model: torch.nn.Module,
    params,
    optimizer,
    lr_schedule,
    loader: Iterator[dict],
    *,
    start_step: int,
    resumed_from: int | None,
    loss: Callable[[dict], torch.Tensor],
    probe: Callable[[], float],
    validation_images: Callable[[torch.nn.Module, int], Any],
    write_final: Callable[[torch.nn.Module, int], Path],
    tracker: str,
    desc: str,
    extra: dict | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """The optimizer-step loop both trainers share, as in diffusers' training examples: ``loss(batch)``
    is one micro-batch's loss; every ``log_every`` / ``checkpointing_steps`` / ``validation_steps``
    optimizer steps it logs, checkpoints, probes and writes ``validation_images(model, step)``. After
    ``max_train_steps`` it checkpoints and calls ``write_final(model, step)`` (main process only);
    ``stop_after`` ends this run early (resume later). Probes and validation images run in eval
    mode, under autocast (the frozen parts are in the mixed-precision dtype, the trained ones in
    float32), on a forked RNG."""
    main = accelerator.is_main_process
    log = JsonlLog(config.output_dir / "logs" / "train.jsonl", main, accelerator)
    if main and accelerator.log_with:
        accelerator.init_trackers(tracker)
    global_step = start_step
    result = TrainResult(config.output_dir, None, global_step, resumed_from=resumed_from, is_main=main)

    def probe_now() -> None:
        with isolated(model):
            result.probe_losses.append((global_step, probe()))

    def images_now(trained: torch.nn.Module) -> None:
        if main:
            with isolated(model), torch.no_grad(), accelerator.autocast():
                validation_images(trained, global_step)

    probe_now()
    rank = Rank(accelerator.process_index, accelerator.num_processes)
    bar = progress_bar(total=config.max_train_steps, initial=global_step, desc=desc, unit="step", rank=rank)
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
        bar.set_postfix_str(f"loss={step_loss:.4f}")
        if global_step % config.log_every == 0:
            log.write(
                {
                    "step": global_step,
                    "loss": step_loss,
                    "lr": lr_schedule.get_last_lr()[0],
                    "samples_per_s_per_device": config.train_batch_size * config.gradient_accumulation_steps / elapsed,
                }
            )
        if global_step % config.checkpointing_steps == 0 and global_step < config.max_train_steps:
            checkpoints.save_checkpoint(accelerator, config, global_step, extra=extra)
        if config.validation_steps and global_step % config.validation_steps == 0:
            probe_now()
            log.write({"step": global_step, "probe_loss": result.probe_losses[-1][1]})
            images_now(accelerator.unwrap_model(model))
        if stop_after is not None and steps_this_run >= stop_after:
            break
    bar.close()
    result.global_step = global_step
    if global_step < config.max_train_steps:
        return result  # stopped early; resume later
    if result.probe_losses[-1][0] != global_step:
        probe_now()
        log.write({"step": global_step, "probe_loss": result.probe_losses[-1][1]})
    checkpoints.save_checkpoint(accelerator, config, global_step, extra=extra)
    trained = accelerator.unwrap_model(model)
    if main:
        result.final_dir = write_final(trained, global_step)
    images_now(trained)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def write_metadata(folder: Path, data: dict[str, Any]) -> None:
    write_json(folder / TRAINING_METADATA, data, indent=2, default=str)


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
