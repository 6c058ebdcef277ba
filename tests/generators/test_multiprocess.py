"""Two processes under ``accelerate launch`` (CPU, gloo form) make the same rows as one process:
each takes every other shard, and the union is byte-identical per image_id (tiny random models)."""

from __future__ import annotations

import os
import subprocess
import sys

import datasets
import yaml

from helpers.gen_helpers import inpainting_method, spec_dict, text2image_method
from helpers.synthetic import write_generator_set
from mammosynth.builders.core.shard_writer import ShardWriter
from mammosynth.generators.api import generate

# accelerate's simple launcher (`--cpu --num_processes 2`) runs ONE process; this is the form that
# starts two on CPU
LAUNCH = [
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "-m",
    "mammosynth.generators",
]


def _spec_file(tmp_path, name, prepared, tiny_sd3, tiny_sd2_inpaint):
    methods = {
        "text2image": text2image_method(tiny_sd3, [{"birads": [1, 4], "view": "CC", "laterality": "L", "n": 2}]),
        "inpainting": inpainting_method(
            tiny_sd2_inpaint, [{"birads": 4, "view": ["CC", "MLO"], "laterality": "L", "n": 2}]
        ),
    }
    d = spec_dict(tmp_path, methods, prepared=prepared, shard_size=1)  # 4 shards per method: 2 each
    d["output_dir"] = str(tmp_path / f"out-{name}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _image_bytes(folder) -> dict[str, bytes]:
    ds = ShardWriter(folder).load().cast_column("image", datasets.Image(decode=False))
    return {r["image_id"]: r["image"]["bytes"] for r in ds}


def test_two_processes_make_the_rows_of_one_byte_for_byte(tmp_path, tiny_sd3, tiny_sd2_inpaint):
    prepared = write_generator_set(tmp_path / "prepared", n_backgrounds=1)
    two = _spec_file(tmp_path, "two", prepared, tiny_sd3, tiny_sd2_inpaint)
    one = _spec_file(tmp_path, "one", prepared, tiny_sd3, tiny_sd2_inpaint)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *LAUNCH, str(two)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # both ranks ran, each its own half of the shards
    for method in ("text2image", "inpainting"):
        assert proc.stdout.count(f"{method}: 2 images in 2 new shards (0 already done)") == 2, proc.stdout
        for rank in (0, 1):  # each rank's summary line, labelled
            assert f"[rank {rank}/2] generate {method}: 2 img in " in proc.stderr, proc.stderr
    generate(one, progress=False)
    for method in ("text2image", "inpainting"):
        a = _image_bytes(tmp_path / "out-two" / "generated" / method)
        b = _image_bytes(tmp_path / "out-one" / "generated" / method)
        assert len(a) == 4 and a == b
