"""The distributed path on CPU: two ranks over gloo, started the way the README says
(``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ...``), inpainting with its
default latent cache. Each rank draws its own noise and timesteps, reproducibly; the cache encodes
each image once over both ranks; only the main process writes the UNet; a run stopped after step 3
and resumed from checkpoint-2 repeats step 3 bit for bit; resuming under one process is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from helpers.synthetic import write_trainer_set
from mammosynth.builders.cli import main as cli_main
from mammosynth.training import runtime

HERE = Path(__file__).resolve().parent


def _records(prefix: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in Path(f"{prefix}-{rank}.jsonl").read_text().splitlines()]


def _runs(records: list[dict]) -> list[list[dict]]:
    """Records split at each CLI run."""
    runs: list[list[dict]] = []
    for r in records:
        if r["kind"] == "run":
            runs.append([])
        else:
            runs[-1].append(r)
    return runs


def test_two_process_inpaint_training(tiny_sd2_inpaint, tmp_path, capsys):
    prepared = write_trainer_set(tmp_path / "prep", n=8, birads=(4, 3))  # 4 rows of class 4
    out = tmp_path / "run"
    config = {
        "prepared": str(prepared),
        "output_dir": str(out),
        "base_model": str(tiny_sd2_inpaint),
        "resolution": 32,
        "train_batch_size": 1,
        "max_train_steps": 4,
        "checkpointing_steps": 2,
        "mixed_precision": "no",
        "validation_seeds": [],
        "dataloader_num_workers": 0,
        "learning_rate": 1e-3,
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    record = tmp_path / "record"
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("accelerate")),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "0",
            str(HERE / "ddp_recorder.py"),
            str(record),
            "--",
            "inpaint",
            str(cfg),
            "--birads",
            "4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("stopped at step 3") == 1 and proc.stdout.count("trained 4 steps") == 1

    ranks = [_runs(_records(record, r)) for r in (0, 1)]
    (first0, resumed0), (first1, resumed1) = ranks
    noise = [[e for e in run if e["kind"] == "noise"] for run in (first0, resumed0, first1, resumed1)]
    # distinct draws per rank at every step ...
    assert all(a != b for a, b in zip(noise[0], noise[2])) and len(noise[0]) == 3
    # ... and reproducible: the resumed run (from checkpoint-2) draws step 3 as the first run did
    assert noise[1][0] == noise[0][2] and noise[3][0] == noise[2][2] and len(noise[1]) == 2
    # the latent cache: 4 rows x 2 mirror states, image and masked image, each encoded by one rank
    encoded = [sum(e["n"] for e in run if e["kind"] == "encode") for run in (first0, first1)]
    assert encoded[0] + encoded[1] == 2 * 4 * 2 + 2 and abs(encoded[0] - encoded[1]) <= 2  # (+ the full-mask constants)
    # the trained UNet is written by the main process only
    saves = defaultdict(list)
    for rank, runs in enumerate(ranks):
        for run in runs:
            saves[rank] += [e["folder"] for e in run if e["kind"] == "save"]
    assert not saves[1] and len(saves[0]) >= 3  # checkpoint-2, checkpoint-4, final
    # exact resume: the loss of step 3, trained once from step 2 in each run, is the same float
    log = [r for r in runtime.read_log(out / "logs" / "train.jsonl") if "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3, 3, 4]
    assert log[2]["loss"] == log[3]["loss"]
    ckpt = out / "checkpoints" / "checkpoint-2"
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert json.loads((ckpt / "trainer_state.json").read_text())["num_processes"] == 2

    # resuming these 2-process checkpoints in one process: refused, one line, nothing written
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as ex:
        cli_main(["train", "inpaint", str(cfg), "--birads", "4", "--resume", "latest"])
    err = capsys.readouterr().err.strip().splitlines()
    assert ex.value.code == 2
    assert len(err) == 1 and "2 processes" in err[0] and "num_processes" in err[0]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
