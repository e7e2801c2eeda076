"""An exact overlay for filtering: a categorical model retrained, round after round, on samples curated by a
reward (Ferbach et al., NeurIPS 2024, "Self-consuming generative models with curated data provably optimize
human preferences").

**The curation step.**  The model ``p`` (a categorical distribution over ``m`` outcomes) writes ``K``
independent samples; a judge keeps one of them:

* ``"bt"`` -- the Bradley–Terry judge of Ferbach et al.: sample ``X_i`` is kept with probability
  ``exp(r(X_i)) / sum_j exp(r(X_j))``;
* ``"max"`` -- a noiseless judge: the sample with the highest reward (ties split evenly).

The next model is fitted (by maximum likelihood: the empirical frequencies) to ``n`` kept samples, of which
a share ``real_share`` may be fresh real data from ``p_real`` instead.

**Exact next distribution for finite K** (:func:`curate_exact`).  For the Bradley–Terry judge, the kept
sample is ``x`` when one of the ``K`` draws is ``x`` and the judge picks it; by symmetry over which draw,

.. math::  \\Phi_K(p)(x) = K\\, p(x)\\, \\mathbb{E}\\Big[\\frac{e^{r(x)}}{e^{r(x)} + S_{K-1}}\\Big],
           \\qquad S_{K-1} = \\sum_{j=1}^{K-1} e^{r(X_j)},\\ X_j \\sim p \\text{ i.i.d.},

and ``S_{K-1}`` depends only on the counts of the ``K - 1`` other draws over the ``m`` outcomes, a
multinomial: the expectation is an exact finite sum over its ``C(K+m-2, m-1)`` count vectors.  For the
noiseless judge, with ``F(v) = P_p(r(X) <= v)`` and ``F^-(v) = P_p(r(X) < v)``, the kept reward is ``v``
with probability ``F(v)^K - F^-(v)^K``, shared among the outcomes of reward ``v`` in proportion to ``p``.

**The limit** (:func:`curate_limit`).  As ``K`` grows, ``S_{K-1} / (K - 1)`` tends to ``E_p[e^r]`` and
``Φ_K(p) -> p e^r / E_p[e^r]`` -- Ferbach et al.'s update ``p_{t+1} ∝ p_t e^r``, under which the model's
expected reward rises every round and, without real data, its mass concentrates on the best outcomes.

With real data the exact round is ``p_{t+1} = real_share * p_real + (1 - real_share) * Φ_K(p_t)`` in
expectation; :func:`simulate` draws the finite samples and refits, and the chapter compares the two.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["curate_exact", "curate_limit", "exact_rounds", "simulate", "total_variation"]


def _check(p, r) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(p, dtype=float), np.asarray(r, dtype=float)
    if p.ndim != 1 or p.shape != r.shape or len(p) < 2:
        raise ValueError(f"p and r must be 1-D of one length >= 2, got {p.shape} and {r.shape}")
    if np.any(p < 0) or not math.isclose(p.sum(), 1.0, abs_tol=1e-6) or not np.all(np.isfinite(r)):
        raise ValueError("p must be a probability vector and r finite")
    return p, r


def _compositions(total: int, parts: int) -> np.ndarray:
    """Every vector of ``parts`` non-negative integers summing to ``total`` (stars and bars)."""
    rows = []
    for bars in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *bars, total + parts - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(parts)])
    return np.array(rows, dtype=np.int64)


def curate_exact(p, r, k: int, judge: str = "bt") -> np.ndarray:
    """The exact distribution of the sample a ``judge`` keeps from ``k`` draws of ``p`` (module docstring)."""
    p, r = _check(p, r)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    if judge == "max":
        out = np.zeros_like(p)
        for v in np.unique(r):
            tie = r == v
            mass = p[tie].sum()
            if mass > 0:
                f, f_lo = p[r <= v].sum(), p[r < v].sum()
                out[tie] = p[tie] / mass * (f ** k - f_lo ** k)
        return out
    if judge != "bt":
        raise ValueError(f"judge must be 'bt' or 'max', got {judge!r}")
    w = np.exp(r - r.max())  # the judge's odds, scaled (only ratios matter)
    if k == 1:
        return p.copy()
    counts = _compositions(k - 1, len(p))                       # (compositions, m)
    from scipy.special import gammaln

    with np.errstate(divide="ignore"):
        logp = np.where(p > 0, np.log(p), -np.inf)
    logpmf = gammaln(k) - gammaln(counts + 1).sum(1) + np.where(counts > 0, counts * logp, 0.0).sum(1)
    pmf = np.exp(logpmf)                                         # multinomial probability of each count vector
    s = counts @ w                                               # S_{k-1} of each count vector
    share = w[None, :] / (w[None, :] + s[:, None])               # e^{r(x)} / (e^{r(x)} + S)
    return k * p * (pmf @ share)


def curate_limit(p, r) -> np.ndarray:
    """Ferbach et al.'s limit of many draws: ``p e^r / E_p[e^r]``."""
    p, r = _check(p, r)
    q = p * np.exp(r - r.max())
    return q / q.sum()


def total_variation(a, b) -> float:
    return 0.5 * float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).sum())


def exact_rounds(p0, r, k: int, rounds: int, real_share: float = 0.0, p_real=None, judge: str = "bt",
                 limit: bool = False) -> np.ndarray:
    """``rounds + 1`` distributions: ``p0`` and the exact expected rounds ``real_share * p_real +
    (1 - real_share) * Φ_K(p_t)`` (``limit``: with Ferbach's limit in place of ``Φ_K``)."""
    p = np.asarray(p0, dtype=float)
    real = p if p_real is None else np.asarray(p_real, dtype=float)
    out = [p]
    for _ in range(int(rounds)):
        step = curate_limit(p, r) if limit else curate_exact(p, r, k, judge)
        p = float(real_share) * real + (1 - float(real_share)) * step
        p = p / p.sum()  # exact up to rounding; keep rounding from accumulating over many rounds
        out.append(p)
    return np.array(out)


def simulate(p0, r, k: int, rounds: int, n: int, replicates: int, real_share: float = 0.0, p_real=None,
             judge: str = "bt", seed: int = 0) -> np.ndarray:
    """The loop with finite samples: every round, ``round(real_share * n)`` fresh real samples and the
    curated rest (each the judge's pick among ``k`` draws of the current model), and the next model is
    their empirical distribution.  Returns ``(replicates, rounds + 1, m)``."""
    p0, r = _check(p0, r)
    real = p0 if p_real is None else np.asarray(p_real, dtype=float)
    m, n, k = len(p0), int(n), int(k)
    n_real = int(round(float(real_share) * n))
    rng = np.random.default_rng(seed)
    out = np.zeros((int(replicates), int(rounds) + 1, m))
    for rep in range(int(replicates)):
        p = p0.copy()
        out[rep, 0] = p
        for t in range(1, int(rounds) + 1):
            draws = rng.choice(m, size=(n - n_real, k), p=p)
            if judge == "bt":   # the Bradley-Terry pick: argmax of reward + Gumbel noise
                pick = np.argmax(r[draws] + rng.gumbel(size=draws.shape), axis=1)
            elif judge == "max":  # the best reward; ties split evenly by a random tie-break
                pick = np.argmax(r[draws] + 1e-9 * rng.random(draws.shape), axis=1)
            else:
                raise ValueError(f"judge must be 'bt' or 'max', got {judge!r}")
            kept = draws[np.arange(len(draws)), pick]
            counts = np.bincount(kept, minlength=m) + np.bincount(rng.choice(m, size=n_real, p=real), minlength=m)
            p = counts / n
            out[rep, t] = p
    return out
