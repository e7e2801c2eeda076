"""`python -m collapse_utils plan`: the runs of every chapter at every preset and their estimated cost."""
from __future__ import annotations

import math

import pytest

from collapse_utils.tooling import plan as P
from collapse_utils.tooling.config import CHAPTERS, PRESETS, available_chapters, load_preset
from collapse_utils.tooling.runner import main

CHAPTER_IDS = [c for c in CHAPTERS if c in available_chapters()]


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_every_preset_prints_runs_and_a_cost_that_grows_from_smoke_to_paper(chapter):
    plans = {preset: P.plan(chapter, preset) for preset in PRESETS}
    for preset, pl in plans.items():
        assert pl.items and pl.jobs >= 1 and pl.runs >= pl.jobs
        assert all(i.cpu_s > 0 and i.work and all(v >= 0 for v in i.work.values()) for i in pl.items), preset
        assert pl.cpu_seconds > 0 and math.isfinite(pl.cpu_seconds)
        text = P.format_plan(pl)
        assert f"chapter {chapter}" in text and f"preset {preset}" in text and "CPU:" in text and "verdict:" in text
    cpu = [plans[p].cpu_seconds for p in ("smoke", "cpu", "paper")]
    assert cpu[0] < cpu[1] < cpu[2], cpu
    if plans["paper"].gpu_seconds is not None:
        assert 0 < plans["smoke"].gpu_seconds < plans["paper"].gpu_seconds


def test_the_language_model_paper_preset_counts_the_papers_work():
    """Setting (a) at paper: 5 seeds x 10 models x 5 epochs over WikiText-2 in 64-token blocks, and every
    generation but the last writes a block per training block with five beams."""
    p = load_preset("paper", "04")
    pl = P.plan("04", "paper")
    a = next(i for i in pl.items if i.name.startswith("(a)"))
    blocks = math.ceil(P.WIKITEXT2_TRAIN_WORDS * P.BPE_TOKENS_PER_WORD / 64)
    assert 36_000 < blocks < 38_000  # about 2.4 M BPE tokens
    G = p["generations"]
    assert a.jobs == p["seeds"] == 5
    assert a.work["train tokens"] == 5 * (G + 1) * p["epochs_a"] * blocks * 64
    assert a.work["beam-5 blocks"] == 5 * G * blocks
    # costed at OPT-125m's measured rates: seconds = tokens x s/token + blocks x s/block + evaluation
    m = P.MEASURED
    expect = (a.work["train tokens"] * m["lm_opt125m_train_s_per_token"]
              + a.work["beam-5 blocks"] * m["lm_opt125m_beam5_s_per_block"]
              + a.work["eval tokens"] * m["lm_opt125m_train_s_per_token"] / 3)
    assert a.cpu_s == pytest.approx(expect)
    # far beyond one CPU, hours of one GPU: the verdict says so
    assert pl.cpu_seconds > 30 * 86400 and pl.gpu_seconds < pl.cpu_seconds / 100
    assert pl.verdict().startswith("GPUs")


def test_the_vae_estimate_follows_the_steps_of_every_generation():
    p = load_preset("paper", "03")
    pl = P.plan("03", "paper")
    steps = p["epochs"] * math.ceil(p["n_train"] / p["batch_size"])
    runs = [i for i in pl.items if "generations" in i.name]
    assert len(runs) == len(p["conditions"])
    # generation 0 is fitted once per seed and shared by the conditions
    fits = p["seeds"] * (1 + len(p["conditions"]) * p["generations"])
    assert sum(i.work["image-steps"] for i in runs) == pytest.approx(fits * steps * p["batch_size"])
    # twice the measured cost per image-step: twice the estimate
    doubled = {k: v * (2 if k.startswith("vae_s_") else 1) for k, v in P.MEASURED.items()}
    assert P.plan("03", "paper", doubled).cpu_seconds == pytest.approx(2 * pl.cpu_seconds)


def test_measurements_are_all_positive_and_the_gpu_is_named():
    assert all(v > 0 for v in P.MEASURED.values())
    with pytest.raises(KeyError, match="unknown GPU"):
        P.plan("03", "paper", gpu="TPU")
    assert P.plan("03", "paper", gpu="A100").gpu_seconds > P.plan("03", "paper", gpu="H100").gpu_seconds


def test_the_cli_prints_a_plan_and_the_table(capsys):
    assert main(["plan", "04", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "chapter 04" in out and "(a) replace" in out and "GPU:" in out and "H100" in out
    assert main(["plan", "--table", "--preset", "paper"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| chapter") and len(table) == 2 + len(CHAPTER_IDS)
