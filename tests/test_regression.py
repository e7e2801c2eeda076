"""Linear regression refitted on its own predictions (chapter 05, section 1): the Monte-Carlo test errors
against the exact formulas, within standard errors from the seeds, for every regime the engine runs."""
from __future__ import annotations

import numpy as np
import pytest

from collapse_utils.models import regression as R
from collapse_utils.core.engine import run_recursion

S, T, D, SIGMA, G = 400, 40, 5, 1.0, 12
SEEDS = list(range(S))
Z = 4.0


@pytest.fixture(scope="module")
def problem():
    rows, w = R.real_problem(SEEDS, T, D, SIGMA)
    return rows, w


def _run(problem, regime: str, gram: bool = True):
    rows, w = problem
    ex = R.RegressionExperiment(rows[..., :D], w, SIGMA, gram=gram)
    data = R.GramStats.from_rows(rows) if gram else rows
    return run_recursion(ex, data, G, regime=regime, seeds=SEEDS, progress=False)


def _errors(res):
    m = res.metrics
    wide = m[m.metric == "test_error"].pivot_table(index="generation", columns="seed", values="value")
    trace = m[m.metric == "trace_term"].set_index("seed")["value"].sort_index().to_numpy()
    return wide.index.to_numpy(), wide.to_numpy(), trace


@pytest.fixture(scope="module")
def runs(problem):
    return {regime: _errors(_run(problem, regime, gram=regime != "accumulate_subsample"))
            for regime in ("replace", "accumulate", "accumulate_subsample")}


def _agrees_with(g, err, regime):
    """Mean over seeds within Z standard errors of sigma^2 d/(T-d-1) x factor at every generation."""
    expected = R.expected_test_error(regime, g, D, T, SIGMA)
    mean, se = err.mean(1), err.std(1, ddof=1) / np.sqrt(err.shape[1])
    return np.abs(mean - expected) <= Z * se, (mean - expected) / se


def test_exact_factors():
    assert np.allclose(R.error_factor("replace", 4), [1, 2, 3, 4, 5])
    assert np.allclose(R.error_factor("accumulate", 3), [1, 1.25, 1.25 + 1 / 9, 1.25 + 1 / 9 + 1 / 16])
    acc = R.error_factor("accumulate", 10_000)
    assert np.all(np.diff(acc) > 0) and acc[-1] < R.PI2_6 and R.PI2_6 - acc[-1] < 1e-3
    assert R.first_error(10, 100, 2.0) == pytest.approx(4 * 10 / 89)
    with pytest.raises(ValueError, match="T > d"):
        R.first_error(10, 11)
    with pytest.raises(ValueError, match="no closed form"):
        R.error_factor("accumulate_subsample", 3)


def test_inverse_wishart_trace(runs):
    """sigma^2 tr((X^T X)^-1) over random Gaussian designs has mean sigma^2 d/(T-d-1)."""
    _, _, trace = runs["replace"]
    mean, se = trace.mean(), trace.std(ddof=1) / np.sqrt(len(trace))
    assert abs(mean - R.first_error(D, T, SIGMA)) <= Z * se


@pytest.mark.parametrize("regime", ["replace", "accumulate"])
def test_test_error_matches_the_exact_expectation(runs, regime):
    g, err, _ = runs[regime]
    ok, z = _agrees_with(g, err, regime)
    assert ok.all(), f"{regime}: z-scores {np.round(z, 2)}"


@pytest.mark.parametrize("regime", ["replace", "accumulate"])
def test_conditional_on_the_design(runs, regime):
    """Per seed, E[err | X] = factor x sigma^2 tr((X^T X)^-1): the ratio's mean is the factor (sharper)."""
    g, err, trace = runs[regime]
    ratio = err / trace[None, :]
    mean, se = ratio.mean(1), ratio.std(1, ddof=1) / np.sqrt(ratio.shape[1])
    assert np.all(np.abs(mean - R.error_factor(regime, g)) <= Z * se)


def test_the_formulas_tell_the_regimes_apart(runs):
    """The agreement test has power: accumulate's errors fail replace's formula and vice versa."""
    g, acc, _ = runs["accumulate"]
    _, rep, _ = runs["replace"]
    assert not _agrees_with(g, acc, "replace")[0][-3:].any()
    assert not _agrees_with(g, rep, "accumulate")[0][-3:].any()


def test_accumulate_stays_below_the_pi2_over_6_bound(runs):
    g, err, _ = runs["accumulate"]
    mean, se = err.mean(1), err.std(1, ddof=1) / np.sqrt(err.shape[1])
    assert np.all(mean <= R.PI2_6 * R.first_error(D, T, SIGMA) + Z * se)
    # and it is not simply the first error: it grows towards the bound
    assert mean[-1] > mean[0] + Z * np.hypot(se[-1], se[0])


def test_subsample_lies_between_replace_and_accumulate(runs):
    g, sub, _ = runs["accumulate_subsample"]
    _, rep, _ = runs["replace"]
    _, acc, _ = runs["accumulate"]
    # same seeds, same designs and generation-0 data: paired comparisons at the last generation
    assert np.mean(np.log(rep[-1] / sub[-1])) > 0 and np.mean(np.log(sub[-1] / acc[-1])) > 0
    assert np.all(sub[0] == rep[0]) and np.all(acc[0] == rep[0])


def test_accumulate_subsample_bookkeeping(problem):
    """A fixed budget of T rows per generation, drawn from a pool that grows by T rows per generation:
    on average T/(g+1) of them are real."""
    res = _run(problem, "accumulate_subsample", gram=False)
    b = res.bookkeeping.set_index("generation")
    assert (b.n_train == T).all()
    g = b.index.to_numpy()
    # hypergeometric: T draws from (g+1)T rows of which T are real; mean over S seeds (rounded)
    expected = T / (g + 1)
    sd = np.sqrt(T * (1 / (g + 1)) * (1 - 1 / (g + 1)) * (T * (g + 1) - T) / np.maximum(T * (g + 1) - 1, 1))
    assert np.all(np.abs(b.n_real.to_numpy() - expected) <= Z * sd / np.sqrt(S) + 1), b.n_real.to_numpy()
    assert (b.n_synthetic + b.n_real == T).all()
    acc = _run(problem, "accumulate").bookkeeping.set_index("generation")
    assert (acc.n_train == T * (acc.index + 1)).all() and (acc.n_real == T).all()


def test_gram_statistics_give_the_same_fits_as_rows(problem):
    a = _run(problem, "accumulate", gram=True).metrics
    b = _run(problem, "accumulate", gram=False).metrics
    assert np.allclose(a.value, b.value, rtol=1e-10, atol=1e-14)
    rows, _ = problem
    with pytest.raises(TypeError, match="cannot be subsampled"):
        _run(problem, "accumulate_subsample", gram=True)
    assert R.ols(rows).shape == (S, D)


def test_same_seed_same_numbers(problem):
    a = _run(problem, "replace").metrics
    b = _run(problem, "replace").metrics
    assert a.equals(b)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="design"):
        R.RegressionExperiment(np.zeros((3, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="sigma"):
        R.RegressionExperiment(np.zeros((1, 4, 2)), np.zeros(2), sigma=0)
    with pytest.raises(ValueError, match="w_star"):
        R.real_problem([0], 10, 3, w_star=np.zeros(2))
