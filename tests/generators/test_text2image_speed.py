"""Text-to-image speed options (fused QKV, regional compile, fp8): off by default, same images
when on, refused where the machine cannot run them. Tiny random SD3, 64 px, 2 steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from helpers.gen_helpers import make_spec, spec_dict, text2image_method
from helpers.synthetic import write_generator_set
from mammosynth.builders.cli import main
from mammosynth.builders.core.errors import InputError
from mammosynth.generators.api import make_sampler
from mammosynth.generators.engine import plan
from mammosynth.generators.pipelines import Runtime
from mammosynth.generators.speed import fp8_unavailable

CELL = [{"birads": 4, "view": "CC", "laterality": "L", "n": 2}]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_generator_set(tmp_path_factory.mktemp("prepared") / "prepared", n_backgrounds=1)


def _images(tmp_path, prepared, tiny_sd3, **options):
    spec = make_spec(tmp_path, {"text2image": text2image_method(tiny_sd3, CELL, **options)}, prepared=prepared)
    sampler = make_sampler(spec, "text2image")
    rows = sampler.generate(plan(spec, "text2image"))
    return np.stack([r["image"] for r in rows]).astype(int), sampler


@pytest.fixture(scope="module")
def plain(tmp_path_factory, prepared, tiny_sd3):
    images, _ = _images(tmp_path_factory.mktemp("plain"), prepared, tiny_sd3)
    return images


def test_options_are_off_by_default():
    from mammosynth.builders.core.spec import Text2ImageParams

    p = Text2ImageParams(base_model="x")
    assert (p.fuse_qkv, p.compile_blocks, p.fp8) == (False, False, False)


def test_fused_qkv_gives_the_same_images(plain, tmp_path, prepared, tiny_sd3):
    images, sampler = _images(tmp_path, prepared, tiny_sd3, fuse_qkv=True)
    attn = sampler.pipeline().transformer.transformer_blocks[0].attn
    assert hasattr(attn, "to_qkv") and type(attn.processor).__name__ == "FusedJointAttnProcessor2_0"
    assert np.abs(images - plain).max() <= 1  # one 8-bit level: float summation order
    assert '"fuse_qkv": true' in sampler.fingerprint  # the run (and the card's parameters) say so


def test_compiled_blocks_are_used_and_give_the_same_images(plain, tmp_path, prepared, tiny_sd3, monkeypatch):
    """Dynamo traces every block (backend "eager": no code generation, so seconds on CPU)."""
    compile_ = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_(self, backend="eager", **kw))
    images, sampler = _images(tmp_path, prepared, tiny_sd3, compile_blocks=True)
    blocks = sampler.pipeline().transformer.transformer_blocks
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert np.array_equal(images, plain)


@pytest.mark.slow
def test_compiled_blocks_with_inductor(plain, tmp_path, prepared, tiny_sd3):
    """The real compiler (C++ code generation on CPU: about 90 s on 2 cores, less with a warm cache)."""
    images, _ = _images(tmp_path, prepared, tiny_sd3, compile_blocks=True, fuse_qkv=True)
    assert np.abs(images - plain).max() <= 1


def test_fp8_on_cpu_is_refused_before_model_work(tmp_path, prepared, tiny_sd3, monkeypatch):
    import diffusers

    monkeypatch.setattr(
        diffusers.StableDiffusion3Pipeline, "from_pretrained", lambda *a, **k: pytest.fail("model loaded")
    )
    spec = make_spec(tmp_path, {"text2image": text2image_method(tiny_sd3, CELL, fp8=True)}, prepared=prepared)
    with pytest.raises(InputError, match="fp8 needs a CUDA GPU") as exc:
        make_sampler(spec, "text2image", runtime=Runtime(device="cpu"))
    assert exc.value.field == "methods.text2image.text2image.fp8"
    assert "cpu" in fp8_unavailable("cpu")


def test_fp8_through_the_cli_exits_2_with_one_line_naming_the_field(tmp_path, prepared, tiny_sd3, capsys):
    path = tmp_path / "spec.yaml"
    d = spec_dict(tmp_path, {"text2image": text2image_method(tiny_sd3, CELL, fp8=True)}, prepared=prepared)
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(SystemExit) as exc:
        main(["generate", str(path)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert len(err.splitlines()) == 1 and "methods.text2image.text2image.fp8" in err and "Traceback" not in err
    assert not (tmp_path / "release" / "generated").exists()


def test_regional_and_whole_model_compile_exclude_each_other(tmp_path, prepared, tiny_sd3):
    spec = make_spec(
        tmp_path, {"text2image": text2image_method(tiny_sd3, CELL, compile_blocks=True)}, prepared=prepared
    )
    with pytest.raises(InputError, match="compile_blocks and --compile"):
        make_sampler(spec, "text2image", runtime=Runtime(compile=True))
