"""The green-list watermark: green lists fixed by the key, the z-test's null distribution, the logits
processor inside real beam search, the radioactivity count, and bad parameters."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from collapse_utils.models import lm, lm_train
from collapse_utils.tooling.config import load_preset
from collapse_utils.models.watermark import (
    GreenList,
    WatermarkLogitsProcessor,
    green_counts,
    green_share_unique,
    z_from_counts,
    z_scores,
)

V = 512


def test_green_list_is_deterministic_under_its_key_and_exact_in_size():
    a, b, c = GreenList(V, 0.25, key=7), GreenList(V, 0.25, key=7), GreenList(V, 0.25, key=8)
    prev = torch.arange(V)
    ma, mb, mc = a.mask(prev), b.mask(prev), c.mask(prev)
    assert torch.equal(ma, mb)
    assert not torch.equal(ma, mc)
    # exactly round(gamma V) green tokens after every previous token
    assert (ma.sum(dim=1) == 128).all() and a.effective_gamma == 0.25
    # the green list moves with the previous token (not one list for all)
    assert (ma[0] != ma[1]).any()
    # is_green agrees with the mask, elementwise
    tok = torch.randint(0, V, (V,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.is_green(prev, tok), ma[prev, tok])
    # an odd share is rounded, and the test uses the share that is exact
    assert GreenList(100, 0.333, key=1).effective_gamma == pytest.approx(0.33)


def test_z_scores_of_unwatermarked_random_text_are_standard_normal():
    """Random token sequences know nothing of the key: every scored token is green with probability gamma,
    so z has mean 0 and variance 1 (up to Monte-Carlo error; n = 4000 sequences of 64 tokens)."""
    n = 4000
    g = GreenList(V, 0.25, key=123)
    seqs = torch.randint(0, V, (n, 64), generator=torch.Generator().manual_seed(1))
    z = z_scores(seqs, g)
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert abs(z.var(ddof=1) - 1) < 4 * np.sqrt(2 / (n - 1))
    # and for a short read (8 tokens: 7 scored), still mean 0 and variance 1
    z8 = z_scores(seqs, g, tokens=8)
    assert abs(z8.mean()) < 4 / np.sqrt(n) and abs(z8.var(ddof=1) - 1) < 4 * np.sqrt(2 / (n - 1))
    # a fixed, very non-uniform text: over random keys each distinct pair is green with probability gamma
    zipf = torch.as_tensor(np.minimum(np.random.default_rng(2).zipf(1.5, (1, 64)), V) - 1)
    shares = [green_share_unique(zipf, GreenList(V, 0.25, key=k))["green_share"] for k in range(400)]
    n_pairs = green_share_unique(zipf, g)["unique_pairs"]
    assert abs(np.mean(shares) - 0.25) < 4 * np.sqrt(0.25 * 0.75 / n_pairs / 400)


def test_green_counts_score_tokens_minus_one_pairs_by_hand():
    g = GreenList(16, 0.5, key=3)
    block = torch.tensor([[1, 5, 9, 2, 7]])
    hits = [bool(g.is_green(torch.tensor(a), torch.tensor(b))) for a, b in [(1, 5), (5, 9), (9, 2), (2, 7)]]
    k, n = green_counts(block, g)
    assert n == 4 and k[0] == sum(hits)
    k3, n3 = green_counts(block, g, tokens=3)
    assert n3 == 2 and k3[0] == sum(hits[:2])
    assert z_from_counts(k, n, 0.5)[0] == pytest.approx((sum(hits) - 2) / 1.0)


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


# ---------------------------------------------------------------------------------------------------
# inside real beam search, with the smoke preset's model
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
    # deterministic: the same key and prompts write the same text
    again = lm_train.generate_continuations(model, prompts, 32, 5, 2.0, 8,
                                            logits_processor=[WatermarkLogitsProcessor(GreenList(g.vocab_size, 0.25, 42), 2.0)])
    assert torch.equal(wm, again)
