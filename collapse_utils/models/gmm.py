r"""Gaussian mixtures refitted on their own samples, many seeds at once (the model of chapter 02).

The official notebook refits ``sklearn.mixture.GaussianMixture(n_components=2,
covariance_type="full", tol=1e-5, max_iter=2000)`` on ``N = 1000`` samples drawn from the
previous fit, one seed at a time, for 2050 generations.  This module does the same
computation for a whole batch of independent seeds at once:

``fit_gmm``          batched EM that mirrors sklearn where it matters: k-means initialisation
                     (k-means++ seeding then Lloyd, ``n_init=1``; its labels become one-hot
                     responsibilities), ``reg_covar`` added to every covariance diagonal,
                     convergence when the mean log-likelihood changes by less than ``tol``
                     (checked per seed: a converged seed stops being updated), ``max_iter``.
``GMM``              fitted parameters of a batch, ``sample`` and ``log_prob``.
``l2_distance_sq``   the closed-form squared L2 distance between two mixtures (the paper's metric).
``GMMExperiment``    the experiment that :func:`collapse_utils.core.engine.run_recursion` drives.
``speed_comparison`` the batched recursion timed against sklearn refitted one seed at a time.

The chapter's run plan, figures, tables and claims live in
:mod:`collapse_utils.chapters.gaussian_mixtures`; this module knows nothing about pages.

How the EM is made fast.  With the quadratic features
:math:`\phi(x) = (1, x_1..x_d, x_i x_j\,(i \le j))` every log-density
:math:`\log w_k + \log\mathcal N(x;\mu_k,\Sigma_k)` is linear in :math:`\phi(x)`, and every
M-step needs only :math:`\sum_n r_{nk}\phi(x_n)` (counts, first and second moments).  So one
EM iteration for all seeds is two batched matrix products (E-step: coefficients times
features; M-step: features times responsibilities) plus a few element-wise passes over
``(seeds, N)``.  With two components and ``d = 2`` (the chapter's case, ``_em_k2d2_full``)
the E-step is one linear form :math:`u = l_0 - l_1`, :math:`q = 1 + e^u`, :math:`\log q`
(the log-likelihood is :math:`\sum l_1 + \sum \log q`, and :math:`\sum l_1` is a dot product
of the coefficients with the feature totals) and :math:`r_1 = 1/q`; the second component's
sums are the totals minus the first's.  The rows of a batch go through the two products in
blocks whose features stay in cache between them.  The per-component algebra (a 2x2 inverse
and determinant) acts on tiny arrays, or on Python floats once only a few seeds are still
iterating; a converged seed leaves the working rows at once.  The k-means initialisation reads
:math:`x` and :math:`|x|^2` from the same features and hands its labels to EM as weighted sums.
Every EM operation acts on each seed's row alone, with the same code whatever the number of
rows, so from given initial labels a seed's fit does not depend on the other seeds of its batch
(tested to the last bit).  Everything is float64.  Tests check the result against sklearn on the same data and
the same initial labels (parameters agree to ~1e-14, iteration counts exactly).

Where the time goes (64 seeds, N = 1000, about 28 EM iterations per fit on average but 120 sweeps
until the slowest seed converges): the two matrix products and four element-wise passes per
iteration and seed (memory-bound: the features of 64 seeds, 3 MB, do not fit in a core's L2),
then the per-sweep numpy calls (the algebra of the seeds still iterating), then k-means and
sampling.  numpy gives no way to fuse these passes into one loop over the samples.

Deliberate differences from sklearn: random draws come from numpy Generators (not the legacy
``RandomState``), an empty k-means cluster keeps its centre instead of being moved, and sampled
points come grouped by component (as sklearn's) but from a Cholesky factor instead of an SVD.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd

from ..core.engine import Experiment, GenerationContext
from ..core.seeding import make_rng
from ..core.storage import state_record

__all__ = [
    "COVARIANCE_TYPES",
    "DATA_SETTINGS",
    "GMM",
    "ConvergenceInfo",
    "GMMExperiment",
    "distance_agreement",
    "e_step",
    "em",
    "fit_gmm",
    "kmeans_labels",
    "l2_distance_grid",
    "l2_distance_sq",
    "m_step",
    "n_free_parameters",
    "params_from_labels",
    "real_data",
    "sklearn_agreement",
    "speed_comparison",
    "tail_thresholds",
    "truth",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
DATA_SETTINGS = ("blob", "two_gaussians")
LOG2PI = math.log(2.0 * math.pi)
EPS = np.finfo(np.float64).eps
try:  # torch is a core dependency; only its vectorised exp is used here
    import torch as _TORCH
except ImportError:  # pragma: no cover
    _TORCH = None


# ---------------------------------------------------------------------------------------------
# The fitted model
# ---------------------------------------------------------------------------------------------
@state_record  # kept models and the reference fit: stored in checkpoints as arrays and plain values
@dataclass
class GMM:
    """Parameters of one Gaussian mixture per seed (leading axis = seeds).

    ``weights`` (S, K), ``means`` (S, K, d), ``covariances`` (S, K, d, d) — always stored as full
    matrices, whatever ``covariance_type`` the fit used.  ``n_iter``, ``converged`` and
    ``lower_bound`` (mean log-likelihood at the last E-step, like sklearn's ``lower_bound_``)
    describe the EM run, when there was one.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    covariance_type: str = "full"
    n_iter: np.ndarray | None = None
    converged: np.ndarray | None = None
    lower_bound: np.ndarray | None = None

    def __post_init__(self):
        self.weights = np.asarray(self.weights, dtype=np.float64)
        self.means = np.asarray(self.means, dtype=np.float64)
        self.covariances = np.asarray(self.covariances, dtype=np.float64)
        if self.weights.ndim == 1:  # a single mixture: add the seed axis
            self.weights, self.means, self.covariances = self.weights[None], self.means[None], self.covariances[None]
        S, K = self.weights.shape
        if self.means.shape[:2] != (S, K) or self.covariances.shape != (S, K, self.d, self.d):
            raise ValueError(f"inconsistent GMM shapes: weights {self.weights.shape}, means {self.means.shape}, "
                             f"covariances {self.covariances.shape}")

    @property
    def n_seeds(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[1])

    @property
    def d(self) -> int:
        return int(self.means.shape[2])

    def __getitem__(self, idx) -> GMM:
        """The mixtures of some seeds (rows); an int keeps the seed axis (length 1)."""
        if isinstance(idx, (int, np.integer)):
            idx = [int(idx)]
        pick = (lambda a: None if a is None else np.asarray(a)[idx])
        return GMM(self.weights[idx], self.means[idx], self.covariances[idx], self.covariance_type,
                   pick(self.n_iter), pick(self.converged), pick(self.lower_bound))

    @classmethod
    def from_sklearn(cls, estimators) -> GMM:
        """Stack fitted ``sklearn.mixture.GaussianMixture`` objects (one per seed) into one batch."""
        est = list(estimators)
        covs = []
        for e in est:
            c, K, d = e.covariances_, e.means_.shape[0], e.means_.shape[1]
            if e.covariance_type == "full":
                covs.append(c)
            elif e.covariance_type == "tied":
                covs.append(np.broadcast_to(c, (K, d, d)))
            elif e.covariance_type == "diag":
                covs.append(np.einsum("kd,de->kde", c, np.eye(d)))
            else:
                covs.append(c[:, None, None] * np.eye(d))
        return cls(np.stack([e.weights_ for e in est]), np.stack([e.means_ for e in est]), np.stack(covs),
                   est[0].covariance_type, np.array([e.n_iter_ for e in est]),
                   np.array([e.converged_ for e in est]), np.array([e.lower_bound_ for e in est]))

    # -- evaluation --------------------------------------------------------------------------
    def component_log_prob(self, X: np.ndarray) -> np.ndarray:
        """log w_k + log N(x; mu_k, Sigma_k), shape (S, M, K); X is (S or 1, M, d)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 2:
            X = X[None]
        L = np.linalg.cholesky(self.covariances)  # (S, K, d, d)
        diffT = np.swapaxes(X, 1, 2)[:, None, :, :] - self.means[..., None]  # (S, K, d, M)
        z = np.linalg.inv(L) @ diffT  # L^{-1} (x - mu)
        maha = np.einsum("skdm,skdm->skm", z, z)
        logdet = 2.0 * np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(-1)  # (S, K)
        with np.errstate(divide="ignore"):
            logw = np.log(self.weights)
        out = (logw - 0.5 * (self.d * LOG2PI + logdet))[..., None] - 0.5 * maha  # (S, K, M)
        return np.swapaxes(out, 1, 2)

    def log_prob(self, X: np.ndarray) -> np.ndarray:
        """Mixture log-density at X (S or 1, M, d) -> (S, M)."""
        lp = self.component_log_prob(X)
        m = lp.max(-1, keepdims=True)
        return (m + np.log(np.exp(lp - m).sum(-1, keepdims=True)))[..., 0]

    def score(self, X: np.ndarray) -> np.ndarray:
        """Mean log-likelihood per seed (sklearn's ``score``)."""
        return self.log_prob(X).mean(-1)

    def spreads(self) -> np.ndarray:
        r"""Per-component spread :math:`\sqrt{\operatorname{tr}\Sigma_k / d}`, shape (S, K)."""
        return np.sqrt(np.trace(self.covariances, axis1=-2, axis2=-1) / self.d)

    def mixture_covariance(self) -> np.ndarray:
        """Covariance of the whole mixture, (S, d, d)."""
        w = self.weights[..., None, None]
        mbar = (self.weights[..., None] * self.means).sum(1)
        second = (w * (self.covariances + self.means[..., :, None] * self.means[..., None, :])).sum(1)
        return second - mbar[:, :, None] * mbar[:, None, :]

    def overall_spread(self) -> np.ndarray:
        return np.sqrt(np.trace(self.mixture_covariance(), axis1=-2, axis2=-1) / self.d)

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` samples per seed: (X (S, n, d), component labels (S, n)).

        Like sklearn: multinomial component counts, then Gaussian draws, grouped by component
        (the order does not matter to anything downstream).  All draws come from ``rng``.
        """
        return self._sample(n, rng, True)

    def _sample(self, n: int, rng: np.random.Generator, with_labels: bool):
        n = int(n)
        S, K, d = self.n_seeds, self.n_components, self.d
        w = self.weights / self.weights.sum(-1, keepdims=True)
        counts = rng.multinomial(n, w) if K > 1 else np.full((S, 1), n)
        z = rng.standard_normal((d, S * n))
        L = np.linalg.cholesky(self.covariances)  # (S, K, d, d)
        # samples come grouped by component within each seed: repeat each component's parameters
        reps = counts.ravel()
        labels = np.repeat(np.tile(np.arange(K), S), reps).reshape(S, n) if with_labels else None
        tri = np.tril_indices(d)
        par = np.concatenate([self.means.reshape(S * K, d), L[:, :, tri[0], tri[1]].reshape(S * K, -1)], 1)
        par = np.repeat(par.T, reps, axis=1)  # (d + d(d+1)/2, S * n), one row per parameter
        buf = np.empty((d, S * n))
        j = d
        for i in range(d):  # x_i = mu_i + sum_{k <= i} L_ik z_k
            np.multiply(par[j], z[0], out=buf[i])
            for k in range(1, i + 1):
                buf[i] += par[j + k] * z[k]
            buf[i] += par[i]
            j += i + 1
        X = buf.reshape(d, S, n).transpose(1, 2, 0)  # (S, n, d), a view
        return X, labels


def n_free_parameters(n_components: int, d: int, covariance_type: str) -> int:
    """Free parameters of a K-component mixture in d dimensions (as sklearn's ``_n_parameters``)."""
    cov = {"full": n_components * d * (d + 1) // 2, "diag": n_components * d,
           "tied": d * (d + 1) // 2, "spherical": n_components}
    if covariance_type not in cov:
        raise ValueError(f"unknown covariance_type {covariance_type!r}; choose one of {COVARIANCE_TYPES}")
    return cov[covariance_type] + n_components * d + n_components - 1


# ---------------------------------------------------------------------------------------------
# Batched k-means (sklearn's KMeans(n_init=1): k-means++ seeding with 2 + log K local trials,
# then Lloyd iterations until the labels stop changing or the centre shift is below tol)
# ---------------------------------------------------------------------------------------------
def _sq_dist_T(XT: np.ndarray, xsq: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared distances (S, J, N) from points XT (S, d, N) to centres C (S, J, d)."""
    D = C @ XT
    D *= -2.0
    D += xsq[:, None, :]
    D += (C**2).sum(-1)[..., None]
    return np.maximum(D, 0.0, out=D)


def kmeans_labels(X: np.ndarray, n_clusters: int, rng: np.random.Generator, max_iter: int = 300,
                  tol: float = 1e-4, return_centers: bool = False):
    """k-means labels (S, N) for every seed at once, as sklearn's ``KMeans(n_init=1)`` computes them.

    k-means++ seeding (first centre uniform, then the best of ``2 + log K`` candidates drawn
    proportionally to the squared distance), then Lloyd iterations per seed until its labels stop
    changing or its centres move by less than ``tol`` times the mean per-feature variance; the
    returned labels are the nearest-centre assignment to the final centres.  Differences from
    sklearn: the random draws come from ``rng`` (a numpy Generator), and an empty cluster keeps its
    previous centre instead of being moved to a far point (with N in the hundreds and K = 2 this
    does not arise).
    """
    X = np.asarray(X, dtype=np.float64)
    S, N, d = X.shape
    K = int(n_clusters)
    if K == 1:
        lab = np.zeros((S, N), dtype=np.int64)
        return (lab, X.mean(1, keepdims=True)) if return_centers else lab
    XT = np.ascontiguousarray(np.swapaxes(X, 1, 2))  # (S, d, N)
    xsq = (XT**2).sum(1)  # (S, N)
    lab, C = _kmeans(XT, xsq, K, rng, max_iter, tol)
    lab = lab.astype(np.int64)
    return (lab, C) if return_centers else lab


def _kmeans(XT: np.ndarray, xsq: np.ndarray, K: int, rng: np.random.Generator, max_iter: int, tol: float):
    """k-means++ seeding then Lloyd on XT (S, d, N) with squared norms xsq (S, N): (labels, centres).
    For K = 2 the labels come as floats (0.0 / 1.0), ready to weight features."""
    C = _kmeans_pp(XT, xsq, K, rng)
    if K == 2:
        return _lloyd2(XT, xsq, C, max_iter, tol), C
    return _lloyd(XT, xsq, C, max_iter, tol), C


def _kmeans_pp(XT: np.ndarray, xsq: np.ndarray, K: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (sklearn's greedy variant with 2 + log K candidates per centre), (S, K, d)."""
    S, d, N = XT.shape
    rows = np.arange(S)
    n_trials = 2 + int(np.log(K))
    first = rng.integers(0, N, size=S)
    u = rng.random((S, K - 1, n_trials))
    C = np.empty((S, K, d))
    C[:, 0] = XT[rows, :, first]
    closest = _sq_dist_T(XT, xsq, C[:, :1])[:, 0]  # (S, N)
    for c in range(1, K):
        cum = np.cumsum(closest, axis=1)
        rv = u[:, c - 1] * cum[:, -1:]
        cand = np.minimum([np.searchsorted(cs, r) for cs, r in zip(cum, rv)], N - 1)  # (S, T)
        pts = XT[rows[:, None], :, cand]  # the candidate points, (S, T, d)
        dc = np.minimum(_sq_dist_T(XT, xsq, pts), closest[:, None, :])  # (S, T, N)
        best = np.argmin(np.add.reduce(dc, axis=-1), axis=1)
        if c + 1 < K:
            closest = dc[rows, best]
        C[:, c] = pts[rows, best]
    return C


def _lloyd(XT: np.ndarray, xsq: np.ndarray, C: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Lloyd iterations for any number of clusters; integer labels (S, N) of the final centres."""
    S, d, N = XT.shape
    K = C.shape[1]
    mean = XT.mean(-1)
    tol_s = tol * (xsq.mean(-1) - (mean**2).sum(-1)) / d  # sklearn: tol * mean of the per-feature variances
    rows = np.arange(S)
    XTb, xsqb, Cb, tolb = XT, xsq, C.copy(), tol_s
    for _ in range(max_iter):
        lab = np.argmin(_sq_dist_T(XTb, xsqb, Cb), axis=1)
        onehot = (lab[:, None, :] == np.arange(K)[:, None]).astype(np.float64)  # (Sb, K, N)
        cnt = onehot.sum(-1)
        sums = onehot @ np.swapaxes(XTb, 1, 2)
        new = np.where(cnt[..., None] > 0, sums / np.maximum(cnt, 1)[..., None], Cb)
        done = ((new - Cb) ** 2).sum((1, 2)) <= tolb
        Cb = new
        if done.any():
            C[rows[done]] = Cb[done]
            keep = np.flatnonzero(~done)
            if len(keep) == 0:
                break
            rows, XTb, xsqb, Cb, tolb = rows[keep], XTb[keep], xsqb[keep], Cb[keep], tolb[keep]
    else:
        C[rows] = Cb
    return np.argmin(_sq_dist_T(XT, xsq, C), axis=1)


def _lloyd2(XT: np.ndarray, xsq: np.ndarray, C: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Lloyd iterations for two clusters, every seed at once; returns the final labels as floats (S, N).

    ``XT`` (S, d, N) may be a strided view (rows of the quadratic features).  A point belongs to
    cluster 1 when it lies beyond the perpendicular bisector of the centres,
    ``x.(c1 - c0) > (|c1|^2 - |c0|^2) / 2``; a seed stops when its centres move by less than
    ``tol`` (labels that stop changing give a zero move).  The last few seeds' centres are
    updated on Python floats (fewer numpy calls per iteration)."""
    S, d, N = XT.shape
    mean = XT.mean(-1)
    tol_s = tol * (xsq.mean(-1) - (mean**2).sum(-1)) / d  # sklearn: tol * mean of the per-feature variances
    tot = N * mean  # (S, d)
    rows = np.arange(S)
    XTb, Cb, totb, tolb = XT, C.copy(), tot, tol_s
    one = np.empty((S, N))
    it = 0
    while it < max_iter and len(rows) > _PY_ROWS:
        it += 1
        Sb = len(rows)
        v = Cb[:, 1] - Cb[:, 0]
        thr = np.add.reduce(v * (Cb[:, 1] + Cb[:, 0]), axis=1)
        thr *= 0.5
        ob = one[:Sb]
        np.greater(np.matmul(v[:, None, :], XTb)[:, 0], thr[:, None], out=ob)
        n1 = np.add.reduce(ob, axis=1)
        s1 = np.matmul(XTb, ob[:, :, None])[..., 0]  # (Sb, d)
        n0 = N - n1
        new = np.empty((Sb, 2, d))
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(totb - s1, n0[:, None], out=new[:, 0])
            np.divide(s1, n1[:, None], out=new[:, 1])
        if not np.minimum.reduce(n0 * n1) > 0:  # an empty cluster keeps its centre
            new = np.where(np.stack([n0, n1], -1)[..., None] > 0, new, Cb)
        move = new - Cb
        move *= move
        done = (np.add.reduce(move.reshape(Sb, 2 * d), axis=1) <= tolb).nonzero()[0]
        Cb = new
        if len(done):
            C[rows[done]] = Cb[done]
            keep = np.ones(Sb, dtype=bool)
            keep[done] = False
            keep = keep.nonzero()[0]
            rows, XTb, Cb, totb, tolb = rows[keep], XTb[keep], Cb[keep], totb[keep], tolb[keep]
    # the last few seeds: the same arithmetic on Python floats
    rows, cs, tots, tols = rows.tolist(), Cb.tolist(), totb.tolist(), tolb.tolist()
    while it < max_iter and rows:
        it += 1
        vs = [[b - a for a, b in zip(*c)] for c in cs]
        thr = [0.5 * sum(vi * (b + a) for vi, a, b in zip(v, *c)) for v, c in zip(vs, cs)]
        ob = one[:len(rows)]
        np.greater(np.matmul(np.array(vs)[:, None, :], XTb)[:, 0], np.array(thr)[:, None], out=ob)
        n1s = np.add.reduce(ob, axis=1).tolist()
        s1s = np.matmul(XTb, ob[:, :, None])[..., 0].tolist()
        keep = []
        for i, (n1, s1, t, c) in enumerate(zip(n1s, s1s, tots, cs)):
            n0 = N - n1
            c0 = [(ti - si) / n0 for ti, si in zip(t, s1)] if n0 > 0 else c[0]
            c1 = [si / n1 for si in s1] if n1 > 0 else c[1]
            shift = 0.0
            for a, b in zip(c[0] + c[1], c0 + c1):
                shift += (b - a) * (b - a)
            cs[i] = [c0, c1]
            if shift <= tols[i]:
                C[rows[i]] = cs[i]
            else:
                keep.append(i)
        if len(keep) < len(rows):
            rows, cs, tots, tols = ([a[i] for i in keep] for a in (rows, cs, tots, tols))
            XTb = XTb[keep]
    if rows:  # max_iter reached
        C[rows] = cs
    v = C[:, 1] - C[:, 0]
    thr = np.add.reduce(v * (C[:, 1] + C[:, 0]), axis=1)
    thr *= 0.5
    return np.greater(np.matmul(v[:, None, :], XT)[:, 0], thr[:, None], out=one)


# ---------------------------------------------------------------------------------------------
# EM in the quadratic-feature form.  Conventions: features PhiT (S, F, N); coefficients and
# weighted sums (S, K, F); packed parameters theta (S, K, P).
# ---------------------------------------------------------------------------------------------
@cache
def _triu(d: int):
    return np.triu_indices(d)


def _design_T(X: np.ndarray) -> np.ndarray:
    """Quadratic features laid out as (S, F, N): 1, x_i, x_i x_j (i <= j)."""
    S, N, d = X.shape
    PhiT = np.empty((S, 1 + d + d * (d + 1) // 2, N))
    PhiT[:, 0] = 1.0
    XT = PhiT[:, 1:1 + d]
    XT[...] = np.swapaxes(X, 1, 2)
    k = 1 + d
    for i in range(d):  # x_i x_j for j = i..d-1, in the order of np.triu_indices
        np.multiply(XT[:, i:i + 1], XT[:, i:], out=PhiT[:, k:k + d - i])
        k += d - i
    return PhiT


def _inv_logdet(cov: np.ndarray):
    """Precision matrices, log-determinants and a mask of non-positive-definite matrices."""
    d = cov.shape[-1]
    if d == 2:
        a, b, c = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 1]
        det = a * c - b * b
        bad = ~((det > 0) & (a > 0))
        safe = np.where(bad, 1.0, det)
        P = np.empty_like(cov)
        P[..., 0, 0] = c / safe
        P[..., 1, 1] = a / safe
        P[..., 0, 1] = P[..., 1, 0] = -b / safe
        return P, np.log(safe), bad
    if d == 1:
        v = cov[..., 0, 0]
        bad = ~(v > 0)
        safe = np.where(bad, 1.0, v)
        return (1.0 / safe)[..., None, None], np.log(safe), bad
    sign, logdet = np.linalg.slogdet(cov)
    bad = ~(sign > 0)
    P = np.linalg.inv(np.where(bad[..., None, None], np.eye(d), cov))
    return P, np.where(bad, 0.0, logdet), bad


def _coefficients(w, mu, P, logdet) -> np.ndarray:
    """Coefficients (S, K, F) with log w_k + log N(x; mu_k, P_k^{-1}) = coef[:, k] . phi(x)."""
    d = mu.shape[-1]
    iu, ju = _triu(d)
    Pm = (P @ mu[..., None])[..., 0]  # (S, K, d)
    c0 = np.log(w) - 0.5 * logdet - 0.5 * d * LOG2PI - 0.5 * (mu * Pm).sum(-1)
    cq = -P[..., iu, ju] * np.where(iu == ju, 0.5, 1.0)
    return np.concatenate([c0[..., None], Pm, cq], axis=-1)


def _mstep(T: np.ndarray, d: int, covariance_type: str, reg_covar: float):
    """Weights, means, covariances from the responsibility-weighted feature sums T (S, K, F)."""
    iu, ju = _triu(d)
    nk = T[..., 0] + 10 * EPS  # (S, K), as sklearn
    mu = T[..., 1:1 + d] / nk[..., None]
    sq = T[..., 1 + d:] / nk[..., None]
    S, K = nk.shape
    cov = np.empty((S, K, d, d))
    cov[..., iu, ju] = sq
    cov[..., ju, iu] = sq
    cov -= mu[..., :, None] * mu[..., None, :]
    eye = np.eye(d)
    if covariance_type == "tied":
        tied = (nk[..., None, None] * cov).sum(1) / nk.sum(1)[:, None, None]
        cov = np.broadcast_to(tied[:, None], cov.shape).copy()
    elif covariance_type == "diag":
        cov *= eye
    elif covariance_type == "spherical":
        cov = (np.trace(cov, axis1=-2, axis2=-1) / d)[..., None, None] * eye
    cov += reg_covar * eye
    return nk / nk.sum(1, keepdims=True), mu, cov


def _estep(PhiT, Phi_sum, coef):
    """Mean log-likelihood (S,) and responsibility-weighted feature sums T (S, K, F).

    ``PhiT`` holds the features as (S, F, N); ``Phi_sum`` their sum over samples (S, F).
    """
    K = coef.shape[1]
    N = PhiT.shape[-1]
    if K == 1:
        return (Phi_sum * coef[:, 0]).sum(-1) / N, Phi_sum[:, None, :].copy()
    if K == 2:
        return _estep_k2(PhiT, Phi_sum, coef)
    L = coef @ PhiT  # (S, K, N)
    m = L.max(1, keepdims=True)
    E = np.exp(L - m)
    s = E.sum(1, keepdims=True)
    ll = (m + np.log(s)).mean((1, 2))
    return ll, (E / s) @ np.swapaxes(PhiT, 1, 2)


def _estep_k2(PhiT, Phi_sum, coef):
    r"""Two components: with :math:`\delta = l_1 - l_0` (one linear form in the features) the
    responsibility is :math:`r_1 = \sigma(\delta)` and
    :math:`\log(e^{l_0} + e^{l_1}) = l_0 + \max(\delta, 0) - \log\max(r_1, 1 - r_1)`.
    One transcendental function per sample: the sum of :math:`\log\max(r_1, 1-r_1)` is the log of a
    product of numbers in [1/2, 1], which cannot underflow for up to 1000 factors.  The
    component-0 sums are the totals minus the component-1 sums."""
    N = PhiT.shape[-1]
    dc = coef[:, 1] - coef[:, 0]  # (S, F)
    delta = (dc[:, None, :] @ PhiT)[:, 0, :]  # (S, N)
    r1 = _sigmoid(delta)
    m = np.subtract(1.0, r1)
    np.maximum(m, r1, out=m)
    logsum = np.log(m.prod(-1)) if N <= 1000 else np.log(m).sum(-1)
    np.abs(delta, out=delta)
    # mean of max(delta, 0) = (mean delta + mean |delta|) / 2, and mean delta = dc . Phi_sum / N
    ll = ((Phi_sum * (coef[:, 0] + 0.5 * dc)).sum(-1) - logsum) / N + 0.5 * delta.mean(-1)
    T1 = (PhiT @ r1[..., None])[..., 0]
    return ll, np.stack([Phi_sum - T1, T1], 1)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    """The logistic function (a new array); torch's is vectorised and ~3x faster than numpy's exp here."""
    if _TORCH is not None:
        return _TORCH.sigmoid(_TORCH.from_numpy(a)).numpy()
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-a))


class _single_thread_torch:
    """Run torch element-wise ops on one thread (arrays here are small; threads only add overhead)."""

    def __enter__(self):
        self.n = _TORCH.get_num_threads() if _TORCH is not None else None
        if self.n not in (None, 1):
            _TORCH.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.n not in (None, 1):
            _TORCH.set_num_threads(self.n)
        return False


# -- d = 2: the per-component algebra in closed form on packed parameters ----------------------
# theta[..., :] = (w, m0, m1, a, b, c) with covariance [[a, b], [b, c]]
_P_ORDER = np.array([2, 1, 0])  # (a, b, c) -> (c, b, a): adj([[a, b], [b, c]]) = [[c, -b], [-b, a]]
_P_SIGN = np.array([1.0, -1.0, 1.0])
_Q_SCALE = np.array([-0.5, -1.0, -0.5])


def _coef_d2(th):
    """Coefficients (S, K, 6) for features (1, x0, x1, x0^2, x0 x1, x1^2) and a bad-covariance mask."""
    cov = th[..., 3:6]
    det = cov[..., 0] * cov[..., 2] - cov[..., 1] ** 2
    bad = ~((det > 0) & (cov[..., 0] > 0))
    if bad.any():
        det = np.where(bad, 1.0, det)
    P = cov[..., _P_ORDER] * (_P_SIGN / det[..., None])  # (p00, p01, p11)
    m0, m1 = th[..., 1:2], th[..., 2:3]
    Pm = P[..., 0:2] * m0 + P[..., 1:3] * m1  # (p00 m0 + p01 m1, p01 m0 + p11 m1)
    coef = np.empty(th.shape)
    coef[..., 0] = np.log(th[..., 0] / np.sqrt(det)) - LOG2PI - 0.5 * (th[..., 1:3] * Pm).sum(-1)
    coef[..., 1:3] = Pm
    np.multiply(P, _Q_SCALE, out=coef[..., 3:6])
    return coef, bad


def _mstep_d2(T, covariance_type, reg_covar):
    """Packed parameters from the weighted sums T (S, K, 6) (sklearn's formulas, d = 2)."""
    nk = T[..., 0] + 10 * EPS
    M = T[..., 1:] / nk[..., None]  # (m0, m1, E x0^2, E x0 x1, E x1^2)
    th = np.empty(T.shape)
    nk_tot = nk.sum(1, keepdims=True)
    th[..., 0] = nk / nk_tot
    th[..., 1:3] = M[..., 0:2]
    cov = th[..., 3:6]
    np.subtract(M[..., 2:5], M[..., [0, 0, 1]] * M[..., [0, 1, 1]], out=cov)
    if covariance_type == "tied":
        cov[...] = (nk[..., None] * cov).sum(1, keepdims=True) / nk_tot[..., None]
    elif covariance_type == "diag":
        cov[..., 1] = 0.0
    elif covariance_type == "spherical":
        cov[..., 0] = cov[..., 2] = 0.5 * (cov[..., 0] + cov[..., 2])
        cov[..., 1] = 0.0
    cov[..., 0] += reg_covar
    cov[..., 2] += reg_covar
    return th


def _unpack_d2(th):
    cov = np.empty(th.shape[:2] + (2, 2))
    cov[..., 0, 0], cov[..., 1, 1] = th[..., 3], th[..., 5]
    cov[..., 0, 1] = cov[..., 1, 0] = th[..., 4]
    return th[..., 0], th[..., 1:3], cov


# -- any d: packed as (w, mu (d), covariance (d*d)) ----------------------------------------------
def _coef_generic(th, d):
    w, mu, cov = _unpack_generic(th, d)
    P, logdet, bad = _inv_logdet(cov)
    return _coefficients(w, mu, P, logdet), bad


def _mstep_generic(T, d, covariance_type, reg_covar):
    w, mu, cov = _mstep(T, d, covariance_type, reg_covar)
    return np.concatenate([w[..., None], mu, cov.reshape(cov.shape[:2] + (d * d,))], -1)


def _unpack_generic(th, d):
    return th[..., 0], th[..., 1:1 + d], th[..., 1 + d:].reshape(th.shape[:2] + (d, d))


class _Rows:
    """Per-seed bookkeeping of a batched EM loop, shared by ``_em`` and ``_em_k2d2_full``.

    ``out`` receives each seed's final state (the M-step's result) as it converges; ``buf`` maps
    the working arrays' rows to the batch's rows, ``alive`` says which working rows still iterate.
    """

    def __init__(self, out: np.ndarray, max_iter: int, min_rows: int = 0):
        S = out.shape[0]
        self.out, self.max_iter, self.min_rows = out, int(max_iter), min_rows
        self.n_iter = np.full(S, int(max_iter))
        self.converged = np.zeros(S, dtype=bool)
        self.lower = np.full(S, -np.inf)
        self.buf = np.arange(S)  # rows of the full batch held in the working arrays
        self.alive = np.ones(S, dtype=bool)  # which working rows still iterate
        self.prev = np.full(S, -np.inf)
        self.finished = False

    def step(self, it: int, ll: np.ndarray, state: np.ndarray, tol: float, info) -> np.ndarray | None:
        """Record iteration ``it`` (mean log-likelihoods ``ll``, states of the working rows).
        Returns the working rows to keep when the working arrays should shrink, else None;
        ``finished`` turns True once every seed has converged."""
        if info is not None:
            info.em_iterations += int(self.alive.sum())
            info.em_sweeps += 1
        done = np.abs(ll - self.prev) < tol
        done &= self.alive
        self.prev = ll
        if not done.any():
            return None
        rows = self.buf[done]
        self.out[rows] = state[done]
        self.lower[rows] = ll[done]
        self.n_iter[rows], self.converged[rows] = it, True
        self.alive &= ~done
        n_alive = int(self.alive.sum())
        if n_alive == 0:
            self.finished = True
            return None
        if n_alive <= 0.75 * len(self.buf) or len(self.buf) <= self.min_rows:  # drop finished rows
            keep = np.flatnonzero(self.alive)
            self.buf, self.prev, self.alive = self.buf[keep], self.prev[keep], self.alive[keep]
            return keep
        return None

    def close(self, state: np.ndarray, S: int) -> None:
        """After the last iteration: seeds still iterating keep their last state, with a warning."""
        alive = self.alive
        if not alive.any():
            return
        if np.isnan(self.prev[alive]).any():
            raise FloatingPointError(f"EM produced NaN log-likelihoods for batch rows {sorted(self.buf[alive].tolist())}")
        self.out[self.buf[alive]] = state[alive]
        self.lower[self.buf[alive]] = self.prev[alive]
        warnings.warn(f"EM did not converge within max_iter={self.max_iter} for {alive.sum()} of {S} seed(s)",
                      RuntimeWarning, stacklevel=4)


# -- K = 2, d = 2, full covariances (the chapter's case) -----------------------------------------
# The loop keeps, per seed, only the component-1 feature sums T1 (S, 6) (component 0's are the
# totals M minus T1).  The E-step needs from them the linear form du = coef_0 - coef_1, so that
# u = l_0 - l_1 = du . phi(x) and r_1 = 1 / (1 + exp(u)), and base = M . coef_1 = sum of l_1 over
# the samples, so that the summed log-likelihood is base + sum log(1 + exp(u)).
_PY_ROWS = 6  # up to this many rows the per-component algebra runs on Python floats (less call overhead)


def _k2_coef(T1: np.ndarray, M: np.ndarray, reg_covar: float):
    """``du`` (S, 6) and ``base`` (S,) from the component-1 sums T1 (S, 6) and the totals M (S, 6):
    u = l0 - l1 = du . phi(x) and base = M . coef_1 = sum over the samples of l1.  Same formulas
    as ``_mstep_d2`` followed by ``_coef_d2``, laid out as (quantity, component x row) so that
    each step is one numpy call.  A covariance that is not positive definite gives a NaN or
    infinite log-likelihood (see ``_k2_bad_rows``)."""
    S = T1.shape[0]
    if S <= _PY_ROWS:
        return _k2_coef_py(T1, M, reg_covar)
    A = np.empty((6, 2, S))  # (n, s0, s1, q00, q01, q11) x (component 0, component 1) x rows
    np.subtract(M.T, T1.T, out=A[:, 0])
    A[:, 1] = T1.T
    nk = A[0]
    nk += 10 * EPS
    Mm = A[1:]
    Mm /= nk  # m0, m1, E x0^2, E x0 x1, E x1^2
    m0, m1 = Mm[0], Mm[1]
    cov = Mm[2:]
    W = np.empty((3, 2, S))
    np.multiply(Mm[0:2], m0, out=W[0:2])
    np.multiply(m1, m1, out=W[2])
    cov -= W  # a, b, c of [[a, b], [b, c]] (in place of the second moments)
    cov[0::2] += reg_covar
    det = cov[0] * cov[2]
    det -= np.multiply(cov[1], cov[1], out=W[0])
    C = np.empty((6, 2, S))  # coefficients of (1, x0, x1, x0^2, x0 x1, x1^2)
    P = np.divide(cov[::-1], det, out=C[3:])  # p00 = c / det, q = b / det (= -p01), p11 = a / det
    np.multiply(P[0:2], m0, out=W[0:2])  # p00 m0, q m0
    np.multiply(P[1:3], m1, out=C[1:3])  # q m1, p11 m1
    np.subtract(W[0], C[1], out=C[1])  # (P mu)_0 = p00 m0 - q m1
    C[2] -= W[1]  # (P mu)_1 = p11 m1 - q m0
    np.multiply(C[1:3], Mm[0:2], out=W[0:2])
    W[0] += W[1]  # mu' P mu
    w = np.divide(nk, nk[0] + nk[1], out=W[1])
    c0 = np.divide(w, np.sqrt(det), out=C[0])
    np.log(c0, out=c0)
    c0 -= LOG2PI
    c0 -= 0.5 * W[0]
    C[3::2] *= -0.5
    du = np.empty((S, 6))  # row-major, like the Python path's (the matrix products see the same layout)
    np.subtract(C[:, 0].T, C[:, 1].T, out=du)
    base = np.add.reduce(C[:, 1] * M.T, axis=0)  # sum over the samples of l1
    return du, base


def _k2_coef_py(T1: np.ndarray, M: np.ndarray, reg_covar: float):
    """``_k2_coef`` on Python floats, for the few rows left at the end of a batched fit; the same
    operations in the same order (and numpy's logarithm), so the results are identical."""
    ten_eps, sqrt, nan = 10 * EPS, math.sqrt, math.nan
    parts, args = [], []
    for (n1, x1, y1, a1, b1, c1), (N, X, Y, A, B, C) in zip(T1.tolist(), M.tolist()):
        k1 = n1 + ten_eps
        k0 = (N - n1) + ten_eps
        # component 0
        m0, m1 = (X - x1) / k0, (Y - y1) / k0
        a = ((A - a1) / k0 - m0 * m0) + reg_covar
        b = (B - b1) / k0 - m0 * m1
        c = ((C - c1) / k0 - m1 * m1) + reg_covar
        det0 = a * c - b * b
        if not det0 > 0:  # (numpy gives NaN or infinities here; so does this)
            det0 = nan
        p0, q0, r0 = c / det0, b / det0, a / det0
        u0 = p0 * m0 - q0 * m1
        v0 = r0 * m1 - q0 * m0
        w0 = u0 * m0 + v0 * m1
        # component 1
        m0, m1 = x1 / k1, y1 / k1
        a = (a1 / k1 - m0 * m0) + reg_covar
        b = b1 / k1 - m0 * m1
        c = (c1 / k1 - m1 * m1) + reg_covar
        det1 = a * c - b * b
        if not det1 > 0:
            det1 = nan
        p1, q1, r1 = c / det1, b / det1, a / det1
        u1 = p1 * m0 - q1 * m1
        v1 = r1 * m1 - q1 * m0
        w1 = u1 * m0 + v1 * m1
        tot = k0 + k1
        args += (k0 / tot / sqrt(det0), k1 / tot / sqrt(det1))
        p0, r0, p1, r1 = -0.5 * p0, -0.5 * r0, -0.5 * p1, -0.5 * r1
        parts.append((w0, w1, u0 - u1, v0 - v1, p0 - p1, q0 - q1, r0 - r1,
                      N, X * u1, Y * v1, A * p1, B * q1, C * r1))
    logs = np.log(args).tolist()
    du, base = [], []
    for s, (w0, w1, du1, du2, du3, du4, du5, N, t1, t2, t3, t4, t5) in enumerate(parts):
        c00 = logs[2 * s] - LOG2PI - 0.5 * w0
        c10 = logs[2 * s + 1] - LOG2PI - 0.5 * w1
        du.append((c00 - c10, du1, du2, du3, du4, du5))
        base.append(c10 * N + t1 + t2 + t3 + t4 + t5)  # in the order of numpy's sum over the features
    return np.array(du), np.array(base)


_BLOCK = 16  # rows per block of the E-step (a block's features stay in cache between its two products)


def _k2_loglik_at(PhiT: np.ndarray, du: np.ndarray, base: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Summed log-likelihood of the rows of PhiT (k, 6, N) at the coefficients (du, base), as
    ``sum max(l0, l1) - sum log max(r1, 1 - r1)``: finite where exp(u) overflows."""
    u = np.matmul(du[:, None, :], PhiT)[:, 0]
    with np.errstate(over="ignore"):
        r = 1.0 / (1.0 + np.exp(u))
    m = np.maximum(r, 1.0 - r)
    # max(l0, l1) = l1 + max(u, 0) and sum u = du . M
    return base + 0.5 * (np.abs(u).sum(1) + (du * M).sum(1)) - np.log(m).sum(1)


def _ill_defined(rows) -> ValueError:
    return ValueError(f"EM failed for batch row(s) {sorted(rows)}: a component has an ill-defined covariance "
                      "(collapsed samples); increase reg_covar or use fewer components")


def _k2_estep_rows(PhiT, du3, n, U, U3, R, R3, T3) -> None:
    """The E-step of ``_em_k2d2_full`` on its first ``n`` working rows, in blocks of ``_BLOCK`` rows:
    U = log q with q = 1 + exp(u), u = du . phi(x) (so ``U.sum(1)`` is the sum of log q), R = r1 = 1 / q,
    and T3 (n, 6, 1) = the next component-1 sums.  ``U3``/``R3`` are U and R viewed as (S, 1, N)/(S, N, 1)."""
    for i in range(0, n, _BLOCK):
        j = min(i + _BLOCK, n)
        u, r = U[i:j], R[i:j]
        np.matmul(du3[i:j], PhiT[i:j], out=U3[i:j])  # u = l0 - l1
        np.exp(u, out=r)
        r += 1.0  # q
        np.log(r, out=u)
        np.divide(1.0, r, out=r)  # r1 = 1 / (1 + exp(u))
        np.matmul(PhiT[i:j], R3[i:j], out=T3[i:j])  # the next component-1 sums


def _em_k2d2_full(PhiT, M, T1, tol, max_iter, reg_covar, info):
    """EM for two components, two dimensions, full covariances, all seeds at once.

    ``PhiT`` (S, 6, N) holds the quadratic features (it is reordered in place: the seeds still
    iterating occupy its leading rows), ``M`` (S, 6) their sums over samples and ``T1`` (S, 6)
    the initial component-1 sums.  Per iteration and seed, over the samples: the E-step's linear
    form u = l0 - l1 (a matrix-vector product), q = 1 + exp(u), log q, r1 = 1 / q and the next
    sums (a second matrix-vector product); the log-likelihood is ``sum l1 + sum log q`` (rows
    where exp(u) overflows are redone with ``_k2_loglik_at``).  The M-step's algebra acts on
    2 x 6 numbers per seed (``_k2_coef``).  A seed leaves the working rows as soon as it
    converges (the last working row moves into its place).  Every operation acts on each row
    alone, with the same code whatever the number of rows, so a seed's numbers do not depend on
    the other seeds in the batch.  Returns the final parameters (packed as ``_mstep_d2``),
    iteration counts, convergence flags and lower bounds."""
    S, F, N = PhiT.shape
    max_iter = int(max_iter)
    out = T1.copy()  # each seed's sums at its last M-step
    n_iter = np.full(S, max_iter)
    converged = np.zeros(S, dtype=bool)
    lower = np.full(S, -np.inf)
    seed_of = np.arange(S)  # working row -> seed
    Mw, T1w = M.copy(), T1.copy()
    T3 = T1w[:, :, None]
    prev = [-math.inf] * S  # the previous mean log-likelihood of each working row
    U, R = np.empty((S, N)), np.empty((S, N))
    U3, R3 = U[:, None, :], R[:, :, None]
    inv_n = 1.0 / N
    check_definite = not reg_covar > 0  # without regularisation a covariance can also turn negative definite
    n = S
    for it in range(1, max_iter + 1):
        if check_definite:
            _, bad = _coef_d2(_mstep_d2(np.stack([Mw[:n] - T1w[:n], T1w[:n]], 1), "full", reg_covar))
            if bad.any():
                raise _ill_defined(seed_of[:n][bad.any(-1)].tolist())
        du, base = _k2_coef(T1w[:n], Mw[:n], reg_covar)
        _k2_estep_rows(PhiT, du[:, None, :], n, U, U3, R, R3, T3)
        ll = np.add.reduce(U[:n], axis=1)
        ll += base
        if not np.maximum.reduce(ll) < math.inf:  # a covariance is not positive definite, or exp(u) overflowed
            bad = ~(np.isfinite(base) & np.isfinite(du).all(1))
            if bad.any():
                raise _ill_defined(seed_of[:n][bad].tolist())
            k = (~(ll < math.inf)).nonzero()[0]
            ll[k] = _k2_loglik_at(PhiT[k], du[k], base[k], Mw[k])
        ll *= inv_n
        lls = ll.tolist()
        if info is not None:
            info.em_iterations += n
            info.em_sweeps += 1
        idx = [i for i in range(n) if abs(lls[i] - prev[i]) < tol]
        prev[:n] = lls
        if not idx:
            continue
        idx = np.array(idx)
        seeds = seed_of[idx]
        out[seeds], lower[seeds], n_iter[seeds], converged[seeds] = T1w[idx], ll[idx], it, True
        left = n - len(idx)
        if left == 0:
            n = 0
            break
        holes = idx[idx < left]  # converged rows among the first `left`: the alive rows after them move in
        if len(holes):
            alive = np.ones(n - left, dtype=bool)
            alive[idx[idx >= left] - left] = False
            src = left + alive.nonzero()[0]
            PhiT[holes] = PhiT[src]
            for a in (Mw, T1w, seed_of):
                a[holes] = a[src]
            for h, k in zip(holes.tolist(), src.tolist()):
                prev[h] = prev[k]
        n = left
    if n:
        last = np.array(prev[:n])
        if np.isnan(last).any():
            raise FloatingPointError(f"EM produced NaN log-likelihoods for batch rows {sorted(seed_of[:n].tolist())}")
        out[seed_of[:n]] = T1w[:n]
        lower[seed_of[:n]] = last
        warnings.warn(f"EM did not converge within max_iter={max_iter} for {n} of {S} seed(s)",
                      RuntimeWarning, stacklevel=3)
    return _mstep_d2(np.stack([M - out, out], 1), "full", reg_covar), n_iter, converged, lower


@dataclass
class ConvergenceInfo:
    """Totals over batched fits (for benchmarks): EM iterations summed over seeds, and sweeps."""

    em_iterations: int = 0
    em_sweeps: int = 0


def params_from_labels(X: np.ndarray, labels: np.ndarray, n_components: int, covariance_type: str = "full",
                       reg_covar: float = 1e-6) -> GMM:
    """sklearn's initialisation: one-hot responsibilities from labels -> weights, means, covariances."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 2:
        X, labels = X[None], np.asarray(labels)[None]
    R = (np.asarray(labels)[:, None, :] == np.arange(n_components)[:, None]).astype(np.float64)  # (S, K, N)
    T = R @ np.swapaxes(_design_T(X), 1, 2)
    w, mu, cov = _mstep(T, X.shape[-1], covariance_type, reg_covar)
    return GMM(w, mu, cov, covariance_type)


def fit_gmm(X: np.ndarray, n_components: int = 2, covariance_type: str = "full", tol: float = 1e-5,
            max_iter: int = 2000, reg_covar: float = 1e-6, rng: np.random.Generator | None = None,
            init_labels: np.ndarray | None = None, info: ConvergenceInfo | None = None) -> GMM:
    """Fit one Gaussian mixture per seed by EM; X is (S, N, d) (or (N, d) for a single data set).

    Initial responsibilities are the one-hot labels of :func:`kmeans_labels` (drawn from
    ``rng``) unless ``init_labels`` (S, N) are given.  Each seed iterates until
    ``|lower_bound - previous| < tol`` (the lower bound being the mean log-likelihood), and is
    then frozen; the result holds the parameters of the last M-step, like sklearn.
    """
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"unknown covariance_type {covariance_type!r}; choose one of {COVARIANCE_TYPES}")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 2:
        X = X[None]
        init_labels = None if init_labels is None else np.asarray(init_labels)[None]
    _, N, d = X.shape
    K = int(n_components)
    if K < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    if N < K:
        raise ValueError(f"cannot fit {K} components to {N} samples")
    if init_labels is None and rng is None:
        raise ValueError("fit_gmm needs rng (for the k-means initialisation) or init_labels")
    if d == 2 and K == 2 and covariance_type == "full":  # the chapter's case
        PhiT = _design_T(X)
        if init_labels is None:
            one, _ = _kmeans(PhiT[:, 1:3], PhiT[:, 3] + PhiT[:, 5], 2, rng, 300, 1e-4)
        else:
            one = (np.asarray(init_labels) == 1).astype(np.float64)
        M = PhiT.sum(-1)
        T1 = np.matmul(PhiT, one[:, :, None])[:, :, 0]  # sklearn's _initialize: one-hot responsibilities
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            # (exp(u) = inf gives r1 = 0 as it should; NaN and infinities from an ill-defined covariance are reported)
            th, n_iter, converged, lower = _em_k2d2_full(PhiT, M, T1, tol, max_iter, reg_covar, info)
        w, mu, cov = _unpack_d2(th)
        return GMM(w, mu, cov, covariance_type, n_iter, converged, lower)
    if init_labels is None:
        init_labels = kmeans_labels(X, K, rng)
    if d == 2:
        coef_fn = _coef_d2
        mstep_fn = lambda T: _mstep_d2(T, covariance_type, reg_covar)
        unpack = _unpack_d2
    else:
        coef_fn = lambda th: _coef_generic(th, d)
        mstep_fn = lambda T: _mstep_generic(T, d, covariance_type, reg_covar)
        unpack = lambda th: _unpack_generic(th, d)
    with _single_thread_torch():
        th, n_iter, converged, lower = _em(X, K, tol, max_iter, init_labels, coef_fn, mstep_fn, info)
    w, mu, cov = unpack(th)
    return GMM(w, mu, cov, covariance_type, n_iter, converged, lower)


def _em(X, K, tol, max_iter, init_labels, coef_fn, mstep_fn, info):
    S = X.shape[0]
    PhiT = _design_T(X)
    Phi_sum = PhiT.sum(-1)
    R0 = (np.asarray(init_labels)[:, None, :] == np.arange(K)[:, None]).astype(np.float64)  # (S, K, N)
    th = mstep_fn(R0 @ np.swapaxes(PhiT, 1, 2))  # sklearn's _initialize: one-hot responsibilities

    rb = _Rows(th.copy(), max_iter)
    PTb, Mb = PhiT, Phi_sum
    for it in range(1, int(max_iter) + 1):
        coef, bad = coef_fn(th)
        if bad.any() and bad[rb.alive].any():
            rows = sorted(rb.buf[np.flatnonzero(bad.any(-1) & rb.alive)].tolist())
            raise ValueError(f"EM failed for batch row(s) {rows}: a component has an ill-defined covariance "
                             "(collapsed samples); increase reg_covar or use fewer components")
        ll, T = _estep(PTb, Mb, coef)
        th = mstep_fn(T)
        keep = rb.step(it, ll, th, tol, info)
        if rb.finished:
            break
        if keep is not None:
            PTb, Mb, th = PTb[keep], Mb[keep], th[keep]
    rb.close(th, S)
    return rb.out, rb.n_iter, rb.converged, rb.lower


# ---------------------------------------------------------------------------------------------
# EM as the textbook writes it: the definitions the chapter shows.  ``fit_gmm`` above is the same
# algorithm rewritten for speed (all seeds at once, quadratic features, fused passes); the tests
# check it against ``em`` (same parameters to ~1e-9, same iteration counts) and against sklearn.
# ---------------------------------------------------------------------------------------------
def e_step(X: np.ndarray, model: GMM):
    """E-step: each sample's responsibilities r_nk = P(component k | x_n) under the current mixture,
    (S, N, K), and the mean log-likelihood of the samples, (S,).  X is (S, N, d)."""
    from scipy.special import logsumexp

    log_joint = model.component_log_prob(X)  # log w_k + log N(x_n; mu_k, Sigma_k)
    log_px = logsumexp(log_joint, axis=-1)    # log p(x_n) = log sum_k w_k N(x_n; mu_k, Sigma_k)
    return np.exp(log_joint - log_px[..., None]), log_px.mean(-1)


def m_step(X: np.ndarray, resp: np.ndarray, covariance_type: str = "full", reg_covar: float = 1e-6) -> GMM:
    """M-step: the mixture that maximises the expected log-likelihood, given responsibilities (S, N, K):
    weights, means and covariances are responsibility-weighted averages; ``reg_covar`` is added to every
    covariance diagonal (as sklearn, whose tiny 10 eps keeps an empty component's count positive)."""
    nk = resp.sum(1) + 10 * EPS                               # (S, K): effective sample counts
    weights = nk / nk.sum(-1, keepdims=True)
    means = np.einsum("snk,snd->skd", resp, X) / nk[..., None]
    diff = X[:, None, :, :] - means[:, :, None, :]             # (S, K, N, d)
    cov = np.einsum("snk,sknd,skne->skde", resp, diff, diff) / nk[..., None, None]
    eye = np.eye(X.shape[-1])
    if covariance_type == "tied":                              # one covariance shared by all components
        cov = np.broadcast_to((nk[..., None, None] * cov).sum(1, keepdims=True) / nk.sum(-1)[:, None, None, None],
                              cov.shape)
    elif covariance_type == "diag":
        cov = cov * eye
    elif covariance_type == "spherical":
        cov = np.trace(cov, axis1=-2, axis2=-1)[..., None, None] / X.shape[-1] * eye
    return GMM(weights, means, cov + reg_covar * eye, covariance_type)


def em(X: np.ndarray, init_labels: np.ndarray, n_components: int, covariance_type: str = "full",
       tol: float = 1e-5, max_iter: int = 2000, reg_covar: float = 1e-6) -> GMM:
    """EM on one data set X (N, d) as sklearn's ``GaussianMixture`` runs it: the initial labels (k-means)
    become one-hot responsibilities, then E- and M-steps alternate until the mean log-likelihood changes by
    less than ``tol``.  The result holds the parameters of the last M-step."""
    X = np.asarray(X, dtype=np.float64)[None]                 # a batch of one seed
    resp = np.eye(n_components)[np.asarray(init_labels)][None]
    model = m_step(X, resp, covariance_type, reg_covar)
    ll, converged, n_iter = -np.inf, False, 0
    while not converged and n_iter < max_iter:
        n_iter += 1
        prev = ll
        resp, ll = e_step(X, model)
        model = m_step(X, resp, covariance_type, reg_covar)
        converged = bool(abs(ll[0] - prev) < tol)
    model.n_iter, model.converged, model.lower_bound = np.array([n_iter]), np.array([converged]), ll
    return model


# ---------------------------------------------------------------------------------------------
# The closed-form squared L2 distance
# ---------------------------------------------------------------------------------------------
def _cross_term(A: GMM, B: GMM) -> np.ndarray:
    r""":math:`\sum_{ij} a_i b_j \mathcal N(\mu_i - \nu_j; 0, \Sigma_i + S_j)` per seed (broadcasting S=1)."""
    diff = A.means[:, :, None, :] - B.means[:, None, :, :]  # (S, Ka, Kb, d)
    C = A.covariances[:, :, None] + B.covariances[:, None, :]  # (S, Ka, Kb, d, d)
    P, logdet, bad = _inv_logdet(C)
    if bad.any():
        raise ValueError("covariances must be positive definite")
    maha = np.einsum("...i,...ij,...j->...", diff, P, diff)
    dens = np.exp(-0.5 * (A.d * LOG2PI + logdet + maha))
    return np.einsum("si,sj,sij->s", A.weights * np.ones((dens.shape[0], 1)),
                     B.weights * np.ones((dens.shape[0], 1)), dens)


def l2_distance_sq(f: GMM, g: GMM) -> np.ndarray:
    r"""Closed-form :math:`\|f-g\|_2^2` per seed (either side may hold a single mixture).

    .. math:: \|f-g\|^2 = \sum_{ij} a_i a_j \mathcal N(\mu_i-\mu_j;0,\Sigma_i+\Sigma_j)
              + \sum_{kl} b_k b_l \mathcal N(\nu_k-\nu_l;0,S_k+S_l)
              - 2\sum_{ik} a_i b_k \mathcal N(\mu_i-\nu_k;0,\Sigma_i+S_k)
    """
    out = _cross_term(f, f) + _cross_term(g, g) - 2.0 * _cross_term(f, g)
    return np.maximum(out, 0.0)


def l2_distance_grid(f: GMM, g: GMM, lim: float = 8.0, n: int = 801) -> np.ndarray:
    """The same distance by numerical integration on a 2-D grid (a check of the closed form)."""
    if f.d != 2 or g.d != 2:
        raise ValueError("the grid check is two-dimensional")
    t = np.linspace(-lim, lim, n)
    xx, yy = np.meshgrid(t, t, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel()], -1)[None]
    diff = np.exp(f.log_prob(pts)) - np.exp(g.log_prob(pts))
    h = t[1] - t[0]
    wts = np.ones(n)
    wts[[0, -1]] = 0.5  # trapezoid rule
    W = (wts[:, None] * wts[None, :]).ravel()
    return (diff**2 * W).sum(-1) * h * h


# ---------------------------------------------------------------------------------------------
# The two data settings and the tails metric
# ---------------------------------------------------------------------------------------------
def truth(setting: str, separation: float = 3.0, component_std: float = 0.5) -> GMM:
    """The real data's distribution as a (single) mixture.

    ``blob``: N(0, I_2), what the official notebook samples (and fits with 2 components).
    ``two_gaussians``: 0.5 N((-s/2, 0), c^2 I) + 0.5 N((s/2, 0), c^2 I), the paper's description.
    """
    if setting == "blob":
        return GMM(np.ones(1), np.zeros((1, 2)), np.eye(2)[None])
    if setting == "two_gaussians":
        m = np.array([[-separation / 2, 0.0], [separation / 2, 0.0]])
        return GMM(np.full(2, 0.5), m, np.stack([component_std**2 * np.eye(2)] * 2))
    raise ValueError(f"unknown data setting {setting!r}; choose one of {DATA_SETTINGS}")


def real_data(true_dist: GMM, seeds: Sequence[int], n: int) -> np.ndarray:
    """``n`` real samples per seed, (S, n, d); seed s's data depend on s alone (not on the batch)."""
    return np.concatenate([true_dist.sample(n, make_rng(int(s), 0, "data"))[0] for s in seeds])


def tail_thresholds(true_dist: GMM, levels: Sequence[float] = (0.95, 0.99), n_mc: int = 1_000_000,
                    seed: int = 20240724) -> dict[float, float]:
    """Log-density thresholds t_q with P(log p0(X) < t_q) = 1 - q under the true distribution.

    The region {log p0 < t_q} lies outside the density contour that holds the fraction q of
    the mass.  Exact (chi-square) for a single Gaussian, Monte Carlo with ``n_mc`` draws otherwise.
    """
    key = (true_dist.weights.tobytes(), true_dist.means.tobytes(), true_dist.covariances.tobytes(),
           tuple(float(q) for q in levels), int(n_mc), int(seed))
    if key not in _THRESHOLD_CACHE:
        _THRESHOLD_CACHE[key] = _tail_thresholds(true_dist, levels, n_mc, seed)
    return dict(_THRESHOLD_CACHE[key])


_THRESHOLD_CACHE: dict = {}


def _tail_thresholds(true_dist: GMM, levels, n_mc: int, seed: int) -> dict[float, float]:
    out = {}
    if true_dist.n_components == 1:
        from scipy import stats

        _, logdet, _ = _inv_logdet(true_dist.covariances[0, 0])
        for q in levels:
            out[float(q)] = float(-0.5 * (true_dist.d * LOG2PI + logdet + stats.chi2.ppf(q, true_dist.d)))
        return out
    x, _ = true_dist.sample(n_mc, make_rng(seed, 0, "eval"))
    lp = true_dist.log_prob(x)[0]
    for q in levels:
        out[float(q)] = float(np.quantile(lp, 1.0 - q))
    return out


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------
class GMMExperiment(Experiment):
    """Refit a K-component mixture on samples of the previous fit, all seeds at once.

    ``true_dist`` is the real distribution, or a list of them with ``groups`` giving each batch row's
    index into it (several data settings can then share one batch).  Metrics per row at every
    recorded generation: ``l2_gen0`` (closed-form squared L2 distance to this row's generation-0
    fit), ``l2_truth`` (to the real distribution), ``spread_min``/``spread_max`` (per-component
    spreads, sorted), ``spread_overall`` (of the whole mixture), ``weight_min``,
    ``tail95``/``tail99`` (mass the model puts outside the real distribution's 95 %/99 % density
    contours: 0.05/0.01 for a perfect fit; Monte Carlo with ``eval_samples`` draws), ``n_iter`` and
    ``converged`` (EM), ``loglik`` (mean training log-likelihood).
    """

    batched = True

    def __init__(self, true_dist: GMM | Sequence[GMM], n_components: int = 2, covariance_type: str = "full",
                 tol: float = 1e-5, max_iter: int = 2000, reg_covar: float = 1e-6, eval_samples: int = 10_000,
                 name: str = "gmm", tail_levels: Sequence[float] = (0.95, 0.99), groups: Sequence[int] | None = None):
        self.truths = [true_dist] if isinstance(true_dist, GMM) else list(true_dist)
        self.groups = None if groups is None else np.asarray(groups, dtype=int)
        if self.groups is None and len(self.truths) != 1:
            raise ValueError("several real distributions need groups (the truth index of every row)")
        self.n_components, self.covariance_type = int(n_components), covariance_type
        self.tol, self.max_iter, self.reg_covar = float(tol), int(max_iter), float(reg_covar)
        self.eval_samples = int(eval_samples)
        self.name = name
        self.thresholds = [tail_thresholds(t, tail_levels) for t in self.truths]
        self.reference: GMM | None = None
        self.info = ConvergenceInfo()

    def _rows(self, n_rows: int):
        if self.groups is None:
            return [(0, slice(None))]
        if len(self.groups) != n_rows:
            raise ValueError(f"groups has {len(self.groups)} entries for {n_rows} batch rows")
        return [(i, np.flatnonzero(self.groups == i)) for i in range(len(self.truths))]

    def fit(self, data, ctx: GenerationContext) -> GMM:
        return fit_gmm(data, self.n_components, self.covariance_type, self.tol, self.max_iter, self.reg_covar,
                       rng=ctx.rng("fit"), info=self.info)

    def sample(self, model: GMM, n: int, ctx: GenerationContext) -> np.ndarray:
        return model._sample(n, ctx.rng("sample"), False)[0]

    def evaluate(self, model: GMM, comp, ctx: GenerationContext) -> dict:
        if ctx.generation == 0 or self.reference is None:
            self.reference = model
        spreads = np.sort(model.spreads(), axis=1)
        S = model.n_seeds
        out = {
            "l2_gen0": l2_distance_sq(self.reference, model),
            "l2_truth": np.empty(S),
            "spread_min": spreads[:, 0],
            "spread_max": spreads[:, -1],
            "spread_overall": model.overall_spread(),
            "weight_min": model.weights.min(1),
            "n_iter": model.n_iter,
            "converged": model.converged.astype(float),
            "loglik": model.lower_bound,
        }
        y = model._sample(self.eval_samples, ctx.rng("eval"), False)[0] if self.eval_samples > 0 else None
        for i, rows in self._rows(S):
            sub = model if isinstance(rows, slice) else model[rows]
            out["l2_truth"][rows] = l2_distance_sq(self.truths[i], sub)
            if y is not None:
                lp = self.truths[i].log_prob(y[rows])
                for q, t in self.thresholds[i].items():
                    out.setdefault(f"tail{round(q * 100):d}", np.empty(S))[rows] = (lp < t).mean(-1)
        return out

    def get_state(self):
        return self.reference

    def set_state(self, state):
        self.reference = state


# ---------------------------------------------------------------------------------------------
# Speed and faithfulness against sklearn (used by the chapter, the tests and benchmarks/bench_gmm.py)
# ---------------------------------------------------------------------------------------------
def speed_comparison(n_seeds: int, sk_seeds: int, generations: int, n: int = 1000, threads: int = 1,
                     checkpoints: Sequence[int] = (), progress: bool = False) -> dict:
    """Time the batched recursion (``n_seeds`` seeds) and the official-style loop that refits
    ``sklearn.mixture.GaussianMixture`` one seed at a time (``sk_seeds`` seeds), official settings.

    Both start from the same real data per seed and run under the same thread limit.  Returns
    wall/CPU seconds, seed-generations, mean EM iterations per fit, and the squared L2 distance to
    generation 0 at ``checkpoints`` (arrays over seeds) for both.
    """
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    from ..core.engine import run_recursion
    from ..core.seeding import derive_seed

    checkpoints = sorted({int(g) for g in checkpoints if 0 < g <= generations} | {generations})
    dist = truth("blob")
    out: dict = {"generations": generations, "n": n, "threads": threads, "checkpoints": checkpoints}
    torch_threads = _TORCH.get_num_threads() if _TORCH is not None else None
    try:
        if _TORCH is not None:
            _TORCH.set_num_threads(threads)
        with threadpool_limits(threads), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seeds = list(range(n_seeds))
            real = real_data(dist, seeds, n)
            ex = GMMExperiment(dist, 2, "full", 1e-5, 2000, 1e-6, eval_samples=0, name="gmm_speed")
            c0, w0 = time.process_time(), time.perf_counter()
            res = run_recursion(ex, real, generations, seed=0, seeds=seeds, record=[0, *checkpoints],
                                progress=progress)
            out["batched"] = {"seeds": n_seeds, "cpu": time.process_time() - c0, "wall": time.perf_counter() - w0,
                              "seed_generations": n_seeds * (generations + 1),
                              "em_iterations": ex.info.em_iterations / (n_seeds * (generations + 1))}
            wide = res.wide()
            out["batched"]["l2"] = {g: wide.loc[wide.generation == g, "l2_gen0"].to_numpy() for g in checkpoints}

            l2: dict = {g: [] for g in checkpoints}
            iters = []
            c0, w0 = time.process_time(), time.perf_counter()
            for s in range(sk_seeds):
                x, ref = real[s] if s < n_seeds else real_data(dist, [s], n)[0], None
                for g in range(generations + 1):
                    est = GaussianMixture(n_components=2, covariance_type="full", tol=1e-5, max_iter=2000,
                                          random_state=derive_seed(s, g, "fit") % 2**32).fit(x)
                    iters.append(est.n_iter_)
                    if g == 0 or g in l2:
                        fitted = GMM.from_sklearn([est])
                        ref = fitted if g == 0 else ref
                        if g in l2:
                            l2[g].append(float(l2_distance_sq(ref, fitted)[0]))
                    if g < generations:
                        est.random_state = derive_seed(s, g, "sample") % 2**32
                        x = est.sample(n)[0]
            out["sklearn"] = {"seeds": sk_seeds, "cpu": time.process_time() - c0, "wall": time.perf_counter() - w0,
                              "seed_generations": sk_seeds * (generations + 1), "em_iterations": float(np.mean(iters)),
                              "l2": {g: np.asarray(v) for g, v in l2.items()}}
    finally:
        if torch_threads is not None:
            _TORCH.set_num_threads(torch_threads)
    for k in ("batched", "sklearn"):
        out[k]["per_s_wall"] = out[k]["seed_generations"] / out[k]["wall"]
        out[k]["per_s_cpu"] = out[k]["seed_generations"] / out[k]["cpu"]
    out["speedup_wall"] = out["batched"]["per_s_wall"] / out["sklearn"]["per_s_wall"]
    out["speedup_cpu"] = out["batched"]["per_s_cpu"] / out["sklearn"]["per_s_cpu"]
    return out


def distance_agreement(cmp: dict) -> pd.DataFrame:
    """Two-sample KS and Mann-Whitney tests of the L2 distance to generation 0, batched vs sklearn."""
    from scipy import stats

    rows = []
    for g in cmp["checkpoints"]:
        a, b = cmp["batched"]["l2"][g], cmp["sklearn"]["l2"][g]
        rows.append({"generation": g, "median batched": np.median(a), "median sklearn": np.median(b),
                     "KS p": stats.ks_2samp(a, b).pvalue if len(b) > 1 else np.nan,
                     "Mann-Whitney p": stats.mannwhitneyu(a, b).pvalue if len(b) > 1 else np.nan})
    return pd.DataFrame(rows)


def sklearn_agreement(X: np.ndarray, n_components: int = 2, covariance_type: str = "full", tol: float = 1e-5,
                      max_iter: int = 2000, reg_covar: float = 1e-6, seed: int = 0) -> pd.DataFrame:
    """Fit each data set (rows of X) with our EM and with sklearn started from the same k-means
    labels; report the largest parameter differences and the log-likelihood difference."""
    from sklearn.mixture import GaussianMixture

    labels = kmeans_labels(X, n_components, make_rng(seed, 0, "fit"))
    ours = fit_gmm(X, n_components, covariance_type, tol, max_iter, reg_covar, init_labels=labels)
    rows = []
    for s in range(X.shape[0]):
        init = params_from_labels(X[s], labels[s], n_components, covariance_type, reg_covar)
        prec = np.linalg.inv(init.covariances[0])
        if covariance_type != "full":
            raise ValueError("sklearn_agreement compares full covariances")
        ref = GaussianMixture(n_components, covariance_type=covariance_type, tol=tol, max_iter=max_iter,
                              reg_covar=reg_covar, weights_init=init.weights[0], means_init=init.means[0],
                              precisions_init=prec).fit(X[s])
        rows.append({"data set": s, "EM iterations (ours / sklearn)": f"{ours.n_iter[s]} / {ref.n_iter_}",
                     "max |weight diff|": np.abs(ours.weights[s] - ref.weights_).max(),
                     "max |mean diff|": np.abs(ours.means[s] - ref.means_).max(),
                     "max |covariance diff|": np.abs(ours.covariances[s] - ref.covariances_).max(),
                     "|log-likelihood diff|": abs(ours[s].score(X[s])[0] - ref.score(X[s]))})
    return pd.DataFrame(rows)
