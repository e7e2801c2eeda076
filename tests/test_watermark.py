"""The green-list watermark: independent keyed green lists, the z-test's null distribution checked against
independent computations (over keys, by hand, the binomial law), the detector's scoring rules, the null over
keys, the logits processor inside real beam search and sampling, the radioactivity count, and bad parameters."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from collapse_utils.models import lm, lm_train
from collapse_utils.models.lm_sample import sample_continuations
from collapse_utils.tooling.config import load_preset
from collapse_utils.models.watermark import (
    GreenList,
    WatermarkLogitsProcessor,
    green_counts,
    green_share_unique,
    keys_for_null,
    null_over_keys,
    z_from_counts,
    z_scores,
)

V = 512


def test_green_lists_are_keyed_independent_per_context_and_of_binomial_size():
    a, b, c = GreenList(V, 0.25, key=7), GreenList(V, 0.25, key=7), GreenList(V, 0.25, key=8)
    prev = torch.arange(V)
    ma, mb, mc = a.mask(prev), b.mask(prev), c.mask(prev)
    assert torch.equal(ma, mb) and not torch.equal(ma, mc)
    # every pair green with probability gamma: the share over all V x V pairs, within binomial error
    n = V * V
    assert abs(ma.float().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    # a list's size is Binomial(V, gamma) (independent draws per context), not a fixed window of one order
    sizes = ma.sum(dim=1).double()
    assert abs(sizes.mean().item() - 0.25 * V) < 4 * math.sqrt(0.25 * 0.75 * V / V)
    assert abs(sizes.var().item() / (V * 0.25 * 0.75) - 1) < 0.25
    # lists of different contexts are independent: two lists share about gamma^2 of the vocabulary
    shared = (ma[:-1] & ma[1:]).double().mean().item()
    assert abs(shared - 0.25 ** 2) < 4 * math.sqrt(0.0625 * 0.9375 / ((V - 1) * V))
    # and the same context under two keys: independent too
    assert abs((ma & mc).double().mean().item() - 0.0625) < 4 * math.sqrt(0.0625 * 0.9375 / n)
    # is_green agrees with the mask, elementwise
    tok = torch.randint(0, V, (V,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.is_green(prev, tok), ma[prev, tok])
    assert a.effective_gamma == pytest.approx(0.25, abs=1e-9)


def test_z_scores_of_unwatermarked_random_text_are_standard_normal():
    """Random token sequences know nothing of the key: every scored token is green with probability gamma,
    so z has mean 0 and variance 1 (up to Monte-Carlo error; n = 4000 sequences of 64 tokens)."""
    n = 4000
    g = GreenList(V, 0.25, key=123)
    seqs = torch.randint(0, V, (n, 64), generator=torch.Generator().manual_seed(1))
    for kw in ({}, {"ignore_repeats": True, "ignore_ids": (0, 1, 2, 3)}):
        for t in (8, 64):
            z = z_scores(seqs, g, tokens=t, **kw)
            assert abs(z.mean()) < 4 / np.sqrt(n) and abs(z.var(ddof=1) - 1) < 4 * np.sqrt(2 / (n - 1)), (kw, t)


def test_green_fraction_of_a_fixed_text_over_many_keys_is_gamma():
    """The null is a statement over keys: for one fixed, very repetitive text, each distinct pair is green
    with probability gamma over keys -- the mean over 400 keys lies within binomial error of gamma."""
    zipf = torch.as_tensor(np.minimum(np.random.default_rng(2).zipf(1.5, (1, 64)), V) - 1)
    n_pairs = green_share_unique(zipf, GreenList(V, 0.25, 1))["unique_pairs"]
    shares = [green_share_unique(zipf, GreenList(V, 0.25, key=k))["green_share"] for k in range(400)]
    assert abs(np.mean(shares) - 0.25) < 4 * np.sqrt(0.25 * 0.75 / n_pairs / 400)
    # and the spread over keys is the binomial one (distinct pairs are independent coin flips)
    assert abs(np.var(shares, ddof=1) / (0.25 * 0.75 / n_pairs) - 1) < 0.35


def _fully_green(g: GreenList, length: int, start: int = 5) -> torch.Tensor:
    """A sequence whose every (previous, token) pair is green and distinct, found greedily."""
    seq, used = [start], set()
    for _ in range(length - 1):
        m = g.mask(torch.tensor([seq[-1]]))[0]
        nxt = next(int(t) for t in torch.nonzero(m).flatten() if (seq[-1], int(t)) not in used and int(t) > 3)
        used.add((seq[-1], nxt))
        seq.append(nxt)
    return torch.tensor([seq])


def test_z_of_a_fully_green_sequence_is_the_formula():
    g = GreenList(V, 0.25, key=9)
    seq = _fully_green(g, 40)
    n = 39
    expected = (n - 0.25 * n) / math.sqrt(n * 0.25 * 0.75)  # = sqrt(n (1 - gamma) / gamma)
    assert z_scores(seq, g)[0] == pytest.approx(expected)
    assert z_scores(seq, g, ignore_repeats=True)[0] == pytest.approx(math.sqrt(n * 3))


def test_green_counts_score_pairs_by_hand_with_repeats_and_special_tokens():
    g = GreenList(16, 0.5, key=3)
    block = torch.tensor([[1, 5, 9, 2, 7]])
    hits = [bool(g.is_green(torch.tensor(a), torch.tensor(b))) for a, b in [(1, 5), (5, 9), (9, 2), (2, 7)]]
    k, n = green_counts(block, g)
    assert n[0] == 4 and k[0] == sum(hits)
    k3, n3 = green_counts(block, g, tokens=3)
    assert n3[0] == 2 and k3[0] == sum(hits[:2])
    assert z_from_counts(k, n, 0.5)[0] == pytest.approx((sum(hits) - 2) / 1.0)
    # a repeated pair is scored once; a pair with an ignored id not at all
    rep = torch.tensor([[4, 6, 4, 6, 4, 6, 8]])          # pairs: (4,6) x3, (6,4) x2, (6,8)
    h = {pr: bool(g.is_green(torch.tensor(pr[0]), torch.tensor(pr[1]))) for pr in [(4, 6), (6, 4), (6, 8)]}
    k, n = green_counts(rep, g, ignore_repeats=True)
    assert n[0] == 3 and k[0] == sum(h.values())
    k, n = green_counts(rep, g, ignore_repeats=True, ignore_ids=(8,))
    assert n[0] == 2 and k[0] == h[(4, 6)] + h[(6, 4)]
    k, n = green_counts(rep, g, ignore_ids=(4,))
    assert n[0] == 1
    # nothing scored: z is 0 (no evidence), not nan
    assert z_scores(torch.tensor([[4, 4]]), g, ignore_ids=(4,))[0] == 0.0


def test_null_over_keys_against_independent_computations():
    rng = np.random.default_rng(5)
    blocks = torch.as_tensor(rng.integers(4, V, (30, 64)))
    keys = keys_for_null(1, 60)
    assert len(keys) == 60 and 1 not in keys and keys == keys_for_null(1, 60)
    r = null_over_keys(blocks, V, 0.25, keys, threshold=2.0, ignore_repeats=True)
    # per-key mean z: the grand mean within three of its own standard errors of 0
    assert abs(r["grand_mean"]) < 3 * r["sd_over_keys"] / math.sqrt(60)
    # random blocks share almost no pairs: the spread over keys is the naive 1/sqrt(blocks)
    assert abs(r["sd_over_keys"] / r["naive_se"] - 1) < 0.35
    # the expected flag rate is the exact binomial tail, block by block (recomputed here by hand)
    _, n = green_counts(blocks, GreenList(V, 0.25, keys[0]), ignore_repeats=True)
    tails = []
    for ni in n:
        tails.append(sum(binom.pmf(k, ni, 0.25) for k in range(ni + 1)
                         if (k - 0.25 * ni) / math.sqrt(ni * 0.25 * 0.75) > 2.0))
    assert r["fpr_expected"] == pytest.approx(np.mean(tails), rel=1e-9)
    assert r["trials"] == 60 * 30 and r["fpr_upper95"] >= r["fpr"]
    # a body of text that repeats the same pairs in every block: one key's offset is shared, the spread grows
    same = torch.as_tensor(np.tile(rng.integers(4, V, (1, 64)), (30, 1)))
    s = null_over_keys(same, V, 0.25, keys, ignore_repeats=True)
    assert s["sd_over_keys"] > 3 * s["naive_se"]


def test_processor_adds_delta_to_exactly_the_green_list():
    g = GreenList(V, 0.25, key=5)
    proc = WatermarkLogitsProcessor(g, delta=2.0)
    ids = torch.tensor([[3, 17], [9, 400]])
    scores = torch.randn(2, V, generator=torch.Generator().manual_seed(0))
    out = proc(ids, scores.clone())
    diff = out - scores
    mask = g.mask(torch.tensor([17, 400]))
    assert torch.allclose(diff[mask], torch.full((int(mask.sum()),), 2.0))
    assert torch.all(diff[~mask] == 0)
    assert torch.equal(WatermarkLogitsProcessor(g, 0.0)(ids, scores), scores)
    with pytest.raises(ValueError, match="vocabulary"):
        proc(ids, torch.zeros(2, V + 1))


@pytest.mark.parametrize("kwargs, match", [
    ({"vocab_size": 1}, "vocab_size"), ({"gamma": 0.0}, "gamma"), ({"gamma": 1.0}, "gamma"),
    ({"gamma": True}, "gamma"), ({"key": -1}, "key"), ({"key": 1.5}, "key"),
    ({"vocab_size": 10, "gamma": 0.01}, "green"),
])
def test_bad_watermark_parameters_give_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GreenList(**{"vocab_size": V, "gamma": 0.25, "key": 1, **kwargs})


@pytest.mark.parametrize("delta", [-1.0, float("nan"), "2"])
def test_bad_delta_is_refused(delta):
    with pytest.raises(ValueError, match="delta"):
        WatermarkLogitsProcessor(GreenList(V), delta)


def test_token_ids_outside_the_vocabulary_are_refused():
    g = GreenList(V)
    with pytest.raises(ValueError, match="token ids"):
        z_scores(torch.tensor([[0, V]]), g)
    with pytest.raises(ValueError, match="tokens"):
        z_scores(torch.zeros(2, 8, dtype=torch.long), g, tokens=9)


def test_radioactivity_counts_each_distinct_pair_once():
    g = GreenList(8, 0.5, key=11)
    green_pair = next((a, b) for a in range(8) for b in range(8) if g.is_green(torch.tensor(a), torch.tensor(b)))
    red_pair = next((a, b) for a in range(8) for b in range(8) if not g.is_green(torch.tensor(a), torch.tensor(b)))
    # one green pair repeated many times and one red pair once: all pairs mostly green, distinct pairs half
    blocks = torch.tensor([list(green_pair) * 1, list(red_pair)] + [list(green_pair)] * 9)
    r = green_share_unique(blocks, g)
    assert r["pairs"] == 11 and r["unique_pairs"] == 2 and r["green_share"] == 0.5
    assert r["green_share_all"] == pytest.approx(10 / 11) and r["green_z"] == pytest.approx(0.0)
    # an ignored token takes its pairs out of the count
    r2 = green_share_unique(blocks, g, ignore_ids=(red_pair[1],) if red_pair[1] not in green_pair else ())
    assert r2["unique_pairs"] <= 2


# ---------------------------------------------------------------------------------------------------
# inside real beam search and sampling, with the smoke preset's model
# ---------------------------------------------------------------------------------------------------
SMOKE = {**load_preset("smoke", "04"), "preset": "smoke", "run_name": "", "train_blocks": 24, "test_blocks": 8}


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("wm")
    data = lm.prepare_data(SMOKE)
    base = lm.prepare_base(SMOKE, data, root / "cache", progress=False)
    return data, lm_train.load_model(base.path)


def test_watermarked_beam_search_of_the_smoke_model_scores_high(smoke_model):
    data, model = smoke_model
    g = GreenList(model.config.vocab_size, 0.25, key=42)
    prompts = data.train[:8]
    plain = lm_train.generate_continuations(model, prompts, 32, 5, 2.0, 8)
    wm = lm_train.generate_continuations(model, prompts, 32, 5, 2.0, 8,
                                         logits_processor=[WatermarkLogitsProcessor(g, 2.0)])
    z_wm, z_plain = z_scores(wm, g), z_scores(plain, g)
    assert (z_wm > 4).all(), z_wm
    assert abs(z_plain.mean()) < 3 and z_wm.min() > z_plain.max()
    again = lm_train.generate_continuations(model, prompts, 32, 5, 2.0, 8,
                                            logits_processor=[WatermarkLogitsProcessor(GreenList(g.vocab_size, 0.25, 42), 2.0)])
    assert torch.equal(wm, again)


def test_watermarked_sampling_matches_its_exact_expectations(smoke_model):
    """The sampler records, for every token, the exact mean and variance of its loss under the model's own
    distribution given the distribution it was drawn from: the measured mean loss lies within a few standard
    errors of it, and equals the loss a full forward pass computes (no cache error).  The watermark's green
    share lies strictly between gamma and 1 for a moderate delta; the seed fixes the text."""
    from collapse_utils.models.provenance import continuation_nll

    data, model = smoke_model
    g = GreenList(model.config.vocab_size, 0.25, key=42)
    prompts = data.train[:16]
    for delta in (0.0, 1.0):
        proc = [WatermarkLogitsProcessor(g, delta)]
        x, rec = sample_continuations(model, prompts, 32, seed=3, logits_processor=proc, record=True)
        se = math.sqrt(rec["variance"].sum()) / rec["nll"].size
        assert abs(rec["nll"].mean() - rec["expected"].mean()) < 4 * se
        assert np.allclose(rec["nll"].mean(1), continuation_nll(model, prompts, x), atol=1e-4)
        k, n = green_counts(x, g)
        share = k.sum() / n.sum()
        if delta == 0:
            assert abs(share - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n.sum())
        else:
            assert 0.3 < share < 0.9
        y = sample_continuations(model, prompts, 32, seed=3, logits_processor=proc)
        assert torch.equal(x, y)
        assert not torch.equal(x, sample_continuations(model, prompts, 32, seed=4, logits_processor=proc))
    with pytest.raises(ValueError, match="temperature"):
        sample_continuations(model, prompts, 4, temperature=0.0)
