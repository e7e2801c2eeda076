"""Zipf memorisation (chapter 05, section 4): simulated test errors against the exact expectation, the
plateau of tail-cut data against its formula, the clean power law."""
from __future__ import annotations

import numpy as np
import pytest

from collapse_utils.models import tails as TL

N, BETA, S = 20_000, 2.0, 150
P = TL.zipf(N, BETA)
SIZES = TL.data_sizes(20_000, 12)
Z = 4.0


def _mean_se(e):
    return e.mean(0), e.std(0, ddof=1) / np.sqrt(e.shape[0])


def _agree(mean, se, expected, n):
    """Within Z SE; where all seeds agree (SE 0), within what S identical draws allow (the chapter's rule)."""
    room = np.where(expected < mean, mean, 1.0 - mean)
    tol = np.where(se > 1e-12, Z * se, np.log(1e4) / n * room) + 1e-9
    return np.abs(mean - expected) <= tol


@pytest.mark.parametrize("name,q", [("clean", P), ("cut", TL.truncate(P, 10)),
                                    ("mixed", TL.mix(P, TL.truncate(P, 10), 0.1))])
def test_simulation_matches_the_exact_expectation(name, q):
    e = TL.simulate_error(q, P, SIZES, range(S))
    mean, se = _mean_se(e)
    ok = _agree(mean, se, TL.expected_error(q, P, SIZES), S)
    assert ok.all(), (name, mean, TL.expected_error(q, P, SIZES))


def test_the_expectation_tells_clean_from_cut():
    e = TL.simulate_error(TL.truncate(P, 10), P, SIZES, range(S))
    mean, se = _mean_se(e)
    assert not _agree(mean, se, TL.expected_error(P, P, SIZES), S)[-4:].any()


@pytest.mark.parametrize("k", [5, 10, 30])
def test_the_plateau_of_tail_cut_data(k):
    """Data cut at rank k: at large T every item up to k is seen, the error is sum_{i>k} p_i, close to
    k^-(beta-1)/((beta-1) zeta(beta)) for large k and N."""
    floor = TL.plateau(P, k)
    q = TL.truncate(P, k)
    e = TL.simulate_error(q, P, [200_000], range(40))
    assert np.allclose(e, floor, rtol=0, atol=1e-12)  # every seed saw all k items
    assert TL.expected_error(q, P, [10**7])[0] == pytest.approx(floor, rel=1e-9)
    assert floor == pytest.approx(float(TL.plateau_asymptotic(k, BETA)), rel=0.6 / k + 1e-3)
    # the plateau is not the clean error: clean data keep falling below it
    assert TL.expected_error(P, P, [10**7])[0] < floor / 3


def test_clean_power_law():
    big = np.array([1e4, 1e5, 1e6])
    exact = TL.expected_error(TL.zipf(10**6, BETA), TL.zipf(10**6, BETA), big)
    assert np.allclose(exact, TL.power_law(big, BETA), rtol=0.05)
    slope = np.polyfit(np.log(big), np.log(exact), 1)[0]
    assert slope == pytest.approx(-(1 - 1 / BETA), abs=0.02)


def test_mixing_clean_data_resumes_the_decay():
    floor = TL.plateau(P, 10)
    mixed = TL.expected_error(TL.mix(P, TL.truncate(P, 10), 0.1), P, [1e3, 1e4, 1e5, 1e6])
    assert mixed[-1] < floor / 5 and np.all(np.diff(mixed) < 0)


def test_same_seed_same_numbers_whatever_the_batch():
    a = TL.simulate_error(P, P, SIZES, [3, 4, 5])
    b = TL.simulate_error(P, P, SIZES, [5])
    assert np.array_equal(a[2], b[0])


def test_bad_input():
    with pytest.raises(ValueError, match="beta"):
        TL.zipf(10, 1.0)
    with pytest.raises(ValueError, match="rank"):
        TL.truncate(P, 0)
    with pytest.raises(ValueError, match="share"):
        TL.mix(P, P, 1.5)
    with pytest.raises(ValueError, match="items"):
        TL.simulate_error(P[:10], P, SIZES, [0])
