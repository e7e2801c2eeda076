"""Chapter 02's claims: metrics that show the paper's statements reproduce them, doctored metrics that
show something else contradict them, and runs too small to tell say so."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from collapse_utils.chapters import gaussian_mixtures as ch
from collapse_utils.chapters.claims import VERDICTS
from collapse_utils.tooling.config import load_preset

REPRODUCED, NOT_VISIBLE, CONTRADICTED = VERDICTS
REGIMES = ["replace", "keep_real(0.1)", "accumulate"]


def _params(generations=2000, **over):
    p = load_preset("cpu", "02")
    p.update(preset="cpu", run_name="", generations=generations)
    p.update(over)
    return p


def _frame(G=2000, seeds=8, Gr=100, spread=lambda g: np.exp(-g / 400), bulk=lambda g: np.exp(-g / 1500),
           tail=lambda g: np.exp(-g / 100), l2_gen0=lambda g: 1e-4 * g, regime_l2=None, k1_l2=0.08,
           regimes=REGIMES, noise=0.05, seed=0) -> pd.DataFrame:
    """Tidy metrics shaped like the chapter's, from curves over generations (times per-seed noise)."""
    rng = np.random.default_rng(seed)
    regime_l2 = regime_l2 or {"replace": lambda g: 1e-3 * (1 + g / 5), "keep_real(0.1)": lambda g: 1e-3 * (1 + g / 50),
                              "accumulate": lambda g: 1e-3 * (1 + g / 500)}
    gens = sorted({0, 1, 2, 5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, G} & set(range(G + 1)))
    rows = []

    def add(study, data, regime, K, curves, generations):
        for s in range(seeds):
            for g in generations:
                for metric, f in curves.items():
                    v = f(g) * np.exp(noise * rng.standard_normal())
                    rows.append((study, regime, data, s, g, metric, v, K))

    for data, s0 in (("blob", 0.9), ("two_gaussians", 0.5)):
        add("settings", data, "replace", 2, {
            "spread_min": lambda g, s0=s0: s0 * spread(g), "spread_max": lambda g, s0=s0: 1.05 * s0 * spread(g),
            "spread_overall": lambda g: bulk(g), "tail99": lambda g: 0.01 * tail(g),
            "l2_gen0": l2_gen0, "l2_truth": lambda g: 1e-3 + l2_gen0(g)}, gens)
    add("expressivity", "two_gaussians", "replace", 1, {"l2_truth": lambda g: k1_l2 + l2_gen0(g)}, gens)
    for r in regimes:
        add("regimes", "two_gaussians", r, 2, {"l2_truth": regime_l2[r]}, range(Gr + 1))
    return pd.DataFrame(rows, columns=["study", "regime", "data", "seed", "generation", "metric", "value",
                                       "n_components"])


def _verdicts(df, params=None, regimes=REGIMES):
    p = params or _params(int(df[df.study == "settings"].generation.max()))
    p["regimes"] = regimes
    return {c.id: c.verdict for c in ch.claims(df, p)}


def test_at_least_four_claims_with_figures_of_the_page():
    cl = ch.claims(_frame(), _params())
    assert len(cl) >= 4 and len({c.id for c in cl}) == len(cl)
    page = open("notebooks/02_gaussian_mixtures.md").read()
    for c in cl:
        assert c.evidence.startswith("fig-02-") and f"name: {c.evidence}" in page


def test_metrics_that_show_collapse_reproduce_every_claim():
    assert set(_verdicts(_frame()).values()) == {REPRODUCED}


@pytest.mark.parametrize("claim,doctor", [
    ("spread-collapse", {"spread": lambda g: 1 + g / 1000}),                     # spreads grow
    ("spread-collapse", {"spread": lambda g: 1.0}),                              # long run, no shrink at all
    ("distance-grows", {"l2_gen0": lambda g: 1e-2 / (1 + g)}),                   # the fits come back
    ("tails-first", {"tail": lambda g: 1.0, "bulk": lambda g: np.exp(-g / 200)}),  # bulk goes, tails stay
    ("tails-first", {"tail": lambda g: np.exp(-g / 100), "bulk": lambda g: np.exp(-g / 50)}),  # bulk first
    ("keep-real-slows", {"regime_l2": {"replace": lambda g: 1e-3 * (1 + g / 50),
                                       "keep_real(0.1)": lambda g: 1e-3 * (1 + g / 5),
                                       "accumulate": lambda g: 1e-3 * (1 + g / 500)}}),
    ("accumulate-close", {"regime_l2": {"replace": lambda g: 1e-3 * (1 + g / 5),
                                        "keep_real(0.1)": lambda g: 1e-3 * (1 + g / 50),
                                        "accumulate": lambda g: 1e-3 * (1 + g)}}),  # far from where it began
    ("expressivity-first-fit", {"k1_l2": 1e-5}),                                # one Gaussian fits two?!
])
def test_doctored_metrics_contradict_the_claim(claim, doctor):
    v = _verdicts(_frame(**doctor))
    assert v[claim] == CONTRADICTED
    others = {k: x for k, x in v.items() if k != claim}
    assert CONTRADICTED not in others.values() or claim == "tails-first"


def test_a_short_run_cannot_tell():
    # 40 generations, a little shrinkage, tails not emptied, bulk kept: not visible, not contradicted
    df = _frame(G=40, Gr=10, spread=lambda g: np.exp(-g / 300), bulk=lambda g: np.exp(-g / 1500),
                tail=lambda g: 1 + g / 40)
    v = _verdicts(df)
    assert v["spread-collapse"] == NOT_VISIBLE
    assert v["tails-first"] == NOT_VISIBLE
    assert v["distance-grows"] == REPRODUCED


def test_noise_without_a_difference_is_not_visible():
    # every regime the same flat curve, seed noise only: no regime differs from replace, so the t-tests
    # decide (either way) only at about their two-sided level, 2 x ALPHA
    same = {r: (lambda g: 1e-3) for r in REGIMES}
    runs = [_verdicts(_frame(G=50, regime_l2=same, noise=0.3, seeds=4, seed=s)) for s in range(40)]
    for claim in ("keep-real-slows", "accumulate-close"):
        decided = sum(v[claim] != NOT_VISIBLE for v in runs)
        assert decided <= 10, (claim, decided)
    # accumulate drifting as far as replace is not "close", however few the seeds
    same = {r: (lambda g: 1e-3 * (1 + g / 5)) for r in REGIMES}
    assert _verdicts(_frame(regime_l2=same, noise=0.3, seeds=3))["accumulate-close"] == CONTRADICTED


def test_regimes_left_out_are_not_visible():
    v = _verdicts(_frame(regimes=["replace"]), regimes=["replace"])
    assert v["keep-real-slows"] == NOT_VISIBLE and v["accumulate-close"] == NOT_VISIBLE


def test_claims_on_a_real_tiny_run():
    """A real (tiny) run: the distance to generation 0 grows and one Gaussian is wrong from the start;
    with this few generations the spreads cannot halve, so that claim is not visible."""
    p = load_preset("smoke", "02")
    p.update(preset="smoke", run_name="", seeds=4, generations=20, panel_generations=[0, 20], eval_samples=500,
             regime_seeds=4, regime_generations=4, n_samples=300)
    ch.validate_params(p)
    result = ch.run(p, progress=False, speed=False)
    v = {c.id: c.verdict for c in ch.claims(result, p)}
    assert v["distance-grows"] == REPRODUCED
    assert v["expressivity-first-fit"] == REPRODUCED
    assert v["spread-collapse"] == NOT_VISIBLE
    assert set(result.tables(p["generations"])) >= {"bookkeeping", "timing", "summary"}


def test_without_tail_masses_the_tail_claim_is_not_visible():
    df = _frame()
    assert _verdicts(df[df.metric != "tail99"])["tails-first"] == NOT_VISIBLE
