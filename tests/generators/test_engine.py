"""Run engine and shard writer: plan, process split, kill/resume, run identity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.gen_helpers import make_spec
from mammosynth.builders.core import schema
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.shard_writer import ShardWriter
from mammosynth.generators.engine import SampleTask, Skip, plan, run


class SeedSampler:
    """Deterministic stand-in for a diffusion sampler: the image is noise from the task's seed;
    every 7th task is skipped; optionally crashes after ``fail_after`` calls (a killed run)."""

    method = "poisson"

    def __init__(self, fail_after: int | None = None, fingerprint: str = "v1") -> None:
        self.calls = 0
        self.fail_after = fail_after
        self.fingerprint = fingerprint

    def generate(self, tasks: list[SampleTask]):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        out = []
        for t in tasks:
            if t.index % 7 == 6:
                out.append(Skip(t.image_id, "no position qualifies"))
                continue
            img = np.random.default_rng(t.seed).integers(0, 256, (16, 16), dtype=np.uint8)
            out.append(
                {
                    "image": img,
                    "image_id": t.image_id,
                    "method": t.method,
                    "birads": schema.birads_label(t.birads),
                    "view": t.view,
                    "laterality": t.laterality,
                    "density": None,
                    "bbox": [[1.0, 2.0, 3.0, 4.0]],
                    "seed": t.seed,
                    "mask_seed": t.mask_seed,
                    "prompt": None,
                    "source_image": "bg",
                    "lesion_source": "lesion",
                    "manufacturer": None,
                    "generator": "fake",
                }
            )
        return out


@pytest.fixture
def tasks(tmp_path):
    spec = make_spec(
        tmp_path,
        {
            "poisson": {
                "counts": [{"birads": 5, "n": 4}, {"birads": 4, "view": "CC", "laterality": "R", "n": 3}],
                "poisson": {"lesion_birads": [4, 5]},
            }
        },
        prepared=tmp_path / "unused",
    )
    return plan(spec, "poisson")


def _rows(folder):
    ds = ShardWriter(folder).load()
    return [{**r, "image": r["image"].tobytes()} for r in ds]


def test_plan_honours_counts_with_unique_ids(tasks):
    assert len(tasks) == 4 * 4 + 3
    assert len({t.image_id for t in tasks}) == len(tasks)
    cc_r_4 = [t for t in tasks if (t.birads, t.view, t.laterality) == (4, "CC", "R")]
    assert [t.index for t in cc_r_4] == [0, 1, 2]
    assert [(t.birads, t.view, t.laterality, t.index) for t in tasks] == sorted(
        (t.birads, t.view, t.laterality, t.index) for t in tasks
    )


def test_two_processes_write_exactly_the_single_process_result(tasks, tmp_path):
    single = run(tasks, SeedSampler(), tmp_path / "one", shard_size=4, progress=False)
    parts = [
        run(tasks, SeedSampler(), tmp_path / "two", shard_size=4, process_index=i, num_processes=2, progress=False)
        for i in (0, 1)
    ]
    assert set(parts[0].written).isdisjoint(parts[1].written)
    assert sorted(parts[0].written + parts[1].written) == single.written
    assert _rows(tmp_path / "one") == _rows(tmp_path / "two")
    assert sorted(s["image_id"] for p in parts for s in p.skipped) == sorted(s["image_id"] for s in single.skipped)
    assert single.rows + len(single.skipped) == len(tasks)


def test_killed_run_resumes_to_the_uninterrupted_result(tasks, tmp_path):
    run(tasks, SeedSampler(), tmp_path / "clean", shard_size=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run(tasks, SeedSampler(fail_after=2), tmp_path / "killed", shard_size=4, progress=False)
    writer = ShardWriter(tmp_path / "killed")
    assert [p.name for p in writer.shard_files()] == ["shard-00000.parquet", "shard-00001.parquet"]
    first = (tmp_path / "killed" / "shard-00000.parquet").stat().st_mtime_ns
    resumed = run(tasks, SeedSampler(), tmp_path / "killed", shard_size=4, progress=False)
    assert resumed.already_done == [0, 1] and resumed.written == [2, 3, 4]
    assert (tmp_path / "killed" / "shard-00000.parquet").stat().st_mtime_ns == first  # never rewritten
    assert _rows(tmp_path / "killed") == _rows(tmp_path / "clean")
    assert not [p for p in (tmp_path / "killed").iterdir() if ".tmp-" in p.name]


def test_shard_stats_and_skips_are_recorded(tasks, tmp_path):
    run(tasks, SeedSampler(), tmp_path / "out", shard_size=4, progress=False)
    stats = json.loads((tmp_path / "out" / "shard-00001.json").read_text())
    assert stats["rows"] + len(stats["skipped"]) == 4
    assert stats["images_per_second"] > 0
    skipped = ShardWriter(tmp_path / "out").skipped()
    assert {s["image_id"] for s in skipped} == {t.image_id for t in tasks if t.index % 7 == 6}
    assert all(s["reason"] == "no position qualifies" for s in skipped)


def test_resuming_with_other_parameters_is_refused(tasks, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tasks, SeedSampler(fail_after=1), tmp_path / "out", shard_size=4, progress=False)
    with pytest.raises(InputError, match="other parameters"):
        run(tasks, SeedSampler(fingerprint="v2"), tmp_path / "out", shard_size=4, progress=False)
    with pytest.raises(InputError, match="other parameters"):
        run(tasks, SeedSampler(), tmp_path / "out", shard_size=5, progress=False)
    assert [p.name for p in ShardWriter(tmp_path / "out").shard_files()] == ["shard-00000.parquet"]


def test_writing_and_loading_shards_keep_the_schema_and_print_nothing(tasks, tmp_path, capfd):
    run(tasks, SeedSampler(), tmp_path / "out", shard_size=4, progress=False)
    out = capfd.readouterr()
    assert out.out + out.err == ""  # no progress bar per shard under the run's own
    ds = ShardWriter(tmp_path / "out").load()
    assert ds.features == ShardWriter(tmp_path / "out").features
    assert ds.num_rows == len(tasks) - sum(t.index % 7 == 6 for t in tasks)
    out = capfd.readouterr()
    assert "Generating" not in out.out + out.err
