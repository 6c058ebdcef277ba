"""The generation benchmark and the GPU script, exercised on CPU: the real-size configs build the
released architectures (on the meta device: no memory), the benchmark records ratios (absolute
figures only from a GPU), and the one GPU command runs a stage end to end with tiny models.
(The whole script in tiny mode takes about 5 minutes on 2 cores:
``PYTHON=.venv/bin/python bash benchmarks/gpu/run.sh /tmp/gpu-tiny --arch tiny``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))


def _billions(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


@pytest.mark.parametrize(
    "kind, sizes",
    [
        (
            "sd35-large",
            {"transformer": 8.06, "text_encoder_3": 4.76, "text_encoder_2": 0.695, "text_encoder": 0.124, "vae": 0.084},
        ),
        ("sd2-inpainting", {"unet": 0.866, "text_encoder": 0.340, "vae": 0.084}),
    ],
)
def test_real_configs_build_the_released_architectures(kind, sizes):
    import real_models

    pipe = real_models.build(kind, dtype=torch.bfloat16, device="meta")
    for name, billions in sizes.items():
        assert _billions(getattr(pipe, name)) == pytest.approx(billions, rel=0.01), name


def test_real_configs_pass_the_samplers_checks():
    import real_models

    from mammosynth.generators.pipelines import component_config, pipeline_folder, vae_factor

    sd3 = pipeline_folder(
        str(real_models.config_folder("sd35-large", Path("."))), field="f", needs="transformer", kind="sd3"
    )
    sd2 = pipeline_folder(
        str(real_models.config_folder("sd2-inpainting", Path("."))), field="f", needs="unet", kind="sd2"
    )
    assert vae_factor(sd3, field="f") == vae_factor(sd2, field="f") == 8
    assert component_config(sd2, "unet", field="f")["in_channels"] == 9


def test_generate_benchmark_records_ratios_on_cpu(tmp_path):
    import generate as bench

    out = tmp_path / "generate.json"
    result = bench.main(
        [
            "--arch",
            "tiny",
            "--method",
            "text2image",
            "--images",
            "1",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--resolution",
            "64",
            "--variants",
            "default,fp8",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == result
    figures = result["figures"]["text2image"]
    assert list(result["figures"]) == ["text2image"]  # --method runs one method on its own
    assert (figures["images"], figures["steps"], figures["repeats"]) == (1, 1, 1)  # --images, --steps, --repeats
    default = figures["variants"]["default"]
    assert default["speedup"] > 0 and len(default["seconds"]) == len(default["plain_seconds"]) == 1
    assert "images_per_s" not in default and "plain" not in figures  # no absolute figures from a CPU
    assert "fp8 needs a CUDA GPU" in figures["variants"]["fp8"]["skipped"]
    assert result["machine"]["cpu_count"] and result["versions"]["diffusers"] and result["date"]


def test_gpu_command_runs_a_stage_in_tiny_mode(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu/run.sh", str(tmp_path), "--arch", "tiny", "--only", "generate-text2image"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"] == {
        "generate-text2image": {
            "status": "ok",
            "seconds": summary["stages"]["generate-text2image"]["seconds"],
            "result": "generate-text2image.json",
        }
    }
    assert summary["environment"]["torch"] and summary["environment"]["date"]
    figures = json.loads((tmp_path / "generate-text2image.json").read_text())["figures"]["text2image"]
    assert set(figures["variants"]) == {"default", "fuse_qkv", "fp8"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generate-text2image.json", "log.txt", "summary.json"]


def test_gpu_script_stages_fit_the_device_tool():
    import run as gpu_run

    for stages in gpu_run.STAGES.values():
        assert len(stages) + 2 <= 8  # result files + summary.json + log.txt: what comes back from $OUT
    assert sum(budget for _, budget, _ in gpu_run.STAGES["real"]) <= 600
    trainers = {
        tuple(cmd[cmd.index("--trainer") + 1 : cmd.index("--trainer") + 2])
        for _, _, cmd in gpu_run.STAGES["real"]
        if "--trainer" in cmd
    }
    assert trainers == {("inpaint",), ("sd35-lora",)}
