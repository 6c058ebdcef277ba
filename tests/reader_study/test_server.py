"""The served study over real HTTP (uvicorn in its own process): tokens, refused paths, nothing of
the key in any response, seven readers at once, SIGKILL and restart, order of answers."""

from __future__ import annotations

import json
import re
import sqlite3
import threading

import pytest
from reader_study.server import Server, serving

from mammosynth.validation.reader_study.layout import StudyLayout


def answer_for(trial_id: str, i: int = 0) -> dict:
    return {
        "trial_id": trial_id,
        "judged": ("real", "synthetic")[i % 2],
        "confidence": 1 + i % 3,
        "birads": 1 + i % 5,
        "seconds": 2.5 + i,
    }


def db_rows(study) -> list[tuple]:
    with sqlite3.connect(StudyLayout(study).answers_db) as con:
        return con.execute("SELECT reader_id, trial_id, judged, confidence, birads, seconds FROM answers").fetchall()


def test_tokens_paths_and_the_key_are_refused(study):
    layout = StudyLayout(study)
    token = layout.readers()["R1"]
    admin = layout.info()["admin_token"]
    case = next(iter(layout.key()))
    with serving(study) as s:
        assert s.request(f"/r/{token}")[0] == 200
        assert s.request(f"/r/{token}/case/{case}.png")[0] == 200
        refused = {
            "/r/not-a-token": 403,
            f"/r/{token[:-1]}{'A' if token[-1] != 'A' else 'B'}/state": 403,
            f"/r/wrong{token}/case/{case}.png": 403,
            f"/admin/{token}": 403,  # a reader token is no admin token
            "/key.csv": 404,
            "/study.json": 404,
            "/readers.csv": 404,
            "/answers.sqlite": 404,
            f"/cases/{case}.png": 404,
            f"/r/{token}/case/..%2F..%2Fkey.csv": 404,
            f"/r/{token}/case/%2E%2E/key.csv": 404,
            f"/r/{token}/case/../../key.csv": 404,
            f"/r/{token}/case/{case}": 404,
            "/static/..%2Fapp.py": 404,
            "/static/../app.py": 404,
            "/static/reader.html": 404,
            "/static/survey.yaml": 404,
        }
        for path, code in refused.items():
            status, _, body = s.request(path)
            assert status == code, (path, status, body)
            assert b"case_id,truth" not in body and b"admin_token" not in body
        assert s.request(f"/admin/{admin}")[0] == 200


def test_nothing_served_reveals_the_key(study):
    """Walk one reader through every case: each response is the same for a real and a synthetic
    case once the opaque ids are blanked; no method, source id or truth appears anywhere."""
    layout = StudyLayout(study)
    key = layout.key()
    token = layout.readers()["R2"]
    secrets = {c.source_id for c in key.values()} | {"text2image", "inpainting", "poisson", "ref0-"}
    shapes: dict[str, set] = {"real": set(), "synthetic": set()}
    with serving(study) as s:
        _, _, page = s.request(f"/r/{token}")
        _, _, js = s.request("/static/reader.js")
        _, _, css = s.request("/static/reader.css")
        _, _, survey = s.request(f"/r/{token}/survey")
        bodies = [page, js, css, survey]
        state = s.json(f"/r/{token}/state")
        i = 0
        while state["trial"]:
            trial = state["trial"]
            truth = key[trial["id"]].truth
            status, headers, png = s.request(trial["images"][0])
            assert status == 200
            blank = json.dumps({**state, "trial": {"id": "X", "images": ["X"]}, "answered": 0}, sort_keys=True)
            header_shape = tuple(sorted((k, v) for k, v in headers.items() if k not in ("content-length", "date")))
            shapes[truth].add((blank, header_shape))
            assert "last-modified" not in headers and "etag" not in headers
            raw = s.request(f"/r/{token}/answer", answer_for(trial["id"], i))[2]
            bodies.append(raw)
            state = json.loads(raw)
            i += 1
        assert i == len(key)
    assert shapes["real"] == shapes["synthetic"] and len(shapes["real"]) == 1
    text = b"\n".join(bodies).decode()
    for secret in secrets:
        assert secret not in text, secret
    assert not re.search(r'"(truth|method|source_id)"', text)


def test_answers_follow_the_readers_order_and_survey_comes_last(study):
    layout = StudyLayout(study)
    token = layout.readers()["R3"]
    order = layout.orders(layout.readers(), layout.trials("single", layout.key()))["R3"]
    with serving(study) as s:
        state = s.json(f"/r/{token}/state")
        assert state["trial"]["id"] == order[0] and state["total"] == len(order)
        status, _, _ = s.request(f"/r/{token}/answer", answer_for(order[1]))
        assert status == 409  # not the current case
        assert s.request(f"/r/{token}/survey", {"answers": {}})[0] == 409
        bad = {**answer_for(order[0]), "confidence": 4}
        assert s.request(f"/r/{token}/answer", bad)[0] == 422
        assert s.request(f"/r/{token}/answer", {**answer_for(order[0]), "birads": None})[0] == 422
        s.json(f"/r/{token}/answer", answer_for(order[0]))
        again = s.json(
            f"/r/{token}/answer", {**answer_for(order[0]), "judged": "synthetic"}
        )  # a resend changes nothing
        assert again["trial"]["id"] == order[1] and again["answered"] == 1
    assert db_rows(study) == [("R3", order[0], "real", 1, 1, 2.5)]


def test_seven_readers_at_once_lose_nothing(study):
    layout = StudyLayout(study)
    readers = layout.readers()
    n = len(layout.key())
    errors: list[BaseException] = []

    def read_all(server: Server, token: str) -> None:
        try:
            state = server.json(f"/r/{token}/state")
            i = 0
            while state["trial"]:
                state = server.json(f"/r/{token}/answer", answer_for(state["trial"]["id"], i))
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with serving(study) as s:
        threads = [threading.Thread(target=read_all, args=(s, t)) for t in readers.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        progress = s.json(f"/admin/{layout.info()['admin_token']}/progress")
    assert not errors, errors
    rows = db_rows(study)
    assert len(rows) == 7 * n
    assert {(r[0], r[1]) for r in rows} == {(reader, c) for reader in readers for c in layout.key()}
    assert all(p["answered"] == n for p in progress)


def test_sigkill_mid_session_loses_no_confirmed_answer(study):
    layout = StudyLayout(study)
    token = layout.readers()["R4"]
    server = Server(study).start()
    confirmed = []
    try:
        state = server.json(f"/r/{token}/state")
        for i in range(5):
            trial_id = state["trial"]["id"]
            state = server.json(f"/r/{token}/answer", answer_for(trial_id, i))
            confirmed.append(trial_id)
        server.kill()
    finally:
        server.stop()
    restarted = Server(study, port=server.port).start()
    try:
        state = restarted.json(f"/r/{token}/state")
    finally:
        restarted.stop()
    assert sorted(r[1] for r in db_rows(study)) == sorted(confirmed)
    order = layout.orders(layout.readers(), layout.trials("single", layout.key()))["R4"]
    assert order[:5] == confirmed
    assert state["answered"] == 5 and state["trial"]["id"] == order[5]


def test_admin_progress_page_lists_every_reader(study):
    layout = StudyLayout(study)
    admin = layout.info()["admin_token"]
    with serving(study) as s:
        token = layout.readers()["R5"]
        state = s.json(f"/r/{token}/state")
        s.json(f"/r/{token}/answer", answer_for(state["trial"]["id"]))
        status, _, page = s.request(f"/admin/{admin}")
    assert status == 200
    text = page.decode()
    for reader in layout.readers():
        assert f"<td>{reader}</td>" in text
    assert f"1 / {len(layout.key())}" in text
    for token in layout.readers().values():
        assert token not in text


def test_malformed_posts_are_refused(study):
    import urllib.error
    import urllib.request

    token = StudyLayout(study).readers()["R6"]
    with serving(study) as s:
        for body in (b"not json", b"[]", b'{"trial_id": "../key"}', b'{"trial_id": "0123456789abcdef"}'):
            req = urllib.request.Request(s.url + f"/r/{token}/answer", data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=10)
            assert err.value.code in (400, 422), body
    assert db_rows(study) == []


def test_serve_refuses_half_a_certificate_and_a_folder_that_is_no_study(made_study, tmp_path, capsys):
    from mammosynth.builders.cli import main

    for args, needle in (
        ([str(made_study), "--ssl-certfile", str(tmp_path / "c.pem")], "field '--ssl-keyfile'"),
        ([str(tmp_path)], "study.json"),
    ):
        with pytest.raises(SystemExit) as done:
            main(["reader-study", "serve", *args])
        assert done.value.code == 2
        assert needle in capsys.readouterr().err
