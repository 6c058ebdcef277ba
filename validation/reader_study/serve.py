"""`mammosynth reader-study serve`: the reading app under uvicorn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import uvicorn

from mammosynth.validation.reader_study.app import create_app


def serve(study: str | Path, host: str = "127.0.0.1", port: int = 8000, *, echo: Callable[[str], None] = print) -> None:
    """Serve ``study`` until interrupted. Every confirmed answer is already on disk, so stopping or
    killing the server loses nothing; serving again resumes every reader where they were."""
    app = create_app(study)
    data = app.state.study
    shown = "<this machine's address>" if host in ("0.0.0.0", "::") else host
    echo(f"serving {len(data.trials)} trials to {len(data.readers)} readers on http://{shown}:{port}")
    echo(f"  readers: http://{shown}:{port}/r/<token> (tokens in {data.layout.readers_csv})")
    echo(f"  progress: http://{shown}:{port}/admin/<admin_token from {data.layout.info_json.name}>")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
