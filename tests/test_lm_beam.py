"""The fast beam search of chapter 04 (collapse_utils.models.lm_beam) against transformers' ``model.generate``:
token for token, on random and trained tiny OPTs, with exact score ties, for greedy and beam search,
repetition penalties 1/2/3, and batch sizes that do and do not divide the number of prompts."""
from __future__ import annotations

import math

import pytest
import torch

from collapse_utils.models import lm_beam, lm_train


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # as chapter 04 runs (and the numbers generate is compared with)
    yield
    torch.set_num_threads(old)


def _model(vocab=256, hidden=32, layers=2, heads=2, seed=0, max_positions=64, attn=None):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = lm_train.tiny_opt_config(vocab, hidden, layers, heads, max_positions=max_positions)
    kw = {"attn_implementation": attn} if attn else {}
    return AutoModelForCausalLM.from_config(cfg, **kw).eval()


def _generate(model, prompts, new_tokens, num_beams, penalty, batch_size, processors=None):
    """Exactly the call of ``lm_train.generate_continuations`` (one process)."""
    from transformers import GenerationConfig, LogitsProcessorList

    gcfg = GenerationConfig(num_beams=num_beams, do_sample=False, min_new_tokens=new_tokens,
                            max_new_tokens=new_tokens, repetition_penalty=penalty, pad_token_id=1, eos_token_id=2,
                            bos_token_id=2, early_stopping=False, num_return_sequences=1)
    out = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            x = prompts[s:s + batch_size]
            out.append(model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gcfg,
                                      logits_processor=LogitsProcessorList(processors or []))[:, x.shape[1]:])
    return torch.cat(out)


def _prompts(n, length, vocab, seed=1):
    return torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def _assert_same(model, prompts, new_tokens, num_beams, penalty, batch_size, stats=None):
    ref = _generate(model, prompts, new_tokens, num_beams, penalty, batch_size)
    got = lm_beam.beam_search(model, prompts, new_tokens, num_beams, penalty, batch_size, stats=stats)
    assert got.shape == (len(prompts), new_tokens) and got.dtype == torch.long
    diff = (got != ref).any(dim=1).nonzero().flatten().tolist()
    assert not diff, f"rows {diff} differ from generate (beams {num_beams}, penalty {penalty}, batch {batch_size})"
    return got


@pytest.fixture(scope="module")
def markov_model():
    """A tiny OPT trained (1-2 s) on a sparse Markov chain: peaked, context-dependent scores."""
    from transformers import AutoModelForCausalLM

    vocab, length = 64, 32
    g = torch.Generator().manual_seed(7)
    succ = torch.randint(3, vocab, (vocab, 3), generator=g)  # three successors per token
    probs = torch.tensor([0.6, 0.3, 0.1])
    torch.manual_seed(0)
    cfg = lm_train.tiny_opt_config(vocab, 32, 2, 2, max_positions=64, dropout=0.0)
    model = AutoModelForCausalLM.from_config(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(150):
        x = torch.empty(32, length, dtype=torch.long)
        x[:, 0] = torch.randint(3, vocab, (32,), generator=g)
        for j in range(1, length):
            pick = torch.multinomial(probs, 32, replacement=True, generator=g)
            x[:, j] = succ[x[:, j - 1], pick]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.set_num_threads(old)
    # trained: far below the uniform log(64) ~ 4.16 nats (the chain's entropy is ~0.9 nats)
    assert float(loss.detach()) < 0.5 * math.log(vocab), float(loss.detach())
    prompts = x[:9, :12].clone()  # prompts from the chain itself
    return model.eval(), prompts


# ---------------------------------------------------------------------------------------------
# token-for-token equality with generate
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_beams", [1, 2, 5])
@pytest.mark.parametrize("penalty", [1.0, 2.0, 3.0])
def test_random_models_match_generate(seed, num_beams, penalty):
    model = _model(seed=seed)
    prompts = _prompts(7, 12, 256, seed=seed + 10)
    batch = 3 if seed != 1 else 7  # 3 does not divide 7 (a short last batch); 7 is one batch
    _assert_same(model, prompts, 16, num_beams, penalty, batch)


@pytest.mark.parametrize("num_beams,penalty", [(2, 1.0), (5, 1.0), (5, 3.0), (1, 2.0)])
def test_trained_model_matches_generate(markov_model, num_beams, penalty):
    model, prompts = markov_model
    _assert_same(model, prompts, 24, num_beams, penalty, 4)


def test_cpu_preset_sized_model_matches_generate(tmp_path):
    """Chapter 04's cpu-preset OPT (vocab 2048, hidden 128, 2 layers, 4 heads), loaded with from_pretrained as
    the chapter loads it; 64-token prompts, exactly 64 new tokens, 5 beams, penalty 3."""
    cfg = lm_train.tiny_opt_config(2048, 128, 2, 4, max_positions=128)
    path = lm_train.new_local_model(cfg, 3, tmp_path / "m")
    model = lm_train.load_model(path).eval()
    prompts = _prompts(5, 64, 2048, seed=5)
    stats = {}
    _assert_same(model, prompts, 64, 5, 3.0, 3, stats=stats)
    assert stats["inline"] and stats["steps"] == 2 * 64


def test_exact_ties_are_broken_as_generate_breaks_them():
    """Tokens sharing one embedding row (the LM head is tied) get bit-identical scores, so beam search has
    to break exact ties among its candidates in generate's order."""
    model = _model(vocab=96, seed=4)
    with torch.no_grad():
        w = model.model.decoder.embed_tokens.weight
        w[3:] = w[3:11].repeat(12, 1)[: w.shape[0] - 3]  # 8 classes of 11-12 identical tokens
    prompts = _prompts(6, 10, 96, seed=6)
    logits = model(input_ids=prompts).logits[:, -1]
    assert torch.equal(logits[:, 3], logits[:, 11])  # the ties are exact
    reranked = 0
    for nb in (2, 5):
        for pen in (1.0, 3.0):
            stats = {}
            _assert_same(model, prompts, 14, nb, pen, 4, stats=stats)
            reranked += stats["reranked"]
    assert reranked > 0  # the re-ranking in generate's order was exercised


def test_repetition_penalty_is_applied(markov_model):
    """With the penalty the continuations change, repeat fewer tokens, and still equal generate's; a
    fast path that ignored the penalty would return the penalty-1 tokens and fail here."""
    model, prompts = markov_model
    plain = _assert_same(model, prompts, 24, 5, 1.0, 9)
    pen = _assert_same(model, prompts, 24, 5, 3.0, 9)
    assert not torch.equal(plain, pen)

    def repeats(x):  # tokens per row that already occurred earlier in prompt + continuation
        full = torch.cat([prompts, x], dim=1)
        return sum(len(r) - len(set(r.tolist())) for r in full) / len(full)

    assert repeats(pen) < repeats(plain)


def test_eager_attention_is_left_to_generate():
    """Eager attention takes generate's explicit causal mask, which the fast path does not build."""
    model = _model(seed=5, attn="eager")
    assert "attention implementation" in lm_beam.fast_beam_unsupported_reason(model, _prompts(2, 8, 256), 8, 2)


def test_inline_layers_are_checked_before_use(monkeypatch):
    """If the written-out layers ever stop matching the model's modules bit for bit (say, a new
    transformers release), the fast path must notice and use the modules."""
    model = _model(seed=6)
    real = lm_beam._forward_inline
    monkeypatch.setattr(lm_beam, "_forward_inline", lambda m, ids, start, cache: real(m, ids, start, cache) * 1.0001)
    monkeypatch.setattr(lm_beam, "_INLINE_OK", {})
    stats = {}
    _assert_same(model, _prompts(4, 8, 256), 10, 2, 3.0, 4, stats=stats)
    assert stats["inline"] is False


# ---------------------------------------------------------------------------------------------
# determinism, shapes, and when the fast path applies
# ---------------------------------------------------------------------------------------------
def test_deterministic_and_independent_of_batch_size():
    model = _model(seed=7)
    prompts = _prompts(8, 10, 256, seed=8)
    a = lm_beam.beam_search(model, prompts, 12, 4, 2.0, batch_size=3)
    b = lm_beam.beam_search(model, prompts, 12, 4, 2.0, batch_size=3)
    c = lm_beam.beam_search(model, prompts, 12, 4, 2.0, batch_size=8)
    assert torch.equal(a, b) and torch.equal(a, c)
    empty = lm_beam.beam_search(model, prompts[:0], 12, 4, 2.0)
    assert empty.shape == (0, 12)


def test_unsupported_cases_are_reported_before_any_work():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = _model(vocab=64, max_positions=32)
    ok = _prompts(2, 8, 64)
    assert lm_beam.fast_beam_supported(model, ok, 16, 5)
    assert lm_beam.fast_beam_unsupported_reason(model, ok, 16, 5) is None
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    assert "OPTForCausalLM" in lm_beam.fast_beam_unsupported_reason(gpt2, ok, 16, 5)
    assert "max_position_embeddings" in lm_beam.fast_beam_unsupported_reason(model, ok, 30, 5)
    assert "too small" in lm_beam.fast_beam_unsupported_reason(model, ok, 8, 40)
    assert "outside the vocabulary" in lm_beam.fast_beam_unsupported_reason(model, ok + 100, 8, 2)
    assert "float32" in lm_beam.fast_beam_unsupported_reason(_model(vocab=64).double(), ok, 8, 2)
    model.train()
    assert "training" in lm_beam.fast_beam_unsupported_reason(model, ok, 8, 2)
    model.eval()
    model.generation_config.no_repeat_ngram_size = 3
    assert "no_repeat_ngram_size" in lm_beam.fast_beam_unsupported_reason(model, ok, 8, 2)
    model.generation_config.no_repeat_ngram_size = None
    with pytest.raises(ValueError) as e:  # every problem in one message
        lm_beam.beam_search(model, ok, 30, 5, repetition_penalty=0.0, batch_size=0)
    msg = str(e.value)
    assert "batch_size" in msg and "repetition_penalty" in msg and "max_position_embeddings" in msg


@pytest.mark.parametrize("num_beams,penalty", [(1, 2.0), (5, 1.0), (5, 2.0)])
def test_watermark_processor_matches_generate(markov_model, num_beams, penalty):
    """Chapter 06 beam-searches with a watermark processor: the fast path applies it after the built-in
    processors as generate does, and the tokens stay identical (and the watermark changes them)."""
    from collapse_utils.models.watermark import GreenList, WatermarkLogitsProcessor

    model, prompts = markov_model
    vocab = model.config.vocab_size
    proc = WatermarkLogitsProcessor(GreenList(vocab, gamma=0.25, key=7), delta=4.0)
    ref = _generate(model, prompts, 12, num_beams, penalty, 4, processors=[proc])
    got = lm_beam.beam_search(model, prompts, 12, num_beams, penalty, 4, logits_processor=[proc])
    assert torch.equal(got, ref)
    plain = lm_beam.beam_search(model, prompts, 12, num_beams, penalty, 4)
    assert not torch.equal(got, plain)  # the bonus changes the search
    # generate_continuations takes the fast path with it, and gives the same tokens
    via = lm_train.generate_continuations(model, prompts, 12, num_beams, penalty, 4, logits_processor=[proc])
    assert torch.equal(via, ref)


def test_processors_that_are_not_rowwise_are_refused(markov_model):
    model, prompts = markov_model

    class Shift:  # not marked row-wise: the fast path cannot know it ignores the row order
        def __call__(self, input_ids, scores):
            return scores

    with pytest.raises(ValueError, match="not marked row-wise: Shift"):
        lm_beam.beam_search(model, prompts, 4, 2, 1.0, 4, logits_processor=[Shift()])
    assert lm_beam.rowwise_processor(Shift()) is False
