"""Opening a prepared training set (the output of `mammosynth ingest`): the one place that checks
it exists, loads, and has the prepared schema's columns. Training, generation, validation and
`ingest merge` all open it through here and add only their own checks."""

from __future__ import annotations

from pathlib import Path

import datasets

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.schema import PREPARED_COLUMNS


def open_prepared(path: str | Path, *, field: str | None = None) -> datasets.Dataset:
    """``datasets.load_from_disk(path)`` as one Dataset, or InputError naming the file (and
    ``field``, the config field that pointed here, when given)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("prepared training set not found", file=path, field=field)
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"not a prepared training set saved with save_to_disk ({exc})".splitlines()[0],
                         file=path, field=field) from None
    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets(list(ds.values()))
    missing = [c for c in PREPARED_COLUMNS if c not in ds.column_names]
    if missing:
        raise InputError(f"not a prepared training set: missing column(s) {missing}", file=path,
                         field=field or missing[0])
    return ds
