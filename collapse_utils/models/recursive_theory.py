r"""Sharp laws of recursive training since 2024, each with its exact (or first-order) formula (chapter 07).

Six small settings, all vectorised over seeds (numpy only):

``weighted mean``      each round has ``n`` fresh real and ``m`` synthetic samples; the fitted mean is
                       :math:`\theta_t = w\,\bar x_t + (1-w)\,\bar y_t` (real weight ``w``).  Stationary error
                       :func:`weighted_mean_error`, optimal weight :func:`optimal_weight`.
``strong collapse``    least squares on data of which a fraction ``p`` is labelled by a shifted model
                       :math:`\beta^*+\Delta`: an error floor :math:`p^2\|\Delta\|^2` that more data does not
                       remove (:func:`strong_collapse_risk`, :func:`simulate_strong_collapse`).
``forgetting``         a categorical model refitted by counts: a symbol seen ``lambda`` times survives ``k``
                       rounds with probability at least :math:`1-e^{-\lambda/k}` (:func:`survival_bound`);
                       exact survival by enumeration (:func:`binomial_chain_survival`).
``temperature``        retraining on samples drawn at temperature :math:`\tau`: without sampling noise
                       :math:`p_t\propto p_0^{\tau^{-t}}` (:func:`tempered_law`), with ``M`` samples a
                       multinomial chain (:func:`simulate_temperature`).
``pi^2/6``             logistic regression retrained under accumulation: its error stays within
                       :math:`\sum_{i\le t+1} 1/i^2 < \pi^2/6` of the first fit's (first order;
                       :func:`accumulate_ratio`, :func:`simulate_logistic_accumulate`).
``verifier``           a Gaussian location model retrained on its own samples that a verifier accepts inside
                       :math:`[\theta_c-a,\theta_c+a]`: the fitted mean converges to :math:`\theta_c`
                       (:func:`verifier_map`, :func:`verifier_stationary_variance`, :func:`simulate_verifier`).

The formulas are this book's derivations for these settings (the chapter shows the key steps).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..core.engine import Experiment, GenerationContext
from ..core.storage import state_record

__all__ = [
    "optimal_weight", "weighted_mean_error", "WeightedMeans", "WeightedMeanExperiment",
    "strong_collapse_risk", "simulate_strong_collapse", "survival_bound", "binomial_chain_survival",
    "simulate_forgetting",
    "tempered", "tempered_law", "entropy", "simulate_temperature",
    "verifier_map", "verifier_slope", "verifier_acceptance", "verifier_truncated_variance",
    "verifier_stationary_variance", "simulate_verifier", "fit_logistic", "accumulate_ratio",
    "simulate_logistic_accumulate",
]


# ------------------------------- 1. optimal weighting of real and synthetic data -----------------
def optimal_weight(k):
    r"""The real weight minimising :func:`weighted_mean_error`: the positive root of
    :math:`w^2 + k w - k = 0`, :math:`w^* = (\sqrt{k^2+4k}-k)/2` with :math:`k = n/m`
    (:math:`1/\varphi \approx 0.618` at :math:`k = 1`)."""
    k = np.asarray(k, dtype=float)
    return (np.sqrt(k * k + 4 * k) - k) / 2


def weighted_mean_error(w, n, m, sigma: float = 1.0):
    r"""Stationary mean squared error of :math:`\theta_t = w\bar x_t + (1-w)\bar y_t`, where
    :math:`\bar x_t \sim \mathcal N(\mu, \sigma^2/n)` (fresh real data) and
    :math:`\bar y_t \sim \mathcal N(\theta_{t-1}, \sigma^2/m)` (the last model's samples):

    .. math:: V(w) = \sigma^2\,\frac{w^2/n + (1-w)^2/m}{1-(1-w)^2}, \qquad 0 < w \le 1 .
    """
    w = np.asarray(w, dtype=float)
    return sigma**2 * (w**2 / n + (1 - w) ** 2 / m) / (1 - (1 - w) ** 2)


@state_record
@dataclass
class WeightedMeans:
    """One round's training set, seen through what the weighted fit uses: the real sample mean and the
    synthetic sample mean of every row (``n`` real and ``m`` synthetic samples per row)."""

    real_mean: np.ndarray
    synth_mean: np.ndarray
    n: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.real_mean.shape[0]), int(self.n))


class WeightedMeanExperiment(Experiment):
    r"""The Gaussian mean, refitted each round on ``n`` fresh real and ``m`` synthetic samples weighted
    ``w`` and ``1 - w`` (the variance :math:`\sigma^2` is known; only the mean is fitted).

    Rows are ``(ratio, weight, seed)`` combinations, ``rows = len(synthetic) * len(weights) * seeds``,
    seed-fastest.  Every combination of one seed uses the same standard normals (common random numbers),
    so differences between weights are measured far more precisely than each error alone.  Sample means
    are drawn from their exact distributions, :math:`\mathcal N(\cdot, \sigma^2/n)`.
    """

    batched = True
    name = "weighted_mean"

    def __init__(self, n_real: int, synthetic, weights, seeds: int, mu: float = 0.0, sigma: float = 1.0):
        synthetic = np.atleast_1d(np.asarray(synthetic, dtype=np.int64))
        weights = np.atleast_1d(np.asarray(weights, dtype=float))
        if n_real < 1 or (synthetic < 1).any():
            raise ValueError("sample sizes must be >= 1")
        if ((weights <= 0) | (weights > 1)).any():
            raise ValueError(f"real weights must lie in (0, 1], got {weights}")
        self.n_real, self.synthetic, self.weights, self.seeds = int(n_real), synthetic, weights, int(seeds)
        self.mu, self.sigma = float(mu), float(sigma)
        K, W = len(synthetic), len(weights)
        self.m_rows = np.repeat(synthetic, W * seeds).astype(float)
        self.w_rows = np.tile(np.repeat(weights, seeds), K)

    @property
    def rows(self) -> int:
        return len(self.m_rows)

    def _tile(self, z: np.ndarray) -> np.ndarray:
        return np.tile(z, self.rows // self.seeds)

    def real(self, seed: int) -> WeightedMeans:
        """Round 0: the real sample mean alone (no model yet; the fit then takes it whatever ``w``)."""
        from ..core.seeding import make_rng

        z = self._tile(make_rng(seed, 0, "data").standard_normal(self.seeds))
        xbar = self.mu + self.sigma / np.sqrt(self.n_real) * z
        return WeightedMeans(xbar, xbar.copy(), self.n_real)

    def fit(self, data: WeightedMeans, ctx: GenerationContext):
        return self.w_rows * data.real_mean + (1 - self.w_rows) * data.synth_mean

    def sample(self, model, n: int, ctx: GenerationContext) -> WeightedMeans:
        """The next round's training set: ``m`` samples of the fitted model and ``n`` fresh real samples."""
        z = ctx.rng("sample").standard_normal((2, self.seeds))  # synthetic, then fresh real
        zs, zr = self._tile(z[0]), self._tile(z[1])
        synth = model + self.sigma / np.sqrt(self.m_rows) * zs
        real = self.mu + self.sigma / np.sqrt(self.n_real) * zr
        return WeightedMeans(real, synth, self.n_real)

    def evaluate(self, model, comp, ctx: GenerationContext) -> dict:
        return {"sq_error": (model - self.mu) ** 2}


# ------------------------------- 2. strong model collapse --------------------------------------
def strong_collapse_risk(n, d: int, p, delta2: float, noise2: float = 1.0):
    r"""Expected excess risk :math:`\mathbb E\|\hat\beta-\beta^*\|^2` of least squares on ``n`` samples
    :math:`x\sim\mathcal N(0, I_d)`, each labelled with probability ``p`` by the shifted model
    :math:`\beta^*+\Delta` (:math:`\|\Delta\|^2` = ``delta2``) and otherwise by :math:`\beta^*`, noise variance
    ``noise2``:

    .. math:: p^2\|\Delta\|^2 + \frac{\sigma^2 d}{n-d-1} + \frac{p(1-p)\|\Delta\|^2 (d+2)}{n} + O(n^{-2}).

    The floor :math:`p^2\|\Delta\|^2` is exact (the population minimiser is :math:`\beta^*+p\Delta`), the
    noise term is exact (:math:`\mathbb E\,\mathrm{tr}(X^\top X)^{-1} = d/(n-d-1)`), the mislabelling term is
    first order in :math:`1/n`."""
    n = np.asarray(n, dtype=float)
    p = np.asarray(p, dtype=float)
    return p**2 * delta2 + noise2 * d / (n - d - 1) + p * (1 - p) * delta2 * (d + 2) / n


def simulate_strong_collapse(ns, ps, d: int, delta2: float, noise2: float, seeds: int,
                             rng: np.random.Generator, block: int = 64) -> np.ndarray:
    r"""Excess risk :math:`\|\hat\beta-\beta^*\|^2` of least squares, array ``(len(ps), len(ns), seeds)``.

    :math:`\beta^* = 0` (the risk does not depend on it), :math:`\Delta = \sqrt{\text{delta2}}\,e_1`; each
    sample is synthetic independently with probability ``p``.  Every ``p`` reuses the same design, noise
    and uniform draws (common random numbers)."""
    ns, ps = [int(n) for n in ns], np.asarray(ps, dtype=float)
    out = np.empty((len(ps), len(ns), seeds))
    delta = np.sqrt(delta2)
    for j, n in enumerate(ns):
        for s0 in range(0, seeds, block):
            b = min(block, seeds - s0)
            X = rng.standard_normal((b, n, d))
            eps = np.sqrt(noise2) * rng.standard_normal((b, n))
            u = rng.random((b, n))
            gram = np.einsum("snd,sne->sde", X, X)
            xt_eps = np.einsum("snd,sn->sd", X, eps)
            shift = delta * X[:, :, 0]  # x . Delta
            for i, p in enumerate(ps):
                rhs = xt_eps + np.einsum("snd,sn->sd", X, shift * (u < p))
                beta = np.linalg.solve(gram, rhs[..., None])[..., 0]
                out[i, j, s0:s0 + b] = (beta**2).sum(axis=1)
    return out


# ------------------------------- 3. how fast a discrete model forgets ---------------------------
def survival_bound(lam, k):
    r"""Lower bound on the probability that a symbol seen :math:`\lambda` times in the corpus of ``M`` samples
    still has mass after ``k`` rounds of refitting by counts: :math:`1 - e^{-\lambda/k}` (whatever M)."""
    lam, k = np.asarray(lam, dtype=float), np.asarray(k, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(k > 0, 1 - np.exp(-lam / np.where(k > 0, k, 1.0)), (lam > 0).astype(float))


def binomial_chain_survival(m: int, lams, generations: int) -> np.ndarray:
    r"""Exact :math:`P(c_k > 0 \mid c_0 = \lambda)`, ``(generations + 1, len(lams))``, for one symbol's count
    under refitting by counts, :math:`c_{k+1} \sim \mathrm{Bin}(M, c_k/M)` (the marginal of the multinomial
    chain), by propagating the exact distribution over the ``M + 1`` counts."""
    states = np.arange(m + 1)
    T = stats.binom.pmf(states[None, :], m, states[:, None] / m)  # T[i, j] = P(c' = j | c = i)
    lams = np.asarray(lams, dtype=int)
    dist = np.zeros((len(lams), m + 1))
    dist[np.arange(len(lams)), lams] = 1.0
    out = np.empty((generations + 1, len(lams)))
    for k in range(generations + 1):
        out[k] = 1.0 - dist[:, 0]
        dist = dist @ T
    return out


def simulate_forgetting(p0, m: int, generations: int, seeds: int, rng: np.random.Generator):
    """Refit a categorical distribution by counts: the corpus is ``m`` samples of ``p0``, every later
    generation ``m`` samples of the last fit.  Returns the corpus counts ``(seeds, V)`` and the generation
    at which each symbol's count first hits 0 (``-1``: still alive at the last generation)."""
    c = rng.multinomial(m, np.asarray(p0, dtype=float), size=seeds)
    counts0 = c.copy()
    dead_at = np.where(c == 0, 0, -1)
    for t in range(1, generations + 1):
        c = rng.multinomial(m, c / m)
        dead_at = np.where((dead_at < 0) & (c == 0), t, dead_at)
    return counts0, dead_at


# ------------------------------- 4. temperature: heat death ------------------------------------
def tempered(p, tau: float):
    r"""The distribution sampled at temperature :math:`\tau`: :math:`q \propto p^{1/\tau}` (rows of ``p``;
    zero stays zero)."""
    p = np.asarray(p, dtype=float)
    with np.errstate(divide="ignore"):
        logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)) / tau, -np.inf)
    logp -= logp.max(axis=-1, keepdims=True)
    q = np.exp(logp)
    return q / q.sum(axis=-1, keepdims=True)


def tempered_law(p0, tau: float, generations: int) -> np.ndarray:
    r"""The noiseless recursion :math:`p_{t+1} = \mathrm{tempered}(p_t, \tau)` in closed form,
    :math:`p_t \propto p_0^{\tau^{-t}}`, for t = 0..generations (computed in log space)."""
    p0 = np.asarray(p0, dtype=float)
    t = np.arange(generations + 1, dtype=float)[:, None]
    logp = np.log(p0)[None, :] * tau ** (-t)
    logp -= logp.max(axis=1, keepdims=True)
    q = np.exp(logp)
    return q / q.sum(axis=1, keepdims=True)


def entropy(p) -> np.ndarray:
    """Shannon entropy in nats along the last axis (0 log 0 = 0)."""
    p = np.asarray(p, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1)


def simulate_temperature(p0, tau: float, m: int, generations: int, seeds: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Entropy (nats) of the refitted distribution, ``(generations + 1, seeds)``: each generation draws
    ``m`` samples at temperature ``tau`` from the current fit and refits by counts (the MLE)."""
    p = np.tile(np.asarray(p0, dtype=float), (seeds, 1))
    out = np.empty((generations + 1, seeds))
    out[0] = entropy(p)
    for t in range(1, generations + 1):
        p = rng.multinomial(m, tempered(p, tau)) / m
        out[t] = entropy(p)
    return out


# ------------------------------- 6. pi^2/6 under accumulation, beyond least squares ----------------
def fit_logistic(X, y, beta0, iters: int = 8) -> np.ndarray:
    """Logistic-regression MLE (no intercept) of every row by Newton's method, batched: ``X`` is
    ``(seeds, n, d)``, ``y`` ``(seeds, n)`` in {0, 1}, ``beta0`` ``(seeds, d)`` the starting point."""
    b = np.array(beta0, dtype=float)
    Xt = X.transpose(0, 2, 1)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(X @ b[..., None])[..., 0]))
        grad = (Xt @ (y - p)[..., None])[..., 0]
        hess = (Xt * (p * (1 - p))[:, None, :]) @ X
        b = b + np.linalg.solve(hess, grad[..., None])[..., 0]
    return b


def accumulate_ratio(generations: int) -> np.ndarray:
    r"""First-order error of the accumulate loop relative to the first fit,
    :math:`\sum_{i=1}^{t+1} 1/i^2` for t = 0..generations (below :math:`\pi^2/6` for ever)."""
    return np.cumsum(1.0 / np.arange(1, generations + 2) ** 2)


def simulate_logistic_accumulate(beta, n: int, generations: int, seeds: int, rng: np.random.Generator,
                                 newton: int = 4) -> np.ndarray:
    r"""Squared parameter error :math:`\|\hat\beta_t-\beta^*\|^2`, ``(generations + 1, seeds)``, of logistic
    regression retrained under accumulation: round 0 fits ``n`` real samples (:math:`x\sim\mathcal N(0, I)`,
    labels from :math:`\beta^*`); each later round adds ``n`` fresh inputs labelled by the last fit and refits
    on everything kept (warm-started Newton)."""
    beta = np.asarray(beta, dtype=float)
    d = len(beta)

    def block(b):
        X = rng.standard_normal((seeds, n, d))
        p = 1.0 / (1.0 + np.exp(-(X @ b[..., None])[..., 0]))
        return X, (rng.random((seeds, n)) < p).astype(float)

    X, y = block(np.tile(beta, (seeds, 1)))
    b = fit_logistic(X, y, np.zeros((seeds, d)), 12)
    out = [((b - beta) ** 2).sum(axis=1)]
    for _ in range(generations):
        Xn, yn = block(b)
        X, y = np.concatenate([X, Xn], axis=1), np.concatenate([y, yn], axis=1)
        b = fit_logistic(X, y, b, newton)
        out.append(((b - beta) ** 2).sum(axis=1))
    return np.array(out)


# ------------------------------- 5. verified synthetic data -------------------------------------
def verifier_acceptance(theta, c, a, sigma: float = 1.0):
    r"""P(accept) = P(|X - c| <= a) for X ~ N(theta, sigma^2)."""
    lo, hi = (c - a - theta) / sigma, (c + a - theta) / sigma
    return stats.norm.cdf(hi) - stats.norm.cdf(lo)


def verifier_map(theta, c, a, sigma: float = 1.0):
    r"""The noiseless update :math:`f(\theta) = \mathbb E[X \mid |X-c|\le a]`, X ~ N(theta, sigma^2): the mean
    of a normal truncated to the verifier's window (its fixed point is :math:`\theta = c`)."""
    lo, hi = (c - a - theta) / sigma, (c + a - theta) / sigma
    z = stats.norm.cdf(hi) - stats.norm.cdf(lo)
    return theta + sigma * (stats.norm.pdf(lo) - stats.norm.pdf(hi)) / z


def verifier_truncated_variance(a, sigma: float = 1.0):
    """Variance of N(c, sigma^2) truncated to [c - a, c + a]."""
    b = a / sigma
    z = 2 * stats.norm.cdf(b) - 1
    return sigma**2 * (1 - 2 * b * stats.norm.pdf(b) / z)


def verifier_slope(a, sigma: float = 1.0):
    r""":math:`f'(c) = \mathrm{Var}(X\mid\text{window})/\sigma^2 < 1`: the contraction factor at the fixed point."""
    return verifier_truncated_variance(a, sigma) / sigma**2


def verifier_stationary_variance(a, m: int, sigma: float = 1.0):
    r"""First-order stationary variance of the fitted mean around :math:`c` with ``m`` draws per round:
    :math:`\theta_{t+1}-c \approx \rho(\theta_t-c) + \eta_t`, :math:`\rho = v/\sigma^2`,
    :math:`\mathrm{Var}\,\eta = v/(m P)`, so :math:`V = v/(mP(1-\rho^2))` (v the truncated variance,
    P the acceptance probability at :math:`\theta = c`)."""
    v = verifier_truncated_variance(a, sigma)
    P = verifier_acceptance(0.0, 0.0, a, sigma)
    rho = v / sigma**2
    return v / (m * P * (1 - rho**2))


def simulate_verifier(theta0, centres, widths, m: int, generations: int, rng: np.random.Generator,
                      sigma: float = 1.0) -> np.ndarray:
    r"""Fitted means over generations, ``(generations + 1, len(centres), seeds)``: each round draws ``m``
    samples of :math:`\mathcal N(\theta_t, \sigma^2)`, keeps those inside
    :math:`[c-a, c+a]` (one ``(c, a)`` per entry of ``centres``/``widths``), refits the mean to them
    (:math:`\theta` stays put when none is accepted).  ``theta0`` (one value per seed) is round 0's fit
    to real data; every setting shares the same draws (common random numbers)."""
    theta0 = np.asarray(theta0, dtype=float)
    c = np.asarray(centres, dtype=float)[:, None]
    a = np.asarray(widths, dtype=float)[:, None]
    theta = np.tile(theta0, (len(c), 1))
    out = np.empty((generations + 1, *theta.shape))
    out[0] = theta
    for t in range(1, generations + 1):
        z = rng.standard_normal((theta0.shape[0], m))
        x = theta[..., None] + sigma * z[None]
        keep = np.abs(x - c[..., None]) <= a[..., None]
        k = keep.sum(axis=-1)
        s = np.where(keep, x, 0.0).sum(axis=-1)
        theta = np.where(k > 0, s / np.maximum(k, 1), theta)
        out[t] = theta
    return out
