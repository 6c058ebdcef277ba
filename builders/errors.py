"""Errors the CLI turns into exit codes: InputError -> 2 (one line naming file, record, field),
GateFailed -> 1."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input or usage. The message names the file, the record and the field where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        record: str | int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.record = record
        self.field = field
        self.reason = message
        where = []
        if self.file:
            where.append(self.file)
        if record is not None:
            where.append(f"record {record}")
        if field:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class GateFailed(Exception):
    """A validation gate failed; the CLI exits with status 1."""


class NotYetAvailable(InputError):
    """A command whose capability has not landed yet."""
