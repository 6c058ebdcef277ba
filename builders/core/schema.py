"""The one definition of mammosynth's label vocabularies, dataset features and prompt templates.

Every other module imports from here; nothing re-declares a label list, a feature or a prompt.
"""

from __future__ import annotations

from typing import Literal

import datasets

# --- label vocabularies -------------------------------------------------------------------------

METHODS: tuple[str, ...] = ("text2image", "inpainting", "poisson")
BIRADS_NAMES: tuple[str, ...] = tuple(f"BI-RADS {i}" for i in range(1, 6))
VIEWS: tuple[str, ...] = ("CC", "MLO")
LATERALITIES: tuple[str, ...] = ("L", "R")
DENSITIES: tuple[str, ...] = ("A", "B", "C", "D")
SPLITS: tuple[str, ...] = ("training", "test")
CONFIGS: tuple[str, ...] = (*METHODS, "all")

Method = Literal["text2image", "inpainting", "poisson"]
View = Literal["CC", "MLO"]
Laterality = Literal["L", "R"]
Density = Literal["A", "B", "C", "D"]
BiradsInt = Literal[1, 2, 3, 4, 5]

LATERALITY_WORDS = {"L": "left", "R": "right"}
VIEW_WORDS = {"CC": "craniocaudal", "MLO": "mediolateral oblique"}


def birads_label(birads: int) -> str:
    """``3`` -> ``"BI-RADS 3"`` (the ClassLabel name)."""
    if birads not in range(1, 6):
        raise ValueError(f"BI-RADS must be 1..5, got {birads!r}")
    return f"BI-RADS {birads}"


def parse_birads(value: object) -> int:
    """Accept ``3``, ``"3"``, ``"BI-RADS 3"``, ``"BIRADS 3"`` and return the integer 1..5."""
    text = str(value).strip().upper().replace("BI-RADS", "").replace("BIRADS", "").strip()
    try:
        b = int(float(text))
    except ValueError:
        raise ValueError(f"unknown BI-RADS value {value!r}") from None
    if b not in range(1, 6):
        raise ValueError(f"unknown BI-RADS value {value!r}")
    return b


def parse_density(value: object) -> str | None:
    """Accept ``"DENSITY C"``, ``"C"``, ``3`` (1..4) or empty and return ``"A".."D"`` or None."""
    if value is None:
        return None
    text = str(value).strip().upper().replace("DENSITY", "").strip()
    if text in ("", "NAN", "NONE"):
        return None
    if text in DENSITIES:
        return text
    if text in ("1", "2", "3", "4"):
        return DENSITIES[int(text) - 1]
    raise ValueError(f"unknown density value {value!r}")


# --- published features (design.md §3) ----------------------------------------------------------


def release_features() -> datasets.Features:
    """Features of a published release, one row per synthetic image."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "method": datasets.ClassLabel(names=list(METHODS)),
            "birads": datasets.ClassLabel(names=list(BIRADS_NAMES)),
            "view": datasets.ClassLabel(names=list(VIEWS)),
            "laterality": datasets.ClassLabel(names=list(LATERALITIES)),
            # unknown density is null (ClassLabel encodes None as null), never -1
            "density": datasets.ClassLabel(names=list(DENSITIES)),
            "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
            "seed": datasets.Value("int64"),
            "mask_seed": datasets.Value("int64"),
            "prompt": datasets.Value("string"),
            "source_image": datasets.Value("string"),
            "lesion_source": datasets.Value("string"),
            "manufacturer": datasets.Value("string"),
            "generator": datasets.Value("string"),
        }
    )


RELEASE_COLUMNS: tuple[str, ...] = tuple(release_features().keys())


def lesion_id(image_id: str, finding: int) -> str:
    """The pseudonymous id of a donor lesion: its source image's id and the finding's index."""
    return f"{image_id}-f{finding}"


def lesion_image_id(lesion: str) -> str:
    """The source image id inside a ``lesion_id`` (the donor whose pixels a Poisson row embeds)."""
    return lesion.rsplit("-f", 1)[0]


SOURCE_COLUMN = "source"  # prepared column: the name of the source a row came from (ingest.json ``sources`` key)


def prepared_features(*, with_source: bool = False) -> datasets.Features:
    """Features of the prepared (local, never published) training set.

    ``with_source`` adds the `SOURCE_COLUMN` that `mammosynth ingest` and `ingest merge` write, so
    that every row's licence can be looked up (`core.prepared.row_source`). It is optional: older
    sets and hand-made test sets (``Dataset.from_list(rows, features=prepared_features())``) have
    only the required `PREPARED_COLUMNS`."""
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "study_id": datasets.Value("string"),
            "laterality": datasets.Value("string"),
            "view": datasets.Value("string"),
            "birads": datasets.Value("int8"),
            "density": datasets.Value("string"),
            "manufacturer": datasets.Value("string"),
            "model_name": datasets.Value("string"),
            "split": datasets.Value("string"),
            "orig_height": datasets.Value("int32"),
            "orig_width": datasets.Value("int32"),
            "findings": datasets.List(
                {
                    "bbox": datasets.List(datasets.Value("float32"), length=4),
                    "categories": datasets.List(datasets.Value("string")),
                    "finding_birads": datasets.Value("int8"),
                }
            ),
            "flipped": datasets.Value("bool"),
        }
    )
    if with_source:
        features[SOURCE_COLUMN] = datasets.Value("string")
    return features


# The columns every prepared set has (the optional SOURCE_COLUMN is not among them).
PREPARED_COLUMNS: tuple[str, ...] = tuple(prepared_features().keys())


# --- prompt templates (shared by training and generation) ---------------------------------------

TEXT2IMAGE_TEMPLATE = (
    "A {laterality_word} {view_word} ({view}) mammogram, breast density {density}, BI-RADS {birads}{vendor_clause}."
)
INPAINTING_TEMPLATE = "A mammogram with BI-RADS {birads} lesion."


def text2image_prompt(
    laterality: str, view: str, density: str | None, birads: int, manufacturer: str | None = None
) -> str:
    """Structured caption: laterality, view, density A–D, BI-RADS (source paper §3.1)."""
    return TEXT2IMAGE_TEMPLATE.format(
        laterality_word=LATERALITY_WORDS[laterality],
        view_word=VIEW_WORDS[view],
        view=view,
        density=density if density else "unknown",
        birads=birads,
        vendor_clause=f", acquired on a {manufacturer} system" if manufacturer else "",
    )


def inpainting_prompt(birads: int) -> str:
    """Fixed per-class prompt used to train and run the BI-RADS-specific inpainting models."""
    return INPAINTING_TEMPLATE.format(birads=birads)
