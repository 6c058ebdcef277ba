"""`reader-study import`: a bad row is exit 2 naming its line and field, and nothing of the file is
stored; a good file is stored whole."""

from __future__ import annotations

import csv
import sqlite3

import pytest

from mammosynth.builders.cli import main
from mammosynth.validation.reader_study.layout import StudyLayout

COLUMNS = ["reader_id", "case_id", "judged", "confidence", "birads", "seconds"]


def write(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        w.writerows(rows)
    return path


def stored(study) -> int:
    db = StudyLayout(study).answers_db
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


def run(*args) -> int:
    with pytest.raises(SystemExit) as done:
        main(["reader-study", "import", *map(str, args)])
    return done.value.code


def good_rows(study, n=5):
    cases = sorted(StudyLayout(study).key())
    return [["R1", c, "real" if i % 2 else "synthetic", 1 + i % 3, 1 + i % 5, 3.5] for i, c in enumerate(cases[:n])]


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        (3, "judged", "maybe"),
        (4, "confidence", "4"),
        (2, "birads", "6"),
        (5, "seconds", "-1"),
        (6, "seconds", "soon"),
        (3, "case_id", "0123456789abcdef"),
        (4, "reader_id", "R 1"),
    ],
)
def test_a_bad_row_names_line_and_field_and_nothing_is_imported(study, tmp_path, capsys, line, field, value):
    rows = good_rows(study)
    rows[line - 2][COLUMNS.index(field)] = value
    code = run(study, write(tmp_path / "a.csv", rows))
    err = capsys.readouterr().err
    assert code == 2
    assert f"record {line}" in err and f"field '{field}'" in err, err
    assert stored(study) == 0


def test_duplicates_in_the_file_or_against_the_study_are_refused(study, tmp_path, capsys):
    rows = good_rows(study)
    assert run(study, write(tmp_path / "dup.csv", rows + [rows[1]])) == 2
    assert "already on line 3" in capsys.readouterr().err
    assert stored(study) == 0
    assert run(study, write(tmp_path / "ok.csv", rows)) == 0
    assert stored(study) == 5
    assert run(study, write(tmp_path / "again.csv", good_rows(study, 7)[5:] + rows[:1])) == 2
    assert "already in the study" in capsys.readouterr().err
    assert stored(study) == 5  # the two new rows of the refused file are not there either


def test_empty_birads_and_seconds_are_allowed_and_readers_need_no_token(study, tmp_path):
    rows = good_rows(study, 2)
    rows[0][4] = rows[0][5] = ""
    rows[1][0] = "elsewhere-7"
    assert run(study, write(tmp_path / "a.csv", rows)) == 0
    with sqlite3.connect(StudyLayout(study).answers_db) as con:
        got = con.execute("SELECT reader_id, birads, seconds, origin FROM answers ORDER BY reader_id").fetchall()
    assert got == [("R1", None, None, "import"), ("elsewhere-7", 2, 3.5, "import")]


def test_missing_column_is_exit_2(study, tmp_path, capsys):
    path = tmp_path / "a.csv"
    path.write_text("reader_id,case_id,judged\nR1,x,real\n")
    assert run(study, path) == 2
    assert "missing column(s) ['confidence', 'birads', 'seconds']" in capsys.readouterr().err
