"""Load YAML/JSON files into pydantic models, turning validation errors into one InputError that
names the file, the field and the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from mammosynth.builders.core.errors import InputError

M = TypeVar("M", bound=pydantic.BaseModel)


class StrictModel(pydantic.BaseModel):
    """Base for every config and spec: unknown keys are errors (typos must not pass silently)."""

    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)


def read_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot parse: {exc}".splitlines()[0], file=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError("top level must be a mapping", file=path)
    return data


def format_validation_error(exc: pydantic.ValidationError) -> tuple[str, str]:
    """First error as (dotted field path, message)."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field (typo?)"
    return loc, msg


def validate_model(model: type[M], data: dict[str, Any], *, source: str | Path | None = None) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        loc, msg = format_validation_error(exc)
        more = len(exc.errors()) - 1
        suffix = f" (+{more} more error{'s' if more > 1 else ''})" if more > 0 else ""
        raise InputError(msg + suffix, file=source, field=loc) from None


def load_model(model: type[M], path: str | Path, overrides: dict[str, Any] | None = None) -> M:
    """Read ``path`` (YAML or JSON) and validate it as ``model``; relative paths stay as written."""
    data = read_mapping(path)
    if overrides:
        data.update(overrides)
    return validate_model(model, data, source=path)
