"""The iMRMC input format (FDA/DIDSR iMRMC: MRMC variance analysis of AUROC): a header (NR
readers, N0 negative = real cases, N1 positive = synthetic cases, NM modalities), ``BEGIN DATA:``,
one truth line per case (``-1,case,0,truth``) and one line per read (``reader,case,modality,score``,
the 1-6 rating). Cases are numbered 1..N (some readers of the format take integers only); the
table beside it maps the numbers back to the study's case ids."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mammosynth.builders.core.atomic import atomic_file

MODALITY = "reading"


def imrmc_text(reads: Sequence[Any]) -> tuple[str, list[tuple[int, str]]]:
    """The iMRMC file's text for single-mode reads, and (case number, case id) rows."""
    cases = sorted({r.case.case_id: r.case.truth for r in reads}.items(), key=lambda kv: (kv[1] == "synthetic", kv[0]))
    number = {cid: i + 1 for i, (cid, _) in enumerate(cases)}
    readers = sorted({r.reader_id for r in reads})
    lines = [
        "mammosynth reader study: real (truth 0) vs synthetic (truth 1), rating 1-6",
        f"NR: {len(readers)}",
        f"N0: {sum(t == 'real' for _, t in cases)}",
        f"N1: {sum(t == 'synthetic' for _, t in cases)}",
        "NM: 1",
        "",
        "BEGIN DATA:",
    ]
    lines += [f"-1,{number[cid]},0,{int(truth == 'synthetic')}" for cid, truth in cases]
    lines += [
        f"{r.reader_id},{number[r.case.case_id]},{MODALITY},{r.rating}"
        for r in sorted(reads, key=lambda r: (r.reader_id, number[r.case.case_id]))
    ]
    return "\n".join(lines) + "\n", [(number[cid], cid) for cid, _ in cases]


def write_imrmc(reads: Sequence[Any], path: Path, cases_csv: Path) -> None:
    text, table = imrmc_text(reads)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_file(cases_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["case_number", "case_id"])
        w.writerows(table)
