"""The identity of a prepared set is its content: the same rows in another folder, written at
another time, give the same checkpoint data hash and the same lesion-bank key (so the release's
``generator`` column is reproducible); changed rows give another."""

from __future__ import annotations

import shutil
import time

import datasets

from mammosynth.builders.core.hashing import dataset_content_hash
from mammosynth.generators.lesion_bank import bank_fingerprint
from mammosynth.training.data import data_hash


def test_same_content_elsewhere_same_identity(prepared_set, tmp_path) -> None:
    time.sleep(1.1)  # another mtime second
    copy = shutil.copytree(prepared_set, tmp_path / "elsewhere", copy_function=shutil.copy)
    a, b = datasets.load_from_disk(str(prepared_set)), datasets.load_from_disk(str(copy))
    rows = [{"image_id": i} for i in a["image_id"][:3]]
    assert dataset_content_hash(a) == dataset_content_hash(b)
    assert data_hash(a, rows) == data_hash(b, rows)
    assert bank_fingerprint(prepared_set, [5], 0.25) == bank_fingerprint(copy, [5], 0.25)

    changed = b.select(range(len(b) - 1))
    changed.save_to_disk(str(tmp_path / "changed"))
    c = datasets.load_from_disk(str(tmp_path / "changed"))
    assert dataset_content_hash(c) != dataset_content_hash(a)
    assert data_hash(a, rows) != data_hash(a, rows[:2])
