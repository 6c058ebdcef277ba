"""The GPU session's stages, in order of value, each with its own time budget inside one deadline:
generation ours vs plain (inpainting, text-to-image), both training figures with peak memory, and a
smoke of each trainer. A stage that fails or runs out of time is recorded as such; the others still
run. Everything lands in OUTDIR (at most 8 files: what the device tool brings back).

    python benchmarks/gpu/run.py OUTDIR [--arch tiny] [--deadline 470]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PY = sys.executable

# name, budget seconds, command (OUT is the result file), for real sizes and for --arch tiny. Sizes of
# the real runs are the goals (SD3.5-Large LoRA 1024² batch 3, SD2 inpainting 512² batch 4),
# with step and image counts cut to fit one 8-minute session.
STAGES = {
    "real": [
        (
            "generate-inpainting",
            100,
            [
                "benchmarks/generate.py",
                "--arch",
                "real",
                "--method",
                "inpainting",
                "--images",
                "8",
                "--repeats",
                "2",
                "--variants",
                "full_frame,window,window+compile",
            ],
        ),
        (
            "generate-text2image",
            140,
            [
                "benchmarks/generate.py",
                "--arch",
                "real",
                "--method",
                "text2image",
                "--images",
                "2",
                "--steps",
                "6",
                "--repeats",
                "1",
                "--variants",
                "default,fuse_qkv,compile_blocks,fp8,fuse_qkv+compile_blocks+fp8",
            ],
        ),
        (
            "train-inpaint",
            60,
            [
                "benchmarks/train.py",
                "--arch",
                "real",
                "--trainer",
                "inpaint",
                "--steps",
                "6",
                "--batch",
                "4",
                "--resolution",
                "512",
            ],
        ),
        (
            "train-sd35-lora",
            90,
            [
                "benchmarks/train.py",
                "--arch",
                "real",
                "--trainer",
                "sd35-lora",
                "--steps",
                "4",
                "--batch",
                "3",
                "--resolution",
                "1024",
            ],
        ),
        (
            "smoke-inpaint",
            60,
            ["benchmarks/gpu/smoke.py", "--arch", "real", "--trainer", "inpaint", "--resolution", "512"],
        ),
        (
            "smoke-sd35-lora",
            120,
            ["benchmarks/gpu/smoke.py", "--arch", "real", "--trainer", "sd35-lora", "--resolution", "512"],
        ),
    ],
    "tiny": [
        (
            "generate-inpainting",
            120,
            [
                "benchmarks/generate.py",
                "--arch",
                "tiny",
                "--method",
                "inpainting",
                "--images",
                "2",
                "--steps",
                "2",
                "--repeats",
                "1",
                "--resolution",
                "64",
                "--variants",
                "full_frame,window",
            ],
        ),
        (
            "generate-text2image",
            120,
            [
                "benchmarks/generate.py",
                "--arch",
                "tiny",
                "--method",
                "text2image",
                "--images",
                "2",
                "--steps",
                "2",
                "--repeats",
                "1",
                "--resolution",
                "64",
                "--variants",
                "default,fuse_qkv,fp8",
            ],
        ),
        (
            "train-inpaint",
            120,
            [
                "benchmarks/train.py",
                "--arch",
                "tiny",
                "--trainer",
                "inpaint",
                "--steps",
                "2",
                "--batch",
                "2",
                "--resolution",
                "64",
            ],
        ),
        (
            "train-sd35-lora",
            120,
            [
                "benchmarks/train.py",
                "--arch",
                "tiny",
                "--trainer",
                "sd35-lora",
                "--steps",
                "2",
                "--batch",
                "2",
                "--resolution",
                "64",
            ],
        ),
        ("smoke-inpaint", 180, ["benchmarks/gpu/smoke.py", "--arch", "tiny", "--trainer", "inpaint"]),
        ("smoke-sd35-lora", 180, ["benchmarks/gpu/smoke.py", "--arch", "tiny", "--trainer", "sd35-lora"]),
    ],
}


def environment() -> dict:
    import torch

    env = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if shutil.which("nvidia-smi"):
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        env["nvidia_smi"] = q.stdout.strip()
    from importlib.metadata import PackageNotFoundError, version

    for name in ("diffusers", "transformers", "accelerate", "peft", "torchao", "datasets"):
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = None
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--arch", choices=["real", "tiny"], default="real")
    ap.add_argument("--deadline", type=float, default=470, help="seconds for all stages together")
    ap.add_argument("--only", default=None, help="comma-separated stage names")
    args = ap.parse_args()
    out = args.outdir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    end = time.perf_counter() + args.deadline
    summary = {"environment": environment(), "arch": args.arch, "deadline_seconds": args.deadline, "stages": {}}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT / "tests")) if p)
    wanted = set(args.only.split(",")) if args.only else None
    for name, budget, cmd in STAGES[args.arch]:
        if wanted and name not in wanted:
            continue
        left = end - time.perf_counter()
        if left < 10:
            summary["stages"][name] = {"status": "not run: session deadline reached"}
            continue
        result = out / f"{name}.json"
        full = [PY, *cmd, "--out", str(result)]
        t0 = time.perf_counter()
        with log.open("a") as fh:
            fh.write(f"\n=== {name} (budget {min(budget, left):.0f} s)\n$ {' '.join(full)}\n")
            fh.flush()
            try:
                rc = subprocess.run(
                    full, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=min(budget, left)
                ).returncode
                status = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                status = f"timed out after {min(budget, left):.0f} s"
        smoke_log = result.with_suffix(".log")  # the smoke's trainer output: appended to the one log
        if smoke_log.exists():
            with log.open("a") as fh:
                fh.write(smoke_log.read_text()[-20000:])
            smoke_log.unlink()
        summary["stages"][name] = {
            "status": status,
            "seconds": round(time.perf_counter() - t0, 1),
            "result": result.name if result.exists() else None,
        }
        print(f"{name}: {status} ({summary['stages'][name]['seconds']} s)", flush=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    failed = [n for n, s in summary["stages"].items() if s["status"] != "ok"]
    print("all stages ok" if not failed else f"not ok: {', '.join(failed)}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
