r"""Linear regression refitted on its own predictions, many seeds at once (chapter 05, section 1).

The setting of Gerstgrasser et al. (2024), "Is model collapse inevitable?".  Every seed has its own
fixed design :math:`X \in \mathbb R^{T\times d}` with independent :math:`\mathcal N(0, 1)` entries,
true weights :math:`w^*` and Gaussian label noise of variance :math:`\sigma^2`:

* generation 0 is the ordinary least-squares fit to real labels :math:`y_0 = Xw^* + \varepsilon_0`;
* generation :math:`n` labels the *same* design with the previous fit plus fresh noise,
  :math:`y_n = X\hat w_{n-1} + \varepsilon_n`, and refits.

Which rows the refit sees is the engine's data regime: ``replace`` (only the newest labels),
``accumulate`` (the design stacked :math:`n+1` times with every generation's labels) or
``accumulate_subsample`` (``T`` rows drawn without replacement from that growing pool).  A row of the
data is :math:`(x, y)`, so the data of a seed are an array of shape ``(n_rows, d + 1)`` and the engine's
regimes stack and subsample them unchanged.

The test error is :math:`\|\hat w_n - w^*\|^2`, the excess squared prediction error on a fresh
:math:`x \sim \mathcal N(0, I_d)` (:math:`\Sigma = I`).  Exact expectations (derived in
:func:`error_factor`):

.. math::
    \mathbb E\|\hat w_n - w^*\|^2 = \sigma^2\,\mathbb E\operatorname{tr}(X^\top X)^{-1}\cdot
    \begin{cases} n + 1 & \text{replace}\\ \sum_{i=1}^{n+1} i^{-2} & \text{accumulate}\end{cases},
    \qquad \mathbb E\operatorname{tr}(X^\top X)^{-1} = \frac{d}{T-d-1}.

This module knows nothing about pages; the chapter lives in
:mod:`collapse_utils.chapters.escaping_collapse`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.engine import Experiment, GenerationContext
from ..core.seeding import make_rng

__all__ = ["RegressionExperiment", "GramStats", "error_factor", "expected_test_error", "first_error",
           "real_problem", "ols", "PI2_6"]

#: the accumulate bound: sum_{i >= 1} 1 / i^2
PI2_6 = float(np.pi**2 / 6)


def first_error(d: int, T: int, sigma: float = 1.0) -> float:
    r""":math:`\sigma^2 d/(T-d-1)`: the expected test error of the generation-0 fit,
    :math:`\sigma^2\,\mathbb E\operatorname{tr}(X^\top X)^{-1}` for a Gaussian design (the mean of an
    inverse Wishart matrix), finite for ``T > d + 1``."""
    if T <= d + 1:
        raise ValueError(f"E tr((X^T X)^-1) is finite only for T > d + 1, got T={T}, d={d}")
    return float(sigma**2 * d / (T - d - 1))


def error_factor(regime: str, generations: int | Sequence[int]) -> np.ndarray:
    r"""The exact test error at each generation in units of the generation-0 error.

    With :math:`P = (X^\top X)^{-1}X^\top` and :math:`e_n = \hat w_n - w^*`:

    * replace: :math:`\hat w_n = P y_n = \hat w_{n-1} + P\varepsilon_n`, so
      :math:`e_n = \sum_{i=0}^{n} P\varepsilon_i` and :math:`\mathbb E\|e_n\|^2 = (n+1)\,\sigma^2
      \operatorname{tr}(X^\top X)^{-1}`;
    * accumulate: the stacked normal equations give :math:`\hat w_n = \frac1{n+1}\sum_{i=0}^n P y_i`,
      hence :math:`(n+1)e_n = (n+1)e_{n-1} + P\varepsilon_n`, :math:`e_n = \sum_{i=0}^n
      P\varepsilon_i/(i+1)` and :math:`\mathbb E\|e_n\|^2 = \sigma^2\operatorname{tr}(X^\top X)^{-1}
      \sum_{i=1}^{n+1} i^{-2} < \tfrac{\pi^2}{6}\,\sigma^2\operatorname{tr}(X^\top X)^{-1}`.

    ``generations`` is the last generation (-> factors for 0..G) or a list of generations.
    Both hold conditionally on the design; ``accumulate_subsample`` has no closed form here.
    """
    g = np.arange(int(generations) + 1) if np.ndim(generations) == 0 else np.asarray(generations, dtype=int)
    if np.any(g < 0):
        raise ValueError("generations must be non-negative")
    if regime == "replace":
        return (g + 1).astype(float)
    if regime == "accumulate":
        partial = np.cumsum(1.0 / np.arange(1, g.max() + 2, dtype=float) ** 2)
        return partial[g]
    raise ValueError(f"no closed form for regime {regime!r}; replace and accumulate have one")


def expected_test_error(regime: str, generations, d: int, T: int, sigma: float = 1.0) -> np.ndarray:
    r""":math:`\mathbb E\|\hat w_n - w^*\|^2` over the noise and the Gaussian design."""
    return first_error(d, T, sigma) * error_factor(regime, generations)


def real_problem(seeds: Sequence[int], T: int, d: int, sigma: float = 1.0,
                 w_star: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: a Gaussian design and its real labels, as rows ``(x, y)``; shape ``(S, T, d + 1)``.

    Seed ``s``'s design and noise depend on ``s`` alone (not on the other seeds of the batch).
    Returns ``(data, w_star)``; ``w_star`` defaults to ``(1, ..., 1)/sqrt(d)`` (the errors do not
    depend on it)."""
    w = np.full(d, 1.0 / np.sqrt(d)) if w_star is None else np.asarray(w_star, dtype=float)
    if w.shape != (d,):
        raise ValueError(f"w_star must have shape ({d},), got {w.shape}")
    out = np.empty((len(seeds), T, d + 1))
    for i, s in enumerate(seeds):
        rng = make_rng(int(s), 0, "data")
        X = rng.standard_normal((T, d))
        out[i, :, :d] = X
        out[i, :, d] = X @ w + sigma * rng.standard_normal(T)
    return out, w


class GramStats:
    """The rows ``(x, y)`` of every seed summarised by their Gram matrix :math:`Z^\\top Z` (``(S, d+1,
    d+1)``) and their count: all that least squares needs.  The engine treats it as data of shape
    ``(S, n)``, and the ``accumulate`` regime pools it exactly by adding Gram matrices (O(1) per
    generation instead of restacking a growing pool); it cannot be subsampled
    (``accumulate_subsample`` needs the rows themselves)."""

    def __init__(self, gram: np.ndarray, n: int):
        self.gram = np.asarray(gram, dtype=np.float64)
        self.n = int(n)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.gram.shape[0]), self.n)

    @classmethod
    def from_rows(cls, rows: np.ndarray) -> GramStats:
        Z = np.asarray(rows, dtype=np.float64)
        return cls(np.swapaxes(Z, 1, 2) @ Z, Z.shape[1])

    @classmethod
    def concat_samples(cls, chunks: list[GramStats]) -> GramStats:
        return cls(np.sum([c.gram for c in chunks], axis=0), sum(c.n for c in chunks))


def ols(data: np.ndarray | GramStats) -> np.ndarray:
    """Least-squares weights per seed from rows ``(x, y)``: data ``(S, n, d + 1)`` (or their
    :class:`GramStats`) -> ``(S, d)``.

    One batched Gram matrix :math:`Z^\\top Z` of the rows gives both :math:`X^\\top X` and
    :math:`X^\\top y`; the normal equations are solved per seed."""
    if not isinstance(data, GramStats):
        data = GramStats.from_rows(data)
    G = data.gram
    d = G.shape[-1] - 1
    if data.n < d:
        raise ValueError(f"{data.n} rows cannot determine {d} weights")
    try:
        return np.linalg.solve(G[:, :d, :d], G[:, :d, d:])[..., 0]
    except np.linalg.LinAlgError:
        raise ValueError("a design is rank deficient (too few distinct rows); use more rows per generation") from None


class RegressionExperiment(Experiment):
    """The engine's experiment: fit OLS, relabel the fixed design with the fit plus fresh noise.

    ``design`` is ``(S, T, d)``, one fixed design per seed (the real data's ``x`` columns).  With
    ``gram=True`` new data come as :class:`GramStats` (pass the real data as ``GramStats.from_rows``
    too): the same fits to rounding, for the replace and accumulate regimes.  Metrics:
    ``test_error`` (:math:`\\|\\hat w - w^*\\|^2`, not normalised) at every recorded generation, and at
    generation 0 ``trace_term`` (:math:`\\sigma^2\\operatorname{tr}(X^\\top X)^{-1}`, each seed's
    conditional generation-0 expectation).
    """

    batched = True

    def __init__(self, design: np.ndarray, w_star: np.ndarray, sigma: float = 1.0, name: str = "regression",
                 gram: bool = False):
        self.X = np.asarray(design, dtype=np.float64)
        if self.X.ndim != 3:
            raise ValueError(f"design must be (seeds, T, d), got shape {self.X.shape}")
        self.w_star = np.asarray(w_star, dtype=np.float64)
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        self.name = name
        self.gram = bool(gram)  # samples as GramStats (replace, accumulate) instead of rows

    def fit(self, data, ctx: GenerationContext) -> np.ndarray:
        return ols(data)

    def sample(self, model: np.ndarray, n: int, ctx: GenerationContext) -> np.ndarray:
        r"""``n`` new rows ``(x, y)`` per seed: the fixed design (repeated, or its first ``n`` rows when
        a regime keeps real rows) labelled by the fitted weights plus fresh noise,
        :math:`y = X\hat w + \sigma\varepsilon`."""
        S, T, d = self.X.shape
        X = np.tile(self.X, (1, -(-n // T), 1))[:, :n] if n > T else self.X[:, :n]
        y = np.einsum("snd,sd->sn", X, model) + self.sigma * ctx.rng("sample").standard_normal((S, n))
        rows = np.concatenate([X, y[..., None]], axis=2)
        return GramStats.from_rows(rows) if self.gram else rows

    def evaluate(self, model: np.ndarray, comp, ctx: GenerationContext) -> dict:
        out = {"test_error": ((model - self.w_star) ** 2).sum(-1)}
        if ctx.generation == 0:
            out["trace_term"] = self.sigma**2 * np.trace(np.linalg.inv(np.swapaxes(self.X, 1, 2) @ self.X),
                                                         axis1=1, axis2=2)
        return out
