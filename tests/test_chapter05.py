"""Chapter 05's study module: parameters refused before compute, a real smoke run (tidy metrics, tables,
claims that the preset can show), doctored results that contradict each claim, determinism."""
from __future__ import annotations

import dataclasses

import jupytext
import numpy as np
import pytest

from collapse_utils.tooling import config
from collapse_utils.chapters import escaping_collapse as ch
from collapse_utils.chapters.claims import CONTRADICTED, NOT_VISIBLE, REPRODUCED


SMOKE_G = config.load_preset("smoke", "05")["gauss_generations"]


def _params(preset="smoke", **over):
    p = {**config.load_preset(preset, "05"), "preset": preset, "run_name": ""}
    p.update(over)
    return p


@pytest.fixture(scope="module")
def smoke():
    p = _params()
    ch.validate_params(p)
    return ch.run(p, progress=False)


def verdicts(result):
    return {c.id: c.verdict for c in ch.claims(result, result.params)}


def _doctor(result, field, fn, **where):
    """A copy of ``result`` whose ``field`` table has ``fn`` applied to the values of the selected rows."""
    df = getattr(result, field).copy()
    sel = np.ones(len(df), bool)
    for k, v in where.items():
        sel &= (df[k] == v).to_numpy()
    assert sel.any(), where
    df.loc[sel, "value"] = fn(df.loc[sel, "value"].to_numpy())
    return dataclasses.replace(result, **{field: df})


# -- parameters -----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", config.PRESETS)
def test_presets_are_valid(preset):
    ch.validate_params(_params(preset))


def test_every_problem_is_listed_in_one_error():
    bad = _params(reg_samples=11, reg_features=10, real_shares=[0.1, 0.5], generator_errors=[0.3, 1.2],
                  sampling_biases=["temperature(2)"], real_sources=["fixed", "borrowed"], tail_cutoffs=[30000],
                  verifier_sizes=[100, 100], mix_eval_samples=3, knn_k=5, reg_seeds=0)
    with pytest.raises(config.ParamError) as e:
        ch.validate_params(bad)
    msg = str(e.value)
    for needle in ("reg_samples=11 must exceed", "real_shares must include 0", "generator_errors", "temperature",
                   "real_sources", "tail_cutoffs", "verifier_sizes must not repeat", "mix_eval_samples=3",
                   "reg_seeds must lie"):
        assert needle in msg, needle


def test_bad_input_is_refused_before_compute(monkeypatch, capsys):
    import papermill

    from collapse_utils.tooling import runner

    def no_compute(*a, **k):
        raise AssertionError("a kernel was started for a bad input")

    monkeypatch.setattr(papermill, "execute_notebook", no_compute)
    assert runner.main(["run", "05", "-p", "selection_keep=1.5", "-p", "real_shares=[0.2]"]) == 2
    err = capsys.readouterr().err
    assert "selection_keep must lie in (0.0, 1.0)" in err and "real_shares must include 0" in err


# -- a real smoke run ------------------------------------------------------------------------------
def test_smoke_run_writes_tidy_metrics_and_tables(smoke):
    m = smoke.metrics()
    assert {"experiment", "regime", "seed", "generation", "metric", "value", "study"} <= set(m.columns)
    reg = m[m.study == "regression"]
    assert set(reg.regime) == set(ch.REG_REGIMES) and "test_error" in set(reg.metric)
    assert reg.seed.nunique() == smoke.params["reg_seeds"]
    assert set(m.study) == {"regression", "gaussian", "mixture", "verifier", "selection", "tails"}
    tables = smoke.tables()
    assert {"bookkeeping", "regression_summary", "stability", "verifier_expected", "tails_expected"} <= set(tables)
    book = tables["bookkeeping"]
    fresh = book[(book.study == "mixture") & (book.source == "fresh") & (book.generation > 0)]
    assert len(fresh) and np.allclose(fresh.real_fraction, fresh.real_share)


def test_claims_have_figures_on_the_page(smoke):
    cl = ch.claims(smoke, smoke.params)
    assert len(cl) >= 10 and len({c.id for c in cl}) == len(cl)
    page = open("notebooks/05_escaping_collapse.md").read()
    for c in cl:
        assert c.evidence.startswith("fig-05-") and f"name: {c.evidence}" in page, c.evidence
    nb = jupytext.read("notebooks/05_escaping_collapse.md")
    code = "".join(c.source for c in nb.cells if c.cell_type == "code")
    for name in ch.page_numbers(smoke):
        assert name in page, f"{name} is glued but not used"
    assert "glue_numbers(result)" in code


def test_smoke_shows_what_it_can_and_no_more(smoke):
    v = verdicts(smoke)
    assert CONTRADICTED not in v.values(), v
    for cid in ("replace-linear", "accumulate-bounded", "subsample-between", "zipf-power-law", "zipf-plateau"):
        assert v[cid] == REPRODUCED, cid
    # 4 seeds and 20 generations cannot tell which real shares keep the mixture stable
    for cid in ("real-share-stable", "fresh-beats-fixed", "bias-trades-diversity"):
        assert v[cid] == NOT_VISIBLE, cid


def test_same_seed_same_numbers(smoke):
    again = ch.run(smoke.params, progress=False)
    assert again.metrics().equals(smoke.metrics())


# -- doctored results contradict the claims ------------------------------------------------------
def test_accumulate_implemented_as_replace_is_caught(smoke):
    rep = smoke.regression[smoke.regression.regime == "replace"].copy()
    fake = smoke.regression[smoke.regression.regime != "accumulate"]
    import pandas as pd

    doctored = dataclasses.replace(smoke, regression=pd.concat([fake, rep.assign(regime="accumulate")]))
    assert verdicts(doctored)["accumulate-bounded"] == CONTRADICTED


@pytest.mark.parametrize("claim,field,fn,where", [
    ("replace-linear", "regression", lambda x: 1.5 * x, {"regime": "replace"}),
    ("replace-linear", "regression", lambda x: 0.7 * x, {"regime": "replace"}),
    ("accumulate-bounded", "regression", lambda x: 1.3 * x, {"regime": "accumulate"}),
    ("subsample-between", "regression", lambda x: 0.3 * x, {"regime": "accumulate_subsample"}),
    ("subsample-between", "regression", lambda x: 5.0 * x, {"regime": "accumulate_subsample"}),
    ("gaussian-accumulate", "gaussian", lambda x: 1e-3 * x, {"regime": "accumulate", "generation": SMOKE_G}),
    ("selection-collapses", "selection", lambda x: np.maximum(x, 0.9), {"regime": "accumulate"}),
    ("zipf-plateau", "tails", lambda x: 1.2 * x, {"regime": "cut"}),
    ("zipf-mixing", "tails", lambda x: np.maximum(x, 0.2), {"regime": "mixed"}),
    ("zipf-power-law", "tails", lambda x: x ** 0.5, {"regime": "clean"}),
    ("verifier-transition", "verifier", lambda x: 1.0 - x, {}),
])
def test_doctored_results_contradict_the_claim(smoke, claim, field, fn, where):
    assert verdicts(_doctor(smoke, field, fn, **where))[claim] == CONTRADICTED


def test_a_flat_verifier_is_no_transition(smoke):
    """Errors that do not depend on the verifier's quality: the theory check fails, so contradicted."""
    v = smoke.verifier.copy()
    v["value"] = v.groupby(["seed", "n_train", "p_gen"])["value"].transform("mean")
    assert verdicts(dataclasses.replace(smoke, verifier=v))["verifier-transition"] == CONTRADICTED


def test_settings_that_cannot_tell_are_not_visible(smoke):
    """No positive real share, or verifier qualities that do not reach p +- 0.1: not visible (never
    contradicted); a tail run too short to reach its plateau: not visible."""
    p = _params(real_shares=[0.0], mix_generations=40, mix_seeds=8, sampling_biases=[])
    mix, _ = ch.run_mixture(p, progress=False)
    short = dataclasses.replace(smoke, mixture=mix, params=p)
    assert verdicts(short)["real-share-stable"] == NOT_VISIBLE
    p = _params(generator_errors=[0.05, 0.6])
    edge = dataclasses.replace(smoke, verifier=ch.run_verifier(p), verifier_expected=ch.verifier_theory(p), params=p)
    assert verdicts(edge)["verifier-transition"] == NOT_VISIBLE
    p = _params(tail_max_size=200, tail_cutoffs=[50])
    t, e = ch.run_tails(p, progress=False)
    v = verdicts(dataclasses.replace(smoke, tails=t, tails_expected=e, params=p))
    assert v["zipf-plateau"] == NOT_VISIBLE and v["zipf-mixing"] == NOT_VISIBLE


@pytest.mark.slow
def test_cpu_mixture_map_finds_a_stable_share():
    """At the cpu sizes of section 2 (16 seeds, 100 generations): replace collapses, a share of real data
    keeps the mixture stable, fresh data beat a fixed set, sampling bias trades recall for precision."""
    cpu = _params("cpu")
    p = {**_params(), **{k: cpu[k] for k in ("mix_seeds", "mix_generations", "mix_samples", "real_shares",
                                              "sampling_biases", "mix_eval_samples")}}
    p["sampling_biases"] = ["temperature(0.8)"]
    p["real_shares"] = [0.0, 0.1, 0.5]
    mix, _ = ch.run_mixture(p, progress=False)
    tab = ch.stability_table(mix, p)
    assert tab[(tab.real_share == 0) & (tab.bias == "none")].state.iloc[0] == "collapsing"
    assert (tab[(tab.real_share > 0) & (tab.bias == "none")].state == "stable").all()
