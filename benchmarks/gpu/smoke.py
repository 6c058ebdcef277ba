"""Smoke of one trainer through its CLI on a random-weight pipeline (real sizes, or tiny on CPU):
the default config (bf16, gradient checkpointing) with only sizes and steps shrunk, stopped after
a checkpoint, then ``--resume latest`` to the end; checks the checkpoint, the final weights and the
validation images, and records the timings.

    python benchmarks/gpu/smoke.py --arch real --trainer sd35-lora --out smoke-sd35-lora.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests"))  # the one writer of synthetic data
import real_models  # noqa: E402

from helpers.synthetic import write_trainer_set  # noqa: E402

KIND = {
    ("real", "sd35-lora"): "sd35-large",
    ("real", "inpaint"): "sd2-inpainting",
    ("tiny", "sd35-lora"): "tiny-sd3",
    ("tiny", "inpaint"): "tiny-sd2-inpainting",
}


def run(cmd: list[str], log: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"command": " ".join(cmd[2:]), "rc": rc, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["real", "tiny"], default="real" if torch.cuda.is_available() else "tiny")
    ap.add_argument("--trainer", choices=["sd35-lora", "inpaint"], required=True)
    ap.add_argument("--resolution", type=int, default=None, help="default: 512 real, 64 tiny")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps; stopped after steps-1, then resumed")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mammosynth-smoke"))
    ap.add_argument("--timeout", type=float, default=600, help="seconds for the whole smoke")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    deadline = time.perf_counter() + args.timeout
    res = args.resolution or (512 if args.arch == "real" else 64)
    work = args.work / args.trainer
    work.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".log")
    result: dict = {
        "trainer": args.trainer,
        "arch": args.arch,
        "resolution": res,
        "steps": args.steps,
        "ok": False,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }

    t0 = time.perf_counter()
    kind = KIND[(args.arch, args.trainer)]
    dtype = torch.bfloat16 if args.arch == "real" else torch.float32
    base = real_models.write(kind, work / "base", dtype=dtype, device="cuda" if torch.cuda.is_available() else "cpu")
    prepared = write_trainer_set(work / "prepared", n=4, size=(res, res), birads=(4, 3))
    result["setup_seconds"] = round(time.perf_counter() - t0, 1)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    out = work / "run"
    config = {
        "prepared": str(prepared),
        "base_model": str(base),
        "output_dir": str(out),
        "resolution": res,
        "train_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "max_train_steps": args.steps,
        "checkpointing_steps": args.steps - 1,
        "validation_inference_steps": 2,
        "validation_seeds": [0],
        "gradient_checkpointing": True,
    }  # mixed precision: the default (bf16)
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "mammosynth.training", args.trainer, str(cfg)] + (
        ["--birads", "4"] if args.trainer == "inpaint" else []
    )
    env_note = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES",)}
    result["first"] = run([*cmd, "--stop-after", str(args.steps - 1)], log, max(1, deadline - time.perf_counter()))
    checkpoints = (
        sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) if (out / "checkpoints").is_dir() else []
    )
    result["checkpoints_after_stop"] = checkpoints
    result["resumed"] = run([*cmd, "--resume", "latest"], log, max(1, deadline - time.perf_counter()))
    validation = (
        sorted(str(p.relative_to(out)) for p in (out / "validation").rglob("*.png"))
        if (out / "validation").is_dir()
        else []
    )
    final = sorted(p.name for p in (out / "final").iterdir()) if (out / "final").is_dir() else []
    result.update(validation_images=validation, final=final, env=env_note)
    result["ok"] = (
        result["first"]["rc"] == 0
        and result["resumed"]["rc"] == 0
        and bool(checkpoints)
        and bool(validation)
        and bool(final)
    )
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
