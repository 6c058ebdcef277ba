"""Generate docs/configuration.md from the pydantic models, so the reference is never written twice.

    python -m mammosynth.builders.config_reference > docs/configuration.md

A test fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import importlib
import types
import typing
from typing import Any

import pydantic
from pydantic_core import PydanticUndefined

# (title, "module:Model", how it is given)
MODELS: list[tuple[str, str, str]] = [
    ("Release spec", "mammosynth.builders.core.spec:ReleaseSpec", "`mammosynth generate|card|build SPEC` (YAML)"),
    ("Ingest options", "mammosynth.builders.sources.ingest:IngestOptions", "`mammosynth ingest vindr|dicom` flags"),
    ("SD3.5 LoRA training", "mammosynth.training.config:SD35LoraConfig", "`mammosynth train sd35-lora CONFIG` (YAML)"),
    ("Inpainting training", "mammosynth.training.config:InpaintConfig", "`mammosynth train inpaint CONFIG` (YAML)"),
    (
        "Validation thresholds",
        "mammosynth.validation.thresholds:Thresholds",
        "`mammosynth validate --config` (YAML) or the spec's `validation:`",
    ),
]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: pydantic.fields.FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if isinstance(value, pydantic.BaseModel):
        return "(see below)"
    return f"`{value!r}`".replace("|", "\\|")


def _nested_models(annotation: Any) -> list[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _nested_models(a)]


def render_model(model: type[pydantic.BaseModel], prefix: str, seen: set[type]) -> list[str]:
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    nested: list[tuple[str, type[pydantic.BaseModel]]] = []
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{prefix}{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        origin = typing.get_origin(field.annotation)
        path = f"{prefix}{name}" + ("[]" if origin is list else ".<key>" if origin is dict else "")
        for sub in _nested_models(field.annotation):
            if sub not in seen:
                seen.add(sub)
                nested.append((f"{path}.", sub))
    out = lines + [""]
    for sub_prefix, sub in nested:
        out += [f"**`{sub_prefix.rstrip('.')}`** ({sub.__name__})", ""] + render_model(sub, sub_prefix, seen)
    return out


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models by `python -m mammosynth.builders.config_reference`;",
        "do not edit by hand. Unknown keys are errors, and every error names its field.",
        "",
    ]
    for title, target, given in MODELS:
        module_name, attr = target.split(":")
        try:
            model = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            continue
        out += [f"## {title}", "", f"Given as {given}; model `{target.replace(':', '.')}`.", ""]
        out += render_model(model, "", {model})
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
