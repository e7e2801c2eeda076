"""Chapter 01 numbers against theory, within honest Monte-Carlo tolerances (fixed seeds: no flakes)."""
import numpy as np
import pytest
from scipy import stats

from collapse_utils.models import gaussian as G
from collapse_utils.core.engine import run_recursion


def simulate(m, ddof, sampler="exact", seeds=4000, generations=50, seed=0, regime="replace", sizes=None):
    ex = G.GaussianExperiment(ddof=ddof, sampler=sampler)
    res = run_recursion(ex, ex.real(seeds, m, seed), generations, regime=regime, seed=seed, sizes=sizes,
                        progress=False)
    w = res.wide()
    last = w[w.generation == generations]
    return last.mu.to_numpy(), last.sigma2.to_numpy()


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("sampler", ["exact", "draws"])
def test_moments_match_theory(ddof, sampler):
    m, g, S = 20, 30, 4000
    mu, s2 = simulate(m, ddof, sampler, S, g)
    th = G.gaussian_theory(np.full(g + 1, m), ddof)
    # Var(mu_g): the sample variance's standard error from the empirical fourth moment
    c = mu - mu.mean()
    se_var = np.sqrt(((c**4).mean() - (c**2).mean() ** 2) / S)
    assert abs(mu.var(ddof=1) - th["var_mu"][-1]) < 4 * se_var
    assert abs(mu.mean()) < 4 * np.sqrt(th["var_mu"][-1] / S)
    assert abs(s2.mean() - th["E_sigma2"][-1]) < 4 * s2.std() / np.sqrt(S)
    w2 = G.w2_squared(mu, s2)
    assert abs(w2.mean() - th["E_w2"][-1]) < 4 * w2.std() / np.sqrt(S)


def test_unbiased_variance_is_a_martingale_and_mle_decays():
    g = 40
    th0 = G.gaussian_theory(np.full(g + 1, 100), 0)
    th1 = G.gaussian_theory(np.full(g + 1, 100), 1)
    np.testing.assert_allclose(th1["E_sigma2"], 1.0)
    np.testing.assert_allclose(th0["E_sigma2"], (99 / 100) ** np.arange(1, g + 2))
    np.testing.assert_allclose(th1["var_mu"], np.arange(1, g + 2) / 100)
    # first-order formula agrees with the exact one while sum 1/M is small
    assert th1["E_w2"][5] == pytest.approx(th1["w2_first_order"][5], rel=0.02)


def test_almost_sure_collapse_median_follows_lognormal_theory():
    m, g, S = 50, 200, 4000
    _, s2 = simulate(m, 1, "exact", S, g)
    th = G.gaussian_theory(np.full(g + 1, m), 1)
    med = np.exp(th["log_sigma2_mean"][-1])
    assert med < 0.05  # collapse: the median is far below sigma^2 = 1 ...
    # ... and matches the theory: log sigma2 is a sum of independent terms
    assert abs(np.log(np.median(s2)) - th["log_sigma2_mean"][-1]) < 4 * th["log_sigma2_sd"][-1] / np.sqrt(S) * 1.3
    assert abs(np.log(s2).std() - th["log_sigma2_sd"][-1]) < 0.05 * th["log_sigma2_sd"][-1]


def test_exact_and_draws_samplers_agree_in_distribution():
    _, a = simulate(30, 0, "draws", 3000, 20, seed=1)
    _, b = simulate(30, 0, "exact", 3000, 20, seed=2)
    assert stats.ks_2samp(a, b).pvalue > 0.001


def test_sufficient_stats_pool_exactly():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 7)), rng.normal(2, 3, size=(3, 11))
    pooled = G.SufficientStats.concat_samples([G.SufficientStats.from_samples(x), G.SufficientStats.from_samples(y)])
    direct = G.SufficientStats.from_samples(np.concatenate([x, y], axis=1))
    np.testing.assert_allclose(pooled.mean, direct.mean)
    np.testing.assert_allclose(pooled.m2, direct.m2)
    assert pooled.shape == (3, 18)


def test_accumulate_regime_works_with_both_samplers():
    mu_e, s2_e = simulate(50, 1, "exact", 2000, 30, regime="accumulate")
    mu_d, s2_d = simulate(50, 1, "draws", 2000, 30, regime="accumulate", seed=5)
    assert stats.ks_2samp(s2_e, s2_d).pvalue > 0.001
    _, s2_r = simulate(50, 1, "exact", 2000, 30)
    assert np.median(np.abs(s2_e - 1)) < np.median(np.abs(s2_r - 1))  # accumulating keeps the variance


def test_quadratic_schedule_bounds_risk():
    th = G.gaussian_theory(G.size_schedule("quadratic", 100, 2000), 1)
    assert th["E_w2"][-1] < 1.5 * np.pi**2 / 6 / 100 * 1.05
    lin = G.gaussian_theory(G.size_schedule("linear", 100, 2000), 1)
    assert lin["E_w2"][-1] > 2 * lin["E_w2"][20]  # keeps growing, logarithmically
    with pytest.raises(ValueError, match="schedule"):
        G.size_schedule("cubic", 10, 5)


def test_experiment_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ddof"):
        G.GaussianExperiment(ddof=2)
    with pytest.raises(ValueError, match="sampler"):
        G.GaussianExperiment(sampler="magic")
    with pytest.raises(ValueError, match=">= 2"):
        G.gaussian_theory([1, 5], 1)


@pytest.mark.parametrize("ddof", [0, 1])
def test_variance_of_sigma2_matches_exact_second_moment(ddof):
    """var_sigma2 (from E[X^2] of the chi-square factors) sets the Monte-Carlo horizon of chapter 01."""
    m, g, S = 20, 15, 20000
    _, s2 = simulate(m, ddof, "exact", S, g, seed=3)
    th = G.gaussian_theory(np.full(g + 1, m), ddof)
    c = s2 - s2.mean()
    se = np.sqrt(((c**4).mean() - (c**2).mean() ** 2) / S)
    assert abs(s2.var(ddof=1) - th["var_sigma2"][-1]) < 4 * se
    rel = G.mean_rel_se(th, S)
    assert rel[-1] == pytest.approx(np.sqrt(th["var_sigma2"][-1] / S) / th["E_sigma2"][-1])
    assert (np.diff(rel) > 0).all()  # the mean over seeds gets harder to estimate every generation
