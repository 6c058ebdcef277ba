"""`mammosynth reader-study import`: answers collected elsewhere (e.g. a Grand Challenge export),
``reader_id,case_id,judged,confidence,birads,seconds``. Every row is checked before anything is
stored, and all are stored in one transaction: a bad row is exit 2 naming its line and field, and
nothing is imported."""

from __future__ import annotations

import csv
import math
import sqlite3
from pathlib import Path

from mammosynth.builders.core.errors import InputError
from mammosynth.validation.reader_study.layout import READER_ID, SIDES, TRUTHS, StudyLayout
from mammosynth.validation.reader_study.store import Answer, AnswerStore

COLUMNS = ("reader_id", "case_id", "judged", "confidence", "birads", "seconds")


def import_answers(study: str | Path, answers_csv: str | Path) -> int:
    """Import ``answers_csv`` into the study's answers; returns the number of rows stored.

    ``case_id`` is the trial id (the case id in single mode); readers not in ``readers.csv`` are
    welcome (answers read elsewhere), a (reader, case) answered twice is not."""
    layout = StudyLayout(study)
    layout.check()
    mode = layout.mode()
    trials = layout.trials(mode, layout.key())
    path = Path(answers_csv)
    if not path.is_file():
        raise InputError("file not found", file=path)
    store = AnswerStore(layout.answers_db)
    existing = store.existing()
    rows: list[Answer] = []
    seen: dict[tuple[str, str], int] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise InputError(f"missing column(s) {missing}; expected {','.join(COLUMNS)}", file=path, record=1)
        for row in reader:
            line = reader.line_num
            values = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            answer = _answer(values, RowError(path, line, values), mode, trials)
            pair = (answer.reader_id, answer.trial_id)
            if pair in seen:
                raise RowError(path, line, values)(
                    "case_id", f"this reader answered this case already on line {seen[pair]}"
                )
            if pair in existing:
                raise RowError(path, line, values)(
                    "case_id", "this reader's answer to this case is already in the study"
                )
            seen[pair] = line
            rows.append(answer)
    try:
        return store.insert_all(rows)
    except sqlite3.IntegrityError:
        raise InputError(
            "an answer to one of these cases arrived while importing; nothing was imported, run it again", file=path
        ) from None


class RowError:
    """The InputError for one field of one line: names the file, the line and the field."""

    def __init__(self, path: Path, line: int, values: dict[str, str]) -> None:
        self.path, self.line, self.values = path, line, values

    def __call__(self, field: str, why: str) -> InputError:
        return InputError(f"{why}, got {self.values.get(field, '')!r}", file=self.path, record=self.line, field=field)


def _answer(get: dict[str, str], bad: RowError, mode: str, trials: dict) -> Answer:
    allowed = TRUTHS if mode == "single" else SIDES
    reader_id, case_id = get["reader_id"], get["case_id"]
    if not READER_ID.match(reader_id):
        raise bad("reader_id", "not a reader id (letters, digits, _ . -)")
    if case_id not in trials:
        raise bad("case_id", "no such case in this study")
    if get["judged"] not in allowed:
        raise bad("judged", f"must be one of {'|'.join(allowed)}")
    if get["confidence"] not in ("1", "2", "3"):
        raise bad("confidence", "must be 1, 2 or 3")
    birads = get["birads"]
    if mode == "2afc" and birads:
        raise bad("birads", "2afc trials take no BI-RADS")
    if birads and birads not in ("1", "2", "3", "4", "5"):
        raise bad("birads", "must be 1-5 or empty")
    seconds = None
    if get["seconds"]:
        try:
            seconds = float(get["seconds"])
        except ValueError:
            raise bad("seconds", "must be a number or empty") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise bad("seconds", "must be a non-negative number or empty")
    return Answer(
        reader_id,
        case_id,
        get["judged"],
        int(get["confidence"]),
        int(birads) if birads else None,
        seconds,
        0.0,
        "import",
    )
