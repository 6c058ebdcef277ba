"""Release specs for the generation tests (their prepared set: `synthetic.write_generator_set`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mammosynth.builders.core.spec import ReleaseSpec


def spec_dict(tmp: Path, methods: dict[str, Any], *, prepared: Path, shard_size: int = 3) -> dict[str, Any]:
    return {
        "name": "test",
        "version": "1.0",
        "pretty_name": "Test",
        "description": "test release",
        "authors": ["tester"],
        "source": {"name": "synthetic", "prepared": str(prepared), "license": "other", "redistribution_allowed": True},
        "methods": methods,
        "output": {"shard_size": shard_size},
        "output_dir": str(tmp / "release"),
    }


def make_spec(
    tmp: Path, methods: dict[str, Any], *, prepared: Path, shard_size: int = 3, out: str = "release"
) -> ReleaseSpec:
    d = spec_dict(tmp, methods, prepared=prepared, shard_size=shard_size)
    d["output_dir"] = str(tmp / out)
    return ReleaseSpec.model_validate(d)


def inpainting_method(checkpoint: Path, counts: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    p = {
        "checkpoints": {3: str(checkpoint), 4: str(checkpoint), 5: str(checkpoint)},
        "steps": 2,
        "resolution": 64,
        "erosion_px": 1,
        "margin_px": 2,
        "batch_size": 2,
    }
    p.update(params)
    return {"counts": counts, "inpainting": p}


def text2image_method(base: Path, counts: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    p = {"base_model": str(base), "steps": 2, "resolution": 64, "batch_size": 2}
    p.update(params)
    return {"counts": counts, "text2image": p}
