"""Errors and the one mapping from exceptions to exit codes: 0 success, 1 a validation gate failed
(``GateFailed``), 2 bad input, usage or environment (``InputError``: one line naming the file,
record and field; disk full, read-only, permission), 3 an unexpected internal error (one line and
the path of a file holding the traceback), 130 interrupted. A crash never exits 1."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import traceback
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


# --- the one exception -> exit-code mapping (mammosynth CLI, python -m entries, accelerate launch) ---

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def environment_error(exc: BaseException) -> str | None:
    """One line for an environment fault the user must fix (disk full, read-only, permission)."""
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return None


def write_traceback(exc: BaseException) -> Path:
    """The traceback into a file (the user gets one line and this path)."""
    fd, name = tempfile.mkstemp(prefix="mammosynth-crash-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("".join(traceback.format_exception(exc)))
    return Path(name)


def _close_progress_bars() -> None:
    """End any live progress bar first, so the error starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()) or ()):
        bar.close()


def exit_code(exc: BaseException, *, debug: bool = False, echo=None) -> int:
    """The exit status for ``exc``, after one line on stderr (the traceback too with ``debug``)."""
    import click

    echo = echo or (lambda line: click.echo(line, err=True))
    _close_progress_bars()
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_INPUT)
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        exc.show()
        return EXIT_INPUT
    if isinstance(exc, (click.Abort, KeyboardInterrupt)):
        echo("interrupted; rerun the same command to resume")
        return EXIT_INTERRUPTED
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, InputError):
        echo(f"error: {exc}")
        return EXIT_INPUT
    if isinstance(exc, GateFailed):
        echo(f"validation failed: {exc}")
        return EXIT_GATE
    env = environment_error(exc)
    if env is not None:
        echo(f"error: {env}")
        return EXIT_INPUT
    path = write_traceback(exc)
    echo(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (traceback in {path})")
    return EXIT_INTERNAL


def run_click(command, args: list[str], prog_name: str, *, debug: bool = False):
    """Run a click command the way every entry point does: errors become one line and a status."""
    try:
        rv = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - the one place that maps every exception
        sys.exit(exit_code(exc, debug=debug))
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)
