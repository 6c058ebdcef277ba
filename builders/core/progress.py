"""What the long commands print: one progress bar per long stage, rank-labelled lines, and quiet
libraries.

Three modes, set once per command by the ``console_options`` decorator (``--quiet``,
``--no-progress``) and read by every stage through ``bar``:

- normal: a tqdm bar (rate, ETA) per long stage on an interactive stderr; where no bar is drawn
  (a log, a CI job, a rank other than 0) the stage ends with one summary line instead;
- ``--no-progress``: no bars, the summary lines stay;
- ``--quiet``: no bars and no lines: only errors and the command's final one-line result.

Under ``accelerate launch``/``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) only rank 0
draws bars, since several processes redrawing one terminal garble it; the other ranks end each
stage with a summary line. Bars and lines carry ``[rank R/N]`` so a log of all ranks says which
process wrote what.

``quiet_libraries`` silences what the libraries print on their own (datasets' "Generating split"
bars, huggingface_hub's bars, diffusers/transformers info and warnings) and the known harmless
warnings by message; unknown warnings still show.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Console:
    """How much the running command prints."""

    quiet: bool = False  # only errors and the final result
    bars: bool = True  # progress bars (on a terminal, rank 0)
    lines: bool = True  # one summary line per stage where no bar is drawn
    leave: bool = True  # a finished bar stays on screen (False inside a chain that prints its own steps)


_console = Console()


def console() -> Console:
    return _console


def configure(*, quiet: bool = False, no_progress: bool = False) -> Console:
    """Set the mode for this process (the click decorator calls it)."""
    global _console
    _console = Console(quiet=quiet, bars=not (quiet or no_progress), lines=not quiet)
    return _console


@contextlib.contextmanager
def using(**changes: bool) -> Iterator[Console]:
    """Temporarily change the mode, e.g. ``using(lines=False, leave=False)`` while a chain (the demo)
    runs stages under its own step lines."""
    global _console
    before = _console
    _console = replace(before, **changes)
    try:
        yield _console
    finally:
        _console = before


# --- ranks --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def label(self, text: str) -> str:
        """``text`` prefixed with ``[rank R/N]`` when several processes run; unchanged otherwise."""
        return f"[rank {self.rank}/{self.world_size}] {text}" if self.world_size > 1 else text


def current_rank() -> Rank:
    """This process's rank from the launcher's environment (accelerate and torchrun set RANK and
    WORLD_SIZE; a plain run is rank 0 of 1)."""

    def number(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default

    world = max(number("WORLD_SIZE", 1), 1)
    return Rank(min(max(number("RANK", 0), 0), world - 1), world)


# --- output ----------------------------------------------------------------------------------------------


def say(line: str, *, rank: Rank | None = None) -> None:
    """An informational line on stderr (rank-labelled); nothing under ``--quiet``."""
    if not _console.quiet:
        click.echo((rank or current_rank()).label(line), err=True)


def result(line: str) -> None:
    """The command's final result on stdout: printed in every mode, by rank 0 only."""
    if current_rank().main:
        click.echo(line)


def _interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Stage:
    """One long stage: a tqdm bar (rate and ETA) where bars are drawn, otherwise a summary line at
    the end ("generate text2image: 64 img in 12.0 s, 5.33 img/s"). Use as a context manager or
    iterate it; ``update(n)`` like tqdm."""

    def __init__(
        self,
        desc: str,
        total: int | None,
        unit: str,
        initial: int,
        iterable: Iterable | None,
        *,
        draw: bool,
        line: bool,
        rank: Rank,
    ) -> None:
        from tqdm.auto import tqdm

        self.rank = rank
        self.desc, self.unit, self._start, self._done, self._closed = desc, unit, time.perf_counter(), 0, False
        self._line = line
        self.bar = tqdm(
            iterable,
            total=total,
            initial=initial,
            desc=rank.label(desc),
            unit=unit,
            disable=not draw,
            leave=_console.leave,
            dynamic_ncols=True,
            unit_scale=unit == "B",
            unit_divisor=1000,
        )

    def __iter__(self) -> Iterator:
        for item in self.bar:
            self._done += 1
            yield item
        self.close()

    def update(self, n: int = 1) -> None:
        self._done += n
        self.bar.update(n)

    def set_postfix_str(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.bar.close()
        if self._line:
            seconds = time.perf_counter() - self._start
            say(summary_line(self.desc, self._done, self.unit, seconds), rank=self.rank)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summary_line(desc: str, done: int, unit: str, seconds: float) -> str:
    if unit == "B":  # bytes read as MB
        done_text, rate = f"{done / 1e6:.1f} MB", f", {done / 1e6 / seconds:.1f} MB/s" if seconds > 0 and done else ""
    else:
        done_text, rate = f"{done} {unit}", f", {done / seconds:.2f} {unit}/s" if seconds > 0 and done else ""
    return f"{desc}: {done_text} in {seconds:.1f} s{rate}"


def bar(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    rank: Rank | None = None,
) -> Stage:
    """The progress of one long stage. ``enabled=False`` (a caller's own ``progress=False``) draws no
    bar and prints no line; otherwise the mode and the rank decide (``rank``: the caller's own, e.g.
    the generation engine's process index; default from the launcher's environment)."""
    rank = rank or current_rank()
    draw = enabled and bars_shown(rank)
    line = enabled and _console.lines and not draw
    return Stage(desc, total, unit, initial, iterable, draw=draw, line=line, rank=rank)


def bars_shown(rank: Rank | None = None) -> bool:
    """Whether a stage started now would draw a bar (for code that takes a ``progress=`` flag)."""
    return _console.bars and (rank or current_rank()).main and _interactive()


# --- library noise ------------------------------------------------------------------------------------------

# Verbosity the libraries read when their logging is first set up (worker processes inherit it).
# Their progress-bar switches are not set this way: once read, those env variables win over the
# libraries' own enable/disable calls, which then warn.
_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}
_NOISY_LOGGERS = ("diffusers", "transformers")  # info and advisory warnings on every load; others keep theirs

# Known harmless warnings (``warnings`` module), by the start of their message.
KNOWN_WARNINGS = (
    r".*should be kept in float32",  # diffusers, a .to(dtype) on a model without fp32 modules
    r"No LoRA keys associated to",  # diffusers, an SD3 LoRA that touches no text encoder
    r".*`torch_dtype` is deprecated",  # the old keyword of from_pretrained
)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence the libraries' own bars (datasets, huggingface_hub), their info and warning logs and the
    known warnings for the duration; restores everything on exit (tests run commands in-process)."""
    import datasets
    from huggingface_hub import utils as hub_utils

    saved_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)  # a user who set one explicitly keeps it
    datasets_off, hub_off = datasets.are_progress_bars_disabled(), hub_utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    hub_utils.disable_progress_bars()
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        if lg.getEffectiveLevel() < logging.ERROR:
            lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for pattern in KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not datasets_off:
            datasets.enable_progress_bars()
        if not hub_off:
            hub_utils.enable_progress_bars()


@contextlib.contextmanager
def no_loading_bars() -> Iterator[None]:
    """No "Loading pipeline components" bar around a diffusers ``from_pretrained`` (diffusers has no
    environment switch for it, and importing diffusers just to turn it off costs seconds)."""
    from diffusers.utils import logging as diffusers_logging

    was_on = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            diffusers_logging.enable_progress_bar()


# --- click ---------------------------------------------------------------------------------------------------


def console_options(f: F) -> F:
    """``--quiet`` and ``--no-progress`` for a long command; runs it with the mode set and the
    libraries quiet. The wrapped function does not receive the two options."""

    @click.option("--quiet", "-q", "_quiet", is_flag=True, help="Print only errors and the final result.")
    @click.option("--no-progress", "_no_progress", is_flag=True, help="No progress bars (summary lines stay).")
    @functools.wraps(f)
    def wrapper(*args: Any, _quiet: bool, _no_progress: bool, **kwargs: Any) -> Any:
        global _console
        before = _console
        configure(quiet=_quiet, no_progress=_no_progress)
        try:
            with quiet_libraries():
                return f(*args, **kwargs)
        finally:
            _console = before

    return wrapper  # type: ignore[return-value]


__all__ = [
    "Console",
    "KNOWN_WARNINGS",
    "Rank",
    "Stage",
    "bar",
    "bars_shown",
    "configure",
    "console",
    "console_options",
    "current_rank",
    "no_loading_bars",
    "quiet_libraries",
    "result",
    "say",
    "summary_line",
    "using",
]
