"""PNG plots for the report (matplotlib, Agg backend: no display on CI)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mammosynth.builders.core.atomic import atomic_file  # noqa: E402


def _save(fig, path: Path) -> str:
    try:
        with atomic_file(path) as tmp:  # the temporary's name has no .png: the format is given
            fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    finally:
        plt.close(fig)
    return str(path)


def intensity_histograms(release: dict[str, np.ndarray], reference: np.ndarray, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    centers = (np.arange(len(reference)) + 0.5) / len(reference)
    if reference.sum():
        ax.plot(centers, reference / reference.sum(), "k-", lw=2, label="reference")
    for name, h in release.items():
        if h.sum():
            ax.plot(centers, h / h.sum(), label=name)
    ax.set_xlabel("in-breast intensity (0..1)")
    ax.set_ylabel("share of pixels")
    ax.legend(fontsize=8)
    ax.set_title("Intensity histograms")
    return _save(fig, path)


def box_sizes(
    release: dict[int, tuple[np.ndarray, np.ndarray]], reference: dict[int, tuple[np.ndarray, np.ndarray]], path: Path
) -> str:
    classes = sorted(set(release) | set(reference))
    fig, axes = plt.subplots(1, max(1, len(classes)), figsize=(3.2 * max(1, len(classes)), 3), squeeze=False)
    for ax, b in zip(axes[0], classes):
        # markers on a line artist (no line), not scatter: one stamped marker, ~2x faster for the
        # reference's tens of thousands of boxes, same look
        if b in reference:
            ax.plot(*reference[b], "o", ms=6**0.5, mew=0.5, c="k", alpha=0.4, label="reference")
        if b in release:
            ax.plot(*release[b], "o", ms=6**0.5, mew=0.5, c="tab:red", alpha=0.6, label="release")
        ax.set_title(f"BI-RADS {b}")
        ax.set_xlabel("width / image width")
        ax.set_ylabel("height / image height")
        ax.legend(fontsize=7)
    return _save(fig, path)


def class_counts(observed: dict[str, int], expected: dict[str, int] | None, path: Path) -> str:
    keys = sorted(set(observed) | set(expected or {}))
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(keys)), 3.5))
    x = np.arange(len(keys))
    ax.bar(x - 0.2, [observed.get(k, 0) for k in keys], 0.4, label="release")
    if expected is not None:
        ax.bar(x + 0.2, [expected.get(k, 0) for k in keys], 0.4, label="spec")
    ax.set_xticks(x, keys, rotation=90, fontsize=6)
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.set_title("Images per method x BI-RADS x view x laterality")
    return _save(fig, path)


def flagged_grid(pairs: list[tuple[str, np.ndarray, str | None, np.ndarray | None]], path: Path) -> str:
    """Each row: a flagged image (with its check) beside its nearest training image."""
    n = max(1, len(pairs))
    fig, axes = plt.subplots(n, 2, figsize=(4, 2 * n), squeeze=False)
    for (label, img, ref_label, ref), (a, b) in zip(pairs, axes):
        a.imshow(img, cmap="gray")
        a.set_title(label, fontsize=6)
        if ref is not None:
            b.imshow(ref, cmap="gray")
            b.set_title(ref_label or "", fontsize=6)
    for ax in axes.ravel():
        ax.axis("off")
    return _save(fig, path)
