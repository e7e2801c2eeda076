r"""Heavy tails and scaling laws: a memorisation model of Zipf-distributed data (chapter 05, section 4).

The model of Hutter (2021), used by Dohmatob et al. (2024), "A tale of tails".  Items ``i = 1..N``
occur with Zipf probabilities :math:`p_i \propto i^{-\beta}` (:math:`\beta > 1`).  A learner sees
``T`` independent training draws from a training distribution ``q`` and memorises every item it
saw; its test error is the probability that a fresh draw from ``p`` is an item it never saw,

.. math:: E(T) = \sum_i p_i\,\mathbb 1[i \text{ unseen}], \qquad
          \mathbb E\,E(T) = \sum_i p_i (1 - q_i)^T \quad\text{(exact)}.

* clean data (``q = p``): :math:`\mathbb E\,E(T) \approx \Gamma(1-1/\beta)\,\zeta(\beta)^{-1/\beta}\,T^{-(1-1/\beta)}/\beta`
  for large ``T`` and ``N``: a power law of exponent :math:`1 - 1/\beta`;
* data from a model that cut the tail at rank ``k`` (``q`` = ``p`` restricted to ``i <= k``,
  renormalised): items beyond ``k`` are never seen and the error plateaus at
  :math:`\sum_{i>k} p_i \approx k^{-(\beta-1)}/((\beta-1)\zeta(\beta))`;
* a share ``pi`` of clean data mixed in (``q = pi p + (1 - pi) q_k``): the tail is seen at rate
  ``pi``, so the decay returns once :math:`\pi T` clean draws have reached the plateau's ranks.

This module knows nothing about pages.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import special

from ..core.seeding import make_rng

__all__ = ["zipf", "truncate", "mix", "expected_error", "plateau", "plateau_asymptotic", "power_law",
           "simulate_error", "data_sizes"]


def zipf(n_items: int, beta: float) -> np.ndarray:
    r"""Zipf probabilities :math:`p_i = i^{-\beta}/\sum_{j\le N} j^{-\beta}` for ``i = 1..n_items``."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    if beta <= 1:
        raise ValueError(f"the Zipf exponent beta must exceed 1, got {beta}")
    w = np.arange(1, int(n_items) + 1, dtype=np.float64) ** (-float(beta))
    return w / w.sum()


def truncate(p: np.ndarray, k: int) -> np.ndarray:
    """The distribution of a model that cut the tail: ``p`` restricted to ranks ``<= k``, renormalised."""
    if not 1 <= k <= len(p):
        raise ValueError(f"the cut-off rank k must lie in [1, {len(p)}], got {k}")
    q = np.zeros_like(p)
    q[:k] = p[:k] / p[:k].sum()
    return q


def mix(p: np.ndarray, q: np.ndarray, share: float) -> np.ndarray:
    """``share`` of clean data ``p`` mixed into synthetic data ``q``."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must lie in [0, 1], got {share}")
    return share * p + (1.0 - share) * q


def expected_error(q: np.ndarray, p: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    r"""Exact :math:`\mathbb E\,E(T) = \sum_i p_i (1-q_i)^T` at each training size ``T``."""
    T = np.asarray(sizes, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log1m = np.log1p(-np.minimum(q, 1.0))  # -inf where q = 1
    return np.array([float(np.sum(p * np.exp(t * log1m))) if t > 0 else float(p.sum()) for t in T])


def plateau(p: np.ndarray, k: int) -> float:
    r"""The error floor of data cut at rank ``k``: :math:`\sum_{i>k} p_i` (exact, for this ``p``)."""
    return float(p[int(k):].sum())


def plateau_asymptotic(k, beta: float) -> np.ndarray:
    r"""The floor's large-``k`` form :math:`k^{-(\beta-1)}/((\beta-1)\zeta(\beta))` (infinitely many items)."""
    k = np.asarray(k, dtype=np.float64)
    return k ** (-(beta - 1.0)) / ((beta - 1.0) * special.zeta(beta))


def power_law(sizes, beta: float) -> np.ndarray:
    r"""Clean data's large-``T`` error :math:`\Gamma(1-1/\beta)\,\zeta(\beta)^{-1/\beta}\,T^{-(1-1/\beta)}/\beta`
    (infinitely many items): :math:`\sum_i p_i e^{-Tp_i}` as an integral over ranks."""
    T = np.asarray(sizes, dtype=np.float64)
    a = 1.0 - 1.0 / beta
    return special.gamma(a) * special.zeta(beta) ** (-1.0 / beta) * T ** (-a) / beta


def data_sizes(t_max: int, points: int = 25, t_min: int = 10) -> np.ndarray:
    """Log-spaced training sizes from ``t_min`` to ``t_max`` (distinct integers)."""
    if t_max < t_min:
        raise ValueError(f"t_max={t_max} must be at least t_min={t_min}")
    return np.unique(np.round(np.logspace(np.log10(t_min), np.log10(t_max), points)).astype(np.int64))


def simulate_error(q: np.ndarray, p: np.ndarray, sizes: Sequence[int], seeds: Sequence[int],
                   stream: int = 0) -> np.ndarray:
    """Test error of the memorising learner at each size, per seed: shape ``(len(seeds), len(sizes))``.

    Seed ``s`` draws one stream of ``max(sizes)`` training items from ``q`` (inverse CDF, from
    ``make_rng(s, stream, "sample")``; its draws depend on ``s`` and ``stream`` alone); the learner
    at size ``T`` has seen the stream's first ``T`` items.  The error is the clean mass ``p`` of the
    items not among them, computed from each item's first occurrence in the stream.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1 or len(sizes) == 0 or sizes.min() < 0:
        raise ValueError("sizes must be a non-empty list of non-negative integers")
    if len(q) != len(p):
        raise ValueError(f"q has {len(q)} items, p has {len(p)}")
    t_max = int(sizes.max())
    cdf = np.cumsum(q)
    cdf /= cdf[-1]
    last = int(np.flatnonzero(q > 0)[-1])  # rounding must never pick an item of probability 0
    out = np.empty((len(seeds), len(sizes)))
    total = float(p.sum())
    for r, s in enumerate(seeds):
        u = make_rng(int(s), int(stream), "sample").random(t_max)
        items = np.minimum(np.searchsorted(cdf, u, side="right"), last)
        seen, first = np.unique(items, return_index=True)  # each item's first occurrence
        order = np.argsort(first, kind="stable")
        covered = np.concatenate([[0.0], np.cumsum(p[seen[order]])])
        # items first seen at position < T are known to the learner of size T
        n_known = np.searchsorted(first[order], sizes, side="left")
        out[r] = total - covered[n_known]
    return np.maximum(out, 0.0)
