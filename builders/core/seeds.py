"""Per-image seeds derived from the file name (source paper §3.3).

seed = (int(first 8 hex digits of sha256(file name)) + base) mod 2**32, with base 700 for masks
and lesion placement and 1337 for diffusion sampling. Hashing the name, not a counter, keeps an
image's seed stable when the plan is re-ordered, sharded or resumed.
"""

from __future__ import annotations

import hashlib

MASK_SEED_BASE = 700
SAMPLING_SEED_BASE = 1337


def image_seed(file_name: str, base: int) -> int:
    digest = hashlib.sha256(file_name.encode("utf-8")).hexdigest()
    return (int(digest[:8], 16) + base) % 2**32


def mask_seed(file_name: str) -> int:
    return image_seed(file_name, MASK_SEED_BASE)


def sampling_seed(file_name: str) -> int:
    return image_seed(file_name, SAMPLING_SEED_BASE)
