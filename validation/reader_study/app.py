"""The reading web app (Starlette, ASGI). What it serves, and nothing else:

- ``/r/<token>``: the reading page (the same page for every reader); ``/r/<token>/state`` the
  reader's position and current trial; ``POST /r/<token>/answer``; ``/r/<token>/survey`` (GET the
  questions, POST the answers); ``/r/<token>/case/<case_id>.png`` the study's case images;
- ``/admin/<token>``: progress per reader;
- ``/static/reader.js``, ``/static/reader.css``.

Nothing served reveals the key: ids are opaque, every case image went through the one
preparation, image responses carry no modification time or entity tag (file times follow the
order cases were written in), and no route reads a file named by the request. A token that is not
the study's gets 403; any other path 404.
"""

from __future__ import annotations

import hmac
import html
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mammosynth.builders.core.errors import InputError
from mammosynth.validation.reader_study.layout import OPAQUE_ID, SIDES, TRUTHS, StudyLayout, Trial
from mammosynth.validation.reader_study.store import Answer, AnswerStore
from mammosynth.validation.reader_study.survey import check_answers, load_survey

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"reader.js": "text/javascript", "reader.css": "text/css"}
MAX_SECONDS = 24 * 3600.0  # a time per case above a day is a clock problem, not a reading
SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),  # the token is in the URL: never send it elsewhere
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    ),
]


@dataclass
class Study:
    """What the app holds in memory: the trials, each reader's order, the tokens."""

    layout: StudyLayout
    mode: str
    trials: dict[str, Trial]
    orders: dict[str, list[str]]
    readers: dict[str, str]  # reader_id -> token
    admin_token: str
    store: AnswerStore
    survey: Any

    @classmethod
    def open(cls, root: str | Path) -> Study:
        layout = StudyLayout(root)
        layout.check()
        info = layout.info()
        key = layout.key()
        trials = layout.trials(info["mode"], key)
        readers = layout.readers()
        orders = layout.orders(readers, trials)
        admin = info.get("admin_token")
        if not isinstance(admin, str) or len(admin) < 16:
            raise InputError("no admin token of at least 16 characters", file=layout.info_json, field="admin_token")
        survey = load_survey(layout.survey_yaml)
        missing = [c for c in key if not layout.case_png(c).is_file()]
        if missing:
            raise InputError("case image missing", file=layout.case_png(missing[0]))
        return cls(layout, info["mode"], trials, orders, readers, admin, AnswerStore(layout.answers_db), survey)

    def reader(self, token: str) -> str:
        """The reader whose token this is; 403 otherwise (compared in constant time)."""
        found = None
        for reader_id, known in self.readers.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = reader_id
        if found is None:
            raise HTTPException(403, "not a reader token of this study")
        return found

    def current(self, reader_id: str) -> tuple[int, str | None]:
        """(answered count, the first unanswered trial in the reader's order or None)."""
        done = self.store.answered(reader_id)
        order = self.orders[reader_id]
        for trial_id in order:
            if trial_id not in done:
                return len(done), trial_id
        return len(done), None

    def state(self, reader_id: str, token: str) -> dict[str, Any]:
        answered, trial_id = self.current(reader_id)
        trial = None
        if trial_id is not None:
            trial = {"id": trial_id, "images": [f"/r/{token}/case/{c}.png" for c in self.trials[trial_id].cases]}
        return {
            "mode": self.mode,
            "reader": reader_id,
            "answered": answered,
            "total": len(self.orders[reader_id]),
            "trial": trial,
            "survey_done": self.store.survey_done(reader_id),
        }


def create_app(root: str | Path) -> Starlette:
    study = Study.open(root)
    page = (STATIC / "reader.html").read_text(encoding="utf-8")

    def reader_of(request: Request) -> tuple[str, str]:
        token = request.path_params["token"]
        return study.reader(token), token

    async def reading_page(request: Request) -> Response:
        reader_of(request)
        return HTMLResponse(page)

    async def state(request: Request) -> Response:
        reader_id, token = reader_of(request)
        return JSONResponse(await run_in_threadpool(study.state, reader_id, token))

    async def answer(request: Request) -> Response:
        reader_id, token = reader_of(request)
        body = await _json(request)
        try:
            a = _answer(study.mode, reader_id, body)
        except InputError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)

        def store() -> Response:
            _, current = study.current(reader_id)
            if a.trial_id not in study.orders[reader_id]:
                return JSONResponse({"error": "no such trial"}, status_code=404)
            if a.trial_id != current and a.trial_id not in study.store.answered(reader_id):
                return JSONResponse({"error": "not the current case"}, status_code=409)
            study.store.record(a)  # a repeat of a confirmed answer is ignored
            return JSONResponse(study.state(reader_id, token))

        return await run_in_threadpool(store)

    async def survey(request: Request) -> Response:
        reader_id, token = reader_of(request)
        if request.method == "GET":
            return JSONResponse(study.survey.model_dump(mode="json"))
        body = await _json(request)

        def save() -> Response:
            _, current = study.current(reader_id)
            if current is not None:
                return JSONResponse({"error": "the survey comes after the last case"}, status_code=409)
            try:
                answers = check_answers(study.survey, body.get("answers") if isinstance(body, dict) else None)
            except InputError as exc:
                return JSONResponse({"error": str(exc)}, status_code=422)
            study.store.save_survey(reader_id, answers)
            return JSONResponse(study.state(reader_id, token))

        return await run_in_threadpool(save)

    async def case_image(request: Request) -> Response:
        reader_of(request)
        name = request.path_params["name"]
        case_id = name.removesuffix(".png")
        if not name.endswith(".png") or not OPAQUE_ID.match(case_id) or case_id not in study_cases:
            raise HTTPException(404)
        data = await run_in_threadpool(study.layout.case_png(case_id).read_bytes)
        return Response(data, media_type="image/png")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            raise HTTPException(404)
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])

    async def admin(request: Request) -> Response:
        if not hmac.compare_digest(study.admin_token.encode(), request.path_params["token"].encode()):
            raise HTTPException(403, "not the admin token of this study")
        rows = await run_in_threadpool(_progress, study)
        if request.url.path.endswith("/progress"):
            return JSONResponse(rows)
        return HTMLResponse(_admin_page(rows))

    async def index(request: Request) -> Response:
        return PlainTextResponse("Reader study: open the link you were given.\n")

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # browsers ask for one; an empty answer keeps logs quiet

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return PlainTextResponse(f"{exc.status_code} {exc.detail}\n", status_code=exc.status_code)

    study_cases = {c for t in study.trials.values() for c in t.cases}
    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/r/{token}", reading_page),
        Route("/r/{token}/state", state),
        Route("/r/{token}/answer", answer, methods=["POST"]),
        Route("/r/{token}/survey", survey, methods=["GET", "POST"]),
        Route("/r/{token}/case/{name}", case_image),
        Route("/admin/{token}", admin),
        Route("/admin/{token}/progress", admin),
        Route("/static/{name}", static),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.study = study
    return _Secured(app)  # type: ignore[return-value]


class _Secured:
    """ASGI wrapper adding the security headers to every response."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    h for h in message.get("headers", []) if h[0].lower() not in {k for k, _ in SECURITY_HEADERS}
                ]
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)

        await self.app(scope, receive, send_secured)


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise HTTPException(400, "the body is not JSON") from None


def _answer(mode: str, reader_id: str, body: Any) -> Answer:
    """An answer from a posted body; InputError naming the field."""
    if not isinstance(body, dict):
        raise InputError("the answer must be an object")
    trial_id = body.get("trial_id")
    if not isinstance(trial_id, str) or not OPAQUE_ID.match(trial_id):
        raise InputError("not a trial id", field="trial_id")
    allowed = TRUTHS if mode == "single" else SIDES
    judged = body.get("judged")
    if judged not in allowed:
        raise InputError(f"must be one of {list(allowed)}", field="judged")
    confidence = body.get("confidence")
    if confidence not in (1, 2, 3) or isinstance(confidence, bool):
        raise InputError("must be 1, 2 or 3", field="confidence")
    birads = body.get("birads")
    if mode == "single":
        if birads not in (1, 2, 3, 4, 5) or isinstance(birads, bool):
            raise InputError("must be 1-5", field="birads")
    elif birads is not None:
        raise InputError("2afc trials take no BI-RADS", field="birads")
    seconds = body.get("seconds")
    if (
        not isinstance(seconds, (int, float))
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
        or not 0 <= seconds <= MAX_SECONDS
    ):
        raise InputError(f"must be a number of seconds between 0 and {MAX_SECONDS:.0f}", field="seconds")
    return Answer(reader_id, trial_id, judged, confidence, birads, float(seconds), time.time(), "web")


def _progress(study: Study) -> list[dict[str, Any]]:
    stored = study.store.progress()
    rows = []
    for reader_id, order in study.orders.items():
        p = stored.get(reader_id, {})
        rows.append(
            {
                "reader_id": reader_id,
                "answered": p.get("answered", 0),
                "total": len(order),
                "survey": p.get("survey", False),
                "last_answer_at": p.get("last_answer_at"),
            }
        )
    return rows


def _admin_page(rows: list[dict[str, Any]]) -> str:
    def when(t: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"

    body = "".join(
        f"<tr><td>{html.escape(r['reader_id'])}</td><td>{r['answered']} / {r['total']}</td>"
        f"<td><progress max='{r['total']}' value='{r['answered']}'></progress></td>"
        f"<td>{'done' if r['survey'] else '-'}</td><td>{when(r['last_answer_at'])}</td></tr>"
        for r in rows
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Reader study progress</title>"
        "<link rel='stylesheet' href='/static/reader.css'></head><body class='admin'>"
        "<h1>Reader study progress</h1><table><thead><tr><th>reader</th><th>answered</th><th></th>"
        f"<th>survey</th><th>last answer</th></tr></thead><tbody>{body}</tbody></table></body></html>"
    )
