"""SD3.5 + LoRA text-to-image with a tiny random SD3 pipeline (64 px, 2 steps), and the CLI."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from helpers.gen_helpers import make_spec, spec_dict, text2image_method
from helpers.synthetic import write_generator_set
from mammosynth.builders.cli import main
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.schema import text2image_prompt
from mammosynth.generators.api import generate, load_generated, make_sampler
from mammosynth.generators.engine import plan

COUNTS = [
    {"birads": [1, 4], "view": ["CC", "MLO"], "laterality": "L", "n": 2},
    {"birads": 5, "view": "MLO", "laterality": "R", "n": 3},
]
PROMPT = re.compile(
    r"A (left|right) (craniocaudal|mediolateral oblique) \((CC|MLO)\) mammogram, breast density ([A-D]), BI-RADS (\d)(, acquired on a (.+) system)?\."
)


def _lora(tmp_path, base, transformer=None, *, metadata=True, **recorded):
    """An adapter laid out as `mammosynth train sd35-lora` writes it: diffusers LoRA file plus
    training_metadata.json with the base model's identity."""
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from mammosynth.training import runtime

    torch.manual_seed(0)
    transformer = transformer or SD3Transformer2DModel.from_pretrained(str(base), subfolder="transformer")
    # init_lora_weights=False: random A and B, so the adapter visibly changes the output
    transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    folder = tmp_path / "lora"
    folder.mkdir()
    StableDiffusion3Pipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer))
    if metadata:
        identity = runtime.base_identity(str(base), None, base)
        runtime.write_metadata(folder, {"kind": "sd35-lora", **identity, **recorded})
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_generator_set(tmp_path_factory.mktemp("prepared") / "prepared", n_backgrounds=1)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_sd3, prepared):
    tmp = tmp_path_factory.mktemp("t2i")
    lora = _lora(tmp, tiny_sd3)
    method = text2image_method(
        tiny_sd3, COUNTS, lora=str(lora), vendor_in_prompt="SIEMENS", negative_prompt="blurry", guidance=4.0
    )
    spec = make_spec(tmp, {"text2image": method}, prepared=prepared)
    result = generate(spec, progress=False)["text2image"]
    return spec, result, load_generated(spec, "text2image"), lora


def test_counts_prompts_and_labels(lora_run):
    spec, result, ds = lora_run[:3]
    assert result.rows == len(ds) == spec.total("text2image") == 2 * 2 * 2 + 3
    f = ds.features
    cells = {}
    for r in ds:
        lat, view, birads = (
            f["laterality"].int2str(r["laterality"]),
            f["view"].int2str(r["view"]),
            int(f["birads"].int2str(r["birads"])[-1]),
        )
        density = f["density"].int2str(r["density"])
        m = PROMPT.fullmatch(r["prompt"])
        assert m, r["prompt"]
        assert (m[1][0].upper(), m[3], m[4], int(m[5]), m[7]) == (lat, view, density, birads, "SIEMENS")
        assert r["prompt"] == text2image_prompt(lat, view, density, birads, "SIEMENS")
        assert r["manufacturer"] == "SIEMENS" and r["bbox"] == [] and r["source_image"] is None
        assert r["image"].mode == "L" and r["image"].size == (64, 64)
        cells[(birads, view, lat)] = cells.get((birads, view, lat), 0) + 1
    assert cells == {k: v for k, v in spec.cell_counts("text2image").items() if v}
    # densities cycle through the spec's list within a cell
    r5 = [f["density"].int2str(r["density"]) for r in ds if r["image_id"].startswith("text2image-b5")]
    assert r5 == ["A", "B", "C"]


def test_seeds_and_generator_identity(lora_run):
    spec, _, ds, lora = lora_run
    tasks = {t.image_id: t for t in plan(spec, "text2image")}
    for r in ds:
        assert r["seed"] == tasks[r["image_id"]].seed
    gen = ds[0]["generator"]
    assert gen.startswith("sd3@") and "+lora@" in gen


def test_same_spec_twice_identical_and_lora_changes_output(lora_run, tiny_sd3, prepared, tmp_path):
    spec, _, ds = lora_run[:3]
    again = make_spec(tmp_path, {"text2image": spec.methods["text2image"].model_dump()}, prepared=prepared)
    generate(again, progress=False)
    assert load_generated(again, "text2image").to_pandas().equals(ds.to_pandas())
    # same seeds without the adapter: other pixels
    m = spec.methods["text2image"].model_dump()
    m["text2image"]["lora"] = None
    m["counts"] = [{"birads": 1, "view": "CC", "laterality": "L", "n": 1}]
    plain = make_spec(tmp_path, {"text2image": m}, prepared=prepared, out="plain")
    generate(plain, progress=False)
    a = np.asarray(load_generated(plain, "text2image")[0]["image"])
    b = np.asarray(ds[0]["image"])
    assert load_generated(plain, "text2image")[0]["image_id"] == ds[0]["image_id"]
    assert not np.array_equal(a, b)


def test_grey_conversion_is_luma_and_16_bit():
    from mammosynth.builders.core.imageio import rgb_to_grey as to_gray

    rgb = np.array([[[1.0, 0.0, 0.0], [0.2, 0.2, 0.2], [1.0, 1.0, 1.0]]])
    assert to_gray(rgb, 8).tolist() == [[76, 51, 255]]
    assert to_gray(rgb, 16).dtype == np.uint16 and to_gray(rgb, 16)[0, 2] == 65535


def test_adapter_of_another_base_is_refused(tmp_path, tiny_sd3, prepared):
    from mammosynth.training.tiny_models import write_tiny_sd3

    other = write_tiny_sd3(tmp_path / "other_sd3", seed=1)  # same architecture, other weights
    lora = _lora(tmp_path, other)
    spec = make_spec(tmp_path, {"text2image": text2image_method(tiny_sd3, COUNTS, lora=str(lora))}, prepared=prepared)
    with pytest.raises(InputError, match="trained on another base model.*other_sd3"):
        make_sampler(spec, "text2image")


def test_adapter_trained_with_another_prompt_length_is_refused(tmp_path, tiny_sd3, prepared):
    lora = _lora(tmp_path, tiny_sd3, max_sequence_length=77)
    for length in (77, 128):
        method = text2image_method(tiny_sd3, COUNTS, lora=str(lora), max_sequence_length=length)
        spec = make_spec(tmp_path / str(length), {"text2image": method}, prepared=prepared)
        if length == 77:
            make_sampler(spec, "text2image")  # as trained: accepted
            continue
        with pytest.raises(InputError, match="trained with 77 T5 prompt tokens, the spec asks for 128") as err:
            make_sampler(spec, "text2image")
        assert err.value.field == "methods.text2image.text2image.max_sequence_length"


def test_adapter_of_another_architecture_is_refused(tmp_path, tiny_sd3, prepared):
    from diffusers import SD3Transformer2DModel

    wider = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pooled_projection_dim=32,
        pos_embed_max_size=32,
    )
    lora = _lora(tmp_path, tiny_sd3, wider, metadata=False)
    spec = make_spec(tmp_path, {"text2image": text2image_method(tiny_sd3, COUNTS, lora=str(lora))}, prepared=prepared)
    with pytest.raises(InputError, match="another base model: layer .* is 32->32 in the adapter but 16->16"):
        make_sampler(spec, "text2image")


def _write_spec(tmp_path, methods, prepared):
    path = tmp_path / "spec.yaml"
    d = spec_dict(tmp_path, methods, prepared=prepared)
    d["output_dir"] = "out"  # relative: resolved beside the spec
    path.write_text(yaml.safe_dump(d))
    return path


def _cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr()


def test_cli_generate_and_resume(tmp_path, tiny_sd3, prepared, capsys):
    counts = [{"birads": 3, "view": "CC", "laterality": "R", "n": 3}]
    path = _write_spec(tmp_path, {"text2image": text2image_method(tiny_sd3, counts)}, prepared)
    code, out = _cli(["generate", str(path), "--method", "text2image"], capsys)
    assert code == 0, out.err
    assert "text2image: 3 images in 1 new shards" in out.out
    shards = sorted((tmp_path / "out" / "generated" / "text2image").glob("shard-*.parquet"))
    assert len(shards) == 1
    code, out = _cli(["generate", str(path)], capsys)
    assert code == 0 and "0 images in 0 new shards (1 already done)" in out.out


@pytest.mark.parametrize(
    "change, message",
    [
        ({"resolution": 72}, "field 'methods.text2image.text2image.resolution': resolution 72 is not divisible by 16"),
        ({"base_model": "missing-folder"}, "field 'methods.text2image.text2image.base_model': checkpoint folder"),
    ],
)
def test_cli_bad_input_exits_2_before_model_work(change, message, tmp_path, tiny_sd3, prepared, capsys, monkeypatch):
    import diffusers

    monkeypatch.setattr(
        diffusers.StableDiffusion3Pipeline, "from_pretrained", lambda *a, **k: pytest.fail("model loaded")
    )
    path = _write_spec(
        tmp_path, {"text2image": text2image_method(tiny_sd3, [{"birads": 2, "n": 1}], **change)}, prepared
    )
    code, out = _cli(["generate", str(path)], capsys)
    assert code == 2
    assert message in out.err and str(path) in out.err
    assert "Traceback" not in out.err
