"""Names that shipped files may carry: checkpoint names without machine paths, package versions."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mammosynth.builders.core.hashing import content_hash

GENERIC_RUN_NAMES = re.compile(r"^(final|checkpoint-\d+|unet|transformer|[0-9a-f]{40})$")


TRAINING_METADATA = "training_metadata.json"  # beside a trained adapter or pipeline; generation reads it


def package_version(name: str = "mammosynth", missing: str = "0+unknown") -> str:
    """Installed version of a distribution; ``missing`` when it is not installed (a source tree)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return missing


def checkpoint_name(ref: str | Path) -> str:
    """A readable, machine-independent name: the folder's name, or ``run/final`` when the folder's
    own name is generic (trainer outputs, checkpoints, hub snapshots)."""
    path = Path(ref)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.removeprefix("models--").replace("--", "/")  # the hub repo id
    if GENERIC_RUN_NAMES.match(path.name) and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name


def checkpoint_identity(ref: str | Path) -> str:
    """``<checkpoint name>@<content hash>``, e.g. ``inpaint-b4/final@3f2a9c01d4e7``."""
    path = Path(ref)
    return f"{checkpoint_name(path)}@{content_hash(path)}"


def strip_local_paths(value: Any) -> Any:
    """Absolute local paths reduced to a short name: no machine paths in a published file."""
    if isinstance(value, dict):
        return {k: strip_local_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strip_local_paths(v) for v in value]
    return checkpoint_name(value) if isinstance(value, str) and value.startswith("/") else value


__all__ = [
    "GENERIC_RUN_NAMES",
    "TRAINING_METADATA",
    "package_version",
    "checkpoint_name",
    "checkpoint_identity",
    "strip_local_paths",
]
