"""One plotting style for the whole book (seaborn), and the band plot every chapter uses."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["set_style", "table", "band", "band_tidy", "palette", "finish", "not_run_figure", "REGIME_COLORS",
           "regime_color", "regime_colors"]

PALETTE = "colorblind"
#: one colour per data regime across the whole book (indices into the colour-blind palette):
#: replace blue, keep_real green, accumulate orange, accumulate_subsample purple
REGIME_COLORS = {"replace": 0, "keep_real": 2, "accumulate": 1, "accumulate_subsample": 4}


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


def regime_color(regime) -> tuple:
    """The book's colour of a data regime (``"replace"``, ``"keep_real(0.1)"``, a :class:`Regime`, or a
    condition such as ``"replace/fixed"``): the same colour for the same regime in every chapter."""
    from ..core.regimes import parse_regime

    name = parse_regime(str(regime).split("/")[0].strip()).name
    return tuple(sns.color_palette(PALETTE, 10)[REGIME_COLORS[name]])


def regime_colors(regimes: Sequence) -> list[tuple]:
    """Colours for a list of regimes (or conditions): each in its regime's colour; a regime that comes
    again (``replace/fresh`` and ``replace/fixed``) gets a darker, then a lighter shade of the same hue."""
    seen: dict[str, int] = {}
    out = []
    for r in regimes:
        base = np.array(regime_color(r))
        key = tuple(base)
        k = seen.get(key, 0)
        seen[key] = k + 1
        if k:
            target = np.zeros(3) if k % 2 else np.ones(3)  # darker, lighter, darker, ...
            base = base + (target - base) * min(0.45, 0.3 * ((k + 1) // 2))
        out.append(tuple(float(x) for x in base))
    return out


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


def not_run_figure(text: str):
    """A figure's place on a page whose preset does not run its study: one line saying so."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 1.6))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    ax.set_axis_off()
    return fig


def table(df, precision: int | None = None):
    """A table for the page: no meaningless 0, 1, 2 index column (the book's and Jupyter's renderers alike)."""
    styler = df.style.hide(axis="index")
    return styler.format(precision=precision) if precision is not None else styler

