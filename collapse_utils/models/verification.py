r"""Verification and selection of synthetic data (chapter 05, section 3).

**A verifier of controllable quality** (after Feng et al. 2024, "Beyond model collapse: scaling up
with synthesized data requires verification").  Real data are two Gaussian classes,
:math:`y = \pm 1` with equal probability and :math:`x \mid y \sim \mathcal N(y\mu, I_d)`,
:math:`\|\mu\| = m`.  A generator labels fresh points but gets each label wrong with probability
``p`` (independently of ``x``); a verifier of quality ``phi`` judges each label, correctly with
probability ``phi``, and keeps the samples it judges correct.  The model -- the class-mean direction
:math:`\hat w = \frac1n\sum_i \tilde y_i x_i` over the first ``n`` kept samples, predicting
:math:`\operatorname{sign}(\hat w^\top x)` -- has test error :math:`\Phi(-\hat w^\top\mu/\|\hat w\|)`
exactly.  A kept label is right with probability

.. math:: c = \frac{(1-p)\,\phi}{(1-p)\,\phi + p\,(1-\phi)},

and, writing :math:`\tilde y x = s(\mu + \zeta)` with :math:`s = \pm1` (right or wrong label) and
:math:`\zeta \sim \mathcal N(0, I_d)` independent of ``s``, :math:`\hat w = \bar s\,\mu + \xi/\sqrt n`
with :math:`n(1+\bar s)/2 \sim \mathrm{Bin}(n, c)` and :math:`\xi \sim \mathcal N(0, I_d)`.  The expected
error follows by quadrature (:func:`expected_verified_error`); as ``n`` grows it tends to the step
:math:`\Phi(-m)` for :math:`\phi > p` and :math:`\Phi(m)` for :math:`\phi < p`: a sharp transition
where the verifier is right as often as the generator is wrong.

**Selection for "quality"** (after Qiao et al., "When sample selection bias precipitates model
collapse"): a 1-D Gaussian whose samples are kept only where the current model finds them likely --
the central fraction ``keep`` of its own mass, :math:`|x - \hat\mu| \le z\hat\sigma` with
:math:`2\Phi(z) - 1 = \mathrm{keep}`.  Kept samples are a truncated normal of variance
:math:`\kappa\hat\sigma^2`, :math:`\kappa = 1 - 2z\varphi(z)/\mathrm{keep}`, so under ``replace``
with the MLE :math:`\mathbb E\hat\sigma^2_g = \sigma^2((M-1)/M)^{g+1}\kappa^g` (exact).

This module knows nothing about pages.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import special, stats

from ..core.engine import Experiment, GenerationContext
from ..core.seeding import make_rng

__all__ = ["kept_accuracy", "keep_rate", "expected_verified_error", "verified_errors", "verifier_keeps",
           "class_mean_error", "bayes_error",
           "SelectedGaussianExperiment", "truncation_point", "kappa", "selected_variance"]


# ---------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------
def kept_accuracy(phi, p) -> np.ndarray:
    """Probability that a kept label is right: generator error ``p``, verifier quality ``phi``."""
    phi, p = np.asarray(phi, dtype=float), np.asarray(p, dtype=float)
    right, wrong = (1 - p) * phi, p * (1 - phi)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(right + wrong > 0, right / np.where(right + wrong > 0, right + wrong, 1.0), 0.5)


def keep_rate(phi, p) -> np.ndarray:
    """Fraction of generated samples the verifier keeps."""
    phi, p = np.asarray(phi, dtype=float), np.asarray(p, dtype=float)
    return (1 - p) * phi + p * (1 - phi)


def bayes_error(signal: float) -> float:
    r""":math:`\Phi(-m)`: the error of the best classifier (the true direction :math:`\mu`)."""
    return float(stats.norm.cdf(-signal))


def _check(n: int, d: int, signal: float) -> None:
    if n < 1 or d < 1 or signal <= 0:
        raise ValueError(f"need n >= 1, d >= 1 and signal > 0, got n={n}, d={d}, signal={signal}")


def expected_verified_error(phi, p: float, n: int, d: int, signal: float, nodes: int = 24) -> np.ndarray:
    r"""Exact expected test error of the classifier fitted on ``n`` verified samples (quadrature).

    Along :math:`\mu`, :math:`A = \bar s m + \xi_1/\sqrt n`; across it :math:`R^2 = \|\xi_\perp\|^2
    \sim \chi^2_{d-1}`; the error is :math:`\Phi(-mA/\sqrt{A^2 + R^2/n})`.  The mean over
    :math:`K \sim \mathrm{Bin}(n, c)` is a sum (over the binomial's support up to 1e-12 of its mass),
    over :math:`\xi_1` Gauss-Hermite and over :math:`R^2` generalised Gauss-Laguerre quadrature
    (``nodes`` each: 24 agree with 64 to about 1e-8).
    """
    _check(n, d, signal)
    phis = np.atleast_1d(np.asarray(phi, dtype=float))
    x_h, w_h = special.roots_hermitenorm(nodes)
    w_h = w_h / w_h.sum()
    if d > 1:
        a = (d - 1) / 2.0
        x_l, w_l = special.roots_genlaguerre(nodes, a - 1.0)
        r2, w_r = 2.0 * x_l, w_l / special.gamma(a)  # chi2_{d-1} = 2 Gamma((d-1)/2)
    else:
        r2, w_r = np.zeros(1), np.ones(1)
    out = np.empty(len(phis))
    for i, ph in enumerate(phis):
        c = float(kept_accuracy(ph, p))
        lo, hi = stats.binom.ppf([1e-12, 1 - 1e-12], n, c)
        K = np.arange(max(0, lo - 1), min(n, hi + 1) + 1)
        pk = stats.binom.pmf(K, n, c)
        pk = pk / pk.sum()
        s_bar = (2.0 * K - n) / n
        A = s_bar[:, None] * signal + x_h[None, :] / np.sqrt(n)  # (K, H)
        norm = np.sqrt(A[..., None] ** 2 + r2[None, None, :] / n)  # (K, H, L)
        with np.errstate(invalid="ignore", divide="ignore"):
            err = special.ndtr(-signal * np.where(norm > 0, A[..., None] / norm, 0.0))
        out[i] = float(np.einsum("k,h,l,khl->", pk, w_h, w_r, err))
    return out


def verified_errors(phis: Sequence[float], p: float, sizes: Sequence[int], d: int, signal: float,
                    seeds: Sequence[int], stream: int = 0, chunk: int = 25) -> np.ndarray:
    """Simulate the pipeline: test errors of shape ``(len(seeds), len(phis), len(sizes))``.

    Per seed: a pool of labelled points from the truth (``make_rng(seed, stream, "data")``), the
    generator's label flips with probability ``p`` and the verifier's uniforms
    (``make_rng(seed, stream, "sample")``).  A verifier of quality ``phi`` errs on a sample when its
    uniform exceeds ``phi`` (common random numbers across ``phi``) and keeps the samples it judges
    right; the model of size ``n`` is the class-mean direction over the first ``n`` kept samples
    (the sizes are nested).  The pool is long enough for the rarest keep rate.
    """
    phis = np.asarray(phis, dtype=float)
    sizes = np.asarray(sizes, dtype=np.int64)
    n_max = int(sizes.max())
    _check(int(sizes.min()), d, signal)
    if not 0.0 <= p <= 1.0 or np.any((phis < 0) | (phis > 1)):
        raise ValueError("p and every phi must lie in [0, 1]")
    r_min = float(np.min(keep_rate(phis, p)))
    if r_min < 1e-3:
        raise ValueError(f"a verifier of quality phi keeps a share {r_min:.2g} of samples when p = {p}: "
                         "keep p away from 0 and 1 or phi away from the ends")
    # the kept count of a pool is Binomial(pool, r): 8 standard deviations of margin above n_max
    pool = int(np.ceil((n_max + 8.0 * np.sqrt(n_max) + 20) / r_min))
    chunk = max(1, min(chunk, int(2e7 // (pool * d))))  # about 160 MB of points per chunk at most
    mu = np.zeros(d)
    mu[0] = signal
    out = np.empty((len(seeds), len(phis), len(sizes)))
    for start in range(0, len(seeds), chunk):
        rows = [int(s) for s in seeds[start:start + chunk]]
        S = len(rows)
        yx = np.empty((S, pool, d))  # y_true * x = mu + zeta
        flip = np.empty((S, pool), dtype=bool)
        u = np.empty((S, pool))
        for r, s in enumerate(rows):
            g = make_rng(s, stream, "data")
            yx[r] = mu + g.standard_normal((pool, d))
            flip[r] = g.random(pool) < p
            u[r] = make_rng(s, stream, "sample").random(pool)
        sign = np.where(flip, -1.0, 1.0)  # generator label times true label
        for j, ph in enumerate(phis):
            keep = verifier_keeps(flip, u, ph)
            rank = np.cumsum(keep, axis=1)
            if np.any(rank[:, -1] < n_max):
                raise RuntimeError("the verifier kept too few samples; this should not happen")
            cols = np.nonzero(keep & (rank <= n_max))[1].reshape(S, n_max)  # the first n_max kept, in order
            rows_ix = np.arange(S)[:, None]
            out[start:start + S, j, :] = class_mean_error(yx[rows_ix, cols] * sign[rows_ix, cols][..., None],
                                                          sizes, mu)
    return out


def verifier_keeps(wrong: np.ndarray, u: np.ndarray, phi: float) -> np.ndarray:
    """The verifier's filter.  Its judgement of a label is correct when its uniform ``u`` is at most
    ``phi`` (so with probability ``phi``), and it keeps every sample whose label it judges right: a
    right label judged correctly, or a wrong label (``wrong``: the generator flipped it) judged
    incorrectly."""
    verifier_errs = u > phi
    return wrong == verifier_errs


def class_mean_error(signed_x: np.ndarray, sizes: np.ndarray, mu: np.ndarray) -> np.ndarray:
    r"""Test error of the classifier fitted on the first ``n`` kept samples, for each ``n`` in ``sizes``.

    ``signed_x`` holds :math:`\tilde y_i x_i` (label times point), ``(S, n_max, d)``.  The model is the
    class-mean direction :math:`\hat w = \frac1n\sum_{i\le n}\tilde y_i x_i`; it predicts
    :math:`\operatorname{sign}(\hat w^\top x)` and errs with probability
    :math:`\Phi(-\hat w^\top\mu/\|\hat w\|)` exactly.  Returns ``(S, len(sizes))``."""
    w = np.cumsum(signed_x, axis=1)[:, sizes - 1, :] / sizes[None, :, None]  # (S, sizes, d)
    norm = np.linalg.norm(w, axis=-1)
    margin = np.where(norm > 0, (w @ mu) / np.where(norm > 0, norm, 1.0), 0.0)
    return special.ndtr(-margin)


# ---------------------------------------------------------------------------------------------
# Selection by likelihood under the current model
# ---------------------------------------------------------------------------------------------
def truncation_point(keep: float) -> float:
    """z with 2 Phi(z) - 1 = keep: the model's central ``keep`` of mass is |x - mu| <= z sigma."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
    return float("inf") if keep == 1.0 else float(stats.norm.ppf((1.0 + keep) / 2.0))


def kappa(keep: float) -> float:
    r"""Variance of a standard normal truncated to its central ``keep`` of mass: :math:`1 - 2z\varphi(z)/\mathrm{keep}`."""
    z = truncation_point(keep)
    return 1.0 if np.isinf(z) else float(1.0 - 2.0 * z * stats.norm.pdf(z) / keep)


def selected_variance(generations, m: int, keep: float, sigma2: float = 1.0) -> np.ndarray:
    r"""Exact :math:`\mathbb E\hat\sigma^2_g` under ``replace`` with MLE fits to ``m`` selected samples:
    :math:`\sigma^2((m-1)/m)^{g+1}\kappa^g` (generation 0 fits ``m`` real samples)."""
    g = np.arange(int(generations) + 1) if np.ndim(generations) == 0 else np.asarray(generations, dtype=float)
    return sigma2 * ((m - 1) / m) ** (g + 1) * kappa(keep) ** g


class SelectedGaussianExperiment(Experiment):
    """A 1-D Gaussian (MLE fit) whose samples are kept only inside its own central ``keep`` of mass.

    Data are arrays ``(S, n)`` (so every regime applies).  The sampler draws from the fitted model
    and keeps the draws that pass the likelihood filter, in order, until ``n`` per seed are kept
    (``keep = 1``: no selection).  Metrics: ``sigma2`` and ``mu`` of the fit.
    """

    batched = True

    def __init__(self, keep: float = 1.0, name: str | None = None):
        self.keep = float(keep)
        self.z = truncation_point(self.keep)
        self.name = name or ("gaussian" if self.keep == 1.0 else f"gaussian_selected{self.keep:g}")

    def fit(self, data, ctx: GenerationContext):
        x = np.asarray(data, dtype=np.float64)
        if x.shape[1] < 2:
            raise ValueError("a variance needs at least 2 samples")
        mean = x.mean(axis=1)
        return mean, ((x - mean[:, None]) ** 2).mean(axis=1)

    def sample(self, model, n: int, ctx: GenerationContext) -> np.ndarray:
        mean, var = model
        rng = ctx.rng("sample")
        S = mean.shape[0]
        if np.isinf(self.z):
            return mean[:, None] + np.sqrt(var)[:, None] * rng.standard_normal((S, n))
        m = int(np.ceil(n / self.keep * 1.2)) + 16
        z = rng.standard_normal((S, m))
        ok = np.abs(z) <= self.z
        first = np.argsort(~ok, axis=1, kind="stable")[:, :n]  # positions of the first n kept draws
        out = np.take_along_axis(z, first, axis=1)
        for r in np.flatnonzero(ok.sum(axis=1) < n):  # rare: this seed kept too few, draw on
            got = list(z[r, ok[r]])
            while len(got) < n:
                more = rng.standard_normal(m)
                got += list(more[np.abs(more) <= self.z])
            out[r] = got[:n]
        return mean[:, None] + np.sqrt(var)[:, None] * out

    def evaluate(self, model, comp, ctx: GenerationContext) -> dict:
        mean, var = model
        return {"mu": mean, "sigma2": var}
