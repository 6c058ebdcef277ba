"""`mammosynth reader-study serve`: the reading app under uvicorn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import uvicorn

from mammosynth.builders.core.errors import InputError
from mammosynth.validation.reader_study.app import create_app


def serve(
    study: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve ``study`` until interrupted. Every confirmed answer is already on disk, so stopping or
    killing the server loses nothing; serving again resumes every reader where they were. With a
    certificate and its key, readers connect over HTTPS (tokens travel in the URL)."""
    if (certfile is None) != (keyfile is None):
        raise InputError(
            "HTTPS needs both the certificate and its key",
            field="--ssl-keyfile" if keyfile is None else "--ssl-certfile",
        )
    for name, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not Path(path).is_file():
            raise InputError("file not found", file=path, field=name)
    app = create_app(study)
    data = app.state.study
    shown = "<this machine's address>" if host in ("0.0.0.0", "::") else host
    base = f"{'https' if certfile else 'http'}://{shown}:{port}"
    echo(f"serving {len(data.trials)} trials to {len(data.readers)} readers on {base}")
    echo(f"  readers: {base}/r/<token> (tokens in {data.layout.readers_csv})")
    echo(f"  progress: {base}/admin/<admin_token from {data.layout.info_json.name}>")
    # no access log: every request line carries a reader's token
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
    )
