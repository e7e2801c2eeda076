"""Verification and selection (chapter 05, section 3): the simulated verifier pipeline against its exact
expected error; likelihood selection of a Gaussian against its exact variance recursion."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from collapse_utils.models import verification as VF
from collapse_utils.core.engine import run_recursion
from collapse_utils.models.gaussian import real_data

Z = 4.0


def test_kept_accuracy():
    assert VF.kept_accuracy(0.5, 0.3) == pytest.approx(0.7)  # a coin-flip verifier changes nothing
    assert VF.kept_accuracy(1.0, 0.9) == pytest.approx(1.0)
    assert VF.kept_accuracy(0.3, 0.3) == pytest.approx(0.5)  # the transition: phi = p
    assert VF.keep_rate(0.5, 0.2) == pytest.approx(0.5)


def test_expected_error_limits():
    m, d = 1.0, 5
    bayes = VF.bayes_error(m)
    e = VF.expected_verified_error([0.0, 1.0], 0.3, 100_000, d, m)
    assert e[1] == pytest.approx(bayes, abs=1e-4) and e[0] == pytest.approx(1 - bayes, abs=1e-4)
    assert VF.expected_verified_error([0.3], 0.3, 1000, d, m)[0] == pytest.approx(0.5, abs=1e-6)
    # d = 1: the direction is just a sign, so the error is Phi(-m) or Phi(m)
    e1 = VF.expected_verified_error([1.0], 0.0, 50, 1, m)[0]
    assert e1 == pytest.approx(bayes, abs=1e-9)


@pytest.fixture(scope="module")
def simulated():
    phis = np.array([0.0, 0.2, 0.35, 0.4, 0.45, 0.5, 0.7, 1.0])
    return phis, VF.verified_errors(phis, 0.4, [50, 400], 6, 1.0, range(300))


def test_pipeline_matches_the_exact_expectation(simulated):
    phis, err = simulated
    for k, n in enumerate([50, 400]):
        mean, se = err[:, :, k].mean(0), err[:, :, k].std(0, ddof=1) / np.sqrt(err.shape[0])
        th = VF.expected_verified_error(phis, 0.4, n, 6, 1.0)
        assert np.all(np.abs(mean - th) <= Z * se + 1e-9), (n, (mean - th) / se)


def test_the_theory_has_power(simulated):
    """A theory with the transition in the wrong place (at 1 - p) is refused by the same test."""
    phis, err = simulated
    mean, se = err[:, :, 1].mean(0), err[:, :, 1].std(0, ddof=1) / np.sqrt(err.shape[0])
    wrong = VF.expected_verified_error(phis, 0.6, 400, 6, 1.0)
    assert not np.all(np.abs(mean - wrong) <= Z * se + 1e-9)


def test_verified_errors_are_reproducible():
    a = VF.verified_errors([0.2, 0.8], 0.3, [20], 3, 1.0, [7, 8])
    b = VF.verified_errors([0.2, 0.8], 0.3, [20], 3, 1.0, [8])
    assert np.array_equal(a[1], b[0])


def test_kappa_is_the_truncated_normal_variance():
    for keep in (0.5, 0.8, 0.95):
        z = VF.truncation_point(keep)
        assert VF.kappa(keep) == pytest.approx(stats.truncnorm(-z, z).var(), rel=1e-10)
    assert VF.kappa(1.0) == 1.0
    with pytest.raises(ValueError, match="keep"):
        VF.truncation_point(0.0)


@pytest.mark.parametrize("keep", [1.0, 0.8])
def test_selection_under_replace_matches_the_exact_mean(keep):
    S, M, G = 2000, 30, 4
    x = real_data(S, M, 0)
    res = run_recursion(VF.SelectedGaussianExperiment(keep), x, G, progress=False)
    s2 = res.metrics[res.metrics.metric == "sigma2"].pivot_table(index="generation", columns="seed",
                                                                 values="value").to_numpy()
    mean, se = s2.mean(1), s2.std(1, ddof=1) / np.sqrt(S)
    assert np.all(np.abs(mean - VF.selected_variance(G, M, keep)) <= Z * se), (mean, VF.selected_variance(G, M, keep))


def test_selection_keeps_only_likely_samples():
    ex = VF.SelectedGaussianExperiment(0.5)
    from collapse_utils.core.engine import GenerationContext

    model = (np.array([1.0, -2.0]), np.array([4.0, 0.25]))
    x = ex.sample(model, 500, GenerationContext(seed=0, generation=1))
    z = VF.truncation_point(0.5)
    assert x.shape == (2, 500)
    assert np.all(np.abs(x - model[0][:, None]) <= z * np.sqrt(model[1])[:, None] + 1e-12)


def test_selection_collapses_even_when_data_accumulate():
    S, M, G = 200, 50, 30
    x = real_data(S, M, 0)
    out = {}
    for keep in (1.0, 0.8):
        res = run_recursion(VF.SelectedGaussianExperiment(keep), x, G, regime="accumulate", progress=False)
        m = res.metrics
        out[keep] = np.median(m[(m.metric == "sigma2") & (m.generation == G)].value)
    assert out[1.0] > 0.8 and out[0.8] < 0.5 * out[1.0]
