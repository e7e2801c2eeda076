"""The mixture loop of chapter 05, section 2: k-NN precision and recall, sampling biases, fresh real data."""
from __future__ import annotations

import numpy as np
import pytest

from collapse_utils.models import gmm
from collapse_utils.models import mixing as MX
from collapse_utils.core.engine import GenerationContext, run_recursion

TRUTH = gmm.truth("two_gaussians", 3.0, 0.5)


def _truths(S):
    t = TRUTH
    return gmm.GMM(np.repeat(t.weights, S, 0), np.repeat(t.means, S, 0), np.repeat(t.covariances, S, 0))


def test_precision_recall_tell_quality_from_diversity():
    rng = np.random.default_rng(0)
    real = _truths(4).sample(400, rng)[0]
    same = _truths(4).sample(400, rng)[0]
    p, r = MX.knn_precision_recall(real, same, 5)
    assert np.all(p > 0.9) and np.all(r > 0.9)
    # a model that puts everything on one of the two modes: high precision, recall about one half
    one = real[:, :, :].copy()
    one[..., 0] = np.abs(one[..., 0])
    p, r = MX.knn_precision_recall(real, one, 5)
    assert np.all(p > 0.9) and np.all((r > 0.35) & (r < 0.65))
    # samples far away: no precision, no recall
    p, r = MX.knn_precision_recall(real, same + 50.0, 5)
    assert np.all(p == 0) and np.all(r == 0)


def test_knn_radii_by_brute_force():
    x = np.random.default_rng(1).normal(size=(2, 30, 2))
    d = np.sqrt(((x[:, :, None] - x[:, None]) ** 2).sum(-1))
    assert np.allclose(np.sqrt(MX.knn_radii(x, 3)), np.sort(d, -1)[..., 3], rtol=1e-5)


@pytest.mark.parametrize("spec,kind,value", [("none", "none", 1.0), ("temperature(0.8)", "temperature", 0.8),
                                             (" truncation( 0.5 ) ", "truncation", 0.5)])
def test_parse_bias(spec, kind, value):
    b = MX.parse_bias(spec)
    assert (b.kind, b.value) == (kind, value) and MX.parse_bias(str(b)) == b


@pytest.mark.parametrize("bad", ["temperature", "temperature(0)", "truncation(1.5)", "none(1)", "hot"])
def test_parse_bias_errors(bad):
    with pytest.raises(ValueError):
        MX.parse_bias(bad)


def test_biases_shrink_the_samples():
    model = _truths(2)
    rng = np.random.default_rng(3)
    plain = MX.parse_bias("none").sample(model, 20000, rng)
    cold = MX.parse_bias("temperature(0.5)").sample(model, 20000, rng)
    cut = MX.parse_bias("truncation(0.5)").sample(model, 20000, rng)
    assert cold[..., 1].std() == pytest.approx(0.5 * plain[..., 1].std(), rel=0.05)
    assert cut.shape == plain.shape and cut[..., 1].std() < 0.8 * plain[..., 1].std()
    lp_cut, lp_plain = model.log_prob(cut), model.log_prob(plain)
    assert np.all(np.median(lp_cut, 1) > np.median(lp_plain, 1))


def test_fresh_real_data_enter_the_training_set():
    ex = MX.MixtureLoop(TRUTH, fresh_share=0.25, eval_samples=0)
    x = ex.sample(_truths(3), 100, GenerationContext(seed=0, generation=1))
    assert x.shape == (3, 100, 2) and ex.n_fresh(100) == 25
    with pytest.raises(ValueError, match="fresh_share"):
        MX.MixtureLoop(TRUTH, fresh_share=1.0)


def test_real_data_hold_the_mixture_near_the_truth():
    seeds = list(range(6))
    real = gmm.real_data(TRUTH, seeds, 300)
    out = {}
    for regime in ("replace", "keep_real(0.5)"):
        res = run_recursion(MX.MixtureLoop(TRUTH, eval_samples=60), real, 30, regime=regime, seeds=seeds,
                            progress=False)
        m = res.metrics
        out[regime] = m[(m.metric == "l2_truth") & (m.generation == 30)].value.median()
        assert {"precision", "recall", "l2_truth", "spread_min"} <= set(m.metric)
    assert out["keep_real(0.5)"] < out["replace"]
