"""Histograms comparing the label statistics of all valid rollouts with those of a selected subset."""

from __future__ import annotations

import os

import datasets
import numpy as np


def plot_selection_histograms(ds: datasets.Dataset, subset: datasets.Dataset, path: str | os.PathLike) -> None:
    """
    Draw `p_pos`, reliability `R` and `bis` histograms of all valid vs kept rollouts into an image file.

    Args:
        ds (`datasets.Dataset`):
            All scored rollouts.
        subset (`datasets.Dataset`):
            The selected rollouts.
        path (`str` or `os.PathLike`):
            Output image (`.png`, `.pdf`, ...).

    Example:

    >>> plot_selection_histograms(scored, subset, "stats.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["p_pos", "reliability", "bis"]
    everything = ds.with_format("numpy", columns=columns)[:]
    kept = subset.with_format("numpy", columns=columns)[:]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, name, label in zip(axes, columns, ("p_pos", "R (reliability)", "BIS"), strict=True):
        values = everything[name][np.isfinite(everything[name])]
        bins = np.linspace(values.min(), values.max(), 31) if len(values) else 30
        ax.hist(values, bins=bins, density=True, alpha=0.5, label=f"all valid ({len(values)})")
        ax.hist(kept[name], bins=bins, density=True, alpha=0.5, label=f"kept ({len(kept[name])})")
        ax.set_xlabel(label)
    axes[0].set_ylabel("density")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
