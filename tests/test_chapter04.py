"""Chapter 04's study module: the claims' verdicts, both ways, on metrics made by hand; the figure's markers."""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from collapse_utils.chapters import language_models as ch
from collapse_utils.chapters.claims import CONTRADICTED, NOT_VISIBLE, REPRODUCED
from collapse_utils.tooling.config import load_preset

P = load_preset("cpu", "04")
IDS = ["finetune-improves", "a-rises", "b-rises-less", "b-only-slightly", "data-more-probable", "long-tail",
       "diversity-falls", "chained-prompts-worse", "penalty-no-prevent", "penalty-worse"]


def _result(base=124.0, a=(118, 150, 190, 230, 270, 304), b=(117, 120, 123, 126, 128, 130),
            abl=(118, 200, 205, 205, 205, 205), chained=(118, 170, 230, 290, 340, 400), d2=(0.60, 0.09, 0.08, 0.07, 0.06, 0.05),
            vocab=(1.0, 0.3, 0.2, 0.15, 0.12, 0.1), medians=(134, 36, 38, 41, 44, 47),
            spreads=(1.8, 1.2, 1.3, 1.4, 1.5, 1.6), seeds=(0, 1)) -> ch.LMResult:
    """A result whose settings follow the given per-generation curves (seed k shifted by k %): (a) with the
    cpu preset's penalty 2.0, (b), chained prompts, and the ablation's penalty 1.0 (``abl``)."""
    rows, seq, book = [], [], []
    z = np.array([NormalDist().inv_cdf((i + 0.5) / 400) for i in range(400)])  # symmetric: median 0
    for setting, curve in (("a", a), ("b", b), ("penalty-1", abl), ("prompts", chained)):
        for seed in seeds:
            for g, ppl in enumerate(curve):
                f = 1 + 0.01 * seed
                vals = {"test_ppl": ppl * f, "test_ppl_seq_mean": 1.1 * ppl * f, "test_ppl_seq_std": 5.0,
                        "data_gen0_ppl_seq_median": medians[g], "distinct_2": d2[g], "vocab_share": vocab[g],
                        "best_epoch": 1.0 if g else 3.0, "epochs_run": 3.0, "val_loss": np.log(ppl)}
                rows += [{"setting": setting, "seed": seed, "generation": g, "metric": k, "value": v}
                         for k, v in vals.items()]
                # per-sequence perplexities: log-normal around the median, 95th percentile = spread x median
                seq.append(pd.DataFrame({"setting": setting, "seed": seed, "generation": g,
                                         "perplexity": medians[g] * np.exp(np.log(spreads[g]) / 1.645 * z)}))
                book.append({"setting": setting, "seed": seed, "generation": g, "n_real": 51 if g else 512})
    return ch.LMResult(base, pd.DataFrame(rows), pd.concat(seq, ignore_index=True), pd.DataFrame(), pd.DataFrame(book))


def _verdicts(res, p=P) -> dict:
    cl = ch.claims(res, p)
    assert [c.id for c in cl] == IDS
    return {c.id: c.verdict for c in cl}


def test_claims_reproduced_by_metrics_that_show_the_paper():
    v = _verdicts(_result())
    assert v == {i: REPRODUCED for i in IDS}
    extra = {c.id: c.extra for c in ch.claims(_result(), P)}
    assert extra["a-rises"]["rise_pct"] == pytest.approx(100 * (304 / 118 - 1))
    assert extra["a-rises"]["last_generation"] == 5 and extra["b-only-slightly"]["kept_blocks"] == 51
    assert extra["data-more-probable"]["median_real"] == pytest.approx(134)


def test_doctored_metrics_flip_every_verdict():
    v = _verdicts(_result(base=100.0, a=(118, 110, 100, 90, 80, 70), abl=(118, 110, 100, 90, 80, 70)))
    assert v["finetune-improves"] == CONTRADICTED  # model 0 is worse than the base
    # (a) is the penalty-2.0 arm: it falls, and it is no worse than the no-penalty arm
    assert v["a-rises"] == CONTRADICTED and v["penalty-no-prevent"] == CONTRADICTED
    assert v["penalty-worse"] == CONTRADICTED
    v2 = _verdicts(_result(abl=(118, 250, 320, 380, 420, 450)))  # without a penalty it gets worse still
    assert v2["penalty-worse"] == CONTRADICTED and v2["penalty-no-prevent"] == REPRODUCED
    v2 = _verdicts(_result(chained=(118, 140, 160, 180, 200, 220)))  # chained prompts rise less than original
    assert v2["chained-prompts-worse"] == CONTRADICTED
    # (a) does not rise: nothing to compare (b) with
    assert v["b-rises-less"] == NOT_VISIBLE and v["b-only-slightly"] == NOT_VISIBLE
    v = _verdicts(_result(b=(117, 160, 200, 250, 290, 340)))  # (b) rises more than (a)
    assert v["b-rises-less"] == CONTRADICTED and v["b-only-slightly"] == CONTRADICTED
    v = _verdicts(_result(b=(117, 140, 160, 180, 200, 220)))  # (b) lower, but not "only slightly"
    assert v["b-rises-less"] == REPRODUCED and v["b-only-slightly"] == CONTRADICTED
    v = _verdicts(_result(medians=(134, 200, 210, 220, 230, 240), spreads=(1.8, 1.6, 1.5, 1.4, 1.3, 1.2)))
    assert v["data-more-probable"] == CONTRADICTED and v["long-tail"] == CONTRADICTED
    v = _verdicts(_result(d2=(0.6, 0.7, 0.7, 0.7, 0.7, 0.7)))
    assert v["diversity-falls"] == CONTRADICTED


def test_a_run_too_small_to_tell_is_not_visible():
    # model 0 within one percent of the base: fine-tuning moved nothing, nothing can be judged
    v = _verdicts(_result(base=118.5))
    assert v == {i: NOT_VISIBLE for i in IDS}
    # two generations: no "later" generation to grow a tail
    short = _result(a=(118, 150, 190), b=(117, 120, 123), abl=(118, 200, 205))
    v = _verdicts(short)
    assert v["long-tail"] == NOT_VISIBLE and v["a-rises"] == REPRODUCED
    # one generation: a rise over the generations cannot be told from one step
    v = _verdicts(_result(a=(118, 150), b=(117, 120), abl=(118, 200)))
    assert v["a-rises"] == NOT_VISIBLE and v["data-more-probable"] == REPRODUCED
    # an ablation with one penalty, and that one none: the penalty claims have nothing to test
    v = _verdicts(_result(), {**P, "repetition_penalty": 1.0, "ablation_penalties": [1.0]})
    assert v["penalty-no-prevent"] == NOT_VISIBLE and v["penalty-worse"] == NOT_VISIBLE
    # no comparison seeds: the comparisons were not run
    v = _verdicts(_result(), {**P, "comparison_seeds": 0})
    assert v["chained-prompts-worse"] == NOT_VISIBLE and v["penalty-worse"] == NOT_VISIBLE


def test_a_seed_that_does_not_rise_contradicts_the_rise():
    res = _result()
    m = res.metrics
    last = (m.setting == "a") & (m.seed == 1) & (m.generation == 5) & (m.metric == "test_ppl")
    res.metrics.loc[last, "value"] = 100.0
    assert _verdicts(res)["a-rises"] == CONTRADICTED


def test_test_perplexity_markers_are_the_corpus_perplexity_with_min_max_bars():
    import matplotlib

    matplotlib.use("Agg")
    res = _result()
    fig = ch.plot_test_perplexity(res.metrics, P, 124.0)
    ax = fig.axes[0]
    main = ax.containers[0]  # the error bar container: markers and bars
    y = main.lines[0].get_ydata()
    expected = [np.mean([v, v * 1.01]) for v in (118, 150, 190, 230, 270, 304)]
    np.testing.assert_allclose(y, expected)
    seg = main.lines[2][0].get_segments()[-1]  # bar of the last generation: min..max over seeds
    np.testing.assert_allclose(sorted(seg[:, 1]), [304, 304 * 1.01])
    t = ch.test_perplexity_table(res.metrics)
    row = t[(t.setting == "a") & (t.generation == 5)].iloc[0]
    assert row["test ppl (corpus)"] == pytest.approx(expected[-1]) and row["max over seeds"] == pytest.approx(307.04)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_comparison_table_names_this_runs_preset():
    from types import SimpleNamespace

    base = SimpleNamespace(info={"local": True, "n_params": 700_000, "blocks": 8000, "epochs": 2, "vocab": 2048})
    data = SimpleNamespace(train=np.zeros((512, 64)))
    md = ch.comparison_markdown({**P, "preset": "smoke"}, data, base)
    assert "this run (`smoke` preset)" in md and "512 training blocks" in md and "cpu" not in md


def test_penalty_extra_and_choice_text_follow_the_measurements():
    extra = {c.id: c.extra for c in ch.claims(_result(), P)}["penalty-worse"]
    assert extra["low_penalty"] == 1.0 and extra["high_penalty"] == 2.0
    assert extra["ratio"] == pytest.approx(np.mean([304, 304 * 1.01]) / np.mean([205, 205 * 1.01]))
    md = ch.penalty_choice_markdown(ch.claims(_result(), P), P)
    assert "penalty 2" in md and "settles into loops" not in md  # equal distinct-2 in both arms: no loop to report
    assert "less than half the distinct word pairs" in md  # 0.09 at generation 1 against 0.60 in the real data
    looping = _result()
    m = looping.metrics
    m.loc[(m.setting == "penalty-1") & (m.metric == "distinct_2"), "value"] = 0.001
    assert "settles into loops" in ch.penalty_choice_markdown(ch.claims(looping, P), P)


def test_comparison_settings_follow_the_parameters():
    assert ch.comparison_settings(P) == ["prompts", "penalty-1"]
    assert ch.comparison_settings({**P, "repetition_penalty": 1.0}) == ["prompts", "penalty-2"]
    assert ch.comparison_settings({**P, "comparison_seeds": 0}) == []
    spec = ch.setting_spec(P, "prompts")
    assert spec["prompts"] == "chained" and spec["seeds"] == [0, 1] and spec["regime"] == "replace"
    assert ch.setting_spec({**P, "prompts": "chained"}, "prompts")["prompts"] == "original"
    assert ch.setting_spec(P, "penalty-1")["penalty"] == 1.0
    with pytest.raises(ValueError, match="penalty-<number>"):
        ch.setting_spec(P, "penalty-x")
