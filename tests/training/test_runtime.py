"""The Accelerate glue on its own: precision refused where the hardware lacks it, one RNG stream
per rank, checkpoint weights written by the main process only, no resume under another number of
processes, the validation defaults of generation, the loader defaults, the latent cache."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from mammosynth.builders.cli import main as cli_main
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.spec import InpaintingParams, Text2ImageParams
from mammosynth.training import checkpoints, runtime
from mammosynth.training.config import InpaintConfig, SD35LoraConfig, resume_fingerprint
from mammosynth.training.latent_cache import LatentCache, encode_shard


@pytest.mark.parametrize("command", [["sd35-lora"], ["inpaint", "--birads", "4"]])
def test_bf16_on_a_gpu_without_bf16_is_exit_2_nothing_written(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "prepared": str(tmp_path / "prep"),
                "output_dir": str(tmp_path / "out"),
                "base_model": str(tmp_path / "base"),
            }
        )
    )  # mixed_precision: the default, bf16
    with pytest.raises(SystemExit) as ex:
        cli_main(["train", command[0], str(cfg), *command[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert ex.value.code == 2
    assert len(err) == 1 and "field 'mixed_precision'" in err[0] and "V100" in err[0] and str(cfg) in err[0]
    assert sorted(tmp_path.iterdir()) == [cfg]


def test_each_rank_draws_its_own_reproducible_stream():
    def draws(rank: int) -> torch.Tensor:
        runtime.seed_ranks(SimpleNamespace(process_index=rank), seed=7)
        return torch.randn(8)

    r0, r1, again = draws(0), draws(1), draws(0)
    assert not torch.equal(r0, r1) and torch.equal(r0, again)
    assert runtime.rank_seed(7, 0) != runtime.rank_seed(8, 0) and runtime.rank_seed(7, 1) != runtime.rank_seed(8, 0)


class _FakeAccelerator:
    def __init__(self, main: bool, rank: int = 0, world: int = 1):
        self.is_main_process, self.process_index, self.num_processes = main, rank, world
        self.hooks = {}

    def register_save_state_pre_hook(self, hook):
        self.hooks["save"] = hook

    def register_load_state_pre_hook(self, hook):
        self.hooks["load"] = hook

    def unwrap_model(self, model):
        return model

    def wait_for_everyone(self):
        pass


@pytest.mark.parametrize("main", [True, False])
def test_checkpoint_weights_are_written_by_the_main_process_only(main, tmp_path):
    accelerator, saved, loaded = _FakeAccelerator(main), [], []
    checkpoints.register_weight_hooks(
        accelerator, lambda m, f: saved.append((m, f)), lambda m, f: loaded.append((m, f))
    )
    weights = [{"w": torch.zeros(1)}]
    accelerator.hooks["save"](["model"], weights, str(tmp_path))
    assert saved == ([("model", tmp_path)] if main else []) and weights == []  # accelerate writes no second copy
    models = ["model"]
    accelerator.hooks["load"](models, str(tmp_path))
    assert loaded == [("model", tmp_path)] and models == []  # every rank loads


def test_resume_under_another_number_of_processes_is_refused(tmp_path):
    point = checkpoints.ResumePoint(tmp_path / "checkpoint-4", 4, num_processes=8)
    with pytest.raises(InputError, match="written by 8 processes, this run has 2") as err:
        checkpoints.check_world_size(point, 2)
    assert err.value.field == "num_processes" and "trainer_state.json" in str(err.value)
    checkpoints.check_world_size(point, 8)
    checkpoints.check_world_size(checkpoints.ResumePoint(tmp_path, 4, num_processes=None), 2)  # older checkpoints


def test_validation_and_prompt_defaults_are_generations():
    sd, inp = SD35LoraConfig(prepared="p", output_dir="o"), InpaintConfig(prepared="p", output_dir="o")
    t2i, ip = Text2ImageParams(base_model="b"), InpaintingParams(checkpoints={4: "c"})
    assert sd.guidance_scale == t2i.guidance == 7.0
    assert inp.guidance_scale == ip.guidance == 7.0
    assert sd.max_sequence_length == t2i.max_sequence_length == 77


def test_loader_uses_persistent_workers_by_default(monkeypatch):
    from mammosynth.training import data as tdata

    config = InpaintConfig(prepared="p", output_dir="o")
    assert config.dataloader_num_workers is None
    monkeypatch.setattr(runtime, "cpu_count", lambda: 64)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert runtime.loader_workers(config, SimpleNamespace(num_processes=8)) == 4
    monkeypatch.setattr(runtime, "cpu_count", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert runtime.loader_workers(config, SimpleNamespace(num_processes=1)) == 1
    loader = tdata.make_loader(list(range(4)), iter([[0, 1]]), num_workers=1)
    assert loader.persistent_workers and loader.num_workers == 1


def test_latent_cache_is_sharded_over_ranks_and_mapped(tmp_path):
    """Rank r of N encodes keys r, r + N, ...; every rank then reads every key from the mapped parts."""
    count, world = 7, 3
    encoded: dict[int, list[int]] = {}

    def encoder(rank):
        def encode(keys):
            encoded.setdefault(rank, []).extend(keys)
            k = torch.tensor(keys, dtype=torch.float32).view(-1, 1, 1, 1, 1).expand(-1, 1, 2, 2, 2)
            return torch.cat([k, torch.full_like(k, 0.5)], dim=1)  # mean = key, std = 0.5

        return encode

    for rank in range(world):
        encode_shard(tmp_path, count, encoder(rank), rank, world, batch_size=2)
    assert encoded == {0: [0, 3, 6], 1: [1, 4], 2: [2, 5]}
    cache = LatentCache.open(tmp_path, world)
    assert all(isinstance(p, np.memmap) for p in cache.parts) and len(cache) == count
    assert cache.distribution(range(count))[:, 0, 0, 0, 0].tolist() == list(map(float, range(count)))
    draws = cache.sample([5, 5], torch.Generator().manual_seed(0))
    assert draws.shape == (2, 2, 2, 2) and (draws - 5).abs().max() < 3 and not torch.equal(draws[0], draws[1])


def test_resume_point_carries_the_number_of_processes(tmp_path):
    from mammosynth.builders.core.atomic import write_json

    config = SD35LoraConfig(prepared="p", output_dir=tmp_path)
    state = tmp_path / "checkpoints" / "checkpoint-3" / checkpoints.STATE_FILE
    state.parent.mkdir(parents=True)
    write_json(state, {"global_step": 3, "num_processes": 2, "fingerprint": resume_fingerprint(config)})
    point = checkpoints.resolve_resume(config, "latest")
    assert (point.step, point.num_processes, point.path) == (3, 2, state.parent)
