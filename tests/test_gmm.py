"""Chapter 02: batched EM against sklearn, the closed-form L2 distance, sampling, the experiment."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from collapse_utils.models import gmm
from collapse_utils.chapters import gaussian_mixtures as ch
from collapse_utils.tooling.config import ParamError, load_preset
from collapse_utils.core.engine import run_recursion

SK = {"tol": 1e-5, "max_iter": 2000, "reg_covar": 1e-6}


def _datasets(S=6, N=600, d=2, seed=0):
    """Blobs, two separated clusters and an anisotropic pair: the shapes the chapter meets."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((S, N, d))
    X[1::3, : N // 2, 0] += 3.0  # two separated clusters
    X[2::3] = X[2::3] @ np.diag(np.linspace(0.3, 1.5, d)) + 0.7  # anisotropic, shifted blob
    return X


def _match(a, b):
    """The permutation of b's components that best matches a's means."""
    K = a.means.shape[1]
    best = min(itertools.permutations(range(K)), key=lambda p: np.abs(a.means[0] - b.means[0, list(p)]).sum())
    return list(best)


def _sk_from_init(x, init: gmm.GMM, cov_type, K):
    """sklearn GaussianMixture started from exactly our initial parameters."""
    c = init.covariances[0]
    prec = {"full": np.linalg.inv(c), "tied": np.linalg.inv(c[0]), "diag": 1.0 / np.diagonal(c, axis1=1, axis2=2),
            "spherical": 1.0 / c[:, 0, 0]}[cov_type]
    return GaussianMixture(K, covariance_type=cov_type, weights_init=init.weights[0], means_init=init.means[0],
                           precisions_init=prec, **SK).fit(x)


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("K", [1, 2, 3])
def test_em_matches_sklearn_from_the_same_initial_labels(cov_type, K):
    X = _datasets()
    labels = gmm.kmeans_labels(X, K, np.random.default_rng(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = gmm.fit_gmm(X, K, cov_type, init_labels=labels, **SK)
    for s in range(X.shape[0]):
        init = gmm.params_from_labels(X[s], labels[s], K, cov_type, SK["reg_covar"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = _sk_from_init(X[s], init, cov_type, K)
        refb = gmm.GMM.from_sklearn([ref])
        assert ours.n_iter[s] == ref.n_iter_
        assert ours.converged[s] == ref.converged_
        np.testing.assert_allclose(ours.weights[s], refb.weights[0], atol=1e-9)
        np.testing.assert_allclose(ours.means[s], refb.means[0], atol=1e-9)
        np.testing.assert_allclose(ours.covariances[s], refb.covariances[0], atol=1e-9)
        assert abs(ours.lower_bound[s] - ref.lower_bound_) < 1e-10
        assert abs(ours[s].score(X[s])[0] - ref.score(X[s])) < 1e-10


def test_em_generic_dimension_matches_sklearn():
    X = _datasets(S=3, N=500, d=3, seed=4)
    labels = gmm.kmeans_labels(X, 2, np.random.default_rng(2))
    ours = gmm.fit_gmm(X, 2, "full", init_labels=labels, **SK)
    for s in range(3):
        ref = _sk_from_init(X[s], gmm.params_from_labels(X[s], labels[s], 2), "full", 2)
        np.testing.assert_allclose(ours.means[s], ref.means_, atol=1e-9)
        np.testing.assert_allclose(ours.covariances[s], ref.covariances_, atol=1e-9)
        assert ours.n_iter[s] == ref.n_iter_


def test_full_fit_with_kmeans_init_finds_sklearns_solution_up_to_permutation():
    """Well-separated clusters: both reach the same optimum whatever the random k-means draws."""
    rng = np.random.default_rng(7)
    S = 8
    X = rng.standard_normal((S, 1000, 2)) * 0.5
    X[:, :400] += [3.0, 1.0]
    ours = gmm.fit_gmm(X, 2, rng=np.random.default_rng(0), **SK)
    for s in range(S):
        ref = gmm.GMM.from_sklearn([GaussianMixture(2, covariance_type="full", random_state=s, **SK).fit(X[s])])
        p = _match(ours[s], ref)
        np.testing.assert_allclose(ours.weights[s], ref.weights[0, p], atol=1e-6)
        np.testing.assert_allclose(ours.means[s], ref.means[0, p], atol=1e-6)
        np.testing.assert_allclose(ours.covariances[s], ref.covariances[0, p], atol=1e-6)
        assert abs(ours[s].score(X[s])[0] - ref.score(X[s])[0]) < 1e-8


def test_kmeans_agrees_with_sklearn():
    rng = np.random.default_rng(3)
    S = 12
    sep = rng.standard_normal((S, 800, 2)) * 0.6
    sep[:, ::2] += [4.0, 0.0]
    lab = gmm.kmeans_labels(sep, 2, np.random.default_rng(5))
    for s in range(S):  # separated clusters: the same partition
        assert adjusted_rand_score(lab[s], KMeans(2, n_init=1, random_state=s).fit(sep[s]).labels_) == 1.0
    blob = rng.standard_normal((S, 800, 2))
    lab, C = gmm.kmeans_labels(blob, 2, np.random.default_rng(5), return_centers=True)
    ours, theirs = [], []
    for s in range(S):
        # a Lloyd fixed point: labels are nearest-centre, centres are (nearly) the label means
        d = ((blob[s][:, None, :] - C[s][None]) ** 2).sum(-1)
        assert (lab[s] == d.argmin(1)).all()
        means = np.stack([blob[s][lab[s] == k].mean(0) for k in range(2)])
        assert np.abs(means - C[s]).max() < 0.05
        ours.append(d.min(1).sum())
        theirs.append(KMeans(2, n_init=1, random_state=s).fit(blob[s]).inertia_)
    assert abs(np.median(ours) / np.median(theirs) - 1) < 0.01


def test_batch_rows_are_independent_of_each_other():
    """Converged seeds stop updating and every step acts on each seed alone: a seed fitted alone,
    or inside a batch in another order, gives exactly the same numbers."""
    X = _datasets(S=24, N=700, seed=9)
    labels = gmm.kmeans_labels(X, 2, np.random.default_rng(0))
    batch = gmm.fit_gmm(X, 2, init_labels=labels, **SK)
    assert len(set(batch.n_iter.tolist())) > 5  # the seeds do converge at different iterations
    perm = np.random.default_rng(1).permutation(24)
    shuffled = gmm.fit_gmm(X[perm], 2, init_labels=labels[perm], **SK)
    for a in ("weights", "means", "covariances", "n_iter", "lower_bound"):
        np.testing.assert_array_equal(getattr(shuffled, a), getattr(batch, a)[perm])
    for s in (0, 7, 23):
        alone = gmm.fit_gmm(X[s:s + 1], 2, init_labels=labels[s:s + 1], **SK)
        assert alone.n_iter[0] == batch.n_iter[s]
        np.testing.assert_array_equal(alone.covariances[0], batch.covariances[s])
        np.testing.assert_array_equal(alone.lower_bound[0], batch.lower_bound[s])


def test_fast_path_pieces_agree():
    """The K=2/d=2 loop's two implementations of the M-step algebra (numpy for many rows, Python
    floats for the last few) give identical numbers, equal to the generic formulas; so do its
    two implementations of Lloyd's iterations."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((7, 300, 2))
    X[::2, :100] += [2.0, -1.0]
    R = rng.random((7, 300))
    PhiT = gmm._design_T(X)
    M = PhiT.sum(-1)
    T1 = (PhiT @ R[..., None])[..., 0]  # component-1 sums (S, 6)
    du_np, base_np = gmm._k2_coef(T1, M, 1e-6)
    du_py, base_py = gmm._k2_coef_py(T1, M, 1e-6)
    coef, bad = gmm._coef_d2(gmm._mstep_d2(np.stack([M - T1, T1], 1), "full", 1e-6))
    assert not bad.any()
    # the same operations in the same order: identical numbers, so a seed's fit cannot depend on
    # how many other seeds are still iterating
    np.testing.assert_array_equal(du_np, du_py)
    np.testing.assert_array_equal(base_np, base_py)
    np.testing.assert_allclose(du_np, coef[:, 0] - coef[:, 1], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(base_np, (M * coef[:, 1]).sum(-1), rtol=1e-13)
    # the features of the fast path are the generic quadratic features
    iu, ju = np.triu_indices(2)
    ref = np.concatenate([np.ones((7, 1, 300)), X.transpose(0, 2, 1),
                          (X[..., iu] * X[..., ju]).transpose(0, 2, 1)], 1)
    np.testing.assert_array_equal(PhiT, ref)
    # Lloyd: a batch (numpy, then Python floats for the last seeds) and each seed alone agree
    XT, xsq = PhiT[:, 1:3], PhiT[:, 3] + PhiT[:, 5]
    C0 = gmm._kmeans_pp(XT, xsq, 2, np.random.default_rng(3))
    batch = gmm._lloyd2(XT, xsq, C0.copy(), 300, 1e-4)
    for s in range(7):
        alone = gmm._lloyd2(XT[s:s + 1], xsq[s:s + 1], C0[s:s + 1].copy(), 300, 1e-4)
        np.testing.assert_array_equal(alone[0], batch[s])


def test_fast_path_extremes_match_sklearn():
    """More than 1000 samples (log-likelihood summed in logs) and a component so narrow that
    exp(l0 - l1) overflows for distant points (redone by the max-trick) still match sklearn."""
    rng = np.random.default_rng(11)
    X = np.empty((2, 1500, 2))
    X[0] = rng.standard_normal((1500, 2))
    X[0, :700] += 3.0
    X[1] = rng.standard_normal((1500, 2)) * 1e-3  # a tight cluster ...
    X[1, :40] = rng.standard_normal((40, 2)) * 30 + 60  # ... and far, broad outliers
    labels = (np.arange(1500) < 700).astype(int)[None].repeat(2, 0)
    labels[1] = (np.arange(1500) < 40)
    ours = gmm.fit_gmm(X, 2, "full", init_labels=labels, **SK)
    for s in range(2):
        init = gmm.params_from_labels(X[s], labels[s], 2, "full", SK["reg_covar"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = _sk_from_init(X[s], init, "full", 2)
        assert ours.n_iter[s] == ref.n_iter_
        np.testing.assert_allclose(ours.means[s], ref.means_, atol=1e-9)
        np.testing.assert_allclose(ours.covariances[s], ref.covariances_, atol=1e-9)
        # (the tight component's second moments are totals minus the other component's, ~1e5
        # each: a relative error ~1e-8 in its covariance, ~1e-10 in the mean log-likelihood)
        assert abs(ours.lower_bound[s] - ref.lower_bound_) < (1e-10 if s == 0 else 1e-9)
    # the second data set does reach the overflow: some l0 - l1 beyond log(max float)
    du, _ = gmm._k2_coef((gmm._design_T(X[1:]) @ labels[1:, :, None].astype(float))[..., 0],
                         gmm._design_T(X[1:]).sum(-1), SK["reg_covar"])
    assert np.abs(du[:, None, :] @ gmm._design_T(X[1:])).max() > 710


def test_degenerate_data_gives_a_clear_error():
    X = np.zeros((2, 100, 2))
    X[1] = np.random.default_rng(0).standard_normal((100, 2))
    with pytest.raises(ValueError, match="ill-defined covariance"):
        gmm.fit_gmm(X, 2, reg_covar=0.0, init_labels=np.tile(np.arange(100) % 2, (2, 1)))
    with pytest.raises(ValueError, match="covariance_type"):
        gmm.fit_gmm(X, 2, "banana", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_components"):
        gmm.fit_gmm(X, 0, rng=np.random.default_rng(0))


def _random_gmm(rng, S, K):
    A = rng.standard_normal((S, K, 2, 2)) * 0.6
    cov = A @ np.swapaxes(A, -1, -2) + 0.15 * np.eye(2)
    w = rng.dirichlet(np.ones(K), size=S)
    return gmm.GMM(w, rng.standard_normal((S, K, 2)) * 1.2, cov)


def test_l2_closed_form_matches_numerical_integration():
    rng = np.random.default_rng(11)
    f, g = _random_gmm(rng, 4, 2), _random_gmm(rng, 4, 3)
    closed = gmm.l2_distance_sq(f, g)
    grid = gmm.l2_distance_grid(f, g, lim=9.0, n=901)
    np.testing.assert_allclose(closed, grid, rtol=1e-6)
    np.testing.assert_allclose(gmm.l2_distance_sq(f, f), 0.0, atol=1e-14)
    np.testing.assert_allclose(gmm.l2_distance_sq(g, f), closed, rtol=1e-12)
    # a single reference mixture broadcasts over a batch
    one = f[0]
    np.testing.assert_allclose(gmm.l2_distance_sq(one, g), gmm.l2_distance_grid(one, g, lim=9.0, n=901), rtol=1e-6)
    # two unit Gaussians a distance m apart: 2 (1 - exp(-m^2/4)) / (4 pi)
    a = gmm.GMM(np.ones(1), np.zeros((1, 2)), np.eye(2)[None])
    b = gmm.GMM(np.ones(1), np.array([[1.5, 0.0]]), np.eye(2)[None])
    assert gmm.l2_distance_sq(a, b)[0] == pytest.approx(2 * (1 - np.exp(-1.5**2 / 4)) / (4 * np.pi), rel=1e-12)


def test_sampling_is_reproducible_and_has_the_right_moments():
    g = _random_gmm(np.random.default_rng(2), 3, 2)
    x1, l1 = g.sample(50_000, np.random.default_rng(5))
    x2, l2 = g.sample(50_000, np.random.default_rng(5))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(l1, l2)
    assert not np.array_equal(x1, g.sample(50_000, np.random.default_rng(6))[0])
    for s in range(3):
        for k in range(2):
            sel = l1[s] == k
            assert abs(sel.mean() - g.weights[s, k]) < 0.01
            np.testing.assert_allclose(x1[s, sel].mean(0), g.means[s, k], atol=0.05)
            np.testing.assert_allclose(np.cov(x1[s, sel].T), g.covariances[s, k], atol=0.08)


def test_tail_thresholds_and_truth():
    # a mixture of two identical unit Gaussians is one Gaussian: Monte Carlo vs exact chi-square
    same = gmm.GMM(np.full(2, 0.5), np.zeros((2, 2)), np.stack([np.eye(2)] * 2))
    mc = gmm.tail_thresholds(same, n_mc=400_000)
    exact = gmm.tail_thresholds(gmm.truth("blob"))
    for q in (0.95, 0.99):
        assert mc[q] == pytest.approx(exact[q], abs=0.03)
        assert exact[q] == pytest.approx(-np.log(2 * np.pi) + np.log(1 - q), abs=1e-12)
    two = gmm.truth("two_gaussians", 3.0, 0.5)
    thr = gmm.tail_thresholds(two, n_mc=400_000)
    y, _ = two.sample(200_000, np.random.default_rng(1))
    lp = two.log_prob(y)[0]
    assert (lp < thr[0.95]).mean() == pytest.approx(0.05, abs=0.003)
    assert (lp < thr[0.99]).mean() == pytest.approx(0.01, abs=0.0015)


def _experiment(setting="two_gaussians", K=2, eval_samples=500):
    return gmm.GMMExperiment(gmm.truth(setting), K, eval_samples=eval_samples, name=f"t_{setting}_{K}")


@pytest.mark.parametrize("regime,n_real,n_syn", [
    ("replace", lambda g: 0, lambda g: 300),
    ("keep_real(0.1)", lambda g: 30, lambda g: 270),
    ("accumulate", lambda g: 300, lambda g: 300 * g),
])
def test_regime_bookkeeping_and_same_seeds(regime, n_real, n_syn):
    seeds = [3, 4, 5]
    real = gmm.real_data(gmm.truth("two_gaussians"), seeds, 300)
    res = run_recursion(_experiment(), real, 4, regime=regime, seed=0, seeds=seeds, progress=False)
    b = res.bookkeeping
    for _, row in b.iterrows():
        g = int(row.generation)
        assert row.n_real == (300 if g == 0 else n_real(g))
        assert row.n_synthetic == (0 if g == 0 else n_syn(g))
        assert row.n_train == row.n_real + row.n_synthetic
    assert sorted(res.metrics.seed.unique()) == seeds
    # every regime starts from the same real data and the same generation-0 fit
    base = run_recursion(_experiment(), real, 1, regime="replace", seed=0, seeds=seeds, progress=False).wide()
    here = res.wide()
    for col in ("spread_min", "spread_max", "weight_min", "l2_truth"):
        np.testing.assert_array_equal(here[here.generation == 0][col].to_numpy(),
                                      base[base.generation == 0][col].to_numpy())


def test_recursion_is_deterministic_and_resumes(tmp_path):
    seeds = [0, 1, 2, 3]
    real = gmm.real_data(gmm.truth("blob"), seeds, 400)
    run = lambda G, **kw: run_recursion(_experiment("blob"), real, G, seed=7, seeds=seeds,
                                        progress=False, **kw).metrics
    a, b = run(6), run(6)
    np.testing.assert_array_equal(a.value.to_numpy(), b.value.to_numpy())
    other = run_recursion(_experiment("blob"), real, 6, seed=8, seeds=seeds, progress=False).metrics
    assert not np.array_equal(a.value.to_numpy(), other.value.to_numpy())
    # a run interrupted at generation 4 resumes from its checkpoint and ends exactly the same
    class Crash(gmm.GMMExperiment):
        def fit(self, data, ctx):
            if ctx.generation == 4:
                raise KeyboardInterrupt
            return super().fit(data, ctx)

    with pytest.raises(KeyboardInterrupt):
        run_recursion(Crash(gmm.truth("blob"), 2, eval_samples=500, name="t_blob_2"), real, 6, seed=7,
                      seeds=seeds, progress=False, checkpoint_dir=tmp_path)
    resumed = run_recursion(_experiment("blob"), real, 6, seed=7, seeds=seeds, progress=False,
                            checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 4
    np.testing.assert_array_equal(resumed.metrics.value.to_numpy(), a.value.to_numpy())
    # real data of a seed do not depend on which other seeds are in the batch
    np.testing.assert_array_equal(gmm.real_data(gmm.truth("blob"), [2], 400)[0], real[2])


def test_experiment_metrics_make_sense():
    seeds = list(range(6))
    real = gmm.real_data(gmm.truth("two_gaussians"), seeds, 1000)
    res = run_recursion(_experiment(eval_samples=4000), real, 3, seeds=seeds, progress=False).wide()
    g0 = res[res.generation == 0]
    assert (g0.l2_gen0 == 0).all()
    assert (g0.l2_truth < 5e-3).all()  # the first fit is close to the truth
    assert np.allclose(g0.spread_min, 0.5, atol=0.05) and np.allclose(g0.spread_max, 0.5, atol=0.05)
    assert (g0.converged == 1).all()
    assert abs(g0.tail95.mean() - 0.05) < 0.01 and abs(g0.tail99.mean() - 0.01) < 0.005
    # one Gaussian cannot represent two: a large error at the very first fit (functional expressivity)
    one = run_recursion(_experiment(K=1), real, 1, seeds=seeds, progress=False).wide()
    assert (one[one.generation == 0].l2_truth > 10 * g0.l2_truth.max()).all()


def _params(**over):
    p = load_preset("cpu", "02")
    p.update(preset="cpu", run_name="")
    p.update(over)
    return p


def test_params_check_accepts_the_presets():
    for preset in ("smoke", "cpu", "paper"):
        p = load_preset(preset, "02")
        p.update(preset=preset, run_name="")
        ch.Params.check(p)


@pytest.mark.parametrize("over,needle", [
    ({"n_components": 0}, "n_components"),
    ({"n_samples": 5}, "free parameters"),
    ({"covariance_type": "banana"}, "covariance_type"),
    ({"panel_generations": [0, 5000]}, "panel_generations"),
    ({"regime_seeds": 64}, "regime_seeds"),
    ({"regimes": ["replace", "keep_real(2)"]}, "keep_real"),
    ({"tol": 0.0}, "tol"),
    ({"regime_generations": 100_000}, "accumulate"),
])
def test_params_check_rejects_bad_values(over, needle):
    with pytest.raises(ParamError, match=needle):
        ch.Params.check(_params(**over))


def test_params_check_reports_every_problem_at_once():
    with pytest.raises(ParamError) as e:
        ch.Params.check(_params(n_components=0, covariance_type="banana", seeds=1))
    msg = str(e.value)
    assert "n_components" in msg and "covariance_type" in msg and "seeds" in msg


def test_notebook_parameters_match_the_cpu_preset():
    from collapse_utils.tooling.config import get_chapter
    from collapse_utils.tooling.runner import _read_md, notebook_defaults

    nb = notebook_defaults(_read_md(get_chapter("02")))
    assert nb.pop("preset") == "cpu" and nb.pop("run_name") == ""
    # every parameter of the declaration, each None ("take the preset's value")
    assert list(nb) == list(ch.Params.specs()) and set(nb.values()) == {None}
    for preset in ("smoke", "cpu", "paper"):
        assert set(load_preset(preset, "02")) == set(nb)


def test_smoke_notebook_runs(smoke_chapter, results_tmp):
    import json

    import nbformat
    import pandas as pd

    nb = nbformat.read(smoke_chapter("02"), as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert "produced with the `smoke` preset" in json.dumps(nb)
    for c in nb.cells:  # exactly one image per figure cell
        if c.cell_type == "code" and c.metadata.get("mystnb", {}).get("figure"):
            assert sum("image/png" in o.get("data", {}) for o in c.get("outputs", [])) == 1
    run = results_tmp / "02_gaussian_mixtures" / "smoke"
    m = pd.read_csv(run / "metrics.csv")
    assert {"experiment", "regime", "seed", "generation", "metric", "value", "data", "study"} <= set(m.columns)
    assert set(m.regime) == {"replace", "keep_real(0.1)", "accumulate"}
    assert set(m.data) == {"blob", "two_gaussians"}
    assert json.loads((run / "params.json").read_text())["preset"] == "smoke"


@pytest.mark.parametrize("K,cov", [(2, "full"), (1, "full"), (3, "full"), (2, "tied"), (2, "diag"), (2, "spherical")])
def test_fit_gmm_is_the_em_the_page_shows(K, cov):
    """``fit_gmm`` (all seeds at once, the fast path the chapter runs) equals ``em`` (the readable E-step,
    M-step and loop the page shows) seed by seed from the same initial labels: the same parameters and the
    same number of iterations, on real data and on a later generation's samples (collapsed fits)."""
    from collapse_utils.core.seeding import make_rng

    for setting in gmm.DATA_SETTINGS:
        X = gmm.real_data(gmm.truth(setting), range(4), 500)
        later = gmm.fit_gmm(X, 2, rng=make_rng(1, 0, "fit")).sample(300, make_rng(1, 1, "sample"))[0]
        for data in (X, later):
            labels = gmm.kmeans_labels(data, K, make_rng(0, 0, "fit"))
            fast = gmm.fit_gmm(data, K, cov, init_labels=labels)
            for s in range(len(data)):
                ref = gmm.em(data[s], labels[s], K, cov)
                assert ref.n_iter[0] == fast.n_iter[s] and ref.converged[0] == fast.converged[s]
                for a, b in ((ref.weights, fast.weights[s]), (ref.means, fast.means[s]),
                             (ref.covariances, fast.covariances[s])):
                    np.testing.assert_allclose(a[0], b, rtol=0, atol=1e-9)
                np.testing.assert_allclose(ref.lower_bound, fast.lower_bound[s], rtol=1e-12)


def test_the_readable_em_is_sklearns():
    """The shown ``em`` against sklearn's GaussianMixture from the same initial parameters (a test that the
    readable definition is the paper's algorithm, independent of the fast path)."""
    from collapse_utils.core.seeding import make_rng

    X = gmm.real_data(gmm.truth("two_gaussians"), [0], 400)[0]
    labels = gmm.kmeans_labels(X[None], 2, make_rng(0, 0, "fit"))[0]
    ref = gmm.em(X, labels, 2)
    init = gmm.params_from_labels(X, labels, 2)
    sk = GaussianMixture(2, tol=1e-5, max_iter=2000, reg_covar=1e-6, weights_init=init.weights[0],
                         means_init=init.means[0], precisions_init=np.linalg.inv(init.covariances[0])).fit(X)
    assert ref.n_iter[0] == sk.n_iter_
    np.testing.assert_allclose(ref.means[0], sk.means_, atol=1e-9)
    np.testing.assert_allclose(ref.covariances[0], sk.covariances_, atol=1e-9)
