"""Answers in SQLite inside the study folder (``answers.sqlite``), in WAL mode with full sync: an
answer the server confirmed is on disk before the reader sees the next case, so a killed server
loses none. One connection per call; writers wait on each other (busy timeout), readers never do.

An answer is (reader_id, trial_id) -> judged, confidence, birads, seconds; ``judged`` is
``real|synthetic`` in single mode and the side judged synthetic (``left|right``) in 2afc."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    reader_id   TEXT NOT NULL,
    trial_id    TEXT NOT NULL,
    judged      TEXT NOT NULL,
    confidence  INTEGER NOT NULL CHECK (confidence IN (1, 2, 3)),
    birads      INTEGER CHECK (birads BETWEEN 1 AND 5),
    seconds     REAL CHECK (seconds >= 0),
    answered_at REAL NOT NULL,
    origin      TEXT NOT NULL,
    PRIMARY KEY (reader_id, trial_id)
);
CREATE TABLE IF NOT EXISTS surveys (
    reader_id   TEXT PRIMARY KEY,
    answers     TEXT NOT NULL,
    answered_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Answer:
    reader_id: str
    trial_id: str
    judged: str
    confidence: int
    birads: int | None
    seconds: float | None
    answered_at: float = 0.0
    origin: str = "web"


class AnswerStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any error)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def record(self, answer: Answer) -> bool:
        """Store ``answer`` unless the reader already answered that trial; True when stored (a
        repeated post of a confirmed answer changes nothing)."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                _values(answer, answer.answered_at or time.time()),
            )
            return cur.rowcount == 1

    def insert_all(self, answers: Iterable[Answer]) -> int:
        """All of ``answers`` in one transaction (an existing (reader, trial) fails the whole lot)."""
        now = time.time()
        with self.transaction() as db:
            n = 0
            for a in answers:
                db.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _values(a, a.answered_at or now))
                n += 1
            return n

    def answered(self, reader_id: str) -> set[str]:
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT trial_id FROM answers WHERE reader_id = ?", (reader_id,))}

    def existing(self) -> set[tuple[str, str]]:
        with self._connect() as db:
            return {(r[0], r[1]) for r in db.execute("SELECT reader_id, trial_id FROM answers")}

    def answers(self) -> list[Answer]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM answers ORDER BY reader_id, answered_at, trial_id").fetchall()
        return [Answer(*r) for r in rows]

    def progress(self) -> dict[str, dict[str, Any]]:
        """reader_id -> {answered, last_answer_at, survey} for readers with anything stored."""
        with self._connect() as db:
            out = {
                r: {"answered": n, "last_answer_at": last, "survey": False}
                for r, n, last in db.execute(
                    "SELECT reader_id, COUNT(*), MAX(answered_at) FROM answers GROUP BY reader_id"
                )
            }
            for (r,) in db.execute("SELECT reader_id FROM surveys"):
                out.setdefault(r, {"answered": 0, "last_answer_at": None, "survey": False})["survey"] = True
        return out

    def save_survey(self, reader_id: str, answers: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO surveys VALUES (?, ?, ?)",
                (reader_id, json.dumps(answers, ensure_ascii=False, sort_keys=True), time.time()),
            )

    def surveys(self) -> dict[str, dict[str, Any]]:
        with self._connect() as db:
            return {
                r: json.loads(a) for r, a in db.execute("SELECT reader_id, answers FROM surveys ORDER BY reader_id")
            }

    def survey_done(self, reader_id: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM surveys WHERE reader_id = ?", (reader_id,)).fetchone() is not None


def _values(a: Answer, at: float) -> tuple:
    return (a.reader_id, a.trial_id, a.judged, a.confidence, a.birads, a.seconds, at, a.origin)
