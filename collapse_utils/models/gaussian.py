r"""Recursive fitting of a one-dimensional Gaussian, vectorised over seeds (the model of chapter 01).

Each generation fits :math:`\hat\mu, \hat\sigma^2` to :math:`M_g` samples and the next
generation samples from :math:`\mathcal N(\hat\mu, \hat\sigma^2)`.  Two samplers give
the same Markov chain:

``draws``       literally draw ``M`` samples per seed and take their mean and variance
                (what the official notebook does, one seed at a time);
``exact``       draw the sufficient statistics directly from their exact sampling
                distributions, :math:`\bar x \sim \mathcal N(\mu, \sigma^2/M)` and
                :math:`\sum (x_j-\bar x)^2 \sim \sigma^2\chi^2_{M-1}`, independent.  The fitted
                model depends on the sample only through these, so the chain over fitted
                models is identical in distribution, at O(1) cost per seed and
                generation whatever ``M`` (tests check the agreement).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from ..core.engine import Experiment, GenerationContext
from ..core.storage import state_record

__all__ = [
    "SufficientStats", "GaussianExperiment", "ESTIMATORS", "fit_gaussian", "sample_draws", "sample_sufficient_stats", "gaussian_theory", "size_schedule",
    "real_data", "w2_squared", "lognormal_quantile", "mean_rel_se",
]

#: the two estimators of the variance, by name: the MLE (``ddof=0``, the official notebook) and the
#: unbiased one (``ddof=1``, Theorem 3.1 of the paper)
ESTIMATORS = {"mle": 0, "unbiased": 1}


@state_record  # engine data: stored in checkpoints as arrays and plain values
@dataclass
class SufficientStats:
    """Mean and sum of squared deviations of ``n`` samples, for each seed.

    Behaves like data of shape ``(n_seeds, n)`` for the engine (size bookkeeping and
    the ``accumulate`` regime, which pools statistics exactly with Chan's formula).
    """

    mean: np.ndarray
    m2: np.ndarray
    n: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mean.shape[0]), int(self.n))

    @classmethod
    def from_samples(cls, x: np.ndarray) -> SufficientStats:
        m = x.mean(axis=1)
        return cls(m, ((x - m[:, None]) ** 2).sum(axis=1), x.shape[1])

    @classmethod
    def concat_samples(cls, chunks: list[SufficientStats]) -> SufficientStats:
        ns = np.array([c.n for c in chunks], dtype=float)[:, None]
        means = np.stack([c.mean for c in chunks])
        n = ns.sum()
        mean = (ns * means).sum(axis=0) / n
        m2 = np.stack([c.m2 for c in chunks]).sum(axis=0) + (ns * (means - mean) ** 2).sum(axis=0)
        return cls(mean, m2, int(n))


class GaussianExperiment(Experiment):
    """Fit N(mu, sigma^2) per seed by the MLE (``ddof=0``) or the unbiased estimator (``ddof=1``)."""

    batched = True

    def __init__(self, ddof: int = 0, sampler: str = "exact", mu: float = 0.0, sigma: float = 1.0):
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 (MLE) or 1 (unbiased), got {ddof}")
        if sampler not in ("exact", "draws"):
            raise ValueError(f"sampler must be 'exact' or 'draws', got {sampler!r}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.ddof, self.sampler, self.mu, self.sigma = ddof, sampler, float(mu), float(sigma)
        self.name = f"gaussian_{'mle' if ddof == 0 else 'unbiased'}"

    def real(self, n_seeds: int, m: int, seed: int):
        """Generation 0's data: ``m`` real samples per seed from N(mu, sigma^2)."""
        x = real_data(n_seeds, m, seed, self.mu, self.sigma)
        return SufficientStats.from_samples(x) if self.sampler == "exact" else x

    def fit(self, data, ctx: GenerationContext):
        return fit_gaussian(data, self.ddof)

    def sample(self, model, n: int, ctx: GenerationContext):
        mean, var = model
        rng = ctx.rng("sample")
        if self.sampler == "draws":
            return sample_draws(mean, var, n, rng)
        return sample_sufficient_stats(mean, var, n, rng)

    def evaluate(self, model, comp, ctx: GenerationContext) -> dict:
        mean, var = model
        return {"mu": mean, "sigma2": var}


def fit_gaussian(data, ddof: int):
    """Each seed's fitted mean and variance (divisor ``n - ddof``), from its samples (seeds x n) or from
    their sufficient statistics (the fit sees nothing else)."""
    if isinstance(data, SufficientStats):
        mean, m2, n = data.mean, data.m2, data.n
    else:
        n = data.shape[1]
        mean = data.mean(axis=1)
        m2 = ((data - mean[:, None]) ** 2).sum(axis=1)
    if n - ddof < 1:
        raise ValueError(f"cannot fit a variance to {n} sample(s) with ddof={ddof}")
    return mean, m2 / (n - ddof)


def sample_draws(mean, var, n: int, rng: np.random.Generator) -> np.ndarray:
    """The official notebook's step: ``n`` samples per seed from N(mean, var)."""
    sd = np.sqrt(var)
    return mean[:, None] + sd[:, None] * rng.standard_normal((mean.shape[0], n))


def sample_sufficient_stats(mean, var, n: int, rng: np.random.Generator) -> SufficientStats:
    r"""The exact sampler: the statistics of ``n`` samples from N(mean, var) drawn directly, the sample
    mean :math:`\sim \mathcal N(\mu, \sigma^2/n)` and, independent of it, the sum of squared deviations
    :math:`\sim \sigma^2\chi^2_{n-1}` (a chi-square with k degrees of freedom is 2 Gamma(k/2))."""
    if n < 2:
        raise ValueError("the exact sampler needs n >= 2 samples per generation")
    sd = np.sqrt(var)
    new_mean = mean + sd / np.sqrt(n) * rng.standard_normal(mean.shape[0])
    m2 = var * 2.0 * rng.standard_gamma((n - 1) / 2.0, size=mean.shape[0])  # sigma^2 chi2_{n-1}
    return SufficientStats(new_mean, m2, n)


def real_data(n_seeds: int, m: int, seed: int, mu: float = 0.0, sigma: float = 1.0) -> np.ndarray:
    from ..core.seeding import make_rng

    return mu + sigma * make_rng(seed, 0, "data").standard_normal((n_seeds, m))


def w2_squared(mu_hat, sigma2_hat, mu: float = 0.0, sigma: float = 1.0):
    """Squared 2-Wasserstein distance between N(mu, sigma^2) and N(mu_hat, sigma2_hat)."""
    return (np.asarray(mu_hat) - mu) ** 2 + (np.sqrt(sigma2_hat) - sigma) ** 2


def size_schedule(kind: str, m0: int, generations: int) -> np.ndarray:
    """Training-set sizes M_0..M_G: ``constant``, ``linear`` (M0 (g+1)) or ``quadratic`` (M0 (g+1)^2)."""
    g = np.arange(generations + 1, dtype=np.int64)
    if kind == "constant":
        return np.full(generations + 1, m0, dtype=np.int64)
    if kind == "linear":
        return m0 * (g + 1)
    if kind == "quadratic":
        return m0 * (g + 1) ** 2
    raise ValueError(f"unknown schedule {kind!r}; choose constant, linear or quadratic")


def gaussian_theory(sizes, ddof: int, sigma: float = 1.0) -> dict[str, np.ndarray]:
    r"""Exact moments of the recursion (index g = the model fitted on the g-th data set, M_g = sizes[g]).

    With :math:`X_g = \hat\sigma^2_g/\hat\sigma^2_{g-1} \sim \chi^2_{M_g-1}/(M_g-\mathrm{ddof})`
    independent across generations:

    * ``E_sigma2``  :math:`\sigma^2\prod_{i\le g}\mathbb E X_i` (constant for ddof=1; ((M-1)/M)^{g+1} for the MLE)
    * ``var_mu``    :math:`\sum_{i\le g}\mathbb E[\hat\sigma^2_{i-1}]/M_i` (= :math:`\sigma^2\sum 1/M_i` unbiased)
    * ``E_w2``      :math:`\mathbb E[(\hat\mu_g-\mu)^2 + (\hat\sigma_g-\sigma)^2]`, exact via
      :math:`\mathbb E\sqrt{\chi^2_k} = \sqrt2\,\Gamma(\tfrac{k+1}2)/\Gamma(\tfrac k2)`
    * ``w2_first_order``  the paper's :math:`\tfrac32\sigma^2\sum_{i\le g}1/M_i`
    * ``var_sigma2``  :math:`\mathrm{Var}(\hat\sigma^2_g) = \sigma^4\big(\prod_{i\le g}\mathbb E X_i^2 -
      (\prod_{i\le g}\mathbb E X_i)^2\big)`, with :math:`\mathbb E X^2 = (k^2+2k)/(M-\mathrm{ddof})^2`, k = M-1
    * ``log_sigma2_mean``/``log_sigma2_sd``: mean and sd of :math:`\log\hat\sigma^2_g`, whose
      drift :math:`\sum\mathbb E\log X_i < 0` drives :math:`\hat\sigma^2_g\to0` almost surely.
      ``exp(log_sigma2_mean)`` is the median of :math:`\hat\sigma^2_g` only under the log-normal
      (central-limit) approximation of the sum of the :math:`\log X_i`.
    """
    M = np.asarray(sizes, dtype=float)
    if np.any(M - ddof < 1) or np.any(M < 2):
        raise ValueError("every sample size must be >= 2")
    k = M - 1.0
    s2 = sigma**2
    ex = k / (M - ddof)
    e_s2 = s2 * np.cumprod(ex)
    prev = np.concatenate([[s2], e_s2[:-1]])
    var_mu = np.cumsum(prev / M)
    e_sqrt = np.exp(0.5 * np.log(2.0) + special.gammaln((k + 1) / 2) - special.gammaln(k / 2)) / np.sqrt(M - ddof)
    e_sigma = sigma * np.cumprod(e_sqrt)
    e_w2 = var_mu + e_s2 - 2 * sigma * e_sigma + s2
    e_x2 = (k**2 + 2 * k) / (M - ddof) ** 2
    var_s2 = s2**2 * np.exp(np.cumsum(np.log(e_x2))) - e_s2**2
    e_log = special.digamma(k / 2) + np.log(2.0) - np.log(M - ddof)
    v_log = special.polygamma(1, k / 2)
    return {
        "E_sigma2": e_s2,
        "var_mu": var_mu,
        "E_sigma": e_sigma,
        "E_w2": e_w2,
        "var_sigma2": np.maximum(var_s2, 0.0),
        "w2_first_order": 1.5 * s2 * np.cumsum(1.0 / M),
        "log_sigma2_mean": np.log(s2) + np.cumsum(e_log),
        "log_sigma2_sd": np.sqrt(np.cumsum(v_log)),
    }


def lognormal_quantile(theory: dict, q: float) -> np.ndarray:
    """Quantile q of sigma2_g under the (CLT) log-normal approximation of the product of chi-square factors.

    An approximation, not the exact quantile: ``q = 0.5`` gives ``exp(E log sigma2_g)``."""
    return np.exp(theory["log_sigma2_mean"] + stats.norm.ppf(q) * theory["log_sigma2_sd"])


def mean_rel_se(theory: dict, n_seeds: int) -> np.ndarray:
    r"""Relative standard error of the mean of :math:`\hat\sigma^2_g` over ``n_seeds`` independent runs,
    from the exact variance: :math:`\sqrt{\mathrm{Var}(\hat\sigma^2_g)/S}\,/\,\mathbb E[\hat\sigma^2_g]`.

    It grows like :math:`\sqrt{(e^{2g/M}-1)/S}`: past the generation where it is large, the mean over
    seeds is carried by a few rare runs and no longer estimates the expectation (nor, for the same
    reason, the variance of the fitted mean)."""
    return np.sqrt(theory["var_sigma2"] / n_seeds) / theory["E_sigma2"]
