"""Chapter 01's study module: the run plan, the Monte-Carlo horizon and the claims, tested both ways
(a run that shows the paper's statement -> reproduced; doctored metrics that contradict it -> contradicted;
a run too small to tell -> not visible at this preset)."""
from __future__ import annotations

import dataclasses
import re

import jupytext
import numpy as np
import pandas as pd
import pytest

from collapse_utils.core.engine import Loop
from collapse_utils.core.results import seed_matrix
from collapse_utils.tooling import config
from collapse_utils.models import discrete as D
from collapse_utils.models import gaussian
from collapse_utils.chapters import gaussian_theory as ch
from collapse_utils.chapters.claims import CONTRADICTED, NOT_VISIBLE, REPRODUCED, verdict_text

TINY = {"seeds": 10, "generations": 10, "sample_sizes": [100, 1000], "draws_check_seeds": 10,
        "draws_check_generations": 5, "schedule_generations": 5, "accumulate_seeds": 10, "accumulate_generations": 5,
        "discrete_states": 4, "discrete_seeds": 10, "discrete_max_generations": 30}


@pytest.fixture(scope="module")
def smoke():
    p = {**config.load_preset("smoke", "01"), "preset": "smoke"}
    return ch.run(p, progress=False)


@pytest.fixture(scope="module")
def tiny():
    p = {**config.load_preset("smoke", "01"), **TINY, "preset": "smoke"}
    ch.Params.check(p)
    return ch.run(p, progress=False)


def verdicts(result):
    return {c.id: c.verdict for c in ch.claims(result, result.params)}


def _doctor(result, field, study=None, metric=None, fn=None, **where):
    """A copy of the result whose ``field`` table has ``fn`` applied to the values of the selected rows."""
    df = getattr(result, field).copy()
    sel = np.ones(len(df), bool)
    if study is not None:
        sel &= (df.study == study).to_numpy()
    if metric is not None:
        sel &= (df.metric == metric).to_numpy()
    for k, v in where.items():
        sel &= (df[k] == v).to_numpy()
    assert sel.any()
    df.loc[sel, "value"] = fn(df.loc[sel, "value"].to_numpy())
    return dataclasses.replace(result, **{field: df})


def test_every_claim_is_reproduced_at_smoke(smoke):
    claims = ch.claims(smoke, smoke.params)
    assert len(claims) >= 4 and len({c.id for c in claims}) == len(claims)
    assert verdicts(smoke) == {c.id: REPRODUCED for c in claims}
    for c in claims:
        assert c.evidence.startswith("fig-01-") and c.measured and c.chapter == "01"


def test_too_small_a_run_is_not_visible(tiny):
    v = verdicts(tiny)
    for cid in ("mle-decay", "almost-sure-collapse", "w2-superlinear", "tails-first", "absorbed-in-delta",
                "absorption-probabilities"):
        assert v[cid] == NOT_VISIBLE, cid
    assert CONTRADICTED not in v.values()


def test_var_mu_contradicted_when_the_mean_wanders_too_far(smoke):
    bad = _doctor(smoke, "gaussian", "main", "mu", lambda x: x * np.sqrt(2), estimator="unbiased")
    assert verdicts(bad)["mean-variance"] == CONTRADICTED


def test_unbiased_mean_contradicted_when_the_variance_shrinks_on_average(smoke):
    bad = _doctor(smoke, "gaussian", "main", "sigma2", lambda x: x * 0.8, estimator="unbiased")
    assert verdicts(bad)["unbiased-mean"] == CONTRADICTED


def test_mle_decay_contradicted_without_decay(smoke):
    main = smoke.gaussian[(smoke.gaussian.study == "main") & (smoke.gaussian.metric == "sigma2")]
    unb = main[main.estimator == "unbiased"].value.to_numpy()
    bad = _doctor(smoke, "gaussian", "main", "sigma2", lambda x: unb, estimator="mle")
    assert verdicts(bad)["mle-decay"] == CONTRADICTED


def test_almost_sure_collapse_contradicted_when_runs_keep_their_variance(smoke):
    bad = _doctor(smoke, "gaussian", "main", "sigma2", lambda x: np.ones_like(x), estimator="unbiased")
    assert verdicts(bad)["almost-sure-collapse"] == CONTRADICTED


def test_w2_claim_contradicted_when_quadratic_growth_does_not_bound_the_risk(smoke):
    bad = _doctor(smoke, "gaussian", "schedules", "mu", lambda x: x + 0.5, schedule="quadratic")
    assert verdicts(bad)["w2-superlinear"] == CONTRADICTED


def test_w2_claim_contradicted_when_constant_schedule_stops_growing(smoke):
    df = smoke.gaussian
    sel = (df.study == "schedules") & (df.schedule == "constant") & (df.generation > 5)
    bad = _doctor(smoke, "gaussian", "schedules", "mu", lambda x: x * 0.1, schedule="constant")
    bad.gaussian.loc[sel & (df.metric == "sigma2"), "value"] = 1.0
    assert verdicts(bad)["w2-superlinear"] == CONTRADICTED


def test_tails_claim_contradicted_when_common_states_die_first(smoke):
    ext = smoke.extinction.copy()
    ext["p0"] = ext.p0.to_numpy()[::-1]  # every state's extinction times now belong to the reversed probability
    assert verdicts(dataclasses.replace(smoke, extinction=ext))["tails-first"] == CONTRADICTED


def test_absorption_claims_contradicted(smoke):
    ab = smoke.absorption.copy()
    ab["absorbed"] = 0
    ab.loc[ab.p0.idxmin(), "absorbed"] = int(smoke.absorption.absorbed.sum())  # all runs end in the rarest state
    assert verdicts(dataclasses.replace(smoke, absorption=ab))["absorption-probabilities"] == CONTRADICTED
    half = _doctor(smoke, "discrete", "discrete", "absorption_generation",
                   lambda x: np.where(np.arange(len(x)) % 2 == 0, -1.0, x))
    v = verdicts(half)
    assert v["absorbed-in-delta"] == CONTRADICTED
    assert v["absorption-probabilities"] == NOT_VISIBLE  # half the runs still open: where they end is unknown


def test_draws_check_uses_independent_seeds(smoke):
    sub = smoke.gaussian[(smoke.gaussian.study == "draws_check") & (smoke.gaussian.metric == "sigma2")]
    draws, exact = (sub[sub.sampler == s] for s in ("draws", "exact"))
    assert not set(draws.seed) & set(exact.seed)
    g0 = [d[d.generation == 0].sort_values("seed").value.to_numpy() for d in (draws, exact)]
    assert not np.isclose(g0[0], g0[1]).any()  # no shared real data: before the fix every pair was equal
    ks = ch.draws_vs_exact(smoke)
    assert (ks.generation > 0).all() and ks.p_value.between(0, 1).all()


def test_horizon_grows_with_seeds_and_sample_size():
    rec = np.arange(0, 1001)
    h = ch.horizon(100, "unbiased", rec, 200)
    assert 30 < h < 80
    assert ch.horizon(100, "unbiased", rec, 2000) > h
    assert ch.horizon(1000, "unbiased", rec, 200) > 5 * h
    assert ch.horizon(100, "unbiased", rec, 200, schedule="quadratic") == 1000


def test_bands_over_few_seeds_say_min_max():
    assert ch.band_spec(2) == ((0.0, 1.0), "min–max of 2 seeds")
    assert ch.band_spec(200)[0] == (0.05, 0.95)


def test_summary_labels_the_lognormal_median_as_an_approximation(smoke):
    cols = ch.summary(smoke).columns
    assert "median sigma2, log-normal approx." in cols and not any("median sigma2 theory" in c for c in cols)


def test_prose_glues_only_keys_the_run_provides(smoke, tiny):
    """Every {glue} key of the page is glued at every preset, including a run too small to tell."""
    md = "\n".join(c.source for c in jupytext.read(config.get_chapter("01").notebook_md).cells
                   if c.cell_type == "markdown")
    used = set(re.findall(r"\{glue:(?:text|md)\}`(c01_[a-z0-9_]+)", md))
    assert used
    for result in (smoke, tiny):
        keys = set(ch.page_numbers(result))
        for c in ch.claims(result, result.params):
            k = f"c01_{c.id.replace('-', '_')}"
            keys |= {f"{k}_verdict", f"{k}_measured"} | {f"{k}_{e}" for e in c.extra}
        assert used <= keys, used - keys
        for v in ch.page_numbers(result).values():
            assert type(v) in (str, float, int)  # numpy scalars would print as np.float64(...)


def test_absorption_test_pools_rare_states():
    ex = D.CategoricalExperiment(D.zipf_probs(30, 1.5))
    ex.absorbed_state = np.zeros(50, dtype=np.int64)
    ex.absorbed_at = np.zeros(50, dtype=np.int64)
    t = ch.absorption_test(D.absorption_table(ex))
    assert t["runs"] == 50 and t["bins"] < 30 and t["p_value"] < 1e-6


class _CountingExperiment(gaussian.GaussianExperiment):
    """The page's experiment, counting its fits (a reader's subclass)."""

    fits = 0

    def fit(self, data, ctx):
        type(self).fits += 1
        return super().fit(data, ctx)


def test_the_page_can_swap_a_piece_of_the_main_loop(tiny):
    """The notebook assembles the main loop and hands it to ``run``: swap the regime (and the experiment for a
    subclass, and the number of generations) and the main study runs with them; the other studies do not move."""
    p = tiny.params
    assert ch.default_loop(p).regime.name == "replace" and ch.default_loop(p).generations == p.generations
    G = 6
    acc = ch.run(p, Loop(_CountingExperiment(sampler=p.sampler), regime="accumulate", generations=G), progress=False)
    main = acc.gaussian[acc.gaussian.study == "main"]
    assert set(main.regime) == {"accumulate"} and int(main.generation.max()) == G
    assert _CountingExperiment.fits == len(p.sample_sizes) * 2 * (G + 1)  # every M, both estimators
    assert set(tiny.gaussian[tiny.gaussian.study == "main"].regime) == {"replace"}
    others = [r.gaussian[r.gaussian.study != "main"].reset_index(drop=True) for r in (tiny, acc)]
    pd.testing.assert_frame_equal(*others)
    # accumulating pools every generation's samples: the fitted mean wanders less than when replacing
    # (exact variances at generation 6, M = 100: 0.07 replacing vs 0.026 accumulating)
    var = [seed_matrix(r.gaussian[r.gaussian.study == "main"], "mu", M=100, estimator="unbiased")[1][G].var()
           for r in (tiny, acc)]
    assert var[1] < var[0]


def test_every_not_visible_verdict_names_its_gate(tiny, smoke):
    for result in (tiny, smoke):
        for c in ch.claims(result, result.params):
            if c.verdict == NOT_VISIBLE:
                assert c.gate and verdict_text(c.verdict, c.gate).endswith(f"(needs {c.gate})"), c.id
            else:
                assert c.gate == "", c.id
    gates = {c.id: c.gate for c in ch.claims(tiny, tiny.params)}
    assert gates["absorbed-in-delta"] == "a run of at least 20 M = 1000 generations"  # discrete_m = 50


def test_prose_never_doubles_the_verdicts_preset():
    md = config.get_chapter("01").notebook_md.read_text()
    for m in re.finditer(r"\{glue:md\}`c01_[a-z_]+_verdict`", md):
        around = md[max(0, m.start() - 40):m.end() + 25].replace("\n", " ")
        assert "at this preset" not in around.lower(), around


def test_the_sentence_on_unreliable_means_is_computed(smoke):
    t = ch.summary(smoke)
    bad = t[~t["mean reliable"]]
    assert len(bad)  # at smoke the seeds cannot estimate M = 100's mean at the last generation
    pairs = [*zip(bad["Var(mu) sim"], bad["Var(mu) theory"]), *zip(bad["mean sigma2 sim"], bad["E[sigma2] theory"]),
             *zip(bad["mean W2^2 sim"], bad["E[W2^2] theory"])]
    below = sum(a < b for a, b in pairs)
    sentence = ch.unreliable_sentence(smoke)
    assert f"of the {len(pairs)} values in the columns" in sentence
    assert f"{below} lie below it and {len(pairs) - below} above it in this run" in sentence
    assert "usually" not in sentence  # no typed tendency the run may contradict
    # a run whose unreliable means all lie far above the theory says so, and names the largest excess
    high = _doctor(smoke, "gaussian", "main", "sigma2", lambda x: 100 * x, M=100)
    high = _doctor(high, "gaussian", "main", "mu", lambda x: 100 * x, M=100)
    n = 3 * int((~ch.summary(high)["mean reliable"]).sum())
    sentence = ch.unreliable_sentence(high)
    assert f"0 lie below it and {n} above it in this run" in sentence
    assert "(here " in sentence and " at M = 100, " in sentence


def test_the_sentence_on_var_mu_reports_deviations_beyond_the_drawn_band(smoke):
    text = ch.var_mu_sentence(smoke)
    assert "at M = 100" in text and "at M = 1000" in text and "within the ±2 standard errors" in text
    wide = _doctor(smoke, "gaussian", "main", "mu", lambda x: 1.4 * x, M=1000, estimator="unbiased")
    text = ch.var_mu_sentence(wide)
    assert "At M = 1000 it sits outside the ±2 standard errors" in text and "move together" in text
