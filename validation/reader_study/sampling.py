"""Which cases a study shows: synthetic rows stratified as asked (an equal share per stratum, what
a stratum cannot fill passing to the others), real images matched to the synthetic sample's
(view, laterality, BI-RADS) cells where the real set has them, then on (view, laterality), view,
and anything. Pure functions of the candidates and a seeded generator."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

STRATA = ("method", "birads", "view")


@dataclass(frozen=True)
class Candidate:
    row: int  # index in its dataset
    image_id: str
    method: str  # "" for real images
    birads: int | None
    density: str
    view: str
    laterality: str
    mirrored: bool = False  # stored mirrored (prepared right images): flipped back when prepared


def equal_shares(sizes: Sequence[int], total: int) -> list[int]:
    """``total`` split as evenly as the group ``sizes`` allow (water filling): no group gets more
    than it has; what the small groups cannot take goes to the larger ones."""
    shares = [0] * len(sizes)
    left = min(total, sum(sizes))
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for k, i in enumerate(order):
        shares[i] = min(sizes[i], left // (len(order) - k))
        left -= shares[i]
    return shares


def stratified(pool: list[Candidate], n: int, by: Sequence[str], rng: np.random.Generator) -> list[Candidate]:
    """``n`` candidates of ``pool``, an equal share per stratum of the ``by`` fields."""
    groups: dict[tuple, list[Candidate]] = defaultdict(list)
    for c in pool:
        groups[tuple(getattr(c, f) for f in by)].append(c)
    keys = sorted(groups, key=lambda k: tuple(str(v) for v in k))
    shares = equal_shares([len(groups[k]) for k in keys], n)
    out: list[Candidate] = []
    for k, share in zip(keys, shares):
        members = groups[k]
        picked = rng.choice(len(members), size=share, replace=False) if share else []
        out.extend(members[i] for i in sorted(picked))
    return out


# Matching levels, most to least specific: (view, laterality, BI-RADS), (view, laterality), view, any.
MATCH_LEVELS: tuple[Callable[[Candidate], tuple], ...] = (
    lambda c: (c.view, c.laterality, c.birads),
    lambda c: (c.view, c.laterality),
    lambda c: (c.view,),
    lambda c: (),
)


def matched(
    real: list[Candidate], synthetic: list[Candidate], n: int, rng: np.random.Generator
) -> tuple[list[Candidate], list[Candidate | None], Counter]:
    """``n`` real candidates following the synthetic sample's cells; returns them, the synthetic
    case each was matched to (in order; None when ``n`` exceeds the synthetic sample) and how many
    were matched at each level (0 = exact cell)."""
    if n > len(real):
        raise ValueError(f"the real set has {len(real)} eligible images, {n} asked for")
    # the synthetic sample's cells: each synthetic case once (a random subset when fewer real cases
    # are asked for, repeated evenly when more), in random order
    if synthetic:
        reps = -(-n // len(synthetic))
        picks = rng.permutation(np.tile(np.arange(len(synthetic)), reps))[:n]
        targets: list[Candidate | None] = [synthetic[i] for i in picks]
    else:
        targets = [None] * n
    taken: set[int] = set()
    chosen: list[Candidate | None] = [None] * n
    levels: Counter = Counter()
    order = rng.permutation(len(real))
    for level, key in enumerate(MATCH_LEVELS):
        index: dict[tuple, list[int]] = defaultdict(list)
        for i in order:
            if int(i) not in taken:
                index[key(real[i])].append(int(i))
        for slot, target in enumerate(targets):
            if chosen[slot] is not None:
                continue
            want = key(target) if target is not None else ()
            bucket = index.get(want) if target is not None or level == len(MATCH_LEVELS) - 1 else None
            while bucket:
                i = bucket.pop()
                if i not in taken:
                    taken.add(i)
                    chosen[slot] = real[i]
                    levels[level] += 1
                    break
    return [c for c in chosen if c is not None], targets, levels
