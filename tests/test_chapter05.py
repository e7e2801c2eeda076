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
    p = ch.Params.from_values(_params())
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
    ch.Params.check(_params(preset))


def test_every_problem_is_listed_in_one_error():
    bad = _params(reg_samples=11, reg_features=10, real_shares=[0.1, 0.5], generator_errors=[0.3, 1.2],
                  sampling_biases=["temperature(2)"], real_sources=["fixed", "borrowed"], tail_cutoffs=[30000],
                  verifier_sizes=[100, 100], mix_eval_samples=3, knn_k=5, reg_seeds=0)
    with pytest.raises(config.ParamError) as e:
        ch.Params.check(bad)
    msg = str(e.value)
    for needle in ("reg_samples=11 must exceed", "real_shares must include 0", "generator_errors", "temperature",
                   "real_sources", "tail_cutoffs", "verifier_sizes must not repeat", "mix_eval_samples=3",
                   "reg_seeds must lie"):
        assert needle in msg, needle


def test_presets_list_only_what_differs_from_the_declaration():
    import yaml

    raw = yaml.safe_load(open("collapse_utils/chapters/presets/05.yaml"))
    assert set(raw) == {"smoke", "paper"}
    defaults = ch.Params.defaults()
    for section in raw.values():
        assert all(defaults[k] != v for k, v in section.items())
    assert config.load_preset("cpu", "05") == defaults


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


# -- the loop on the page: swap a piece, the chapter runs with it ---------------------------------
TINY = dict(reg_seeds=30, reg_generations=8, gauss_seeds=10, gauss_generations=5, mix_seeds=2, mix_generations=4,
            mix_samples=100, real_shares=[0.0, 0.5], sampling_biases=[], mix_eval_samples=0, verifier_seeds=4,
            verifier_grid=5, verifier_sizes=[50], selection_seeds=10, selection_generations=4, tail_seeds=4,
            tail_items=2000, tail_max_size=2000, tail_points=5, tail_clean_shares=[0.1])


def test_the_default_loop_is_what_run_uses():
    p = ch.Params.from_values(_params(**TINY))
    loop = ch.default_loop(p)
    assert isinstance(loop.experiment, ch.RG.RegressionExperiment) and str(loop.regime) == "replace"
    assert loop.generations == p.reg_generations
    a, _ = ch.run_regression(p, None, progress=False)
    b, _ = ch.run_regression(p, loop, progress=False)
    assert a.equals(b) and list(dict.fromkeys(a.regime)) == list(ch.REG_REGIMES)


def test_a_loop_with_another_regime_runs_the_chapter_with_it():
    """The page's loop with keep_real(0.5) instead of replace: the chapter runs, the regression study
    gains that regime beside the three it compares (their numbers unchanged), and half the rows real
    each generation hold the error far below replace's linear growth."""
    import pandas as pd

    from collapse_utils import Loop

    p = ch.Params.from_values(_params(**TINY))
    real, w_star = ch.regression_problem(p)
    loop = Loop(experiment=ch.RG.RegressionExperiment(real[..., :-1], w_star, p.reg_noise), regime="keep_real(0.5)",
                generations=p.reg_generations)
    result = ch.run(p, loop, progress=False)
    assert list(dict.fromkeys(result.regression.regime)) == [*ch.REG_REGIMES, "keep_real(0.5)"]
    base, _ = ch.run_regression(p, progress=False)
    same = result.regression[result.regression.regime.isin(ch.REG_REGIMES)].reset_index(drop=True)
    pd.testing.assert_frame_equal(same, base)
    tab = ch.regression_table(result)
    last = tab[tab.generation == p.reg_generations].set_index("regime")
    assert np.isnan(last.loc["keep_real(0.5)", "theory"])
    assert last.loc["keep_real(0.5)", "mean"] < 0.5 * last.loc["replace", "mean"]
    assert {c.id for c in ch.claims(result, p)} >= {"replace-linear", "accumulate-bounded"}
    import matplotlib.pyplot as plt

    fig = ch.plot_regression(result)
    assert "keep_real(0.5): mean over seeds" in [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)


def test_a_loop_must_relabel_the_chapters_designs():
    from collapse_utils import Loop

    p = ch.Params.from_values(_params(**TINY))
    real, w_star = ch.regression_problem(p)
    other = ch.RG.RegressionExperiment(real[..., :-1] * 2.0, w_star, p.reg_noise)
    with pytest.raises(ValueError, match="regression_problem"):
        ch.run_regression(p, Loop(other, "replace", 2), progress=False)


# -- pages that tell the truth (issue 28) ---------------------------------------------------------
def test_every_not_visible_verdict_states_its_gate(smoke):
    for c in ch.claims(smoke, smoke.params):
        if c.verdict == NOT_VISIBLE:
            assert c.gate and "this run has" in c.gate, c.id
        else:
            assert c.gate == "", c.id


def test_the_stable_share_sentence_follows_the_verdict(smoke):
    """At smoke the map cannot tell: the page names no smallest stable share (its own verdict is "not
    visible"), neither in the prose nor in the claim's measured text."""
    v = verdicts(smoke)
    assert v["real-share-stable"] == NOT_VISIBLE
    full, short = ch._stable_share_sentences(smoke)
    claim = next(c for c in ch.claims(smoke, smoke.params) if c.id == "real-share-stable")
    for text in (full, short, claim.measured):
        assert "too small" in text or "too few" in text, text
        assert "smallest stable share of" not in text and "kept the mixture stable is" not in text, text


def test_verdicts_are_not_introduced_by_at_this_preset():
    """ "... is at this preset: not visible at this preset" -- the verdict carries the words itself."""
    import re

    page = open("notebooks/05_escaping_collapse.md").read()
    assert not re.search(r"at\s+this\s+preset:?\s*\{glue:md\}`c05_\w+_verdict`", page)
    assert "c05_smallest_fixed" not in page


def test_the_fixed_real_set_discussion_is_computed_from_the_run(smoke):
    text = ch.fixed_set_markdown(smoke)
    tab = ch.stability_table(smoke.mixture, smoke.params)
    G = int(tab.generations.max())
    assert f"Over its {G} generations and {smoke.mixture.seed.nunique()} seeds" in text
    fx = tab[(tab.source == "fixed") & (tab.bias == "none") & (tab.real_share > 0)]
    for share, growth in zip(fx.real_share, fx.growth):
        assert f"×{growth:.2f} ({ch._pct(share)})" in text
    # rated stable exactly where the map says so
    stable = [ch._pct(s) for s, st in zip(fx.real_share, fx.state) if st == "stable"]
    assert (f"stable at {ch._and(stable)}" in text) if stable else ("no share of a fixed real set stable" in text)
    # the windows are the map's (G/4, G/2] and (3G/4, G], written as the generations they hold
    assert ch._window(5, 10) == "6–10" and ch._window(7.5, 15) == "8–15" and ch._window(0.5, 1) == "1"
    assert f"From generations {ch._window(G / 4, G / 2)} to {ch._window(3 * G / 4, G)} the" in text


def test_the_page_shows_the_method_from_the_package():
    """At least four cells display package definitions (tagged remove-input: only the source shows), and
    each shown name is a definition of the package that the chapter's run uses."""
    import re

    import collapse_utils as cu
    from collapse_utils.models import mixing, regression, tails, verification

    nb = jupytext.read("notebooks/05_escaping_collapse.md")
    shown = [c for c in nb.cells if c.cell_type == "code" and "cu.show(" in c.source]
    assert len(shown) >= 4
    names = {"cu": cu, "mixing": mixing, "regression": regression, "tails": tails, "verification": verification}
    for cell in shown:
        assert "remove-input" in cell.metadata.get("tags", []), cell.source
        for expr in re.findall(r"[\w.]+", cell.source.split("cu.show(", 1)[1]):
            obj = eval(expr, names)  # noqa: S307 - names from the page, resolved in the package
            assert cu.tooling.show.Source(obj).file.startswith("collapse_utils/"), expr
