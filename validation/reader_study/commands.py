"""`mammosynth reader-study create|serve|import|score`: thin click commands over the module APIs."""

from __future__ import annotations

from pathlib import Path

import click

from mammosynth.builders.core import progress
from mammosynth.builders.core.errors import InputError


@click.group("reader-study")
def reader_study() -> None:
    """Blinded real-vs-synthetic reader studies: create, serve, import, score."""


@reader_study.command("create")
@click.argument("release", type=click.Path(path_type=Path))
@click.option("--real", "real", required=True, type=click.Path(path_type=Path), help="prepared set of real images")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="the study folder to write")
@click.option("--n-real", type=int, required=True, help="real cases")
@click.option("--n-synthetic", type=int, required=True, help="synthetic cases")
@click.option("--readers", type=int, required=True, help="readers (one token each)")
@click.option(
    "--stratify", default="method", show_default=True, help="synthetic strata: comma list of method,birads,view"
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mode", type=click.Choice(["single", "2afc"]), default="single", show_default=True)
@click.option(
    "--size", type=int, default=None, help="side of the case images (default: the smallest long side sampled)"
)
@click.option(
    "--survey", type=click.Path(path_type=Path), default=None, help="survey YAML (default: the paper's Appendix A)"
)
@progress.console_options
def create_cmd(release, real, out, n_real, n_synthetic, readers, stratify, seed, mode, size, survey) -> None:
    """Sample blinded cases from RELEASE and the real set into a study folder."""
    from mammosynth.validation.reader_study.create import CreateOptions, create_study

    strata = tuple(s.strip() for s in stratify.split(",") if s.strip())
    if not strata:
        raise InputError("name at least one of method,birads,view", field="--stratify")
    options = CreateOptions(n_real, n_synthetic, readers, strata, seed, mode, size, survey)
    made = create_study(release, real, out, options, echo=progress.say)
    progress.say(f"reader tokens: {made.root / 'readers.csv'}; admin token in study.json")
    progress.result(f"study: {made.root} ({made.cases} cases, {made.trials} trials, {len(made.readers)} readers)")


@reader_study.command("serve")
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to serve the local network")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--ssl-certfile", type=click.Path(path_type=Path), default=None, help="serve HTTPS with this certificate")
@click.option("--ssl-keyfile", type=click.Path(path_type=Path), default=None, help="the certificate's private key")
def serve_cmd(study, host, port, ssl_certfile, ssl_keyfile) -> None:
    """Serve STUDY to its readers (answers in STUDY/answers.sqlite)."""
    from mammosynth.validation.reader_study.serve import serve

    serve(study, host, port, certfile=ssl_certfile, keyfile=ssl_keyfile, echo=click.echo)


@reader_study.command("import")
@click.argument("study", type=click.Path(path_type=Path))
@click.argument("answers", type=click.Path(path_type=Path))
def import_cmd(study, answers) -> None:
    """Import ANSWERS.csv (reader_id,case_id,judged,confidence,birads,seconds) into STUDY."""
    from mammosynth.validation.reader_study.importing import import_answers

    n = import_answers(study, answers)
    click.echo(f"imported {n} answers into {study}")


@reader_study.command("score")
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path))
@click.option("--bootstrap", type=int, default=2000, show_default=True, help="bootstrap replicates for AUROC intervals")
@click.option("--seed", type=int, default=0, show_default=True)
@progress.console_options
def score_cmd(study, out, bootstrap, seed) -> None:
    """Score STUDY into OUT: scores.json, scores.md, roc.png, iMRMC input."""
    from mammosynth.validation.reader_study.scoring import write_scores

    scores = write_scores(study, out, replicates=bootstrap, seed=seed)
    t1 = scores["table1"]
    progress.say(
        f"real correct {t1['real']['correct']}/{t1['real']['n']}, synthetic correct "
        f"{t1['synthetic']['correct']}/{t1['synthetic']['n']}, mean AUROC {scores['auroc']['mean']}"
    )
    progress.result(f"scores: {Path(out) / 'scores.json'}")
