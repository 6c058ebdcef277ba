"""A study folder shaped like the source paper's (1,062 real and 1,134 synthetic images: 421
SD3.5, 347 inpainting, 366 Poisson; 7 readers, each image read once) and an answer set built to
match its Table 1 and Table 2 counts. No case images: scoring reads the key and the answers."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np

from mammosynth.validation.reader_study.layout import Case, StudyLayout
from mammosynth.validation.reader_study.survey import DEFAULT_SURVEY

REAL, REAL_CORRECT = 1062, 751
METHODS = {"text2image": (421, 261), "inpainting": (347, 203), "poisson": (366, 252)}
READERS = [f"R{i}" for i in range(1, 8)]


def write_study(root: Path, seed: int = 0) -> tuple[StudyLayout, list[Case]]:
    rng = np.random.default_rng(seed)
    ids = iter(sorted({rng.bytes(8).hex() for _ in range(5000)}))
    cases = []
    groups = [("real", "", REAL)] + [("synthetic", m, n) for m, (n, _) in METHODS.items()]
    for truth, method, n in groups:
        for i in range(n):
            cases.append(
                Case(
                    next(ids),
                    truth,
                    method,
                    1 + i % 5,
                    "ABCD"[i % 4],
                    ("CC", "MLO")[i % 2],
                    "LR"[(i // 2) % 2],
                    f"{method or 'real'}-{i}",
                )
            )
    layout = StudyLayout(root)
    root.mkdir(parents=True)
    layout.write_info(
        {"mode": "single", "seed": seed, "notes": [], "admin_token": "a" * 24, "image": {"size": 512, "bit_depth": 8}}
    )
    layout.write_key(cases)
    layout.write_readers({r: f"token-{r}-" + "x" * 16 for r in READERS})
    layout.write_orders({r: [c.case_id for c in cases] for r in READERS})
    shutil.copyfile(DEFAULT_SURVEY, layout.survey_yaml)
    return layout, cases


def write_answers(path: Path, cases: list[Case], seed: int = 0) -> list[dict]:
    """One read per case, spread over the readers; exactly the paper's correct counts per group,
    the correct reads drawn at random within each group; confidence, BI-RADS and time at random."""
    rng = np.random.default_rng(seed)
    rows = []
    by_group: dict[str, list[Case]] = {}
    for c in cases:
        by_group.setdefault(c.method or "real", []).append(c)
    correct_of = {"real": REAL_CORRECT, **{m: k for m, (_, k) in METHODS.items()}}
    for group, members in by_group.items():
        correct = set(rng.choice(len(members), correct_of[group], replace=False).tolist())
        for i, c in enumerate(members):
            right = i in correct
            judged = c.truth if right else ("synthetic" if c.truth == "real" else "real")
            rows.append(
                {
                    "reader_id": READERS[int(rng.integers(len(READERS)))],
                    "case_id": c.case_id,
                    "judged": judged,
                    "confidence": int(rng.integers(1, 4)),
                    "birads": int(rng.integers(1, 6)) if rng.random() > 0.05 else "",
                    "seconds": round(float(rng.uniform(1, 20)), 2),
                }
            )
    rng.shuffle(rows)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["reader_id", "case_id", "judged", "confidence", "birads", "seconds"])
        w.writeheader()
        w.writerows(rows)
    return rows
