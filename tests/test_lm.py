"""Chapter 04: blocks, splits, per-sequence perplexity, generation, recursion bookkeeping, determinism,
the offline from_pretrained path, a 2-process Accelerate launch, and a papermill smoke run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from collapse_utils.models import lm, lm_data, lm_train
from collapse_utils.chapters import language_models as ch
from collapse_utils.tooling.config import ParamError, load_preset
from collapse_utils.core.data import DataError
from collapse_utils.core.engine import run_recursion

ROOT = Path(__file__).resolve().parents[1]

TINY = {**load_preset("smoke", "04"), "preset": "smoke", "run_name": "", "train_blocks": 20, "valid_blocks": 8,
        "test_blocks": 8, "base_blocks": 48, "hidden_size": 16, "num_beams": 2, "generations": 2,
        "batch_size": 8, "gen_batch_size": 16, "pretrained": {}}  # the pretrained study: tests/test_pretrained.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Real WikiText-2 blocks (smoke tokenizer, cached) and a tiny locally pretrained OPT base."""
    root = tmp_path_factory.mktemp("lm")
    data = lm.prepare_data(TINY)
    base = lm.prepare_base(TINY, data, root / "cache", progress=False)
    return data, base, root


def _experiment(data, base, model_dir, epochs=1, penalty=3.0, n_div=None, prompts="original", regime="replace"):
    return lm.LMCollapse(base, data, epochs, 3e-4, 8, 2, penalty, 16, n_div or len(data.train), 0, model_dir,
                         prompts=prompts, regime=regime)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def test_make_blocks_cuts_exact_blocks_and_drops_the_remainder():
    ids = np.arange(64 * 3 + 17)
    b = lm_data.make_blocks(ids, 64)
    assert b.shape == (3, 64) and b.dtype == torch.long
    assert torch.equal(b.reshape(-1), torch.arange(64 * 3))  # order kept, nothing lost but the tail
    assert lm_data.make_blocks(np.arange(63), 64).shape == (0, 64)


def test_blocks_are_exact_and_splits_do_not_leak(tiny):
    data, _, _ = tiny
    for part in (data.train, data.base, data.valid, data.test):
        assert part.ndim == 2 and part.shape[1] == 64 and part.dtype == torch.long
    assert len(data.train) == TINY["train_blocks"] and len(data.base) == TINY["base_blocks"]
    # recursion and base-pretraining blocks come from disjoint halves of the training split
    rec, base = data.info["recursion_index_range"], data.info["base_index_range"]
    assert base[1] < rec[0]
    rows = {s: {tuple(r) for r in t.tolist()} for s, t in
            (("train", data.train), ("base", data.base), ("valid", data.valid), ("test", data.test))}
    for a, ra in rows.items():
        for b, rb in rows.items():
            if a < b:
                assert not ra & rb, f"{a} and {b} share a block"
    # the recursion pool as a whole shares no block with validation or test
    full = lm_data._tokenized_splits("wikitext-2-v1", "local-bpe", TINY["vocab_size"], True)[1]
    tr = {tuple(r) for r in lm_data.make_blocks(full["train"]).tolist()}
    assert not tr & {tuple(r) for r in lm_data.make_blocks(full["test"]).tolist()}


def test_tokenizer_round_trips_wikitext_and_keeps_unk_whole(tiny):
    data, _, _ = tiny
    tok = lm_data.load_tokenizer(data.tokenizer_path)
    text = " The game began <unk> development in 2010 , carrying over a large portion .\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("<unk>") in ids and tok.pad_token_id == 1 and tok.eos_token_id == 2


def test_headings_are_recognised():
    assert lm_data.is_heading(" = = Gameplay = = \n") and lm_data.is_heading(" = Valkyria Chronicles III = \n")
    assert not lm_data.is_heading(" The score was 2 = 3 in the end .\n")


def test_missing_data_gives_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="wiki.train.tokens"):
        lm_data.load_lines("wikitext-2-v1", "train", path=tmp_path / "nowhere")


def test_diversity_by_hand():
    d = lm_data.diversity(torch.tensor([[1, 2, 1, 2]]), reference_vocab={1, 2, 3})
    assert d["distinct_1"] == pytest.approx(2 / 4) and d["distinct_2"] == pytest.approx(2 / 3)
    assert d["distinct_3"] == pytest.approx(2 / 2) and d["unigram_entropy"] == pytest.approx(1.0)
    assert d["vocab_share"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def _tiny_model(vocab=50, seed=0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(lm_train.tiny_opt_config(vocab, 16, 1, 2, max_positions=160)).eval()


def test_sequence_nll_matches_a_hand_computation():
    model = _tiny_model()
    blocks = torch.randint(3, 50, (5, 12))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=blocks).logits.double(), dim=-1)
    by_hand = []
    for row, lp in zip(blocks, logp):
        by_hand.append(-np.mean([lp[t, row[t + 1]].item() for t in range(len(row) - 1)]))
    got = lm_train.sequence_nll(model, blocks, batch_size=2)  # batches of 2: values stay per sequence
    np.testing.assert_allclose(got, by_hand, rtol=1e-5)
    assert np.ptp(got) > 0
    stats = lm_train.perplexity_stats(got, "t")
    assert stats["t_ppl"] == pytest.approx(np.exp(np.mean(by_hand)))
    assert stats["t_ppl_seq_mean"] == pytest.approx(np.mean(np.exp(by_hand)))


def test_generation_gives_exactly_64_new_tokens_even_when_eos_is_likely():
    model = _tiny_model(seed=1)
    with torch.no_grad():  # make end-of-sequence the model's favourite token everywhere
        model.model.decoder.embed_tokens.weight[2] *= 0
        model.model.decoder.embed_tokens.weight[2] += 5 * model.model.decoder.final_layer_norm.bias.sign() + 5
        model.model.decoder.final_layer_norm.weight.zero_()
        model.model.decoder.final_layer_norm.bias.copy_(torch.ones(16))
    prompts = torch.randint(3, 50, (3, 64))
    greedy = model.generate(input_ids=prompts[:1], attention_mask=torch.ones_like(prompts[:1]), max_new_tokens=5,
                            do_sample=False, pad_token_id=1, eos_token_id=2)
    assert greedy[0, 64] == 2  # without a minimum length the model would stop at once
    out = lm_train.generate_continuations(model, prompts, 64, num_beams=5, repetition_penalty=3.0, batch_size=2)
    assert out.shape == (3, 64) and out.dtype == torch.long
    assert not (out == 2).any()  # no end-of-sequence before the 64th token
    again = lm_train.generate_continuations(model, prompts, 64, num_beams=5, repetition_penalty=3.0, batch_size=3)
    assert torch.equal(out, again)  # beam search is deterministic and independent of batching


def test_the_generation_step_shown_on_the_page_gives_the_tokens_of_the_fast_path():
    """The page shows ``beam_continuations`` (transformers' generate); on a CPU the chapter runs
    ``lm_beam.beam_search`` instead: the same tokens, row for row, at the chapter's settings."""
    from collapse_utils.models import lm_beam

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # as the chapter computes (threads_per_run = 1)
    try:
        model = _tiny_model(vocab=64, seed=3)
        prompts = torch.randint(3, 64, (6, 16), generator=torch.Generator().manual_seed(4))
        assert lm_beam.fast_beam_unsupported_reason(model, prompts, 12, 5) is None  # the fast path applies
        for penalty in (1.0, 2.0):
            shown = lm_train.beam_continuations(model, prompts, 12, 5, penalty)
            ran = lm_train.generate_continuations(model, prompts, 12, 5, penalty, batch_size=4)
            assert shown.shape == ran.shape == (6, 12)
            assert torch.equal(shown, ran), f"penalty {penalty}: the fast path differs from generate"
    finally:
        torch.set_num_threads(old)


def test_offline_by_name_path_loads_a_saved_opt(tiny, tmp_path):
    """The paper preset's from_pretrained(name) path, with a tiny OPT saved to a local folder."""
    data, _, _ = tiny
    folder = tmp_path / "tiny-opt"
    tok = lm_data.load_tokenizer(data.tokenizer_path)
    lm_train.new_local_model(lm_train.tiny_opt_config(len(tok), 16, 1, 2), 7, folder, tok)
    p = {**TINY, "model_name": str(folder)}
    ch.Params.check(p)
    d2 = lm.prepare_data(p, cache=tmp_path / "tokcache")  # tokenised with AutoTokenizer.from_pretrained(folder)
    assert d2.tokenizer_path == str(folder) and d2.train.shape[1] == 64 and len(d2.base) == 0
    base = lm.prepare_base(p, d2, tmp_path / "unused")
    assert base.path == str(folder) and not base.info["local"]
    assert np.isfinite(base.test_ppl) and base.test_ppl > len(tok) * 0.5  # untrained: near uniform
    m = lm_train.load_model(folder)
    assert m.config.model_type == "opt" and m.config.hidden_size == 16


# ---------------------------------------------------------------------------------------------
# the recursion
# ---------------------------------------------------------------------------------------------
def test_keep_real_bookkeeping(tiny, tmp_path):
    data, base, _ = tiny
    n = len(data.train)
    exp = _experiment(data, base, tmp_path / "models", n_div=n - round(0.1 * n), regime="keep_real(0.1)")
    res = run_recursion(exp, data.train, 2, "keep_real(0.1)", seed=3, progress=False,
                        checkpoint_dir=tmp_path / "ckpt")
    book = res.bookkeeping
    k = round(0.1 * n)
    assert list(book.n_train) == [n, n, n] and list(book.n_real) == [n, k, k]
    assert list(book.n_synthetic) == [0, n - k, n - k]
    from collapse_utils.core.engine import Checkpoints

    state = Checkpoints(tmp_path / "ckpt").load_newest()
    comp = state["composition"]
    real_rows = {tuple(r) for r in data.train.tolist()}
    assert all(tuple(r) in real_rows for r in comp.data[:k].tolist())  # the kept blocks are original blocks
    assert sum(tuple(r) in real_rows for r in comp.data[k:].tolist()) == 0  # the rest is generated
    assert comp.data.shape == (n, 64)
    # per-sequence perplexities of the generated part only, for every generation
    assert [len(exp.state["per_seq"][g]) for g in range(3)] == [n, n - k, n - k]
    # original prompts: generation 1's model continued exactly the original blocks that generation 2 does not keep
    from collapse_utils.core.engine import GenerationContext

    index = {tuple(r): i for i, r in enumerate(data.train.tolist())}
    kept = {index[tuple(r)] for r in comp.data[:k].tolist()}
    prompts = exp.prompts_for(n - k, GenerationContext(seed=3, generation=1))
    continued = {index[tuple(r)] for r in prompts.tolist()}
    assert len(kept) == k and len(continued) == n - k and kept.isdisjoint(continued)
    assert kept | continued == set(range(n))


def test_original_prompts_are_original_blocks_and_chained_ones_are_not(tiny, tmp_path):
    data, base, _ = tiny
    real_rows = {tuple(r) for r in data.train.tolist()}
    for prompts, from_real in (("original", True), ("chained", False)):
        exp = _experiment(data, base, tmp_path / f"models-{prompts}", prompts=prompts)
        run_recursion(exp, data.train, 1, "replace", seed=4, progress=False)
        from collapse_utils.core.engine import GenerationContext

        got = exp.prompts_for(len(data.train), GenerationContext(seed=4, generation=1))
        share = np.mean([tuple(r) in real_rows for r in got.tolist()])
        assert share == (1.0 if from_real else 0.0), prompts
    with pytest.raises(ValueError, match="prompts must be one of"):
        _experiment(data, base, tmp_path / "x", prompts="synthetic")


def test_recursion_is_deterministic_under_a_seed_and_resumes(tiny, tmp_path):
    data, base, _ = tiny

    def go(tag, seed):
        exp = _experiment(data, base, tmp_path / f"models-{tag}")
        res = run_recursion(exp, data.train, 2, "replace", seed=seed, progress=False,
                            checkpoint_dir=tmp_path / f"ckpt-{tag}")
        return res, exp

    r1, e1 = go("one", 5)
    r2, e2 = go("two", 5)  # separate model folders: everything is recomputed
    pd.testing.assert_frame_equal(r1.metrics, r2.metrics)
    assert e1.state["examples"] == e2.state["examples"]
    for g in range(3):
        np.testing.assert_array_equal(e1.state["per_seq"][g], e2.state["per_seq"][g])
    r3, _ = go("three", 6)
    assert not np.allclose(r1.metrics.value, r3.metrics.value)
    # a rerun of a finished run resumes from its checkpoint and computes nothing
    r4, e4 = go("one", 5)
    assert r4.resumed_from == 3
    pd.testing.assert_frame_equal(r1.metrics, r4.metrics)
    assert set(e4.state["per_seq"]) == {0, 1, 2}
    # the engine checkpointed model 0's path for evaluation after a resume
    assert Path(e4.state["gen0_path"]).exists()
    m = r1.wide().set_index("generation")
    assert {"test_ppl", "data_gen0_ppl_seq_median", "distinct_2", "vocab_share", "best_epoch"} <= set(m.columns)


def test_seeds_in_worker_processes_give_the_same_results(tiny, tmp_path):
    """parallel_runs only changes where the seeds run: two spawned workers reproduce the in-process run
    exactly (metrics, per-sequence perplexities, continuations) -- each computes with threads_per_run."""
    data, base, _ = tiny
    p = {**TINY, "seeds": 2, "generations": 1, "parallel_runs": 1}
    one = ch.run_setting(p, data, base, "b", tmp_path / "one", progress=False)
    two = ch.run_setting({**p, "parallel_runs": 2}, data, base, "b", tmp_path / "two", progress=False)
    assert sorted(one.metrics.seed.unique()) == [0, 1]
    cols = ["seed", "generation", "metric"]
    a, b = (r.metrics.sort_values(cols).reset_index(drop=True) for r in (one, two))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    pd.testing.assert_frame_equal(one.per_seq, two.per_seq, check_exact=True)
    pd.testing.assert_frame_equal(one.examples, two.examples)
    assert (one.bookkeeping.n_real.tolist(), two.bookkeeping.n_real.tolist()) == ([20, 2] * 2, [20, 2] * 2)


def test_a_piece_of_the_loop_swapped_on_the_page_runs(tiny, tmp_path):
    """The notebook assembles setting (a)'s loop and passes it to ``run``: swapping its regime for
    ``keep_real(0.5)`` runs that recursion (half of the real blocks kept each generation), and the
    default loop's is ``replace`` (none kept); setting (b) keeps its own regime either way."""
    import collapse_utils as cu

    data, base, _ = tiny
    p = ch.Params.from_values({**TINY, "seeds": 1, "generations": 1, "comparison_seeds": 0})
    default = ch.default_loop(p, data, base)
    assert str(default.regime) == "replace" and default.generations == 1
    assert (default.experiment.epochs, default.experiment.repetition_penalty) == (p.epochs_a, p.repetition_penalty)
    swapped = cu.Loop(experiment=default.experiment, regime="keep_real(0.5)", generations=p.generations)
    res = ch.run(p, swapped, checkpoint_root=tmp_path / "ckpt", progress=False)
    m = res.metrics
    assert set(m.loc[m.setting == "a", "regime"]) == {"keep_real(0.5)"}
    assert set(m.loc[m.setting == "b", "regime"]) == {"keep_real(0.1)"}
    book = res.bookkeeping.set_index(["setting", "generation"])
    n = len(data.train)
    assert (book.loc[("a", 1), "n_real"], book.loc[("a", 1), "n_synthetic"]) == (n // 2, n - n // 2)
    assert res.labels["a"].startswith("(a) 50% original data kept")
    assert np.isfinite(m.loc[m.metric == "test_ppl", "value"]).all()
    assert default.experiment.state["per_seq"] == {}  # the page's experiment is a template: runs use copies


# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------
def test_bad_parameters_give_one_error_listing_all():
    bad = {**TINY, "seeds": 0, "data_config": "wikitext-103", "keep_fraction": 1.5, "num_heads": 3}
    with pytest.raises(ParamError) as e:
        ch.Params.check(bad)
    msg = str(e.value)
    assert "seeds" in msg and "data_config" in msg and "keep_fraction" in msg
    with pytest.raises(ParamError, match="divisible"):
        ch.Params.check({**TINY, "num_heads": 3})
    with pytest.raises(ParamError, match="comparison_seeds"):
        ch.Params.check({**TINY, "comparison_seeds": 5})
    with pytest.raises(ParamError, match="ablation_penalties"):
        ch.Params.check({**TINY, "ablation_penalties": [1.0, 1.0]})
    with pytest.raises(ParamError, match="prompts"):
        ch.Params.check({**TINY, "prompts": "synthetic"})
    with pytest.raises(ParamError, match="tokenize"):
        ch.Params.check({**TINY, "tokenize": "words"})
    with pytest.raises(ParamError, match="wikitext-2-v1"):
        ch.Params.check({**TINY, "data_config": "wikitext-2-raw-v1"})


def test_paper_preset_is_the_paper():
    p = load_preset("paper", "04")
    assert p["model_name"] == "facebook/opt-125m" and p["data_config"] == "wikitext-2-raw-v1"
    assert (p["lr"], p["batch_size"], p["num_beams"], p["block_size"]) == (2e-5, 128, 5, 64)
    # the paper's text: plain beam search; the paper's ablation: none vs 2.0; original-block prompts; HF's recipe
    assert (p["epochs_a"], p["epochs_b"], p["keep_fraction"], p["repetition_penalty"]) == (5, 10, 0.1, 1.0)
    assert (p["ablation_penalties"], p["prompts"], p["tokenize"]) == ([1.0, 2.0], "original", "hf_clm")
    assert ch.comparison_settings(p) == ["prompts", "penalty-2"]
    assert (p["seeds"], p["generations"], p["train_blocks"]) == (5, 9, 0)
    assert ch.setting_spec(p, "b")["regime"] == "keep_real(0.1)"


# ---------------------------------------------------------------------------------------------
# multi-process training and the chapter
# ---------------------------------------------------------------------------------------------
def test_two_process_accelerate_launch_on_cpu(tiny, tmp_path):
    data, base, _ = tiny
    launcher = Path(sys.executable).with_name("accelerate")
    if not launcher.exists():
        pytest.skip("the accelerate command line is not installed")
    torch.save({"train": data.train[:16], "valid": data.valid}, tmp_path / "blocks.pt")
    # `accelerate launch --cpu` starts one process (multi-CPU runs expect MPI); `--multi_gpu` starts the
    # processes through torchrun, and COLLAPSE_FORCE_CPU makes each one a CPU process joined over gloo
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLLAPSE_TORCH_THREADS": "1",
           "COLLAPSE_FORCE_CPU": "1"}
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "collapse_utils.models.lm_train", "--model", base.path,
           "--blocks", str(tmp_path / "blocks.pt"), "--out", str(tmp_path / "out"), "--epochs", "2",
           "--lr", "3e-4", "--batch-size", "8", "--generate", "5", "--num-beams", "2"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert res["num_processes"] == 2 and len(res["val_losses"]) == 2 and res["generated_shape"] == [5, 64]
    assert res["tokens_seen"] == 2 * 16 * 64  # two epochs over 16 blocks, split between the processes
    gen = torch.load(tmp_path / "out" / "generated.pt")
    # the gathered continuations equal a single-process generation with the same model
    single = lm_train.generate_continuations(lm_train.load_model(tmp_path / "out" / "model"), data.train[:5], 64,
                                             num_beams=2, repetition_penalty=3.0)
    assert torch.equal(gen, single)


@pytest.mark.slow
def test_chapter_04_smoke_run(smoke_chapter, read_executed, results_tmp):
    text, images = read_executed(smoke_chapter("04"))
    assert "produced with the `smoke` preset" in text and "dataset configuration" in text
    assert images >= 4
    run = results_tmp / "04_language_models" / "smoke"
    m = pd.read_csv(run / "metrics.csv")
    assert {"experiment", "regime", "seed", "generation", "metric", "value", "setting"} <= set(m.columns)
    assert set(m.setting) == {"a", "b", "prompts", "penalty-1"} and set(m.regime) == {"replace", "keep_real(0.1)"}
    assert set(m.loc[m.setting == "prompts", "prompts"]) == {"chained"} and set(m.loc[m.setting == "a", "prompts"]) == {
        "original"}
    assert (run / "per_sequence_perplexity.csv").exists() and (run / "continuations.csv").exists()
    assert json.loads((run / "params.json").read_text())["preset"] == "smoke"
    # the smoke preset runs the pretrained study's machinery: SmolLM2-135M, (a) and (b), one generation
    pm = pd.read_csv(run / "pretrained_metrics.csv")
    assert set(pm.setting) == {"a", "b"} and pm.generation.max() == 1
    assert (run / "pretrained_continuations.csv").exists()
    assert "SmolLM2-135M-Instruct" in text and "fetched and verified through the dataset registry" in text
    claims = pd.read_csv(run / "claims.csv")
    pt = claims[claims.id.str.startswith("pt-")]
    assert len(pt) == 6 and not (pt.verdict == "not run at this preset").any()
    shutil.rmtree(run / "checkpoints", ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the paper preset's path: wikitext-2-raw-v1, Hugging Face's tokenisation recipe, a model loaded by path
# ---------------------------------------------------------------------------------------------
def test_raw_wikitext_with_the_hf_recipe_and_an_opt_saved_by_save_pretrained(tmp_path, monkeypatch):
    """The calls the paper preset makes by name, offline: the raw validation and test splits from their verified
    local files, the raw training split through Hugging Face ``datasets`` (replaced here by a small raw split cut
    from the test file -- the raw training split is not available offline), an OPT-style tokenizer and a tiny OPT
    written by ``save_pretrained`` into one folder and loaded by path, tokenised by the recipe, one generation."""
    from collapse_utils.core.data import dataset_file

    test_file = dataset_file("wikitext-2-raw", "wiki.test.raw")
    lines = test_file.read_text(encoding="utf-8").splitlines(keepends=True)
    rows = lm_data.file_rows(lines)
    stand_in = {"train": rows[:600]}
    calls = []

    def fake_load_dataset(path, config, split):
        calls.append((path, config, split))
        assert (path, config) == ("wikitext", "wikitext-2-raw-v1")
        return {"text": stand_in[split]}

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    folder = tmp_path / "opt-tiny"
    tok = lm_data.opt_style_tokenizer(dataset_file("gpt2-bpe", "vocab.json"), dataset_file("gpt2-bpe", "merges.txt"),
                                      folder)
    lm_train.new_local_model(lm_train.tiny_opt_config(len(tok), 16, 1, 2), 11, folder, tok)
    p = {**TINY, "model_name": str(folder), "data_config": "wikitext-2-raw-v1", "tokenize": "hf_clm",
         "drop_headings": False, "train_blocks": 12, "valid_blocks": 4, "test_blocks": 6, "generations": 1,
         "seeds": 1, "comparison_seeds": 0, "repetition_penalty": 1.0}
    ch.Params.check(p)
    data = lm.prepare_data(p, cache=tmp_path / "tokcache")
    assert [c[2] for c in calls] == ["train"]  # validation and test came from the verified local files
    # the recipe: every row through tokenizer(rows) with special tokens -- </s> before each, a blank row a lone </s>
    ids = lm_data._tokenized_splits("wikitext-2-raw-v1", str(folder), 0, False, cache=tmp_path / "tokcache",
                                    tokenize="hf_clm")[1]
    expected = lm_data.encode_lines(tok, rows, special_tokens=True)
    np.testing.assert_array_equal(ids["test"], expected)
    assert int((ids["test"] == 2).sum()) == len(rows)  # one </s> per row of the file
    assert data.info["eos_tokens"]["test"] == len(rows) and "causal-LM recipe" in data.describe()
    plain = lm_data.encode_lines(tok, lm_data.load_lines("wikitext-2-raw-v1", "test"))
    assert not (plain == 2).any() and len(plain) == len(ids["test"]) - len(rows)
    # the model is loaded by path, like facebook/opt-125m by name; one generation of setting (a)
    base = lm.prepare_base(p, data, tmp_path / "unused")
    assert base.path == str(folder) and not base.info["local"]
    res = ch.run_setting(p, data, base, "a", tmp_path / "run", progress=False)
    w = res.metrics.pivot_table(index="generation", columns="metric", values="value")
    assert list(w.index) == [0, 1] and np.isfinite(w["test_ppl"]).all()
    cont = res.examples[res.examples.generation == 1].text.iloc[0]
    assert "</s>" not in cont  # beam search with a fixed length never writes the end token
