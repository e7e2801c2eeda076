import numpy as np
import pytest
from scipy import stats

from collapse_utils.models import discrete as D
from collapse_utils.core.engine import run_recursion


def test_sampler_matches_probabilities():
    p = np.array([[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 1.0, 0.0]])
    x = D.sample_categorical(p, 20000, np.random.default_rng(0))
    c0 = np.bincount(x[0], minlength=4)
    assert c0[3] == 0 and stats.chisquare(c0[:3], 20000 * p[0, :3]).pvalue > 0.001
    assert (x[1] == 2).all()


def test_absorption_probabilities_equal_original_probabilities():
    p0 = D.zipf_probs(8, 1.0)
    ex = D.CategoricalExperiment(p0, tail_cut=1 / 30)
    res = run_recursion(ex, ex.real(3000, 30, 7), 3000, seed=7, record=[], progress=False)
    assert (ex.absorbed_at >= 0).all(), "every run must end in a delta"
    assert res.bookkeeping.generation.max() < 3000  # stopped early once all were absorbed
    tab = D.absorption_table(ex)
    assert stats.chisquare(tab.absorbed, p0 * tab.runs).pvalue > 0.001
    assert tab.inside_ci.mean() >= 0.75


def test_tail_states_vanish_first():
    p0 = D.zipf_probs(20, 1.1)
    ex = D.CategoricalExperiment(p0)
    run_recursion(ex, ex.real(1000, 100, 0), 2000, seed=0, record=[], progress=False)
    surv = D.survival_curves(ex, np.array([5, 20, 50]))
    # at every time the most likely state survives more often than the rarest ones
    assert (surv[:, 0] > surv[:, -5:].mean(axis=1)).all()
    # extinction order: mean extinction time increases with original probability (rank correlation)
    ext = np.where(ex.extinct_at < 0, 10**6, ex.extinct_at)
    assert stats.spearmanr(p0, np.median(ext, axis=0)).statistic > 0.8


def test_wilson_interval():
    lo, hi = D.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    with pytest.raises(ValueError):
        D.zipf_probs(1, 1.0)


def test_lost_states_never_come_back():
    """The chain's own support (recorded every generation) against the extinction bookkeeping: a state that
    lost its mass and came back, or an extinction recorded too early or too late, breaks the equality."""
    p0 = D.zipf_probs(12, 1.1)
    ex = D.CategoricalExperiment(p0)
    res = run_recursion(ex, ex.real(400, 40, 3), 300, seed=3, progress=False)
    w = res.wide().sort_values(["seed", "generation"])
    g = w.generation.to_numpy()
    row = w.seed.to_numpy() - 3
    ext = ex.extinct_at[row]
    lost = ((ext >= 0) & (ext <= g[:, None])).sum(axis=1)
    np.testing.assert_array_equal(w.support.to_numpy(), ex.k - lost)
    assert (w.groupby("seed").support.diff().dropna() <= 0).all()  # the fitted support itself never grows
    assert lost.max() == ex.k - 1  # some run did lose all but one state


def test_one_generation_loss_probability_is_binomial():
    """A state of probability q is missing from M draws with probability (1 - q)^M: the tail, with q <= 1/M,
    is the likeliest to go (the paper's 'seen less than once per generation')."""
    p0 = D.zipf_probs(60, 1.1)
    m, S = 100, 4000
    ex = D.CategoricalExperiment(p0)
    run_recursion(ex, ex.real(S, m, 11), 1, seed=11, record=[], progress=False)
    lost0 = (ex.extinct_at == 0).mean(axis=0)  # missing from the real sample already
    expected = (1 - p0) ** m
    se = np.sqrt(expected * (1 - expected) / S) + 1e-12
    assert (np.abs(lost0 - expected) < 4 * se + 0.5 / S).all()
    tail = p0 <= 1 / m
    assert tail.any() and lost0[tail].mean() > 0.3 > lost0[p0 > 2 / m].max()
