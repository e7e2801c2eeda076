"""One plotting style for the whole book (seaborn), and the band plot every chapter uses."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["set_style", "band", "band_tidy", "palette", "finish"]

PALETTE = "colorblind"


def set_style(context: str = "notebook") -> None:
    """The book's look: seaborn whitegrid, colour-blind palette, readable sizes."""
    sns.set_theme(context=context, style="whitegrid", palette=PALETTE)
    plt.rcParams.update({
        "figure.figsize": (7.5, 4.2),
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "axes.titlesize": "medium",
        "legend.fontsize": "small",
        "legend.frameon": False,
    })


def palette(n: int) -> list:
    return sns.color_palette(PALETTE, n)


def band(
    ax,
    x: Sequence[float],
    samples: np.ndarray,
    label: str | None = None,
    color=None,
    quantiles: tuple[float, float] = (0.05, 0.95),
    center: str = "median",
    alpha: float = 0.2,
    **line_kw,
):
    """A centre line and a shaded quantile band over seeds.

    ``samples`` has shape ``(len(x), n_seeds)``.
    """
    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2 or samples.shape[0] != len(x):
        raise ValueError(f"samples must be (len(x), n_seeds) = ({len(x)}, ...), got {samples.shape}")
    lo, hi = np.nanquantile(samples, quantiles, axis=1)
    mid = np.nanmedian(samples, axis=1) if center == "median" else np.nanmean(samples, axis=1)
    (line,) = ax.plot(x, mid, label=label, color=color, **line_kw)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=alpha, linewidth=0)
    return line


def band_tidy(ax, df: pd.DataFrame, metric: str, hue: str | None = None, x: str = "generation", **kw):
    """band() straight from a tidy metrics table (one band per value of ``hue``)."""
    sub = df[df["metric"] == metric]
    groups = [(None, sub)] if hue is None else list(sub.groupby(hue, sort=False))
    colors = palette(len(groups))
    for (key, g), c in zip(groups, colors):
        wide = g.pivot_table(index=x, columns="seed", values="value")
        band(ax, wide.index.values, wide.values, label=None if key is None else f"{hue}={key}", color=c, **kw)
    return ax


def finish(ax, xlabel: str, ylabel: str, title: str | None = None, legend: bool = True, **legend_kw):
    """Label the axes (every figure in the book has labelled axes) and place the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(**legend_kw)
    return ax
