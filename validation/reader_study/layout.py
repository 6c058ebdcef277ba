"""The study folder: the one place that spells its files and reads them back.

A study folder (``mammosynth reader-study create``) is a contract other tools and CI read::

    STUDY/
      study.json      mode, seed, counts, image preparation, notes, admin token
      key.csv         case_id, truth, method, birads, density, view, laterality, source_id
      readers.csv     reader_id, token
      order.csv       reader_id, position, trial_id   (each reader's own order)
      trials.csv      trial_id, left, right           (2afc only: the two cases of a trial)
      survey.yaml     the questions shown after the last case
      cases/<case_id>.png
      answers.sqlite  (written by serve and import)

In ``single`` mode a trial is one case and its id is the case id; in ``2afc`` a trial shows two
cases (one real, one synthetic) and the reader picks the synthetic one (``left`` or ``right``).
``key.csv`` and ``study.json`` are never served.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mammosynth.builders.core.atomic import atomic_file, write_json
from mammosynth.builders.core.errors import InputError

FORMAT_VERSION = 1
TRUTHS = ("real", "synthetic")
MODES = ("single", "2afc")
SIDES = ("left", "right")
KEY_COLUMNS = ("case_id", "truth", "method", "birads", "density", "view", "laterality", "source_id")
READER_COLUMNS = ("reader_id", "token")
ORDER_COLUMNS = ("reader_id", "position", "trial_id")
TRIAL_COLUMNS = ("trial_id", "left", "right")
# Opaque ids: what a URL may carry. Anything else is refused before any lookup.
OPAQUE_ID = re.compile(r"^[0-9a-f]{16}$")
READER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Mode = Literal["single", "2afc"]


@dataclass(frozen=True)
class Case:
    case_id: str
    truth: str  # real | synthetic
    method: str  # a generation method for synthetic cases, "" for real ones
    birads: int | None
    density: str  # A-D or ""
    view: str
    laterality: str
    source_id: str  # the release row's image_id, or the real set's image_id


@dataclass(frozen=True)
class Trial:
    trial_id: str
    cases: tuple[str, ...]  # one case (single) or (left, right) (2afc)


class StudyLayout:
    """Paths of one study folder, and readers of its files (bad content -> InputError naming the
    file, the record and the field)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def info_json(self) -> Path:
        return self.root / "study.json"

    @property
    def key_csv(self) -> Path:
        return self.root / "key.csv"

    @property
    def readers_csv(self) -> Path:
        return self.root / "readers.csv"

    @property
    def order_csv(self) -> Path:
        return self.root / "order.csv"

    @property
    def trials_csv(self) -> Path:
        return self.root / "trials.csv"

    @property
    def survey_yaml(self) -> Path:
        return self.root / "survey.yaml"

    @property
    def cases(self) -> Path:
        return self.root / "cases"

    @property
    def answers_db(self) -> Path:
        return self.root / "answers.sqlite"

    def case_png(self, case_id: str) -> Path:
        if not OPAQUE_ID.match(case_id):
            raise ValueError(f"not a case id: {case_id!r}")
        return self.cases / f"{case_id}.png"

    # -- reading ------------------------------------------------------------------------------

    def check(self) -> None:
        """InputError when the folder is not a study (named by its first missing file)."""
        if not self.root.is_dir():
            raise InputError("no such study folder", file=self.root)
        for path in (self.info_json, self.key_csv, self.readers_csv, self.order_csv):
            if not path.is_file():
                raise InputError("missing: not a study folder (mammosynth reader-study create)", file=path)

    def info(self) -> dict[str, Any]:
        try:
            info = json.loads(self.info_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read: {exc}".splitlines()[0], file=self.info_json) from None
        if not isinstance(info, dict) or info.get("mode") not in MODES:
            raise InputError(f"mode must be one of {list(MODES)}", file=self.info_json, field="mode")
        return info

    def mode(self) -> Mode:
        return self.info()["mode"]

    def key(self) -> dict[str, Case]:
        cases: dict[str, Case] = {}
        for line, row in _rows(self.key_csv, KEY_COLUMNS):
            case_id = row["case_id"]
            if not OPAQUE_ID.match(case_id) or case_id in cases:
                raise InputError("not a fresh 16-hex-digit case id", file=self.key_csv, record=line, field="case_id")
            if row["truth"] not in TRUTHS:
                raise InputError(f"must be one of {list(TRUTHS)}", file=self.key_csv, record=line, field="truth")
            if row["truth"] == "synthetic" and not row["method"]:
                raise InputError("a synthetic case names its method", file=self.key_csv, record=line, field="method")
            birads = row["birads"]
            if birads and birads not in {str(b) for b in range(1, 6)}:
                raise InputError("must be 1-5 or empty", file=self.key_csv, record=line, field="birads")
            cases[case_id] = Case(
                case_id=case_id,
                truth=row["truth"],
                method=row["method"] if row["truth"] == "synthetic" else "",
                birads=int(birads) if birads else None,
                density=row["density"],
                view=row["view"],
                laterality=row["laterality"],
                source_id=row["source_id"],
            )
        return cases

    def readers(self) -> dict[str, str]:
        """reader_id -> token."""
        out: dict[str, str] = {}
        for line, row in _rows(self.readers_csv, READER_COLUMNS):
            if not READER_ID.match(row["reader_id"]) or row["reader_id"] in out:
                raise InputError("not a fresh reader id", file=self.readers_csv, record=line, field="reader_id")
            if len(row["token"]) < 16:
                raise InputError("tokens are at least 16 characters", file=self.readers_csv, record=line, field="token")
            out[row["reader_id"]] = row["token"]
        return out

    def trials(self, mode: Mode, key: dict[str, Case]) -> dict[str, Trial]:
        if mode == "single":
            return {c: Trial(c, (c,)) for c in key}
        trials: dict[str, Trial] = {}
        for line, row in _rows(self.trials_csv, TRIAL_COLUMNS):
            for column in ("left", "right"):
                if row[column] not in key:
                    raise InputError("no such case in key.csv", file=self.trials_csv, record=line, field=column)
            if not OPAQUE_ID.match(row["trial_id"]) or row["trial_id"] in trials:
                raise InputError("not a fresh trial id", file=self.trials_csv, record=line, field="trial_id")
            trials[row["trial_id"]] = Trial(row["trial_id"], (row["left"], row["right"]))
        return trials

    def orders(self, readers: dict[str, str], trials: dict[str, Trial]) -> dict[str, list[str]]:
        """reader_id -> trial ids in reading order."""
        positions: dict[str, dict[int, str]] = {r: {} for r in readers}
        for line, row in _rows(self.order_csv, ORDER_COLUMNS):
            if row["reader_id"] not in positions:
                raise InputError("not in readers.csv", file=self.order_csv, record=line, field="reader_id")
            if row["trial_id"] not in trials:
                raise InputError("no such trial", file=self.order_csv, record=line, field="trial_id")
            try:
                pos = int(row["position"])
            except ValueError:
                raise InputError("must be an integer", file=self.order_csv, record=line, field="position") from None
            positions[row["reader_id"]][pos] = row["trial_id"]
        return {r: [p[k] for k in sorted(p)] for r, p in positions.items()}

    # -- writing (create) ---------------------------------------------------------------------

    def write_info(self, info: dict[str, Any]) -> None:
        write_json(self.info_json, {"format_version": FORMAT_VERSION, **info}, indent=2)

    def write_key(self, cases: list[Case]) -> None:
        _write(
            self.key_csv,
            KEY_COLUMNS,
            ([getattr(c, k) if getattr(c, k) is not None else "" for k in KEY_COLUMNS] for c in cases),
        )

    def write_readers(self, readers: dict[str, str]) -> None:
        _write(self.readers_csv, READER_COLUMNS, readers.items())

    def write_orders(self, orders: dict[str, list[str]]) -> None:
        _write(self.order_csv, ORDER_COLUMNS, ((r, i, t) for r, ids in orders.items() for i, t in enumerate(ids)))

    def write_trials(self, trials: list[Trial]) -> None:
        _write(self.trials_csv, TRIAL_COLUMNS, ((t.trial_id, *t.cases) for t in trials))


def _rows(path: Path, columns: tuple[str, ...]):
    """(line number, row) of a CSV with exactly ``columns``; line 1 is the header."""
    if not path.is_file():
        raise InputError("missing", file=path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != columns:
            raise InputError(f"columns must be {','.join(columns)}", file=path, record=1)
        for row in reader:
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}


def _write(path: Path, columns: tuple[str, ...], rows) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
