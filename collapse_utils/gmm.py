r"""Chapter 02: Gaussian mixtures refitted on their own samples, many seeds at once.

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

from .config import Checker
from .engine import Experiment, GenerationContext
from .results import seed_matrix
from .seeding import make_rng

__all__ = [
    "COVARIANCE_TYPES",
    "DATA_SETTINGS",
    "GMM",
    "ConvergenceInfo",
    "GMMExperiment",
    "Study",
    "all_bookkeeping",
    "all_metrics",
    "distance_agreement",
    "fit_gmm",
    "kmeans_labels",
    "l2_distance_grid",
    "l2_distance_sq",
    "n_free_parameters",
    "params_from_labels",
    "plot_expressivity",
    "plot_l2",
    "plot_panels",
    "plot_regimes",
    "plot_spreads",
    "plot_tails",
    "real_data",
    "record_generations",
    "run_chapter",
    "run_study",
    "sklearn_agreement",
    "speed_comparison",
    "speed_table",
    "summary_table",
    "tail_thresholds",
    "timing_table",
    "truth",
    "validate_params",
    "what_we_saw",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
DATA_SETTINGS = ("blob", "two_gaussians")
SETTING_LABELS = {"blob": "official code: one 2-D standard blob", "two_gaussians": "paper: two separated Gaussians"}
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


def _em_k2d2_full(PhiT, Phi_sum, T, tol, max_iter, reg_covar, info):
    """The EM loop of ``_em`` specialised to two components, two dimensions, full covariances.

    Works on the weighted feature sums T (the M-step's input) and the E-step coefficients; the
    parameters are computed once, from the sums of each seed's final M-step."""
    S, _, N = PhiT.shape
    inv_n = 1.0 / N
    out_T = T.copy()
    n_iter = np.full(S, int(max_iter))
    converged = np.zeros(S, dtype=bool)
    lower = np.full(S, -np.inf)
    buf = np.arange(S)
    alive = np.ones(S, dtype=bool)
    prev = np.full(S, -np.inf)
    PTb, Mb = PhiT, Phi_sum
    Tcur = T
    coef, ok = _coef_from_T(Tcur, reg_covar)
    for it in range(1, int(max_iter) + 1):
        if not ok and not _coef_from_T(Tcur[alive], reg_covar)[1]:
            _, bad = _coef_d2(_mstep_d2(Tcur[alive], "full", reg_covar))
            rows = sorted(buf[alive][bad.any(-1)].tolist())
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
        Tb = np.empty((len(buf), 2, 6))
        np.matmul(PTb, r1[:, :, None], out=Tb[:, 1, :, None])
        np.subtract(Mb, Tb[:, 1], out=Tb[:, 0])
        Tcur = Tb
        coef, ok = _coef_from_T(Tb, reg_covar)
        if info is not None:
            info.em_iterations += int(alive.sum())
            info.em_sweeps += 1
        done = np.abs(ll - prev) < tol
        done &= alive
        prev = ll
        if done.any():
            rows = buf[done]
            out_T[rows] = Tb[done]
            lower[rows] = ll[done]
            n_iter[rows], converged[rows] = it, True
            alive &= ~done
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if n_alive <= 0.75 * len(buf) or len(buf) <= 2 * _PY_ROWS:  # drop finished rows
                keep = np.flatnonzero(alive)
                buf, PTb, Mb, coef, prev, alive = buf[keep], PTb[keep], Mb[keep], coef[keep], prev[keep], alive[keep]
                Tcur = Tcur[keep]
    if alive.any():
        if np.isnan(prev[alive]).any():
            raise FloatingPointError(f"EM produced NaN log-likelihoods for batch rows {sorted(buf[alive].tolist())}")
        out_T[buf[alive]] = Tb[alive]
        lower[buf[alive]] = prev[alive]
        warnings.warn(f"EM did not converge within max_iter={max_iter} for {alive.sum()} of {S} seed(s)",
                      RuntimeWarning, stacklevel=3)
    return _mstep_d2(out_T, "full", reg_covar), n_iter, converged, lower


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

    out = th.copy()
    n_iter = np.full(S, int(max_iter))
    converged = np.zeros(S, dtype=bool)
    lower = np.full(S, -np.inf)
    buf = np.arange(S)  # rows of the full batch held in the working arrays
    alive = np.ones(S, dtype=bool)  # which working rows still iterate
    prev = np.full(S, -np.inf)
    PTb, Mb = PhiT, Phi_sum
    for it in range(1, int(max_iter) + 1):
        coef, bad = coef_fn(th)
        if bad.any() and bad[alive].any():
            rows = sorted(buf[np.flatnonzero(bad.any(-1) & alive)].tolist())
            raise ValueError(f"EM failed for batch row(s) {rows}: a component has an ill-defined covariance "
                             "(collapsed samples); increase reg_covar or use fewer components")
        ll, T = _estep(PTb, Mb, coef)
        th = mstep_fn(T)
        if info is not None:
            info.em_iterations += int(alive.sum())
            info.em_sweeps += 1
        done = np.abs(ll - prev) < tol
        done &= alive
        prev = ll
        if done.any():
            rows = buf[done]
            out[rows] = th[done]
            lower[rows] = ll[done]
            n_iter[rows], converged[rows] = it, True
            alive &= ~done
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if n_alive <= 0.75 * len(buf):  # drop finished rows from the working arrays
                keep = np.flatnonzero(alive)
                buf, PTb, Mb = buf[keep], PTb[keep], Mb[keep]
                th, prev, alive = th[keep], prev[keep], alive[keep]
    if alive.any():
        if np.isnan(prev[alive]).any():
            raise FloatingPointError(f"EM produced NaN log-likelihoods for batch rows {sorted(buf[alive].tolist())}")
        out[buf[alive]] = th[alive]
        lower[buf[alive]] = prev[alive]
        warnings.warn(f"EM did not converge within max_iter={max_iter} for {alive.sum()} of {S} seed(s)",
                      RuntimeWarning, stacklevel=3)
    return out, n_iter, converged, lower


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
# Parameters
# ---------------------------------------------------------------------------------------------
def validate_params(params: dict) -> None:
    """One clear error listing every problem, before any compute."""
    c = Checker(params, "02")
    c.int("seed", 0).int("seeds", 2, 100_000).int("generations", 1, 1_000_000)
    c.int("n_samples", 1, 10_000_000).int("n_components", 1, 1000).choice("covariance_type", COVARIANCE_TYPES)
    c.float("tol", 0.0, open_lo=True).int("max_iter", 1).float("reg_covar", 0.0)
    c.float("separation", 0.0).float("component_std", 0.0, open_lo=True)
    c.ints("panel_generations", 0).int("record_every", 1).int("eval_samples", 0, 10_000_000)
    c.regimes("regimes").int("regime_seeds", 2, 100_000).int("regime_generations", 1, 1_000_000)
    c.choice("regime_data", DATA_SETTINGS)
    c.int("bench_seeds", 1, 100_000).int("bench_sklearn_seeds", 1, 10_000).int("bench_generations", 1, 100_000)
    p = params
    K, N, cov = p.get("n_components"), p.get("n_samples"), p.get("covariance_type")
    if isinstance(K, int) and K >= 1 and isinstance(N, int) and cov in COVARIANCE_TYPES:
        k_free = n_free_parameters(K, 2, cov)
        c.check(N >= k_free, f"n_samples={N} is smaller than the {k_free} free parameters of a {K}-component "
                             f"'{cov}' mixture in 2-D; use n_samples >= {k_free}")
    G, pg = p.get("generations"), p.get("panel_generations")
    if isinstance(G, int) and isinstance(pg, (list, tuple)) and all(isinstance(x, int) for x in pg) and pg:
        c.check(max(pg) <= G, f"panel_generations {list(pg)} go beyond generations={G}")
    S, RS = p.get("seeds"), p.get("regime_seeds")
    if isinstance(S, int) and isinstance(RS, int):
        c.check(RS <= S, f"regime_seeds={RS} must not exceed seeds={S} (the regimes reuse the first seeds)")
    RG, regs = p.get("regime_generations"), p.get("regimes")
    if isinstance(RG, int) and isinstance(N, int) and isinstance(RS, int) and isinstance(regs, (list, tuple)) \
            and any(str(r).strip().startswith("accumulate") for r in regs):
        rows = RS * N * (RG + 1)
        c.check(rows * 15 * 8 <= 8e9, f"accumulate keeps every generation's data: {RS} seeds x {N} x "
                                      f"{RG + 1} generations needs ~{rows * 120 / 1e9:.1f} GB; "
                                      "lower regime_generations or regime_seeds")
    c.done()


def record_generations(generations: int, every: int, extra: Sequence[int] = ()) -> np.ndarray:
    """0..10, every ``every``-th generation, ~40 log-spaced ones and ``extra``."""
    logs = np.round(np.logspace(0, np.log10(max(generations, 1)), 40)).astype(int)
    g = np.concatenate([np.arange(min(11, generations + 1)), np.arange(0, generations + 1, every), logs,
                        np.asarray(list(extra), dtype=int), [generations]])
    return np.unique(g[(g >= 0) & (g <= generations)])


# ---------------------------------------------------------------------------------------------
# The chapter's studies
# ---------------------------------------------------------------------------------------------
@dataclass
class Study:
    """One data setting of one recursion: tidy metrics, bookkeeping, kept models, real data, timing.

    Settings that ran in one batch share ``run`` (its name) and ``seconds`` (the batch's time).
    """

    label: str
    metrics: pd.DataFrame
    bookkeeping: pd.DataFrame
    models: dict
    real: np.ndarray
    true_dist: GMM
    thresholds: dict
    seconds: float
    em_iterations: int
    resumed_from: int | None = None
    run: str = ""
    rows_in_run: int = 0


def run_study(label: str, settings: str | Sequence[str], p: dict, n_components: int, seeds: Sequence[int],
              generations: int, regime: str = "replace", keep: Sequence[int] = (), checkpoint_dir=None,
              progress: bool = True, study: str = "settings") -> dict[str, Study]:
    """One batched recursion over ``seeds`` for each data setting in ``settings`` (all in one batch)."""
    from .engine import run_recursion

    settings = [settings] if isinstance(settings, str) else list(settings)
    seeds = [int(x) for x in seeds]
    dists = [truth(st, p["separation"], p["component_std"]) for st in settings]
    real = np.concatenate([real_data(d, seeds, p["n_samples"]) for d in dists])
    groups = np.repeat(np.arange(len(settings)), len(seeds))
    ex = GMMExperiment(dists, n_components, p["covariance_type"], p["tol"], p["max_iter"], p["reg_covar"],
                       p["eval_samples"], name=f"gmm_k{n_components}", groups=groups)
    t0 = time.perf_counter()
    res = run_recursion(
        ex, real, generations, regime=regime, seed=p["seed"], seeds=list(range(len(real))),  # rows; mapped below
        record=record_generations(generations, p["record_every"], p["panel_generations"]),
        keep_models=list(keep), checkpoint_dir=checkpoint_dir,
        checkpoint_every=max(1, generations // (4 if "accumulate" in str(regime) else 10)), progress=progress,
        columns={"study": study, "n_components": int(n_components), "N": int(p["n_samples"])},
    )
    seconds = time.perf_counter() - t0
    row_seed = np.tile(seeds, len(settings))
    out = {}
    for i, st in enumerate(settings):
        rows = np.flatnonzero(groups == i)
        m = res.metrics[res.metrics.seed.isin(rows)].copy()
        m["seed"] = row_seed[m.seed.to_numpy()]
        m.insert(2, "data", st)
        book = res.bookkeeping.copy()
        book.insert(2, "data", st)
        out[st] = Study(label if len(settings) == 1 else st, m.reset_index(drop=True), book,
                        {g: mod[rows] for g, mod in res.models.items()}, real[rows], dists[i],
                        ex.thresholds[i], seconds, ex.info.em_iterations, res.resumed_from,
                        run=label, rows_in_run=len(real))
    return out


def run_chapter(p: dict, checkpoint_root=None, progress: bool = True) -> dict[str, Study]:
    """Every study of chapter 02 at parameters ``p``.

    ``blob`` / ``two_gaussians``: the main runs (``seeds`` seeds each, ``generations``, replace), in one
    batch; ``expressivity``: one Gaussian fitted to the two-Gaussian data; ``regime:<name>``: the regimes
    on the first ``regime_seeds`` seeds of the ``regime_data`` setting.
    """
    seeds = list(range(p["seed"], p["seed"] + p["seeds"]))
    G = p["generations"]
    ck = (lambda name: None) if checkpoint_root is None else (lambda name: checkpoint_root / name)
    out = run_study("blob + two_gaussians", list(DATA_SETTINGS), p, p["n_components"], seeds, G,
                    keep=p["panel_generations"], checkpoint_dir=ck("settings"), progress=progress)
    out["expressivity"] = run_study("expressivity (K = 1)", "two_gaussians", p, 1, seeds, G, keep=[0],
                                    checkpoint_dir=ck("expressivity"), progress=progress,
                                    study="expressivity")["two_gaussians"]
    rseeds = seeds[:p["regime_seeds"]]
    for regime in p["regimes"]:
        name = "regime_" + str(regime).replace("(", "_").replace(")", "")
        out[f"regime:{regime}"] = run_study(f"regime {regime}", p["regime_data"], p, p["n_components"], rseeds,
                                            p["regime_generations"], regime=regime, checkpoint_dir=ck(name),
                                            progress=progress, study="regimes")[p["regime_data"]]
    return out


def all_metrics(studies: dict[str, Study]) -> pd.DataFrame:
    return pd.concat([s.metrics for s in studies.values()], ignore_index=True)


def all_bookkeeping(studies: dict[str, Study]) -> pd.DataFrame:
    return pd.concat([s.bookkeeping for s in studies.values()], ignore_index=True)


def timing_table(studies: dict[str, Study]) -> pd.DataFrame:
    """One row per batched recursion: seeds x generations, seconds, throughput, EM iterations."""
    rows, seen = [], set()
    for s in studies.values():
        if s.run in seen:
            continue
        seen.add(s.run)
        gens = int(s.bookkeeping["generation"].max())
        fits = s.rows_in_run * (gens + 1)
        fresh = s.resumed_from is None
        rows.append({"run": s.run, "rows (settings x seeds)": s.rows_in_run, "generations": gens,
                     "seconds": round(s.seconds, 1),
                     "fits per second": round(fits / s.seconds, 1) if fresh else np.nan,
                     "mean EM iterations per fit": round(s.em_iterations / fits, 1) if fresh else np.nan,
                     "note": "" if fresh else f"resumed from a checkpoint at generation {s.resumed_from}"})
    return pd.DataFrame(rows)


def summary_table(studies: dict[str, Study], generations: Sequence[int]) -> pd.DataFrame:
    """Median (over seeds) of the main metrics at a few generations, per data setting."""
    rows = []
    for setting in DATA_SETTINGS:
        df = studies[setting].metrics
        for g in generations:
            sub = df[df.generation == g]
            if sub.empty:
                continue
            med = sub.groupby("metric")["value"].median()
            rows.append({"data": setting, "generation": int(g), "spread_min": med["spread_min"],
                         "spread_max": med["spread_max"], "spread_overall": med["spread_overall"],
                         "weight_min": med["weight_min"], "l2_gen0": med["l2_gen0"],
                         "tail95": med.get("tail95", np.nan), "tail99": med.get("tail99", np.nan)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def _ellipse(ax, mean, cov, color, r=2.4477, **kw):
    """The contour of Mahalanobis radius r (2.45: 95 % of a 2-D Gaussian's mass)."""
    t = np.linspace(0, 2 * np.pi, 120)
    L = np.linalg.cholesky(cov)
    pts = mean[:, None] + r * L @ np.stack([np.cos(t), np.sin(t)])
    ax.plot(pts[0], pts[1], color=color, **kw)


def _truth_contours(ax, study: Study, lim: float):
    t = np.linspace(-lim, lim, 161)
    xx, yy = np.meshgrid(t, t)
    lp = study.true_dist.log_prob(np.stack([xx.ravel(), yy.ravel()], -1)[None])[0].reshape(xx.shape)
    levels = sorted(study.thresholds.values())
    ax.contour(xx, yy, lp, levels=levels, colors="0.4", linestyles=["--", ":"][: len(levels)], linewidths=0.9)


def plot_panels(studies: dict[str, Study], panel_generations: Sequence[int], row: int = 0, lim: float = 3.0,
                n_points: int = 1000, seed: int = 0):
    """Real data, then samples of the fitted mixture at each panel generation (one seed), per setting."""
    import matplotlib.pyplot as plt

    from .plotting import palette

    gens = [g for g in panel_generations if g in studies[DATA_SETTINGS[0]].models]
    fig, axes = plt.subplots(len(DATA_SETTINGS), len(gens) + 1, figsize=(2.15 * (len(gens) + 1), 2.35 * 2 + 0.4),
                             sharex=True, sharey=True, squeeze=False)
    cols = palette(max(studies[s].models[gens[0]].n_components for s in DATA_SETTINGS) + 1)
    for i, setting in enumerate(DATA_SETTINGS):
        st = studies[setting]
        ax = axes[i, 0]
        x = st.real[row]
        ax.scatter(x[:, 0], x[:, 1], s=2, color="0.3", alpha=0.5, rasterized=True)
        _truth_contours(ax, st, lim)
        ax.set_title("real data" if i == 0 else "")
        ax.set_ylabel(f"{'blob' if setting == 'blob' else 'two Gaussians'}\n$x_2$")
        for j, g in enumerate(gens):
            m = st.models[g][row]
            xs, lab = m.sample(n_points, make_rng(seed, g, "eval"))
            ax = axes[i, j + 1]
            for k in range(m.n_components):
                sel = lab[0] == k
                ax.scatter(xs[0, sel, 0], xs[0, sel, 1], s=2, color=cols[k], alpha=0.5, rasterized=True)
                _ellipse(ax, m.means[0, k], m.covariances[0, k], cols[k], lw=1.2)
            _truth_contours(ax, st, lim)
            if i == 0:
                ax.set_title(f"generation {g}")
    for ax in axes.ravel():
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    for ax in axes[-1]:
        ax.set_xlabel("$x_1$")
    fig.tight_layout()
    return fig


def _xy(df, metric, **where):
    g, v = seed_matrix(df, metric, **where)
    return g, v


def plot_l2(studies: dict[str, Study]):
    """Squared L2 distance to generation 0 (and to the real distribution), bands over seeds, log y."""
    import matplotlib.pyplot as plt

    from .plotting import band, finish, palette

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3), sharey=True)
    cols = palette(2)
    for ax, metric, title in zip(axes, ("l2_gen0", "l2_truth"),
                                 ("to this seed's generation-0 fit", "to the real distribution")):
        for setting, col in zip(DATA_SETTINGS, cols):
            g, v = _xy(studies[setting].metrics, metric)
            keep = g >= (1 if metric == "l2_gen0" else 0)
            band(ax, g[keep], v[keep], label=SETTING_LABELS[setting], color=col)
        ax.set_yscale("log")
        finish(ax, "generation", r"$\|f_0 - f_g\|_2^2$" if metric == "l2_gen0" else r"$\|p - f_g\|_2^2$",
               f"squared $L_2$ distance {title}", loc="lower right")
    fig.tight_layout()
    return fig


def plot_spreads(studies: dict[str, Study]):
    """Per-component spreads (smaller and larger) and the mixture's overall spread over generations."""
    import matplotlib.pyplot as plt

    from .plotting import band, finish, palette

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3), sharey=True)
    cols = palette(3)
    for ax, setting in zip(axes, DATA_SETTINGS):
        df = studies[setting].metrics
        for metric, col, lab in (("spread_max", cols[0], "larger component"),
                                 ("spread_min", cols[1], "smaller component"),
                                 ("spread_overall", cols[2], "whole mixture")):
            g, v = _xy(df, metric)
            band(ax, g, v, label=lab, color=col)
        finish(ax, "generation", r"spread $\sqrt{\mathrm{tr}\,\Sigma / d}$", SETTING_LABELS[setting])
    fig.tight_layout()
    return fig


def _generation_axis(ax, generations: int):
    """Generations on a symlog axis: linear up to 10, logarithmic after (early and late collapse both visible)."""
    ax.set_xscale("symlog", linthresh=10, linscale=0.6)
    ax.set_xlim(0, generations)


def plot_tails(studies: dict[str, Study]):
    """Mass of the fitted model outside the real distribution's 95 %/99 % contours, relative to the truth's."""
    import matplotlib.pyplot as plt

    from .plotting import band, finish, palette

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3), sharey=True)
    cols = palette(3)
    for ax, setting in zip(axes, DATA_SETTINGS):
        df = studies[setting].metrics
        G = int(studies[setting].bookkeeping.generation.max())
        for (metric, nominal), col in zip((("tail95", 0.05), ("tail99", 0.01)), cols):
            g, v = seed_matrix(df, metric)
            band(ax, g, v / nominal, label=f"beyond the real {metric[-2:]} % contour", color=col,
                 quantiles=(0.25, 0.75))
        g, v = seed_matrix(df, "spread_overall")
        band(ax, g, v / v[:1].mean(), label="overall spread / generation 0", color=cols[2], ls="--",
             quantiles=(0.25, 0.75), alpha=0.12)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylim(1e-2, 1e1)
        _generation_axis(ax, G)
        finish(ax, "generation", "model's tail mass / real tail mass", SETTING_LABELS[setting], loc="lower left")
    fig.tight_layout()
    return fig


def plot_expressivity(studies: dict[str, Study]):
    """One Gaussian (K=1) vs two (K=2) fitted to the two-Gaussian data: distance to truth and to generation 0."""
    import matplotlib.pyplot as plt

    from .plotting import band, finish, palette

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    cols = palette(2)
    for st, col, lab in ((studies["expressivity"], cols[0], "one Gaussian (K = 1)"),
                         (studies["two_gaussians"], cols[1], f"mixture (K = {studies['two_gaussians'].models[0].n_components})")):
        g, v = _xy(st.metrics, "l2_truth")
        band(axes[0], g, v, label=lab, color=col)
        g, v = _xy(st.metrics, "l2_gen0")
        band(axes[1], g[g >= 1], v[g >= 1], label=lab, color=col)
    G = int(studies["expressivity"].bookkeeping.generation.max())
    for ax in axes:
        ax.set_yscale("log")
        _generation_axis(ax, G)
    finish(axes[0], "generation", r"$\|p - f_g\|_2^2$", "to the real distribution", loc="lower right")
    finish(axes[1], "generation", r"$\|f_0 - f_g\|_2^2$", "to the generation-0 fit (sampling error only)",
           loc="lower right")
    fig.tight_layout()
    return fig


def plot_regimes(studies: dict[str, Study], regimes: Sequence[str]):
    """replace vs keep_real vs accumulate on the same seeds: L2 to the truth and the overall spread."""
    import matplotlib.pyplot as plt

    from .plotting import band, finish, palette

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    cols = palette(len(regimes))
    for r, col in zip(regimes, cols):
        df = studies[f"regime:{r}"].metrics
        for ax, metric in zip(axes, ("l2_truth", "spread_min", "tail99")):
            g, v = _xy(df, metric)
            band(ax, g, v / (0.01 if metric == "tail99" else 1.0), label=str(r), color=col,
                 quantiles=(0.25, 0.75) if metric == "tail99" else (0.05, 0.95))
    axes[0].set_yscale("log")
    axes[2].axhline(1.0, color="k", lw=0.8)
    finish(axes[0], "generation", r"$\|p - f_g\|_2^2$", "distance to the real distribution")
    finish(axes[1], "generation", "spread of the smaller component", "per-component spread")
    finish(axes[2], "generation", "tail mass beyond 99 % contour / 0.01", "tails")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Speed and faithfulness against sklearn (used by the chapter and benchmarks/bench_gmm.py)
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


def speed_table(cmp: dict) -> pd.DataFrame:
    rows = []
    for k, label in (("batched", "batched EM (this book)"), ("sklearn", "sklearn, one seed at a time")):
        r = cmp[k]
        rows.append({"method": label, "seeds": r["seeds"], "seed-generations": r["seed_generations"],
                     "wall s": round(r["wall"], 2), "seed-generations/s (wall)": round(r["per_s_wall"], 1),
                     "seed-generations/s (cpu)": round(r["per_s_cpu"], 1),
                     "ms per fit (wall)": round(1e3 / r["per_s_wall"], 2),
                     "EM iterations per fit": round(r["em_iterations"], 1)})
    return pd.DataFrame(rows)


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


def what_we_saw(studies: dict[str, Study], speed: dict | None, elapsed: float):
    """The chapter's closing numbers as Markdown."""
    from IPython.display import Markdown

    def med(st, metric, g):
        v = st.metrics[(st.metrics.metric == metric) & (st.metrics.generation == g)].value
        return float(v.median())

    lines = []
    G = int(studies["blob"].bookkeeping.generation.max())
    g_mid = [g for g in (200, 500) if g < G] or [G]
    for setting in DATA_SETTINGS:
        st = studies[setting]
        tails = "; ".join(
            f"at generation {g} {med(st, 'tail99', g) / 0.01:.2f} of the real 1 % beyond the 99 % contour "
            f"and {med(st, 'tail95', g) / 0.05:.2f} of the real 5 % beyond the 95 % contour, with "
            f"{med(st, 'spread_overall', g) / med(st, 'spread_overall', 0):.2f} of the initial overall spread"
            for g in g_mid)
        lines.append(
            f"- **{SETTING_LABELS[setting]}** (medians over {st.real.shape[0]} seeds): component spreads "
            f"{med(st, 'spread_min', 0):.2f} / {med(st, 'spread_max', 0):.2f} (smaller / larger) at generation 0, "
            f"{med(st, 'spread_min', g_mid[0]):.2f} / {med(st, 'spread_max', g_mid[0]):.2f} at generation "
            f"{g_mid[0]}, {med(st, 'spread_min', G):.3f} / {med(st, 'spread_max', G):.3f} at generation {G}. "
            f"Squared L2 distance to generation 0: {med(st, 'l2_gen0', min(G, 50)):.1e} at generation "
            f"{min(G, 50)}, {med(st, 'l2_gen0', G):.1e} at generation {G}. Tails: {tails}.")
    lines.append(
        f"- The official notebook's fits start at component spreads of about 0.9 on its blob; ours start at "
        f"{med(studies['blob'], 'spread_min', 0):.2f} / {med(studies['blob'], 'spread_max', 0):.2f} and end, "
        f"after {G} generations, at {med(studies['blob'], 'spread_min', G):.3f} / "
        f"{med(studies['blob'], 'spread_max', G):.3f}.")
    ex, two = studies["expressivity"], studies["two_gaussians"]
    lines.append(
        f"- **Functional expressivity**: one Gaussian fitted to the two-Gaussian data is "
        f"{med(ex, 'l2_truth', 0):.3f} (squared L2) from the truth at the first fit, the two-component mixture "
        f"{med(two, 'l2_truth', 0):.4f}; after {G} generations {med(ex, 'l2_truth', G):.3f} vs "
        f"{med(two, 'l2_truth', G):.3f}.")
    regs = [k for k in studies if k.startswith("regime:")]
    if regs:
        Gr = int(studies[regs[0]].bookkeeping.generation.max())
        parts = ", ".join(f"`{k[7:]}` {med(studies[k], 'l2_truth', Gr):.1e}" for k in regs)
        lines.append(f"- **Regimes** (generation {Gr}, median squared L2 distance to the truth): {parts}.")
    if speed is not None:
        lines.append(
            f"- **Speed**: {speed['speedup_wall']:.0f}x more seed-generations per second than refitting "
            f"sklearn one seed at a time ({speed['batched']['seeds']} seeds batched vs "
            f"{speed['sklearn']['seeds']} sklearn seeds, {speed['generations']} generations, one thread, "
            f"measured in this run; {1e3 / speed['sklearn']['per_s_wall']:.0f} ms per sklearn fit).")
    lines.append(f"- This page took {elapsed / 60:.1f} minutes to compute.")
    return Markdown("\n".join(lines))
