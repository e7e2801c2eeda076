import numpy as np
import pytest
from scipy import stats

from collapse_utils import discrete as D
from collapse_utils.engine import run_recursion


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
    assert (np.diff(surv, axis=0) <= 0).all()  # once lost, never back
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
