r"""Chapter 01: recursive fitting of a one-dimensional Gaussian, vectorised over seeds.

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

from .config import Checker
from .engine import Experiment, GenerationContext
from .results import seed_matrix

__all__ = [
    "SufficientStats", "GaussianExperiment", "gaussian_theory", "size_schedule", "record_generations",
    "validate_params", "real_data",
]


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
        if isinstance(data, SufficientStats):
            mean, m2, n = data.mean, data.m2, data.n
        else:
            n = data.shape[1]
            mean = data.mean(axis=1)
            m2 = ((data - mean[:, None]) ** 2).sum(axis=1)
        if n - self.ddof < 1:
            raise ValueError(f"cannot fit a variance to {n} sample(s) with ddof={self.ddof}")
        return mean, m2 / (n - self.ddof)

    def sample(self, model, n: int, ctx: GenerationContext):
        mean, var = model
        rng = ctx.rng("sample")
        sd = np.sqrt(var)
        if self.sampler == "draws":
            return mean[:, None] + sd[:, None] * rng.standard_normal((mean.shape[0], n))
        if n < 2:
            raise ValueError("the exact sampler needs n >= 2 samples per generation")
        new_mean = mean + sd / np.sqrt(n) * rng.standard_normal(mean.shape[0])
        m2 = var * 2.0 * rng.standard_gamma((n - 1) / 2.0, size=mean.shape[0])  # sigma^2 chi2_{n-1}
        return SufficientStats(new_mean, m2, n)

    def evaluate(self, model, comp, ctx: GenerationContext) -> dict:
        mean, var = model
        return {"mu": mean, "sigma2": var}


def real_data(n_seeds: int, m: int, seed: int, mu: float = 0.0, sigma: float = 1.0) -> np.ndarray:
    from .seeding import make_rng

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


def record_generations(generations: int, points: int = 40) -> np.ndarray:
    """0..10 and then log-spaced generations up to the last: plenty for log-x plots, few table rows."""
    logs = np.unique(np.round(np.logspace(0, np.log10(max(generations, 1)), points)).astype(int))
    return np.unique(np.concatenate([np.arange(min(11, generations + 1)), logs, [generations]]))


def gaussian_theory(sizes, ddof: int, sigma: float = 1.0) -> dict[str, np.ndarray]:
    r"""Exact moments of the recursion (index g = the model fitted on the g-th data set, M_g = sizes[g]).

    With :math:`X_g = \hat\sigma^2_g/\hat\sigma^2_{g-1} \sim \chi^2_{M_g-1}/(M_g-\mathrm{ddof})`
    independent across generations:

    * ``E_sigma2``  :math:`\sigma^2\prod_{i\le g}\mathbb E X_i` (constant for ddof=1; ((M-1)/M)^{g+1} for the MLE)
    * ``var_mu``    :math:`\sum_{i\le g}\mathbb E[\hat\sigma^2_{i-1}]/M_i` (= :math:`\sigma^2\sum 1/M_i` unbiased)
    * ``E_w2``      :math:`\mathbb E[(\hat\mu_g-\mu)^2 + (\hat\sigma_g-\sigma)^2]`, exact via
      :math:`\mathbb E\sqrt{\chi^2_k} = \sqrt2\,\Gamma(\tfrac{k+1}2)/\Gamma(\tfrac k2)`
    * ``w2_first_order``  the paper's :math:`\tfrac32\sigma^2\sum_{i\le g}1/M_i`
    * ``log_sigma2_mean``/``log_sigma2_sd``: mean and sd of :math:`\log\hat\sigma^2_g`, whose
      drift :math:`\sum\mathbb E\log X_i < 0` drives :math:`\hat\sigma^2_g\to0` almost surely.
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
    e_log = special.digamma(k / 2) + np.log(2.0) - np.log(M - ddof)
    v_log = special.polygamma(1, k / 2)
    return {
        "E_sigma2": e_s2,
        "var_mu": var_mu,
        "E_sigma": e_sigma,
        "E_w2": e_w2,
        "w2_first_order": 1.5 * s2 * np.cumsum(1.0 / M),
        "log_sigma2_mean": np.log(s2) + np.cumsum(e_log),
        "log_sigma2_sd": np.sqrt(np.cumsum(v_log)),
    }


def lognormal_quantile(theory: dict, q: float) -> np.ndarray:
    """Quantile q of sigma2_g under the (CLT) log-normal approximation of the product of chi-square factors."""
    return np.exp(theory["log_sigma2_mean"] + stats.norm.ppf(q) * theory["log_sigma2_sd"])


def validate_params(params: dict) -> None:
    c = Checker(params, "01")
    c.int("seeds", 2, 1_000_000).int("generations", 1, 1_000_000).ints("sample_sizes", 2)
    c.choice("sampler", ["exact", "draws"]).int("seed", 0)
    c.int("draws_check_seeds", 2, 1_000_000).int("draws_check_generations", 1, 1_000_000)
    c.int("schedule_m0", 2).int("schedule_generations", 1)
    c.int("accumulate_generations", 1).int("accumulate_seeds", 2)
    c.int("discrete_states", 2, 10_000).float("discrete_zipf", 0.0, open_lo=True)
    c.int("discrete_m", 1).int("discrete_seeds", 2).int("discrete_max_generations", 1)
    c.done()


# ---------------------------------------------------------------------------------------------
# The chapter's studies.  Each returns a tidy metrics table (see collapse_utils.engine).
# ---------------------------------------------------------------------------------------------
ESTIMATORS = {"mle": 0, "unbiased": 1}


def _run(study: str, m_sizes, estimator: str, sampler: str, n_seeds: int, generations: int, seed: int,
         regime: str = "replace", schedule: str = "constant", progress: bool = True, checkpoint_root=None):
    from pathlib import Path

    from .engine import run_recursion

    ex = GaussianExperiment(ddof=ESTIMATORS[estimator], sampler=sampler)
    sizes = np.asarray(m_sizes, dtype=np.int64)
    res = run_recursion(ex, ex.real(n_seeds, int(sizes[0]), seed), generations, regime=regime, seed=seed,
                        sizes=lambda g: int(sizes[g]), record=record_generations(generations),
                        columns={"study": study, "M": int(sizes[0]), "estimator": estimator,
                                 "sampler": sampler, "schedule": schedule}, progress=progress,
                        checkpoint_dir=None if checkpoint_root is None else
                        Path(checkpoint_root) / f"{study}-{ex.name}-{sampler}-M{int(sizes[0])}-{schedule}-{regime}",
                        checkpoint_every=max(1, generations // 10))
    return res.metrics


def run_studies(p: dict, progress: bool = True, checkpoint_root=None):
    """All Gaussian studies of chapter 01 at the given parameters; one tidy table.

    With ``checkpoint_root`` every study checkpoints there, so an interrupted run resumes where it stopped.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .engine import progress_disabled

    G, S, seed = p["generations"], p["seeds"], p["seed"]
    jobs = [("main", np.full(G + 1, m), est, p["sampler"], S, G, "replace", "constant")
            for m in p["sample_sizes"] for est in ESTIMATORS]
    m0 = int(p["sample_sizes"][0])
    jobs += [("draws_check", np.full(p["draws_check_generations"] + 1, m0), "mle", smp,
              p["draws_check_seeds"], p["draws_check_generations"], "replace", "constant")
             for smp in ("draws", "exact")]
    Gs = p["schedule_generations"]
    jobs += [("schedules", size_schedule(kind, p["schedule_m0"], Gs), "unbiased", "exact", S, Gs, "replace", kind)
             for kind in ("constant", "linear", "quadratic")]
    Ga = p["accumulate_generations"]
    jobs += [("accumulate", np.full(Ga + 1, p["schedule_m0"]), "unbiased", "exact", p["accumulate_seeds"], Ga,
              regime, "constant") for regime in ("replace", "accumulate")]
    frames = []
    for study, sizes, est, smp, n, gens, regime, kind in tqdm(jobs, desc="Gaussian studies", disable=progress_disabled(progress)):
        frames.append(_run(study, sizes, est, smp, n, gens, seed, regime, kind, progress, checkpoint_root))
    return pd.concat(frames, ignore_index=True)


def w2_matrix(df, **where):
    g, mu = seed_matrix(df, "mu", **where)
    _, s2 = seed_matrix(df, "sigma2", **where)
    return g, w2_squared(mu, s2)


def _mean_se(x: np.ndarray):
    return x.mean(axis=1), x.std(axis=1, ddof=1) / np.sqrt(x.shape[1])


def _var_se(x: np.ndarray):
    """Sample variance across seeds and its standard error from the empirical fourth moment."""
    c = x - x.mean(axis=1, keepdims=True)
    v = (c**2).mean(axis=1)
    m4 = (c**4).mean(axis=1)
    return v * x.shape[1] / (x.shape[1] - 1), np.sqrt(np.maximum(m4 - v**2, 0) / x.shape[1])


def theory_for(df, m: int, estimator: str, generations: int, schedule: str = "constant"):
    return gaussian_theory(size_schedule(schedule, m, generations), ESTIMATORS[estimator])


# ------------------------------- figures -------------------------------------------------------
def _axes(nrows, ncols, **kw):
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, **kw)


def plot_official_view(df, estimator: str = "mle"):
    """|mu_hat - mu| and |sigma_hat - sigma| over generations per M (the official notebook's plot), bands over seeds."""
    from .plotting import band, finish, palette

    main = df[(df.study == "main") & (df.estimator == estimator)]
    ms = sorted(main.M.unique())
    fig, axes = _axes(1, 2, figsize=(11, 4.2))
    for m, col in zip(ms, palette(len(ms))):
        g, mu = seed_matrix(main, "mu", M=m)
        _, s2 = seed_matrix(main, "sigma2", M=m)
        keep = g >= 1
        band(axes[0], g[keep], np.abs(mu[keep]), label=f"M = {m}", color=col)
        band(axes[1], g[keep], np.abs(np.sqrt(s2[keep]) - 1.0), label=f"M = {m}", color=col)
    for ax, lab in zip(axes, [r"$|\hat\mu_g - \mu|$", r"$|\hat\sigma_g - \sigma|$"]):
        ax.set_xscale("log")
        ax.set_yscale("log")
        finish(ax, "generation $g$", lab)
    axes[0].set_title("mean drifts like a random walk")
    axes[1].set_title("standard deviation collapses")
    fig.tight_layout()
    return fig


def plot_moments(df, generations: int):
    """Var(mu_g) and E[sigma2_g] against the exact formulas, both estimators."""
    from .plotting import finish, palette

    main = df[df.study == "main"]
    ms = sorted(main.M.unique())
    fig, axes = _axes(1, 2, figsize=(11, 4.3))
    cols = palette(len(ms))
    for m, col in zip(ms, cols):
        th = theory_for(df, m, "unbiased", generations)
        g, mu = seed_matrix(main, "mu", M=m, estimator="unbiased")
        v, se = _var_se(mu)
        axes[0].plot(g[1:], v[1:], color=col, label=f"M = {m} (simulated)")
        axes[0].fill_between(g[1:], (v - 2 * se)[1:], (v + 2 * se)[1:], color=col, alpha=0.25, lw=0)
        axes[0].plot(np.arange(1, generations + 1), th["var_mu"][1:], "k--", lw=1)
        for est, ls in (("mle", "-"), ("unbiased", "-")):
            g, s2 = seed_matrix(main, "sigma2", M=m, estimator=est)
            mean, se = _mean_se(s2)
            tht = theory_for(df, m, est, generations)
            ok = m >= 1000  # for small M the mean is carried by ever rarer seeds (see the next figure)
            if not ok:
                continue
            axes[1].plot(g[1:], mean[1:], color=col, ls=ls if est == "unbiased" else ":",
                         label=f"M = {m}, {est}")
            axes[1].fill_between(g[1:], (mean - 2 * se)[1:], (mean + 2 * se)[1:], color=col, alpha=0.25, lw=0)
            axes[1].plot(np.arange(1, generations + 1), tht["E_sigma2"][1:], "k--", lw=1)
    axes[0].plot([], [], "k--", lw=1, label=r"theory $\sigma^2\sum_i 1/M_i$")
    axes[1].plot([], [], "k--", lw=1, label="theory (exact)")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[1].set_xscale("log")
    finish(axes[0], "generation $g$", r"$\mathrm{Var}(\hat\mu_g)$ across seeds", "unbiased estimator")
    finish(axes[1], "generation $g$", r"mean of $\hat\sigma^2_g$ across seeds",
           r"$\mathbb{E}[\hat\sigma^2_g]$: constant (unbiased) vs $((M-1)/M)^{g+1}$ (MLE)")
    fig.tight_layout()
    return fig


def plot_w2(df, generations: int, estimator: str = "unbiased"):
    """Mean W2^2 to the original Gaussian with the exact expectation and the paper's first-order formula."""
    from .plotting import finish, palette

    main = df[(df.study == "main") & (df.estimator == estimator)]
    ms = sorted(main.M.unique())
    fig, ax = _axes(1, 1, figsize=(7.5, 4.5))
    gg = np.arange(1, generations + 1)
    for m, col in zip(ms, palette(len(ms))):
        g, w2 = w2_matrix(main, M=m)
        mean, se = _mean_se(w2)
        ax.plot(g[1:], mean[1:], color=col, label=f"M = {m}")
        ax.fill_between(g[1:], (mean - 2 * se)[1:], (mean + 2 * se)[1:], color=col, alpha=0.25, lw=0)
        th = theory_for(df, m, estimator, generations)
        ax.plot(gg, th["E_w2"][1:], "k--", lw=1)
        ax.plot(gg, th["w2_first_order"][1:], color="grey", ls=":", lw=1.2)
    ax.plot([], [], "k--", lw=1, label="exact expectation")
    ax.plot([], [], color="grey", ls=":", lw=1.2, label=r"first order $\frac{3}{2}\sigma^2\sum_i 1/M_i$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    finish(ax, "generation $g$", r"mean $W_2^2(N(0,1), N(\hat\mu_g,\hat\sigma^2_g))$")
    fig.tight_layout()
    return fig


def plot_as_collapse(df, generations: int):
    """Median and 5-95 % quantiles of sigma2_g (unbiased) vs the log-normal theory; the mean stays at 1."""
    from .plotting import band, finish, palette

    main = df[(df.study == "main") & (df.estimator == "unbiased")]
    ms = sorted(main.M.unique())
    fig, ax = _axes(1, 1, figsize=(7.5, 4.5))
    gg = np.arange(1, generations + 1)
    for m, col in zip(ms, palette(len(ms))):
        g, s2 = seed_matrix(main, "sigma2", M=m)
        band(ax, g[1:], s2[1:], label=f"M = {m}: median, 5–95 %", color=col)
        ax.plot(g[1:], s2[1:].mean(axis=1), color=col, ls=":", lw=1.3)
        th = theory_for(df, m, "unbiased", generations)
        for q in (0.05, 0.5, 0.95):
            ax.plot(gg, lognormal_quantile(th, q)[1:], "k--", lw=0.8)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.plot([], [], "k--", lw=0.8, label="theory quantiles (log-normal)")
    ax.plot([], [], color="grey", ls=":", label="sample mean over seeds")
    ax.set_xscale("log")
    ax.set_yscale("log")
    finish(ax, "generation $g$", r"$\hat\sigma^2_g$ (unbiased estimator)", loc="lower left")
    fig.tight_layout()
    return fig


def plot_schedules(df, generations: int, m0: int):
    """Mean W2^2 for constant, linear and quadratic sample-size schedules, with exact theory."""
    from .plotting import finish, palette

    sub = df[df.study == "schedules"]
    fig, ax = _axes(1, 1, figsize=(7.5, 4.5))
    gg = np.arange(1, generations + 1)
    labels = {"constant": r"$M_g = M_0$", "linear": r"$M_g = M_0(g+1)$", "quadratic": r"$M_g = M_0(g+1)^2$"}
    for kind, col in zip(("constant", "linear", "quadratic"), palette(3)):
        g, w2 = w2_matrix(sub, schedule=kind)
        mean, se = _mean_se(w2)
        ax.plot(g[1:], mean[1:], color=col, label=labels[kind])
        ax.fill_between(g[1:], (mean - 2 * se)[1:], (mean + 2 * se)[1:], color=col, alpha=0.25, lw=0)
        ax.plot(gg, gaussian_theory(size_schedule(kind, m0, generations), 1)["E_w2"][1:], "k--", lw=1)
    ax.axhline(1.5 * np.pi**2 / 6 / m0, color="grey", ls=":", lw=1.2,
               label=r"quadratic bound $\frac{3}{2}\frac{\pi^2}{6M_0}$")
    ax.plot([], [], "k--", lw=1, label="exact expectation")
    ax.set_xscale("log")
    ax.set_yscale("log")
    finish(ax, "generation $g$", r"mean $W_2^2$ to $N(0,1)$", f"$M_0 = {m0}$, unbiased estimator")
    fig.tight_layout()
    return fig


def plot_accumulate(df, m0: int):
    """Replace vs accumulate: W2^2 and sigma2 bands over seeds."""
    from .plotting import band, finish, palette

    sub = df[df.study == "accumulate"]
    fig, axes = _axes(1, 2, figsize=(11, 4.2))
    for regime, col in zip(("replace", "accumulate"), palette(2)):
        g, w2 = w2_matrix(sub, regime=regime)
        band(axes[0], g[1:], w2[1:], label=regime, color=col)
        _, s2 = seed_matrix(sub, "sigma2", regime=regime)
        band(axes[1], g[1:], s2[1:], label=regime, color=col)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
    finish(axes[0], "generation $g$", r"$W_2^2$ to $N(0,1)$ (median, 5–95 %)", f"$M = {m0}$ per generation")
    finish(axes[1], "generation $g$", r"$\hat\sigma^2_g$ (median, 5–95 %)")
    fig.tight_layout()
    return fig


def draws_vs_exact(df):
    """KS tests (per recorded generation) that the draws and exact samplers give the same sigma2 distribution."""
    import pandas as pd

    sub = df[df.study == "draws_check"]
    g, a = seed_matrix(sub, "sigma2", sampler="draws")
    _, b = seed_matrix(sub, "sigma2", sampler="exact")
    rows = [(int(gi), *stats.ks_2samp(a[i], b[i])) for i, gi in enumerate(g) if gi > 0]
    return pd.DataFrame(rows, columns=["generation", "ks_statistic", "p_value"])


def plot_draws_vs_exact(df):
    from .plotting import band, finish, palette

    sub = df[df.study == "draws_check"]
    fig, ax = _axes(1, 1, figsize=(7.5, 4.2))
    for smp, col in zip(("draws", "exact"), palette(2)):
        g, s2 = seed_matrix(sub, "sigma2", sampler=smp)
        band(ax, g[1:], np.abs(np.sqrt(s2[1:]) - 1), label=f"{smp} sampler", color=col, alpha=0.15)
    ax.set_xscale("log")
    ax.set_yscale("log")
    finish(ax, "generation $g$", r"$|\hat\sigma_g - \sigma|$ (median, 5–95 %)",
           f"M = {int(sub.M.iloc[0])}, MLE: literal draws vs sufficient statistics")
    fig.tight_layout()
    return fig


def summary(df, generations: int):
    """One row per (M, estimator) at the last generation: simulation next to theory."""
    import pandas as pd

    main = df[df.study == "main"]
    rows = []
    for (m, est), sub in main.groupby(["M", "estimator"]):
        g, mu = seed_matrix(sub, "mu")
        _, s2 = seed_matrix(sub, "sigma2")
        th = theory_for(df, int(m), est, generations)
        w2 = w2_squared(mu[-1], s2[-1])
        rows.append({"M": int(m), "estimator": est, "generation": int(g[-1]),
                     "Var(mu) sim": mu[-1].var(ddof=1), "Var(mu) theory": th["var_mu"][-1],
                     "mean sigma2 sim": s2[-1].mean(), "E[sigma2] theory": th["E_sigma2"][-1],
                     "median sigma2 sim": np.median(s2[-1]),
                     "median sigma2 theory": float(np.exp(th["log_sigma2_mean"][-1])),
                     "mean W2^2 sim": w2.mean(), "E[W2^2] theory": th["E_w2"][-1]})
    return pd.DataFrame(rows).set_index(["M", "estimator"])
