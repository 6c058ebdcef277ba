"""`reader-study create`: what a study folder holds, blinding of the case files, per-reader
orders, matching, refusal of overlapping sets, the training-set note, 2afc pairs."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from reader_study.conftest import release_rows

from helpers.synthetic import mammogram, release_row, write_generated
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.imageio import decode
from mammosynth.validation.reader_study.caseimage import png_layout, prepare_case
from mammosynth.validation.reader_study.commands import reader_study
from mammosynth.validation.reader_study.create import CreateOptions, create_study, reader_order
from mammosynth.validation.reader_study.layout import StudyLayout
from mammosynth.validation.reader_study.sampling import equal_shares


def test_study_folder_contract(made_study):
    layout = StudyLayout(made_study)
    key = layout.key()
    assert Counter(c.truth for c in key.values()) == {"real": 12, "synthetic": 12}
    assert Counter(c.method for c in key.values() if c.truth == "synthetic") == {
        "text2image": 4,
        "inpainting": 4,
        "poisson": 4,
    }
    assert sorted(p.stem for p in layout.cases.glob("*.png")) == sorted(key)
    with open(layout.key_csv, newline="") as fh:
        assert next(csv.reader(fh)) == [
            "case_id",
            "truth",
            "method",
            "birads",
            "density",
            "view",
            "laterality",
            "source_id",
        ]
    readers = layout.readers()
    assert sorted(readers) == [f"R{i}" for i in range(1, 8)]
    assert len(set(readers.values())) == 7 and all(len(t) >= 24 for t in readers.values())
    info = layout.info()
    assert info["mode"] == "single" and info["n_real"] == 12 and info["n_synthetic"] == 12


def test_case_files_do_not_tell_real_from_synthetic(made_study):
    """Same dimensions, bit depth, colour type, interlace and chunk layout (no text, time or
    physical-size chunk) for every case; only the pixels differ."""
    layout = StudyLayout(made_study)
    key = layout.key()
    layouts = {truth: set() for truth in ("real", "synthetic")}
    for case in key.values():
        data = layout.case_png(case.case_id).read_bytes()
        layouts[case.truth].add(png_layout(data))
        arr = decode(data)
        assert arr.dtype == np.uint8 and arr.ndim == 2
    assert layouts["real"] == layouts["synthetic"]
    assert len(layouts["real"]) == 1
    ((ihdr, chunks),) = layouts["real"]
    assert ihdr[:4] == (256, 256, 8, 0) and chunks == ("IHDR", "IDAT", "IEND")


def test_one_preparation_unmirrors_and_keeps_the_chest_wall_at_its_side():
    rng = np.random.default_rng(0)
    right = mammogram(rng, 320, 256, "R", "CC")  # breast against the right edge
    stored_mirrored = right[:, ::-1].copy()  # how a prepared set may store it (flipped=True)
    a = decode(prepare_case(right, size=200))
    b = decode(prepare_case(stored_mirrored, size=200, mirrored=True))
    assert np.array_equal(a, b)
    assert a.shape == (200, 200)
    assert a[:, -5:].mean() > a[:, :5].mean()  # letterboxed against the right (chest-wall) edge


def test_each_reader_has_their_own_reproducible_order(made_study):
    layout = StudyLayout(made_study)
    key = layout.key()
    orders = layout.orders(layout.readers(), layout.trials("single", key))
    assert all(sorted(o) == sorted(key) for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) == 7
    assert orders["R3"] == reader_order(list(key), 3, "R3")
    assert reader_order(list(key), 3, "R3") != reader_order(list(key), 4, "R3")


def test_real_cases_match_the_synthetic_cells_and_skip_background_studies(made_study, study_inputs):
    layout = StudyLayout(made_study)
    key = layout.key()
    real = [c for c in key.values() if c.truth == "real"]
    synth = [c for c in key.values() if c.truth == "synthetic"]
    # backgrounds of inpainting rows and every image of their studies stay out
    assert not {c.source_id for c in real} & {"ref0-0000-LCC", "ref0-0001-LMLO"}
    assert not [c for c in real if c.source_id.startswith(("ref0-0000-", "ref0-0001-"))]
    info = layout.info()
    assert info["real_is_training_set"] is True
    assert any("training set" in n for n in info["notes"])
    cells = Counter((c.view, c.laterality) for c in synth)
    got = Counter((c.view, c.laterality) for c in real)
    assert got == cells  # the reference set has every (view, laterality): all matched at least there
    assert info["real_matching"]["exact"] + info["real_matching"]["view_laterality"] == 12


def test_equal_shares_fill_small_strata_first():
    assert equal_shares([10, 10, 10], 10) == [3, 3, 4]
    assert equal_shares([1, 10, 10], 9) == [1, 4, 4]
    assert equal_shares([0, 5], 3) == [0, 3]


def test_refuses_a_release_that_contains_a_real_image(study_inputs, tmp_path):
    release, real = study_inputs
    import datasets

    ds = datasets.load_from_disk(str(real))
    leaked = np.asarray(ds[5]["image"])  # the same pixels, encoded again (other bytes)
    rows = release_rows(["ref0-0000-LCC"])
    rows["text2image"].append(release_row(leaked, "text2image-leak", "text2image", 2, "CC", "L"))
    bad = write_generated(tmp_path / "run", rows)
    with pytest.raises(InputError, match="same pixels") as err:
        create_study(bad, real, tmp_path / "study", CreateOptions(4, 4, 2, workers=1))
    assert err.value.record == ds[5]["image_id"]
    assert not (tmp_path / "study").exists()


def test_refuses_shared_image_ids(study_inputs, tmp_path):
    _, real = study_inputs
    rows = release_rows(["ref0-0000-LCC"])
    rng = np.random.default_rng(5)
    rows["poisson"].append(release_row(mammogram(rng, 256, 256), "ref0-0007-RCC", "poisson", 4, "CC", "R"))
    bad = write_generated(tmp_path / "run", rows)
    with pytest.raises(InputError, match="share 1 image ids"):
        create_study(bad, real, tmp_path / "study", CreateOptions(4, 4, 2, workers=1))


def test_two_afc_pairs_one_real_with_one_synthetic(study_inputs, tmp_path):
    release, real = study_inputs
    create_study(release, real, tmp_path / "s", CreateOptions(6, 6, 2, mode="2afc", seed=1, workers=1))
    layout = StudyLayout(tmp_path / "s")
    key = layout.key()
    trials = layout.trials("2afc", key)
    assert len(trials) == 6
    for t in trials.values():
        assert sorted(key[c].truth for c in t.cases) == ["real", "synthetic"]
    sides = Counter(key[t.cases[0]].truth for t in trials.values())
    assert len({c for t in trials.values() for c in t.cases}) == 12
    assert set(sides) <= {"real", "synthetic"}
    assert json.loads(layout.info_json.read_text())["mode"] == "2afc"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--n-synthetic", "999"], "--n-synthetic"),
        (["--n-real", "999"], "--n-real"),
        (["--stratify", "method,colour"], "--stratify"),
        (["--mode", "2afc", "--n-real", "3"], "--n-real"),
    ],
)
def test_cli_bad_options_are_exit_2_naming_the_option(study_inputs, tmp_path, args, field):
    from mammosynth.builders.cli import main  # noqa: F401 - the table maps reader-study here

    release, real = study_inputs
    base = [
        "create",
        str(release),
        "--real",
        str(real),
        "--out",
        str(tmp_path / "s"),
        "--n-real",
        "4",
        "--n-synthetic",
        "4",
        "--readers",
        "2",
    ]
    result = CliRunner().invoke(reader_study, base + args, standalone_mode=False)
    assert isinstance(result.exception, InputError)
    assert result.exception.field == field
    assert not (tmp_path / "s").exists()


def test_a_study_is_never_overwritten(study_inputs, made_study):
    release, real = study_inputs
    with pytest.raises(InputError, match="not empty"):
        create_study(release, real, made_study, CreateOptions(2, 2, 1, workers=1))


def test_create_from_the_cli_prints_where_the_tokens_are(study_inputs, tmp_path):
    release, real = study_inputs
    out = tmp_path / "s"
    args = [
        "create",
        str(release),
        "--real",
        str(real),
        "--out",
        str(out),
        "--n-real",
        "3",
        "--n-synthetic",
        "3",
        "--readers",
        "2",
        "--stratify",
        "method,view",
    ]
    result = CliRunner().invoke(reader_study, args)
    assert result.exit_code == 0, result.output
    assert "readers.csv" in result.output
    assert Path(out / "key.csv").is_file()


def test_create_streams_the_release_never_loading_it_whole(study_inputs, tmp_path, monkeypatch):
    """A release of 48k images does not fit in memory: create reads rows from their files."""
    from mammosynth.validation.release_files import ReleaseRows

    def whole(self):
        raise AssertionError("the whole release was loaded into memory")

    monkeypatch.setattr(ReleaseRows, "_materialised", property(whole))
    release, real = study_inputs
    made = create_study(release, real, tmp_path / "s", CreateOptions(4, 4, 2, seed=3, workers=2))
    assert len(list(StudyLayout(made.root).cases.iterdir())) == 8


def test_parallel_writers_write_the_same_study(study_inputs, tmp_path):
    """Two worker processes (forked, reading the shared datasets) write byte for byte what one
    process writes for the same seed; tokens are the only difference (they are never seeded)."""
    release, real = study_inputs
    for name, workers in (("one", 1), ("two", 2)):
        create_study(release, real, tmp_path / name, CreateOptions(16, 16, 2, seed=9, workers=workers))
    one, two = StudyLayout(tmp_path / "one"), StudyLayout(tmp_path / "two")
    assert one.key_csv.read_bytes() == two.key_csv.read_bytes()
    assert one.order_csv.read_bytes() == two.order_csv.read_bytes()
    files = sorted(p.name for p in one.cases.iterdir())
    assert len(files) == 32 and files == sorted(p.name for p in two.cases.iterdir())
    assert all((one.cases / f).read_bytes() == (two.cases / f).read_bytes() for f in files)
    assert one.readers() != two.readers()


def test_fewer_real_cases_follow_a_random_subset_of_the_synthetic_cells():
    from mammosynth.validation.reader_study.sampling import Candidate, matched

    synthetic = [Candidate(i, f"s{i}", "m", 1, "", "CC" if i < 10 else "MLO", "L") for i in range(20)]
    real = [Candidate(i, f"r{i}", "", 1, "", v, "L") for i, v in enumerate(["CC"] * 30 + ["MLO"] * 30)]
    views = Counter()
    for seed in range(40):
        chosen, targets, levels = matched(real, synthetic, 4, np.random.default_rng(seed))
        assert levels[0] == 4 and [c.view for c in chosen] == [t.view for t in targets]
        views.update(c.view for c in chosen)
    assert 0.35 < views["MLO"] / 160 < 0.65  # not the first cells of the list only
