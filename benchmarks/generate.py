"""Generation throughput, ours against a plain diffusers pipeline called once per image, in the same run.

Methods: BI-RADS inpainting (SD2-inpainting, 24 steps, CFG 7) and text-to-image (SD3.5-Large, 28
steps, CFG 7), at the real architecture sizes with random weights (``gpu/real_models.py``; speed
does not depend on weight values) or, with ``--arch tiny``, the tests' tiny models.

Plain: what a user writes from the model card: the pipeline in bf16 on GPU (float32 on CPU), its
default scheduler and settings, one ``pipe(prompt, ...)`` call per image. Ours: the mammosynth
sampler's ``generate`` (its own loading code, batched, per-image seeds, channels-last on GPU) in
each variant: inpainting ``full_frame`` (the paper) or ``window``, text-to-image ``default`` or
with ``fuse_qkv``, ``compile_blocks``, ``fp8``; ``+compile`` adds the whole-model torch.compile
(the CLI's ``--compile``). Variants join options with ``+``.

On CPU the figures are ratios (speedup of each variant over plain, same run): absolute images/s
are recorded only from a GPU.

    .venv/bin/python benchmarks/generate.py --arch tiny --steps 8 --images 8
    python benchmarks/generate.py --method inpainting --images 16 --repeats 3            # GPU, real sizes
    python benchmarks/generate.py --method text2image --images 4 --steps 8 --variants default,fuse_qkv+compile_blocks
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
import real_models  # noqa: E402

from mammosynth.builders.core.box_mask import box_mask  # noqa: E402
from mammosynth.builders.core.errors import InputError  # noqa: E402
from mammosynth.builders.core.schema import inpainting_prompt, prepared_features  # noqa: E402
from mammosynth.builders.core.spec import ReleaseSpec  # noqa: E402
from mammosynth.generators.engine import plan  # noqa: E402
from mammosynth.generators.inpainting import InpaintingSampler  # noqa: E402
from mammosynth.generators.pipelines import Runtime  # noqa: E402
from mammosynth.generators.text2image import Text2ImageSampler, prompt_for  # noqa: E402

METHODS = ("inpainting", "text2image")
PAPER_STEPS = {"inpainting": 24, "text2image": 28}
VARIANTS = {
    "inpainting": ["full_frame", "window", "window+compile"],
    "text2image": ["default", "fuse_qkv", "compile_blocks", "fp8", "fuse_qkv+compile_blocks+fp8"],
}
OPTIONS = {
    "inpainting": {"full_frame", "window", "compile"},
    "text2image": {"default", "fuse_qkv", "compile_blocks", "fp8", "compile"},
}
TARGETS = {"inpainting": 3.0, "text2image": 1.5}  # issue 14: speedup over plain on one H100/H200
GUIDANCE = 7.0


# --- inputs --------------------------------------------------------------------------------------


def synthetic_prepared(path: Path, size: int, n: int) -> Path:
    """n BI-RADS 1 CC-L backgrounds (textured half-ellipses) and four BI-RADS 4 images whose boxes
    (6-9 % of the width) give the lesion sizes."""
    import datasets

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (xx / (0.8 * size)) ** 2 + ((yy - size / 2) / (0.42 * size)) ** 2 <= 1
    rows = []
    for i in range(n + 4):
        img = np.clip(np.where(inside, 150 + rng.normal(0, 20, inside.shape), 5), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        b = 1 if i < n else 4
        w = size * (0.06 + 0.01 * (i - n))
        findings = (
            []
            if b == 1
            else [
                {
                    "bbox": [size * 0.2, size * 0.4, size * 0.2 + w, size * 0.4 + w],
                    "categories": ["Mass"],
                    "finding_birads": 4,
                }
            ]
        )
        rows.append(
            {
                "image": {"bytes": buf.getvalue(), "path": None},
                "image_id": f"img-{i:04d}",
                "study_id": "s",
                "laterality": "L",
                "view": "CC",
                "birads": b,
                "density": "C",
                "manufacturer": "SIEMENS",
                "model_name": "m",
                "split": "training",
                "orig_height": size,
                "orig_width": size,
                "findings": findings,
                "flipped": False,
            }
        )
    datasets.Dataset.from_list(rows, features=prepared_features()).save_to_disk(str(path))
    return path


def spec_for(work: Path, method: str, params: dict, n: int) -> ReleaseSpec:
    return ReleaseSpec.model_validate(
        {
            "name": "bench",
            "version": "1.0",
            "pretty_name": "b",
            "description": "b",
            "authors": ["b"],
            "source": {"name": "s", "prepared": str(work / "prepared"), "license": "x", "redistribution_allowed": True},
            "methods": {method: {"counts": [{"birads": 4, "view": "CC", "laterality": "L", "n": n}], method: params}},
            "output_dir": str(work / "out"),
        }
    )


def method_params(method: str, variant: str, checkpoint: Path, args) -> tuple[dict, bool]:
    """Spec parameters of ``variant`` and whether it adds the whole-model compile."""
    options = set(variant.split("+"))
    unknown = options - OPTIONS[method]
    if unknown:
        raise SystemExit(f"--variants: {sorted(unknown)} are not options of {method} ({sorted(OPTIONS[method])})")
    res = args.resolution
    if method == "inpainting":
        params = {
            "checkpoints": {4: str(checkpoint)},
            "steps": args.steps_of[method],
            "guidance": GUIDANCE,
            "resolution": res,
            "batch_size": args.batch,
            "margin_px": max(2, res * 24 // 1024),
            "erosion_px": max(1, res * 5 // 1024),
        }
        if "window" in options:
            params.update(mode="window", window=args.window or res // 2)
    else:
        params = {
            "base_model": str(checkpoint),
            "steps": args.steps_of[method],
            "guidance": GUIDANCE,
            "resolution": res,
            "batch_size": args.batch,
            **{o: True for o in options & {"fuse_qkv", "compile_blocks", "fp8"}},
        }
    return params, "compile" in options


# --- timing --------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


class Plain:
    """The plain pipeline, one call per image, on the sampler's own inputs (placements, prompts)."""

    def __init__(self, method: str, kind: str, sampler, tasks, args, device: str, dtype) -> None:
        self.pipe = real_models.build(kind, dtype=dtype, device=device)
        self.pipe.set_progress_bar_config(disable=True)
        self.method, self.args, self.res = method, args, args.resolution
        if method == "inpainting":
            self.calls = [
                dict(
                    prompt=inpainting_prompt(4),
                    image=Image.fromarray(pl.image).convert("RGB"),
                    mask_image=Image.fromarray(box_mask(pl.image.shape, [pl.box]).astype(np.uint8) * np.uint8(255)),
                )
                for pl in (sampler.place(t) for t in tasks)
            ]
        else:
            self.calls = [dict(prompt=prompt_for(t, sampler.params)) for t in tasks]

    def __call__(self, calls=None) -> None:
        for kw in calls or self.calls:
            self.pipe(
                **kw,
                height=self.res,
                width=self.res,
                num_inference_steps=self.args.steps_of[self.method],
                guidance_scale=GUIDANCE,
            )

    def warm_up(self) -> None:
        self(self.calls[:1])


def ours(method: str, variant: str, kind: str, checkpoint: Path, work: Path, args, device: str, dtype):
    """The sampler of ``variant``, loaded by its own code on random weights, warmed up (kernels,
    allocator, torch.compile) on one batch. Returns (sampler, tasks) or (None, reason)."""
    params, whole_compile = method_params(method, variant, checkpoint, args)
    spec = spec_for(work, method, params, args.images)
    cls = InpaintingSampler if method == "inpainting" else Text2ImageSampler
    runtime = Runtime(device=device, dtype=str(dtype).split(".")[-1], compile=whole_compile)
    try:
        sampler = cls(spec, runtime)
    except InputError as exc:  # e.g. fp8 on a CPU: recorded, not a failure of the run
        return None, exc.reason
    tasks = plan(spec, method)
    with real_models.random_weights(kind):
        sampler.pipeline() if method == "text2image" else sampler.pipeline(4)
    sampler.generate(tasks[: args.batch])
    return sampler, tasks


def bench_method(method: str, args, work: Path, device: str, dtype) -> dict:
    kind = real_models.FOR_ARCH[(args.arch, method)]
    checkpoint = real_models.config_folder(kind, work)
    synthetic_prepared(work / "prepared", args.resolution, args.images)
    on_gpu = device.startswith("cuda")
    figures: dict = {
        "images": args.images,
        "resolution": args.resolution,
        "steps": args.steps_of[method],
        "guidance": GUIDANCE,
        "batch_size": args.batch,
        "repeats": args.repeats,
        "variants": {},
    }

    # plain first, on its own pipeline; on CPU it stays resident so that the runs interleave (the
    # shared machine's load then falls on both alike); on a GPU it is freed before ours loads
    reference = "full_frame" if method == "inpainting" else "default"
    spec0 = spec_for(work, method, method_params(method, reference, checkpoint, args)[0], args.images)
    sampler0 = (InpaintingSampler if method == "inpainting" else Text2ImageSampler)(spec0, Runtime(device=device))
    tasks = plan(spec0, method)  # the same tasks (and so prompts, boxes) in every variant
    free(device)
    plain = Plain(method, kind, sampler0, tasks, args, device, dtype)
    plain.warm_up()
    plain_runs: list[float] = []
    if on_gpu:
        plain_runs = [timed(plain, device) for _ in range(args.repeats)]
        figures["plain"] = {"seconds": [round(x, 3) for x in plain_runs], "peak_gb": peak_gb(device)}
        del plain
        free(device)

    for variant in args.variants_of[method]:
        free(device)
        t0 = time.perf_counter()
        sampler, tasks_or_reason = ours(method, variant, kind, checkpoint, work, args, device, dtype)
        if sampler is None:
            figures["variants"][variant] = {"skipped": tasks_or_reason}
            print(f"{method} {variant}: skipped ({tasks_or_reason})", flush=True)
            continue
        warm = time.perf_counter() - t0
        runs, base = [], []
        for _ in range(args.repeats):
            if not on_gpu:
                base.append(timed(plain, device))
            runs.append(timed(lambda s=sampler, t=tasks_or_reason: s.generate(t), device))
        plain_runs.extend(base)
        b = float(np.median(base if base else plain_runs))
        o = float(np.median(runs))
        entry = {
            "speedup": round(b / o, 3),
            "seconds": [round(x, 3) for x in runs],
            "load_and_warm_up_seconds": round(warm, 1),
            "params": {
                k: v
                for k, v in sampler.params.model_dump(mode="json").items()
                if k not in ("checkpoints", "base_model")
            },
        }
        if base:
            entry["plain_seconds"] = [round(x, 3) for x in base]
        if on_gpu:
            entry["images_per_s"] = round(args.images / o, 4)
            entry["peak_gb"] = peak_gb(device)
        figures["variants"][variant] = entry
        print(f"{method} {variant}: {json.dumps(entry)}", flush=True)
        del sampler
    if on_gpu:
        figures["plain"]["images_per_s"] = round(args.images / float(np.median(figures["plain"]["seconds"])), 4)
    else:
        del plain
    measured = [v["speedup"] for v in figures["variants"].values() if "speedup" in v]
    figures["best_speedup"] = max(measured) if measured else None
    figures["target_speedup"] = TARGETS[method]
    return figures


def machine() -> dict:
    gpu = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None,
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "cuda": torch.version.cuda}
    for name in ("torch", "diffusers", "transformers", "accelerate", "torchao"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    ap.add_argument(
        "--arch",
        choices=["real", "tiny"],
        default=None,
        help="architecture sizes (default: real on a GPU, tiny on CPU)",
    )
    ap.add_argument("--method", choices=METHODS, action="append", help="run this method (repeatable; default: both)")
    ap.add_argument("--images", type=int, default=None, help="images per timed run (default: 16 real, 8 tiny)")
    ap.add_argument(
        "--steps", type=int, default=None, help="sampler steps (default: the paper's, 24 inpainting / 28 text-to-image)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each; medians are reported")
    ap.add_argument("--batch", type=int, default=4, help="our batch size (the spec default)")
    ap.add_argument("--resolution", type=int, default=None, help="output size (default: 1024 real, 256 tiny)")
    ap.add_argument(
        "--window", type=int, default=None, help="window side of the window variants (default: resolution / 2)"
    )
    ap.add_argument("--variants", default=None, help="comma-separated variants (default: every variant of the method)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "generate.json")
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available()
    args.arch = args.arch or ("real" if gpu else "tiny")
    if args.arch == "real" and not gpu:
        ap.error("real-size models need a GPU: use --arch tiny on CPU")
    methods = args.method or list(METHODS)
    args.images = args.images or (16 if args.arch == "real" else 8)
    args.resolution = args.resolution or (1024 if args.arch == "real" else 256)
    args.steps_of = {m: args.steps or PAPER_STEPS[m] for m in METHODS}
    chosen = args.variants.split(",") if args.variants else None
    args.variants_of = {m: [v for v in (chosen or VARIANTS[m]) if set(v.split("+")) <= OPTIONS[m]] for m in methods}
    device = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    torch.manual_seed(0)
    figures = {}
    for method in methods:
        with tempfile.TemporaryDirectory(prefix=f"bench-{method}-") as tmp:
            figures[method] = bench_method(method, args, Path(tmp), device, dtype)
    result = {
        "benchmark": "generate",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/generate.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "versions": versions(),
        "arch": args.arch,
        "device": device,
        "dtype": str(dtype).split(".")[-1],
        "plain": "diffusers pipeline as the model card loads it (bf16 on GPU, float32 on CPU), default scheduler and settings, "
        "one call per image",
        "ours": "mammosynth sampler generate(): batched, per-image seeds, channels-last on GPU; variants as named",
        "figures": figures,
        "absolute_figures": "measured on this GPU"
        if gpu
        else "none: CPU run with tiny models; only the speedups (same run) are meaningful. "
        "GPU figures are pending (no device was lent): bash benchmarks/gpu/run.sh",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)
    return result


if __name__ == "__main__":
    main()
