"""Chapter 04's study module: the claims' verdicts, both ways, on metrics made by hand; the figure's markers."""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from collapse_utils.chapters import language_models as ch
from collapse_utils.chapters.claims import CONTRADICTED, NOT_RUN, NOT_VISIBLE, REPRODUCED
from collapse_utils.core.params import ParamError
from collapse_utils.tooling.config import load_preset

P = load_preset("cpu", "04")
IDS = ["finetune-improves", "a-rises", "b-rises-less", "b-only-slightly", "data-more-probable", "long-tail",
       "diversity-falls", "chained-prompts-worse", "penalty-no-prevent", "penalty-worse", "b-size"]


def _sizes(a=(0.9, 0.9, 0.9), b=(0.7, 0.4, 0.2), blocks=(256, 512, 1024), generations=3) -> pd.DataFrame:
    """The size study's tidy metrics: (a) and (b) on seed 0 whose test perplexity rises by the given share
    by the last generation (linearly), at each number of training blocks."""
    rows = []
    for n, ra, rb in zip(blocks, a, b):
        for arm, r in (("a", ra), ("b", rb)):
            for g in range(generations + 1):
                rows.append({"setting": f"size{n}-{arm}", "seed": 0, "generation": g, "metric": "test_ppl",
                             "value": 100.0 * (1 + r * g / generations), "blocks": n, "arm": arm})
    return pd.DataFrame(rows)


def _result(base=124.0, a=(118, 150, 190, 230, 270, 304), b=(117, 120, 123, 126, 128, 130),
            abl=(118, 200, 205, 205, 205, 205), chained=(118, 170, 230, 290, 340, 400), d2=(0.60, 0.09, 0.08, 0.07, 0.06, 0.05),
            vocab=(1.0, 0.3, 0.2, 0.15, 0.12, 0.1), medians=(134, 36, 38, 41, 44, 47),
            spreads=(1.4, 1.2, 1.3, 1.4, 1.5, 1.6), seeds=(0, 1)) -> ch.LMResult:
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
    return ch.LMResult(base, pd.DataFrame(rows), pd.concat(seq, ignore_index=True), pd.DataFrame(), pd.DataFrame(book),
                       sizes=_sizes())


def _verdicts(res, p=P) -> dict:
    cl = ch.claims(res, p)
    assert [c.id for c in cl] == IDS + [f"pt-{i}" for i in ch.STUDY_CLAIMS]  # the pretrained study's last
    return {c.id: c.verdict for c in cl if not c.id.startswith("pt-")}


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
    # the tail grows after generation 1 but stays shorter than the real data's: judged against generation 0 too
    v = _verdicts(_result(spreads=(1.8, 1.2, 1.3, 1.4, 1.5, 1.6)))
    assert v["long-tail"] == CONTRADICTED
    v = _verdicts(_result(spreads=(1.4, 1.7, 1.3, 1.4, 1.5, 1.6)))  # longer than the real data's, not generation 1's
    assert v["long-tail"] == CONTRADICTED


def test_size_claim_both_ways():
    """b-size: (b)'s share of (a)'s rise falls with the training-set size -> reproduced; grows -> contradicted;
    unordered, too short, or (a) not rising -> not visible; no study -> not run."""
    def verdict(**kw):
        res = _result()
        res.sizes = _sizes(**kw) if kw.get("blocks", 1) else None
        return {c.id: c for c in ch.claims(res, P)}["b-size"]

    good = verdict()
    assert good.verdict == REPRODUCED and good.kind == "comparison" and good.collapse == "error-rises"
    assert good.extra["ratios"] == "0.78, 0.44, 0.22" and good.extra["blocks"] == "256, 512, 1024"
    assert "256 blocks (26 kept)" in good.measured and "with repetition penalty 2" in good.measured
    assert verdict(b=(0.2, 0.4, 0.7)).verdict == CONTRADICTED
    assert verdict(b=(0.4, 0.2, 0.3)).verdict == NOT_VISIBLE  # neither ordered way
    short = verdict(generations=2)
    assert short.verdict == NOT_VISIBLE and "3 generations" in short.gate
    assert verdict(a=(0.9, -0.1, 0.9)).verdict == NOT_VISIBLE  # (a) falls at one size: no share to compare
    assert verdict(blocks=None).verdict == NOT_RUN
    tab = ch.size_table(_sizes(), 0.1)
    assert list(tab.kept_blocks) == [26, 51, 102] and tab.ratio.iloc[0] == pytest.approx(0.7 / 0.9)


def test_long_tail_reads_the_real_data_and_generation_1():
    c = {c.id: c for c in ch.claims(_result(), P)}["long-tail"]
    assert c.extra["tail_gen0"] == pytest.approx(1.4, rel=0.01) and c.extra["tail_last"] == pytest.approx(1.6, rel=0.01)
    assert "1.40 for the real data, 1.20 at generation 1, 1.60 at generation 5" in c.measured
    assert "(the real data: 1.40)" in ch.tail_markdown(ch.claims(_result(), P))


def test_rises_carry_the_repetition_penalty():
    """A rise quoted at a preset that uses the paper's ablation penalty says so (issue 23)."""
    cl = {c.id: c for c in ch.claims(_result(), P)}
    pen = f"with repetition penalty {P['repetition_penalty']:g}"
    for cid in ("a-rises", "b-rises-less", "b-only-slightly", "chained-prompts-worse"):
        assert pen in cl[cid].measured, cid
    assert cl["a-rises"].extra["penalty"] == P["repetition_penalty"]
    cl1 = {c.id: c for c in ch.claims(_result(), {**P, "repetition_penalty": 1.0})}
    assert "with repetition penalty 1" in cl1["a-rises"].measured


def test_every_claim_has_a_kind_and_a_collapse_definition():
    from collapse_utils.chapters.claims import COLLAPSE_DEFINITIONS, KINDS

    for res in (_result(), _result(base=118.5)):
        for c in ch.claims(res, P):
            assert c.kind in KINDS and c.collapse in COLLAPSE_DEFINITIONS, (c.id, c.kind, c.collapse)


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
    # an ablation with one penalty, and that one none: the penalty comparisons were not run
    v = _verdicts(_result(), {**P, "repetition_penalty": 1.0, "ablation_penalties": [1.0]})
    assert v["penalty-no-prevent"] == NOT_RUN and v["penalty-worse"] == NOT_RUN
    # no comparison seeds: the comparisons were not run (not "too small to tell")
    v = _verdicts(_result(), {**P, "comparison_seeds": 0})
    assert v["chained-prompts-worse"] == NOT_RUN and v["penalty-worse"] == NOT_RUN
    # every "not visible" verdict says what it needs
    for c in [c for c in ch.claims(_result(base=118.5), P) if not c.id.startswith("pt-")]:
        assert c.verdict == NOT_VISIBLE and "by more than 1 % from the base's, against +0.1 % in this run" in c.gate
    gate = {c.id: c.gate for c in ch.claims(short, P)}["long-tail"]
    assert gate == "at least 3 generations after model 0, against 2 in this run"  # only what the run misses
    # (a) rose in every seed though fine-tuning moved nothing: (b)'s gate names only the fine-tuning
    gates = {c.id: c.gate for c in ch.claims(_result(base=118.5), P)}
    for cid in ("b-rises-less", "b-only-slightly"):
        assert "a rise of setting (a)" not in gates[cid], gates[cid]
    # ... and asks for (a)'s rise where (a) did not rise in every seed
    flat = _result()
    m = flat.metrics
    m.loc[(m.setting == "a") & (m.seed == 1) & (m.generation == 5) & (m.metric == "test_ppl"), "value"] = 100.0
    gates = {c.id: (c.verdict, c.gate) for c in ch.claims(flat, P)}
    assert gates["b-rises-less"] == (NOT_VISIBLE, "a rise of setting (a) in every seed to compare (b) with")


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


def test_presets_list_only_what_differs_from_the_declaration():
    import yaml

    from collapse_utils.tooling.config import PRESET_DIR

    raw = yaml.safe_load((PRESET_DIR / "04.yaml").read_text())
    assert set(raw) == {"smoke", "pretrained", "paper"}  # cpu = the declared defaults
    defaults = ch.Params.defaults()
    for name, section in raw.items():
        same = sorted(k for k, v in section.items() if defaults[k] == v)
        assert not same, f"preset {name} repeats the defaults of {same}"
    assert P == defaults and ch.Params.from_values({**P, "preset": "cpu", "run_name": ""}).seeds == 3


def test_parameter_messages_name_the_problem():
    with pytest.raises(ParamError) as e:
        ch.Params.check({**P, "keep_fraction": 1.5, "seeds": 0})
    assert "keep_fraction must lie in (0.0, 1.0), got 1.5" in str(e.value) and "seeds must lie in [1, 100]" in str(e.value)
    with pytest.raises(ParamError, match=r"hidden_size \(128\) must be divisible by num_heads \(3\)"):
        ch.Params.check({**P, "num_heads": 3})
    with pytest.raises(ParamError, match="model_name must be 'local-opt'"):
        ch.Params.check({**P, "model_name": " "})


def test_setting_labels_say_what_ran():
    spec = ch.setting_spec(P, "b")
    assert ch.setting_label("b", spec) == "(b) 10% original data kept, 10 epochs"
    # early stopping ended the fits sooner: the label says how many epochs ran
    assert ch.setting_label("b", spec, 3.0) == "(b) 10% original data kept, up to 10 epochs (3.0 run on average)"
    assert ch.setting_label("a", ch.setting_spec(P, "a"), 5.0) == "(a) no original data, 5 epochs"
    labels = ch._labels(P, _result().metrics)  # the made-up metrics ran 3 epochs per fit
    assert labels["a"] == "(a) no original data, up to 5 epochs (3.0 run on average)"


def test_page_sentences_follow_the_numbers():
    # the tail: grows, shrinks or stays, as the ratio does (spreads are the 95th percentile / median)
    grows = ch.tail_markdown(ch.claims(_result(), P))
    assert "grows from 1.20 at generation 1 to 1.60 at generation 5" in grows
    shrinks = ch.tail_markdown(ch.claims(_result(spreads=(1.8, 1.6, 1.5, 1.4, 1.3, 1.2)), P))
    assert "falls from 1.60 at generation 1 to 1.20" in shrinks and "shrinks" in shrinks
    flat = ch.tail_markdown(ch.claims(_result(spreads=(1.8, 1.14, 1.14, 1.14, 1.14, 1.14)), P))
    assert "stays at 1.14" in flat and "grow" not in flat
    # epochs: one epoch allowed says nothing about further epochs
    res = _result()
    res.metrics["epochs"] = np.where(res.metrics.setting == "b", 10, 1)
    one = ch.epochs_markdown(ch.claims(res, P), P)
    assert "single epoch" in one and "only made the model worse" not in one
    res.metrics["epochs"] = np.where(res.metrics.setting == "b", 10, 5)
    five = ch.epochs_markdown(ch.claims(res, P), P)  # made-up fits: 3 epochs run, the first kept after model 0
    assert "ended its fits after 3.0 epochs on average" in five and "In 10 of the 10 fits" in five
    assert "only made the model worse" in five and "contrast of 5 against 10 epochs did not happen" in five
    # the course: a peak inside the run is named, and a seed far from the others
    peak = _result(a=(118, 150, 250, 230, 220, 210))
    text = ch.course_markdown(peak, {"a": "(a)", "b": "(b)"})
    assert "up to 251.2 at generation 2, then falls to 211.1 by generation 5" in text
    three = _result(seeds=(0, 1, 2))
    m = three.metrics
    m.loc[(m.setting == "b") & (m.seed == 2) & (m.generation == 5) & (m.metric == "test_ppl"), "value"] = 100.0
    text = ch.course_markdown(three, {"a": "(a)", "b": "(b)"})
    assert "seed 2 at 100.0, 23% below the seeds' median" in text and "seed 0" not in text
    # near-degenerate text: measured against a tenth of the real median
    deg = ch.degenerate_markdown(_result(medians=(134, 36, 38, 41, 44, 10)))
    assert "below 13.4" in deg and "low-perplexity mass" in deg
    assert "low-perplexity mass" not in ch.degenerate_markdown(_result())


def test_epochs_sentence_counts_the_first_epoch_fits_truthfully():
    """"in most fits" only where some fit kept a later epoch; "in every fit" where all kept the first."""
    cl = ch.claims(_result(), P)
    a = next(c for c in cl if c.id == "a-rises")
    a.extra.update(epochs_allowed=5.0, epochs_run=3.3, first_epoch_fits=15, later_fits=15)
    text = ch.epochs_markdown(cl, {**P, "patience": 2})
    assert "In 15 of the 15 fits" in text and "in every fit" in text and "in most fits" not in text
    a.extra.update(first_epoch_fits=12)
    text = ch.epochs_markdown(cl, {**P, "patience": 2})
    assert "In 12 of the 15 fits" in text and "in most fits" in text
