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
``GMMExperiment``    the experiment that :func:`collapse_utils.engine.run_recursion` drives.
``speed_comparison`` the batched recursion timed against sklearn refitted one seed at a time.

The chapter's run plan, figures, tables and claims live in
:mod:`collapse_utils.chapters.gaussian_mixtures`; this module knows nothing about pages.

How the EM is made fast.  With the quadratic features
:math:`\phi(x) = (1, x_1..x_d, x_i x_j\,(i \le j))` every log-density
:math:`\log w_k + \log\mathcal N(x;\mu_k,\Sigma_k)` is linear in :math:`\phi(x)`, and every
M-step needs only :math:`\sum_n r_{nk}\phi(x_n)` (counts, first and second moments).  So one
EM iteration for all seeds is two batched matrix products (E-step: coefficients times
features; M-step: features times responsibilities) plus a few element-wise passes over
``(seeds, N)``.  With two components the E-step is one linear form
:math:`\delta = l_1 - l_0`, a logistic function and a product (no logarithm per sample), and
the second component's sums are the totals minus the first's.  The per-component algebra (a
2x2 inverse and determinant for ``d = 2``) acts on tiny arrays, or on Python floats once only a
few seeds are still iterating; converged seeds leave the working arrays.  Everything is
float64.  Tests check the result against sklearn on the same data and the same initial labels
(parameters agree to ~1e-14, iteration counts exactly).

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

from .engine import Experiment, GenerationContext
from .seeding import make_rng

__all__ = [
    "COVARIANCE_TYPES",
    "DATA_SETTINGS",
    "GMM",
    "ConvergenceInfo",
    "GMMExperiment",
    "distance_agreement",
    "fit_gmm",
    "kmeans_labels",
    "l2_distance_grid",
    "l2_distance_sq",
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
        n = int(n)
        S, K, d = self.n_seeds, self.n_components, self.d
        w = self.weights / self.weights.sum(-1, keepdims=True)
        counts = rng.multinomial(n, w) if K > 1 else np.full((S, 1), n)
        z = rng.standard_normal((d, S * n))
        L = np.linalg.cholesky(self.covariances)  # (S, K, d, d)
        # samples come grouped by component within each seed: repeat each component's parameters
        reps = counts.ravel()
        labels = np.repeat(np.tile(np.arange(K), S), reps).reshape(S, n)
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


def _nearest(XT: np.ndarray, xsq: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for every point, (S, N)."""
    if C.shape[1] == 2:  # which side of the perpendicular bisector: 2 x.(c1 - c0) > |c1|^2 - |c0|^2
        v = C[:, 1] - C[:, 0]
        thr = 0.5 * (v * (C[:, 1] + C[:, 0])).sum(-1)
        return ((v[:, None, :] @ XT)[:, 0, :] > thr[:, None]).astype(np.int64)
    return np.argmin(_sq_dist_T(XT, xsq, C), axis=1)


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
    rows = np.arange(S)
    XT = np.ascontiguousarray(np.swapaxes(X, 1, 2))  # (S, d, N)
    xsq = (XT**2).sum(1)  # (S, N)
    # k-means++ seeding
    n_trials = 2 + int(np.log(K))
    first = rng.integers(0, N, size=S)
    u = rng.random((S, K - 1, n_trials))
    C = np.empty((S, K, d))
    C[:, 0] = X[rows, first]
    closest = _sq_dist_T(XT, xsq, C[:, :1])[:, 0]  # (S, N)
    for c in range(1, K):
        cum = np.cumsum(closest, axis=1)
        rv = u[:, c - 1] * cum[:, -1:]
        cand = np.minimum((cum[:, None, :] < rv[:, :, None]).sum(-1), N - 1)  # searchsorted, (S, T)
        dc = np.minimum(_sq_dist_T(XT, xsq, X[rows[:, None], cand]), closest[:, None, :])  # (S, T, N)
        best = np.argmin(dc.sum(-1), axis=1)
        closest = dc[rows, best]
        C[:, c] = X[rows, cand[rows, best]]
    # Lloyd, per seed until its labels stop changing or its centres move less than tol
    mean = XT.mean(-1)
    tol_s = tol * (xsq.mean(-1) - (mean**2).sum(-1)) / d  # sklearn: tol * mean of the per-feature variances
    buf = np.arange(S)
    alive = np.ones(S, dtype=bool)
    XTb, xsqb, Cb = XT, xsq, C.copy()
    tot = N * mean  # (S, d)
    lab_old = None
    for _ in range(max_iter):
        lab = _nearest(XTb, xsqb, Cb)
        if K == 2:
            one = lab.astype(np.float64)
            n1 = one.sum(-1)
            s1 = (XTb @ one[..., None])[..., 0]  # (Sb, d)
            cnt = np.stack([N - n1, n1], -1)
            sums = np.stack([tot - s1, s1], 1)
        else:
            onehot = (lab[:, None, :] == np.arange(K)[:, None]).astype(np.float64)  # (Sb, K, N)
            cnt = onehot.sum(-1)
            sums = onehot @ np.swapaxes(XTb, 1, 2)
        if (cnt > 0).all():
            new = sums / cnt[..., None]
        else:
            new = np.where(cnt[..., None] > 0, sums / np.maximum(cnt, 1)[..., None], Cb)
        shift = ((new - Cb) ** 2).sum((1, 2))
        done = shift <= tol_s[buf]
        if lab_old is not None:
            done |= (lab == lab_old).all(1)
        done &= alive
        Cb, lab_old = new, lab
        if done.any():
            C[buf[done]] = Cb[done]
            alive &= ~done
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if n_alive <= 0.75 * len(buf):
                keep = np.flatnonzero(alive)
                buf, XTb, xsqb, Cb, lab_old, alive, tot = (buf[keep], XTb[keep], xsqb[keep], Cb[keep],
                                                           lab_old[keep], alive[keep], tot[keep])
    if alive.any():
        C[buf[alive]] = Cb[alive]
    lab = _nearest(XT, xsq, C)  # labels that match the final centres
    return (lab, C) if return_centers else lab


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
    iu, ju = _triu(d)
    XT = np.swapaxes(X, 1, 2)
    PhiT = np.empty((S, 1 + d + len(iu), N))
    PhiT[:, 0] = 1.0
    PhiT[:, 1:1 + d] = XT
    PhiT[:, 1 + d:] = XT[:, iu] * XT[:, ju]
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


# -- K = 2, d = 2, full covariances (the chapter's case): one EM sweep in as few numpy calls as possible --
_IA, _IB = np.array([0, 0, 1]), np.array([0, 1, 1])  # (m0 m0, m0 m1, m1 m1)
_REV, _SGN = np.array([2, 1, 0]), np.array([1.0, -1.0, 1.0])  # adj([[a, b], [b, c]]) = [[c, -b], [-b, a]]
_P01, _P12 = np.array([0, 1]), np.array([1, 2])
_PY_ROWS = 4  # below this many rows the per-component algebra runs on Python floats (less call overhead)


def _coef_from_T(T, reg_covar):
    """Coefficients (S, 2, 6) of the next E-step straight from the weighted sums T (S, 2, 6), and
    whether every covariance is positive definite.  Same formulas as ``_mstep_d2`` + ``_coef_d2``."""
    if T.shape[0] <= _PY_ROWS:
        return _coef_from_T_py(T, reg_covar)
    nk = T[..., 0] + 10 * EPS
    M = T[..., 1:] / nk[..., None]  # m0, m1, E x0^2, E x0 x1, E x1^2
    cov = M[..., 2:] - M[..., _IA] * M[..., _IB]
    cov[..., 0] += reg_covar
    cov[..., 2] += reg_covar
    det = cov[..., 0] * cov[..., 2] - cov[..., 1] * cov[..., 1]
    ok = det.min() > 0 and cov[..., 0].min() > 0
    P = cov[..., _REV] * _SGN
    P /= det[..., None]  # (p00, p01, p11)
    coef = np.empty(T.shape)
    pm = coef[..., 1:3]
    np.multiply(P[..., _P01], M[..., 0:1], out=pm)
    pm += P[..., _P12] * M[..., 1:2]  # P mu
    np.multiply(P, _Q_SCALE, out=coef[..., 3:])
    w = nk / nk.sum(1, keepdims=True)
    coef[..., 0] = np.log(w / np.sqrt(det)) - LOG2PI - 0.5 * (M[..., 0] * pm[..., 0] + M[..., 1] * pm[..., 1])
    return coef, ok


def _coef_from_T_py(T, reg_covar):
    """``_coef_from_T`` on Python floats, for the few rows left at the end of a batched fit."""
    out, ok = [], True
    ten_eps = 10 * EPS
    for row in T.tolist():
        n0, n1 = row[0][0] + ten_eps, row[1][0] + ten_eps
        tot = n0 + n1
        crow = []
        for c, nk in ((row[0], n0), (row[1], n1)):
            m0, m1 = c[1] / nk, c[2] / nk
            a = (c[3] / nk - m0 * m0) + reg_covar
            b = c[4] / nk - m0 * m1
            cc = (c[5] / nk - m1 * m1) + reg_covar
            det = a * cc - b * b
            if not (det > 0 and a > 0):
                ok = False
                det = 1.0
            p00, p01, p11 = cc / det, -b / det, a / det
            pm0 = p00 * m0 + p01 * m1
            pm1 = p01 * m0 + p11 * m1
            c0 = math.log(nk / tot / math.sqrt(det)) - LOG2PI - 0.5 * (m0 * pm0 + m1 * pm1)
            crow.append([c0, pm0, pm1, -0.5 * p00, -p01, -0.5 * p11])
        out.append(crow)
    return np.array(out), ok


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


def _em_k2d2_full(PhiT, Phi_sum, T, tol, max_iter, reg_covar, info):
    """The EM loop of ``_em`` specialised to two components, two dimensions, full covariances.

    Works on the weighted feature sums T (the M-step's input) and the E-step coefficients; the
    parameters are computed once, from the sums of each seed's final M-step."""
    S, _, N = PhiT.shape
    inv_n = 1.0 / N
    rb = _Rows(T.copy(), max_iter, min_rows=2 * _PY_ROWS)
    PTb, Mb = PhiT, Phi_sum
    Tcur = T
    coef, ok = _coef_from_T(Tcur, reg_covar)
    for it in range(1, int(max_iter) + 1):
        if not ok and not _coef_from_T(Tcur[rb.alive], reg_covar)[1]:
            _, bad = _coef_d2(_mstep_d2(Tcur[rb.alive], "full", reg_covar))
            rows = sorted(rb.buf[rb.alive][bad.any(-1)].tolist())
            raise ValueError(f"EM failed for batch row(s) {rows}: a component has an ill-defined covariance "
                             "(collapsed samples); increase reg_covar or use fewer components")
        # E-step: delta = l1 - l0, r1 = sigmoid(delta), log-likelihood as in _estep_k2
        dc = coef[:, 1] - coef[:, 0]
        delta = np.matmul(dc[:, None, :], PTb)[:, 0]
        r1 = _sigmoid(delta)
        m = 1.0 - r1
        np.maximum(m, r1, out=m)
        lsum = np.log(np.multiply.reduce(m, axis=1)) if N <= 1000 else np.add.reduce(np.log(m), axis=1)
        np.abs(delta, out=delta)
        mid = coef[:, 0] + coef[:, 1]
        ll = (0.5 * (np.add.reduce(Mb * mid, axis=1) + np.add.reduce(delta, axis=1)) - lsum) * inv_n
        # M-step sums and the next coefficients
        Tcur = np.empty((len(rb.buf), 2, 6))
        np.matmul(PTb, r1[:, :, None], out=Tcur[:, 1, :, None])
        np.subtract(Mb, Tcur[:, 1], out=Tcur[:, 0])
        coef, ok = _coef_from_T(Tcur, reg_covar)
        keep = rb.step(it, ll, Tcur, tol, info)
        if rb.finished:
            break
        if keep is not None:
            PTb, Mb, coef, Tcur = PTb[keep], Mb[keep], coef[keep], Tcur[keep]
    rb.close(Tcur, S)
    return _mstep_d2(rb.out, "full", reg_covar), rb.n_iter, rb.converged, rb.lower


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
    if init_labels is None:
        if rng is None:
            raise ValueError("fit_gmm needs rng (for the k-means initialisation) or init_labels")
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
        if d == 2 and K == 2 and covariance_type == "full":
            PhiT = _design_T(X)
            Phi_sum = PhiT.sum(-1)
            R0 = (np.asarray(init_labels)[:, None, :] == np.arange(K)[:, None]).astype(np.float64)
            th, n_iter, converged, lower = _em_k2d2_full(PhiT, Phi_sum, R0 @ np.swapaxes(PhiT, 1, 2), tol,
                                                         max_iter, reg_covar, info)
        else:
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
        return model.sample(n, ctx.rng("sample"))[0]

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
        y = model.sample(self.eval_samples, ctx.rng("eval"))[0] if self.eval_samples > 0 else None
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

    from .engine import run_recursion
    from .seeding import derive_seed

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
