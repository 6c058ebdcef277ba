"""The console of long commands: bars on a terminal, summary lines elsewhere, rank labels, --quiet,
--no-progress, and libraries kept quiet without hiding unknown warnings."""

from __future__ import annotations

import logging
import warnings

import click
import pytest
from click.testing import CliRunner

from mammosynth.builders.core import progress


@click.command("stage")
@progress.console_options
def stage_command() -> None:
    with progress.bar(desc="generate text2image", total=12, unit="img") as b:
        for _ in range(12):
            b.update()
    progress.say("an informational line")
    progress.result("done: 12 images")


def run(*args: str, terminal: bool, monkeypatch: pytest.MonkeyPatch, rank: tuple[int, int] | None = None):
    monkeypatch.setattr(progress, "_interactive", lambda: terminal)
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    if rank is not None:
        monkeypatch.setenv("RANK", str(rank[0]))
        monkeypatch.setenv("WORLD_SIZE", str(rank[1]))
    result = CliRunner().invoke(stage_command, list(args), catch_exceptions=False)
    assert result.exit_code == 0
    return result.stdout, result.stderr


def test_a_terminal_gets_a_bar_with_rate_and_no_extra_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = run(terminal=True, monkeypatch=monkeypatch)
    assert "generate text2image" in err and "12/12" in err and "img/s" in err
    assert "img in" not in err  # the finished bar is the summary; no second line
    assert out.strip() == "done: 12 images"


def test_a_log_gets_one_summary_line_per_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = run(terminal=False, monkeypatch=monkeypatch)
    lines = err.splitlines()
    assert lines[0].startswith("generate text2image: 12 img in ") and lines[0].endswith("img/s")
    assert "12/12" not in err and "\r" not in err
    assert lines[1] == "an informational line"


def test_no_progress_keeps_lines_and_draws_no_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = run("--no-progress", terminal=True, monkeypatch=monkeypatch)
    assert "12/12" not in err and "\r" not in err
    assert err.startswith("generate text2image: 12 img in ")
    assert out.strip() == "done: 12 images"


def test_quiet_prints_only_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = run("--quiet", terminal=True, monkeypatch=monkeypatch)
    assert err == ""
    assert out == "done: 12 images\n"


def test_other_ranks_draw_no_bar_and_label_their_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = run(terminal=True, monkeypatch=monkeypatch, rank=(1, 4))
    assert "12/12" not in err
    lines = err.splitlines()
    assert lines[0].startswith("[rank 1/4] generate text2image: 12 img in ")
    assert lines[1] == "[rank 1/4] an informational line"
    assert out == ""  # the final result is rank 0's


def test_rank_zero_labels_its_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = run(terminal=True, monkeypatch=monkeypatch, rank=(0, 4))
    assert "[rank 0/4] generate text2image" in err and "12/12" in err
    assert out.strip() == "done: 12 images"


def test_a_single_process_is_not_labelled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert progress.current_rank().label("x") == "x"


def test_a_callers_progress_false_silences_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "_interactive", lambda: True)
    runner_output = CliRunner().invoke(click.command()(lambda: list(progress.bar(range(3), desc="x", enabled=False))))
    assert runner_output.stderr == ""


def test_the_mode_is_restored_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    run("--quiet", terminal=False, monkeypatch=monkeypatch)
    assert progress.console() == progress.Console()


def test_libraries_are_quiet_inside_and_restored_after() -> None:
    import datasets
    from huggingface_hub import utils as hub_utils

    assert not datasets.are_progress_bars_disabled()
    with progress.quiet_libraries():
        assert datasets.are_progress_bars_disabled()
        assert hub_utils.are_progress_bars_disabled()
        assert not logging.getLogger("diffusers.models.modeling_utils").isEnabledFor(logging.WARNING)
        assert logging.getLogger("diffusers").isEnabledFor(logging.ERROR)
    assert not datasets.are_progress_bars_disabled()
    assert not hub_utils.are_progress_bars_disabled()
    assert logging.getLogger("diffusers.models.modeling_utils").isEnabledFor(logging.WARNING)


def test_known_warnings_are_dropped_and_unknown_ones_shown() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with progress.quiet_libraries():
            warnings.warn("`torch_dtype` is deprecated! Use `dtype` instead!", FutureWarning, stacklevel=1)
            warnings.warn("No LoRA keys associated to CLIPTextModelWithProjection found", UserWarning, stacklevel=1)
            warnings.warn("something nobody has seen before", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something nobody has seen before"]


def test_a_real_command_under_quiet_prints_its_result_only(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mammosynth phantom` and `mammosynth ingest vindr` on a terminal: --quiet leaves one result line each."""
    from mammosynth.builders.sources.commands import ingest, phantom

    monkeypatch.setattr(progress, "_interactive", lambda: True)
    runner = CliRunner()
    made = runner.invoke(phantom, [str(tmp_path / "src"), "--studies", "1", "--scale", "0.05", "--quiet"])
    assert made.exit_code == 0, made.output
    assert made.stderr == "" and made.stdout == f"wrote 1 studies (4 images) to {tmp_path / 'src'}\n"
    args = ["vindr", str(tmp_path / "src"), str(tmp_path / "prep"), "--size", "64", "--bit-depth", "8", "--quiet"]
    ingested = runner.invoke(ingest, args)
    assert ingested.exit_code == 0, ingested.output
    assert ingested.stderr == "" and len(ingested.stdout.splitlines()) == 1
    assert ingested.stdout.startswith("4 images -> ")
    loud = runner.invoke(phantom, [str(tmp_path / "src2"), "--studies", "1", "--scale", "0.05"])
    assert "phantom" in loud.stderr and "1/1" in loud.stderr  # the same command draws its bar on a terminal
