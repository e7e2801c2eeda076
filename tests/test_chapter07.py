"""Chapter 07: every formula against an independent computation (numerical minimisation, exact enumeration,
a direct simulation within Monte-Carlo error), every claim contradicted by doctored results, bad parameters
refused before compute, the default loop, and a smoke execution of the page."""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, optimize, stats

from collapse_utils.chapters import theory_since_2024 as ch
from collapse_utils.chapters.claims import CONTRADICTED, NOT_VISIBLE, REPRODUCED
from collapse_utils.models import recursive_theory as R
from collapse_utils.tooling import config


def _params(preset="smoke", **over):
    p = {**config.load_preset(preset, "07"), "preset": preset, "run_name": ""}
    p.update(over)
    return p


@pytest.fixture(scope="module")
def smoke():
    return ch.run(ch.Params.from_values(_params()), progress=False)


def verdicts(result):
    return {c.id: c.verdict for c in ch.claims(result, result.params)}


def _doctor(result, field, fn, **where):
    """A copy of ``result`` whose ``field`` table has ``fn`` applied to the values of the selected rows
    (``fn(values, rows)``, rows the selected part of the table)."""
    df = getattr(result, field).copy()
    sel = np.ones(len(df), bool)
    for k, v in where.items():
        sel &= (v(df[k]) if callable(v) else df[k] == v).to_numpy()
    assert sel.any(), where
    df.loc[sel, "value"] = np.asarray(fn(df.loc[sel, "value"].to_numpy(), df.loc[sel]), dtype=float)
    return dataclasses.replace(result, **{field: df})


# -- 1. optimal weighting ------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0.25, 0.5, 1.0, 2.0, 5.0])
def test_optimal_weight_is_the_numerical_minimiser(k):
    n, m = 20.0, 20.0 / k
    res = optimize.minimize_scalar(lambda w: R.weighted_mean_error(w, n, m), bounds=(1e-6, 1.0), method="bounded",
                                   options={"xatol": 1e-10})
    assert res.x == pytest.approx(R.optimal_weight(k), abs=1e-6)
    # the optimum is the real-only error times w*
    assert R.weighted_mean_error(R.optimal_weight(k), n, m) == pytest.approx(R.optimal_weight(k) / n, rel=1e-12)


def test_golden_ratio_at_equal_sizes():
    assert R.optimal_weight(1.0) == pytest.approx(2 / (1 + math.sqrt(5)), rel=1e-14)


def test_stationary_error_against_a_direct_simulation():
    """The recursion written out by hand (not the experiment), many seeds: the error after many rounds has the
    variance V(w) within Monte-Carlo error."""
    rng = np.random.default_rng(7)
    n, m, w, S = 10, 30, 0.4, 40_000
    theta = rng.standard_normal(S) / np.sqrt(n)
    for _ in range(60):
        x = rng.normal(0.0, 1.0, (S, n)).mean(axis=1)
        y = theta + rng.normal(0.0, 1.0, (S, m)).mean(axis=1)
        theta = w * x + (1 - w) * y
    v = R.weighted_mean_error(w, n, m)
    assert abs(np.mean(theta**2) - v) < 4 * v * np.sqrt(2 / S)


def test_the_experiment_reaches_the_same_stationary_error():
    from collapse_utils.core.engine import run_recursion

    S = 20_000
    ex = R.WeightedMeanExperiment(10, [30], [0.4], S)
    res = run_recursion(ex, ex.real(3), 60, seed=3, seeds=range(ex.rows), record=[60], progress=False)
    e = res.metrics[res.metrics.generation == 60].value.to_numpy()
    v = R.weighted_mean_error(0.4, 10, 30)
    assert abs(e.mean() - v) < 4 * v * np.sqrt(2 / S)


# -- 2. strong model collapse --------------------------------------------------------------------
def test_the_floor_is_the_minimiser_of_the_population_risk():
    rng = np.random.default_rng(0)
    d, p = 4, 0.3
    beta, delta = rng.standard_normal(d), rng.standard_normal(d)
    risk = lambda b: (1 - p) * np.sum((b - beta) ** 2) + p * np.sum((b - beta - delta) ** 2)  # noqa: E731
    b = optimize.minimize(risk, np.zeros(d), tol=1e-12).x
    assert np.sum((b - beta) ** 2) == pytest.approx(p**2 * np.sum(delta**2), rel=1e-5)
    assert R.strong_collapse_risk(1e12, d, p, np.sum(delta**2), 1.0) == pytest.approx(p**2 * np.sum(delta**2),
                                                                                      rel=1e-6)


def test_strong_collapse_formula_against_explicit_least_squares():
    """Explicit data, a nonzero truth and a shift in a random direction, fitted with lstsq (not the package's
    simulator): the mean excess risk is the formula within Monte-Carlo error."""
    rng = np.random.default_rng(11)
    d, n, p, S = 5, 150, 0.3, 3000
    beta = rng.standard_normal(d)
    delta = rng.standard_normal(d)
    delta *= 1.5 / np.linalg.norm(delta)
    err = np.empty(S)
    for s in range(S):
        X = rng.standard_normal((n, d))
        syn = rng.random(n) < p
        y = X @ beta + X @ delta * syn + rng.standard_normal(n)
        b = np.linalg.lstsq(X, y, rcond=None)[0]
        err[s] = np.sum((b - beta) ** 2)
    th = R.strong_collapse_risk(n, d, p, 1.5**2, 1.0)
    assert abs(err.mean() - th) < 4 * err.std() / np.sqrt(S)


def test_strong_collapse_simulator_agrees_with_the_formula_at_large_n():
    err = R.simulate_strong_collapse([400], [0.0, 0.25], 8, 2.0, 0.5, 2000, np.random.default_rng(2))
    th = R.strong_collapse_risk(400, 8, np.array([0.0, 0.25]), 2.0, 0.5)
    se = err[:, 0].std(axis=1) / np.sqrt(2000)
    assert (np.abs(err[:, 0].mean(axis=1) - th) < 4 * se).all()


# -- 3. forgetting ----------------------------------------------------------------------------------
def _survival_by_paths(m: int, lam: int, k: int) -> float:
    """P(c_k > 0 | c_0 = lam) by summing over every path of counts (tiny m, independent of the matrix code)."""
    def pmf(c, j):
        return math.comb(m, j) * (c / m) ** j * (1 - c / m) ** (m - j)

    total = 0.0
    for path in itertools.product(range(m + 1), repeat=k):
        prob, c = 1.0, lam
        for j in path:
            prob *= pmf(c, j)
            c = j
        total += prob * (c > 0)
    return total


@pytest.mark.parametrize("m,lam,k", [(3, 1, 3), (4, 2, 4), (5, 1, 3), (4, 3, 2)])
def test_exact_survival_against_path_enumeration(m, lam, k):
    assert R.binomial_chain_survival(m, [lam], k)[k, 0] == pytest.approx(_survival_by_paths(m, lam, k), abs=1e-12)


@pytest.mark.parametrize("m", [10, 60, 300])
def test_the_bound_holds_for_the_exact_chain(m):
    lams = [1, 2, 3, 5, min(10, m)]
    ex = R.binomial_chain_survival(m, lams, 200)
    k = np.arange(201)[:, None]
    assert (ex >= R.survival_bound(np.array(lams), k) - 1e-12).all()
    # the bound is tight at k = 1 as M grows: (1 - lam/M)^M -> e^-lam
    if m == 300:
        assert ex[1, 0] == pytest.approx(1 - np.exp(-1), abs=2e-3)


def test_forgetting_simulation_matches_the_exact_chain():
    c0, dead = R.simulate_forgetting(np.full(20, 1 / 20), 40, 30, 3000, np.random.default_rng(5))
    ex = R.binomial_chain_survival(40, [2], 30)
    sel = c0 == 2
    for k in (1, 5, 30):
        alive = ((dead[sel] < 0) | (dead[sel] > k)).mean()
        se = np.sqrt(ex[k, 0] * (1 - ex[k, 0]) / sel.sum())
        assert abs(alive - ex[k, 0]) < 5 * se  # symbols of one corpus are weakly dependent


# -- 4. temperature -------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.7, 1.0, 1.3])
def test_the_closed_form_law_is_the_iterated_map(tau):
    p = R.tempered_law(np.array([0.5, 0.3, 0.15, 0.05]), tau, 12)
    q = np.array([0.5, 0.3, 0.15, 0.05])
    for t in range(13):
        np.testing.assert_allclose(p[t], q, rtol=1e-10)
        q = q ** (1 / tau) / np.sum(q ** (1 / tau))


def test_entropy_against_scipy_and_limits():
    p = np.array([0.5, 0.25, 0.25, 0.0])
    assert R.entropy(p) == pytest.approx(stats.entropy(p))
    p0 = np.array([0.4, 0.3, 0.2, 0.1])
    assert R.entropy(R.tempered_law(p0, 0.5, 40)[-1]) < 1e-9
    assert R.entropy(R.tempered_law(p0, 2.0, 40)[-1]) == pytest.approx(np.log(4), abs=1e-9)


def test_many_samples_follow_the_law():
    p0 = np.array([0.4, 0.3, 0.2, 0.1])
    h = R.simulate_temperature(p0, 1.2, 1_000_000, 6, 20, np.random.default_rng(1))
    law = R.entropy(R.tempered_law(p0, 1.2, 6))
    assert np.abs(h.mean(axis=1) - law).max() < 1e-3


# -- 5. verifier -----------------------------------------------------------------------------------
def test_verifier_map_against_numerical_integration():
    c, a, theta = 0.3, 0.8, -0.2
    dens = lambda x: stats.norm.pdf(x, theta)  # noqa: E731
    num = integrate.quad(lambda x: x * dens(x), c - a, c + a)[0] / integrate.quad(dens, c - a, c + a)[0]
    assert R.verifier_map(theta, c, a) == pytest.approx(num, rel=1e-9)
    assert R.verifier_map(c, c, a) == pytest.approx(c, abs=1e-12)


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_verifier_slope_is_the_numerical_derivative(a):
    h = 1e-5
    num = (R.verifier_map(0.3 + h, 0.3, a) - R.verifier_map(0.3 - h, 0.3, a)) / (2 * h)
    assert R.verifier_slope(a) == pytest.approx(num, rel=1e-6)
    assert 0 < R.verifier_slope(a) < 1


def test_verifier_stationary_variance_against_a_long_simulation():
    S = 6000
    th = R.simulate_verifier(np.zeros(S), [0.0], [1.5], 400, 40, np.random.default_rng(9))[-1, 0]
    v = R.verifier_stationary_variance(1.5, 400)
    assert abs(th.var() - v) < 4 * v * np.sqrt(2 / S)
    assert abs(th.mean()) < 4 * np.sqrt(v / S)


# -- 6. pi^2/6 beyond least squares ----------------------------------------------------------------
def test_newton_fit_is_the_maximum_of_the_likelihood():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((3, 300, 3))
    y = (rng.random((3, 300)) < 1 / (1 + np.exp(-X @ np.array([1.0, -0.5, 0.5])))).astype(float)
    b = R.fit_logistic(X, y, np.zeros((3, 3)), 25)
    for s in range(3):
        nll = lambda w: np.sum(np.logaddexp(0, X[s] @ w) - y[s] * (X[s] @ w))  # noqa: E731, B023
        ref = optimize.minimize(nll, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
        np.testing.assert_allclose(b[s], ref, atol=1e-5)


def test_the_first_order_ratio_is_the_linear_recursion_and_stays_below_pi2_over_6():
    """(t + 1) e_t = sum_j (e_(j-1) + eta_j) simulated with Gaussian noises: E e_t^2 / E e_0^2 = sum 1/i^2."""
    rng = np.random.default_rng(8)
    S, G = 200_000, 8
    eta = rng.standard_normal((G + 1, S))
    e, prev, out = np.zeros(S), np.zeros(S), []
    total = np.zeros(S)
    for t in range(G + 1):
        total += prev + eta[t]
        e = total / (t + 1)
        out.append(np.mean(e**2))
        prev = e
    ratio = np.array(out) / out[0]
    np.testing.assert_allclose(ratio, R.accumulate_ratio(G), rtol=0.02)
    assert R.accumulate_ratio(10_000)[-1] < np.pi**2 / 6 < R.accumulate_ratio(10_000)[-1] + 1e-3


def test_logistic_accumulate_follows_the_first_order_ratio_at_large_n():
    e = R.simulate_logistic_accumulate([0.8, -0.4], 1500, 4, 600, np.random.default_rng(6))
    base = e[0].mean()
    ratio = e.mean(axis=1) / base
    se = (e - ratio[:, None] * e[0][None]).std(axis=1) / np.sqrt(600) / base
    assert (np.abs(ratio - R.accumulate_ratio(4))[1:] < 4 * se[1:]).all()


# -- parameters ------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", config.PRESETS)
def test_presets_are_valid(preset):
    ch.Params.check(_params(preset))


def test_presets_list_only_what_differs_from_the_declaration():
    import yaml

    raw = yaml.safe_load(open("collapse_utils/chapters/presets/07.yaml"))
    assert set(raw) == {"smoke", "paper"}
    defaults = ch.Params.defaults()
    for section in raw.values():
        assert all(defaults[k] != v for k, v in section.items())
    assert config.load_preset("cpu", "07") == defaults


def test_every_problem_is_listed_in_one_error():
    bad = _params(strong_sizes=[5, 100], strong_dim=10, verifier_widths=[1.0], temp_samples=[5000, 100],
                  strong_fractions=[0.2, 1.5], temps=[0.0], forget_counts=[5000], seeds=1, glm_n=5)
    with pytest.raises(config.ParamError) as e:
        ch.Params.check(bad)
    msg = str(e.value)
    for needle in ("strong_fractions", "temps", "seeds must lie", "glm_n must lie"):
        assert needle in msg, needle
    with pytest.raises(config.ParamError) as e:  # the cross checks, once every type is right
        ch.Params.check(_params(strong_sizes=[5, 100], verifier_widths=[1.0], temp_samples=[5000, 100],
                                forget_counts=[5000], glm_n=20))
    msg = str(e.value)
    for needle in ("strong_sizes must exceed strong_dim + 1", "verifier_centres and verifier_widths",
                   "temp_samples must be two", "forget_counts must be at most forget_m", "glm_n must be at least"):
        assert needle in msg, needle


def test_bad_input_is_refused_before_compute(monkeypatch, capsys):
    import papermill

    from collapse_utils.tooling import runner

    def no_compute(*a, **k):
        raise AssertionError("a kernel was started for a bad input")

    monkeypatch.setattr(papermill, "execute_notebook", no_compute)
    assert runner.main(["run", "07", "-p", "strong_sizes=[5]", "-p", "temps=[-1.0]"]) == 2
    err = capsys.readouterr().err
    assert "temps" in err


# -- the run and its claims ----------------------------------------------------------------------
def test_smoke_run_writes_tidy_metrics_and_tables(smoke):
    m = pd.concat(smoke.metrics, ignore_index=True)
    assert {"experiment", "regime", "seed", "generation", "metric", "value", "study"} <= set(m.columns)
    assert set(m.study) == {"weighting", "strong", "forgetting", "temperature", "verifier", "glm"}
    w = smoke.weighting
    assert w.seed.nunique() == smoke.params["seeds"] and set(w.m) == set(smoke.params["weight_synthetic"])
    assert set(smoke.tables) == {"weighting", "strong", "forgetting", "temperature", "verifier", "glm"}


def test_the_default_loop_is_what_run_uses(smoke):
    p = smoke.params
    again = ch.run(p, ch.default_loop(p), progress=False)
    for a, b in zip(again.metrics, smoke.metrics):
        pd.testing.assert_frame_equal(a, b)


def test_smoke_reproduces_every_claim(smoke):
    v = verdicts(smoke)
    assert len(v) == 11
    assert all(x == REPRODUCED for x in v.values()), v


def test_claims_carry_kind_collapse_and_figures(smoke):
    from collapse_utils.chapters.claims import COLLAPSE_DEFINITIONS

    page = open("notebooks/07_theory_since_2024.md").read()
    for c in ch.claims(smoke):
        assert c.kind == "theory check" and c.collapse in COLLAPSE_DEFINITIONS
        assert c.evidence.startswith("fig-07-") and f"name: {c.evidence}" in page
        assert f"c07_{c.id.replace('-', '_')}_verdict" in page
    for name in ch.page_numbers(smoke):
        assert name in page, f"{name} is glued but not used"


S_MAX = lambda col: (lambda s: s == s.max())  # noqa: E731


@pytest.mark.parametrize("claim,field,fn,where", [
    ("weighting-curve", "weighting", lambda v, r: 1.5 * v, {"generation": S_MAX("generation")}),
    ("golden-ratio", "weighting", lambda v, r: np.where(np.isclose(r.w, R.optimal_weight(r.k)), 1.5 * v, v),
     {"generation": S_MAX("generation")}),
    ("strong-formula", "strong", lambda v, r: 1.3 * v, {"n": lambda s: s >= 100}),
    ("strong-floor", "strong", lambda v, r: 0.2 * r.p**2 * np.ones_like(v), {"n": S_MAX("n"), "p": lambda s: s > 0}),
    ("forgetting-bound", "forgetting", lambda v, r: np.ones_like(v), {"count": 5}),
    ("forgetting-exact", "forgetting", lambda v, r: -np.ones_like(v), {"count": 2}),
    ("heat-death", "temperature", lambda v, r: np.full_like(v, 3.0), {"tau": 0.9}),
    ("noiseless-limit", "temperature", lambda v, r: v + 0.3, {"M": S_MAX("M")}),
    ("verifier-centre", "verifier", lambda v, r: v - r.centre, {"generation": S_MAX("generation")}),
    ("pi2-logistic", "glm", lambda v, r: v * (1 + r.generation), {"generation": lambda s: s >= 1}),
    ("verifier-error", "verifier", lambda v, r: r.centre + 2 * (v - r.centre), {"generation": S_MAX("generation")}),
])
def test_doctored_results_contradict_the_claim(smoke, claim, field, fn, where):
    assert verdicts(smoke)[claim] == REPRODUCED
    assert verdicts(_doctor(smoke, field, fn, **where))[claim] == CONTRADICTED


def test_runs_too_small_to_tell_say_so_and_name_their_gate():
    p = ch.Params.from_values(_params(seeds=10, generations=5, strong_sizes=[20, 40], strong_seeds=10,
                                      forget_seeds=2, forget_counts=[15, 20], temps=[1.0], temp_samples=[100, 200], temp_seeds=5,
                                      verifier_generations=2, verifier_seeds=10, glm_generations=1, glm_seeds=5))
    cl = {c.id: c for c in ch.claims(ch.run(p, progress=False))}
    for cid in cl:
        assert cl[cid].verdict == NOT_VISIBLE, cid
        assert cl[cid].gate, cid


# -- the page ---------------------------------------------------------------------------------------
def test_the_page_shows_the_method_from_the_package():
    import re

    import jupytext

    import collapse_utils as cu

    nb = jupytext.read("notebooks/07_theory_since_2024.md")
    shown = [c for c in nb.cells if c.cell_type == "code" and "cu.show(" in c.source]
    assert len(shown) >= 3
    for cell in shown:
        assert "remove-input" in cell.metadata.get("tags", []), cell.source
        for expr in re.findall(r"[\w.]+", cell.source.split("cu.show(", 1)[1]):
            obj = eval(expr, {"R": R, "cu": cu})  # noqa: S307 - names from the page, resolved in the package
            assert cu.tooling.show.Source(obj).file.startswith("collapse_utils/"), expr


def test_chapter_07_smoke_page(smoke_chapter, read_executed, results_tmp):
    out = smoke_chapter("07")
    text, images = read_executed(out)
    assert images >= 5
    assert "produced with the `smoke` preset" in text
    assert "contradicted" not in text and "Reproduce this page" in text
    claims = pd.read_csv(results_tmp / "07_theory_since_2024" / "smoke" / "claims.csv")
    assert len(claims) == 11 and set(claims.verdict) == {REPRODUCED}


def test_the_forgetting_bound_says_which_counts_it_tested(smoke):
    """The bound's measured text names the counts λ tested, the closest point in standard errors, and any
    followed count left out for too few corpus symbols."""
    t = ch._forget_tested(smoke)
    c = next(c for c in ch.claims(smoke) if c.id == "forgetting-bound")
    lams = ", ".join(str(int(x)) for x in sorted(t.lam.unique()))
    assert f"with λ = {lams};" in c.measured and "closest in standard errors" in c.measured
    for lam in smoke.params["forget_counts"]:
        if lam not in set(t.lam):
            assert f"λ = {lam} not tested" in c.measured
