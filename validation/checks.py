"""The names of every check and gate, defined once (the rules that judge them: ``rules``).

A finding names its check (``Flag.check``), the per-image gates list the checks they count, and
report.json keys its gates by name; every module of the gate (and anything reading a report) takes
the names from here, so a check cannot be renamed in one place and miss another.
"""

from __future__ import annotations

# --- per-image sanity checks (Otsu breast mask, format, boxes) ---------------------------------
UNREADABLE = "unreadable"
BLANK = "blank"
SATURATED = "saturated"
NO_BREAST = "no_breast"
AREA_FRACTION = "area_fraction"
NO_DARK_BACKGROUND = "no_dark_background"
LATERALITY_SIDE = "laterality_side"
MODE = "mode"
BIT_DEPTH = "bit_depth"
SIZE = "size"
BBOX_OUTSIDE_IMAGE = "bbox_outside_image"
BBOX_OUTSIDE_BREAST = "bbox_outside_breast"
LESION_REGION = "lesion_region"

SANITY_CHECKS: frozenset[str] = frozenset(
    {
        UNREADABLE,
        BLANK,
        SATURATED,
        NO_BREAST,
        AREA_FRACTION,
        NO_DARK_BACKGROUND,
        LATERALITY_SIDE,
        MODE,
        BIT_DEPTH,
        SIZE,
        BBOX_OUTSIDE_IMAGE,
        BBOX_OUTSIDE_BREAST,
        LESION_REGION,
    }
)

# --- de-duplication / memorization checks ------------------------------------------------------
EXACT_COPY = "exact_copy"
MEMORIZATION = "memorization"  # a text2image row close to a training image
TRAINING_MATCH = "training_match"  # an inpainting/poisson row close to a training image not its own background
NEAR_DUPLICATE_PHASH = "near_duplicate_phash"
# an inpainting/poisson row close to another image (another view) of its own background's patient
SAME_PATIENT_OTHER_VIEW = "same_patient_other_view"
BACKGROUND_ALTERED = "background_altered"
SOURCE_MISSING = "source_missing"
DUPLICATE_IN_RELEASE = "duplicate_in_release"

MEMORIZATION_CHECKS: frozenset[str] = frozenset(
    {
        EXACT_COPY,
        MEMORIZATION,
        TRAINING_MATCH,
        NEAR_DUPLICATE_PHASH,
        SAME_PATIENT_OTHER_VIEW,
        BACKGROUND_ALTERED,
        SOURCE_MISSING,
        DUPLICATE_IN_RELEASE,
    }
)
# the checks that say "this row is a copy of a training image"
COPY_CHECKS: tuple[str, ...] = (EXACT_COPY, NEAR_DUPLICATE_PHASH, MEMORIZATION)

# --- gates, as report.json names them (in the report's order) ----------------------------------
GATE_SANITY = "sanity"
GATE_MEMORIZATION = "memorization"
GATE_COUNTS = "counts"
GATE_CATEGORICAL = "categorical"
GATE_BOX_SIZE = "box_size"
GATE_INTENSITY = "intensity"
GATE_AREA = "area"
GATE_DIVERSITY = "diversity"
GATE_CANARIES = "canaries"  # the memorization check's own recall on planted copies
GATE_DRIFT = "drift"  # only with a baseline


__all__ = [
    "UNREADABLE",
    "BLANK",
    "SATURATED",
    "NO_BREAST",
    "AREA_FRACTION",
    "NO_DARK_BACKGROUND",
    "LATERALITY_SIDE",
    "MODE",
    "BIT_DEPTH",
    "SIZE",
    "BBOX_OUTSIDE_IMAGE",
    "BBOX_OUTSIDE_BREAST",
    "LESION_REGION",
    "SANITY_CHECKS",
    "EXACT_COPY",
    "MEMORIZATION",
    "TRAINING_MATCH",
    "NEAR_DUPLICATE_PHASH",
    "SAME_PATIENT_OTHER_VIEW",
    "BACKGROUND_ALTERED",
    "SOURCE_MISSING",
    "DUPLICATE_IN_RELEASE",
    "MEMORIZATION_CHECKS",
    "COPY_CHECKS",
    "GATE_SANITY",
    "GATE_MEMORIZATION",
    "GATE_COUNTS",
    "GATE_CATEGORICAL",
    "GATE_BOX_SIZE",
    "GATE_INTENSITY",
    "GATE_AREA",
    "GATE_DIVERSITY",
    "GATE_CANARIES",
    "GATE_DRIFT",
]
