"""A green-list watermark for language models (Kirchenbauer et al. 2023) and its z-score detector.

The scheme ("A watermark for large language models", ICML 2023, the "soft" watermark):

* a secret ``key`` and the previous token ``t[i-1]`` select a *green list*: a share ``gamma`` of the
  vocabulary, drawn independently for every previous token;
* while the model writes, every green token's score gets ``+ delta`` before the next token is chosen
  (:class:`WatermarkLogitsProcessor`, a ``transformers`` ``LogitsProcessor``: it works inside
  ``model.generate`` and in this book's sampler and beam search);
* the detector, who knows the key but not the model, counts how many of ``n`` scored tokens are green;
  without the watermark each is green with probability ``gamma`` whatever the text, so

  .. math::  z = (|s|_G - \\gamma n) / \\sqrt{n \\gamma (1 - \\gamma)}

  is approximately standard normal, and watermarked text has large ``z`` (:func:`z_scores`).

**The green lists** (:class:`GreenList`): token ``t`` is green after ``prev`` when a keyed 32-bit hash
of the pair, ``h_key(prev, t)``, falls below ``gamma * 2**32``.  The hash is two rounds of an invertible
integer mixer (MurmurHash3's finaliser) with two salts drawn from the key, so it costs a few integer
operations per pair, vectorised over any tensor of pairs, whatever the vocabulary size; and the lists of
different previous tokens are independent draws, as in the paper (where a generator seeded by a hash of
the key and the previous token partitions the vocabulary).  Over the choice of the key every pair is
green with probability ``effective_gamma`` (``gamma`` rounded to the hash's resolution), independently of
other pairs: exactly the null hypothesis of the z-test.  A list's size is therefore binomial around
``gamma * V`` rather than exactly ``gamma * V``.

**Scoring** (:func:`green_counts`): the detector can skip pairs that involve a special token (``<unk>``,
padding, ...) and score every repeated (previous token, token) pair of a text only once -- a phrase that
recurs would otherwise count its one coin flip many times, and the z-statistic's variance would exceed 1.

**The null over keys** (:func:`null_over_keys`): for one fixed key, the z-scores of a body of human text
share an offset (frequent pairs are green, or red, in all texts at once).  The null hypothesis is a
statement over keys, so it is judged over many: the mean z of the human blocks per key, whose spread over
keys is its own standard error, and the share of blocks flagged at the threshold against the exact
binomial tail of every block's own number of scored tokens.

Radioactivity (Sander et al. 2024, "Watermarking makes language models radioactive"): text written
by a model that was *trained* on watermarked text -- without any watermark at generation -- can still
carry an excess of green tokens.  Repeated (previous token, token) pairs would bias that test, so
:func:`green_share_unique` scores every distinct pair once, as Sander et al. do; :func:`green_share_pairs`
scores given pairs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["GreenList", "WatermarkLogitsProcessor", "green_counts", "green_share_pairs", "green_share_unique",
           "keys_for_null", "null_over_keys", "z_from_counts", "z_scores"]

_M32 = 0xFFFFFFFF
_HASH_BITS = 32


@dataclass(frozen=True)
class _Params:
    vocab_size: int
    gamma: float
    key: int


def _check_green_list(vocab_size, gamma, key) -> None:
    """One ValueError listing every problem with a green list's arguments."""
    problems = []
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 2:
        problems.append(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 < float(gamma) < 1.0:
        problems.append(f"gamma must lie strictly between 0 and 1, got {gamma!r}")
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= int(key) < 2**63:
        problems.append(f"key must be an integer in [0, 2**63), got {key!r}")
    if not problems and not 1 <= float(gamma) * int(vocab_size) <= int(vocab_size) - 1:
        problems.append(f"gamma={gamma} of a {vocab_size}-token vocabulary leaves on average "
                        f"{float(gamma) * int(vocab_size):.2f} green tokens; it must leave at least one green and "
                        "one red token")
    if problems:
        raise ValueError("invalid watermark: " + "; ".join(problems))


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in [0, 2**32): an invertible map
    whose output bits each depend on every input bit (products wrap in 64 bits; their low 32 bits are
    exact)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


class GreenList:
    """The green lists of one key: about ``gamma`` of a ``vocab_size``-token vocabulary after every token,
    independently drawn for every previous token (a keyed hash of the pair; see the module's docstring).

    Deterministic under ``key`` (a non-negative integer); ``effective_gamma`` is the exact probability,
    over keys, that a pair is green (``gamma`` rounded to a multiple of ``2**-32``): the z-test uses it.
    """

    def __init__(self, vocab_size: int, gamma: float = 0.25, key: int = 15485863):
        _check_green_list(vocab_size, gamma, key)
        self.params = _Params(int(vocab_size), float(gamma), int(key))
        self.vocab_size = int(vocab_size)
        salts = np.random.default_rng(int(key)).integers(0, 2**32, size=2)
        self.salt = (int(salts[0]), int(salts[1]))  # the key enters the hash through these two salts
        self.cut = int(round(float(gamma) * 2**_HASH_BITS))  # green when the hash is below this

    @property
    def gamma(self) -> float:
        return self.params.gamma

    @property
    def effective_gamma(self) -> float:
        return self.cut / 2**_HASH_BITS

    def describe(self) -> dict:
        return {"vocab_size": self.vocab_size, "gamma": self.gamma, "key": self.params.key,
                "scheme": "keyed hash of (previous token, token)"}

    def _check(self, ids: torch.Tensor) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")

    def hash(self, prev: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """The keyed 32-bit hash of every (previous token, token) pair (broadcasting), as int64."""
        s0, s1 = self.salt
        h = _mix32((prev.long() ^ s0) & _M32)
        return _mix32(((h ^ token.long()) + s1) & _M32)

    def mask(self, prev: torch.Tensor) -> torch.Tensor:
        """Boolean ``(len(prev), vocab_size)``: the green list after each previous token."""
        prev = torch.as_tensor(prev).long().reshape(-1)
        self._check(prev)
        vocab = torch.arange(self.vocab_size, device=prev.device)
        return self.hash(prev.unsqueeze(1), vocab.unsqueeze(0)) < self.cut

    def is_green(self, prev: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Elementwise: is ``token`` green after ``prev`` (tensors of one shape)."""
        prev, token = torch.as_tensor(prev).long(), torch.as_tensor(token).long()
        self._check(prev)
        self._check(token)
        return self.hash(prev, token) < self.cut


def _logits_processor_base():
    try:
        from transformers import LogitsProcessor
    except ImportError:  # pragma: no cover - the lm extra is installed wherever a model generates
        return object
    return LogitsProcessor


class WatermarkLogitsProcessor(_logits_processor_base()):
    """``scores[row, green list after the row's last token] += delta`` -- a ``transformers`` logits
    processor (pass it in ``logits_processor=[...]`` to ``generate``).

    In beam search ``generate`` hands the processors the log-softmax scores of every beam, so the bonus
    raises green continuations before the beams are ranked, as in Kirchenbauer et al.'s beam-search runs.
    """

    rowwise = True  # row i of the output depends on row i of the input alone (collapse_utils.models.lm_beam)

    def __init__(self, green: GreenList, delta: float = 2.0):
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta) or delta < 0:
            raise ValueError(f"delta must be a finite number >= 0, got {delta!r}")
        self.green = green
        self.delta = float(delta)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[-1] != self.green.vocab_size:
            raise ValueError(f"the watermark's vocabulary has {self.green.vocab_size} tokens but the model scores "
                             f"{scores.shape[-1]}; build the GreenList with the model's config.vocab_size")
        if self.delta == 0:
            return scores
        mask = self.green.mask(input_ids[:, -1])
        return scores + self.delta * mask.to(scores.dtype)


# ---------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------
def _scored(prev: torch.Tensor, token: torch.Tensor, vocab_size: int, ignore_repeats: bool,
            ignore_ids) -> torch.Tensor:
    """Which pairs of every row the detector scores: not involving an ignored id, and (with
    ``ignore_repeats``) the first occurrence of its (previous token, token) pair in the row only."""
    keep = torch.ones_like(prev, dtype=torch.bool)
    if ignore_ids is not None and len(ignore_ids):
        ids = torch.as_tensor(list(ignore_ids), dtype=torch.long)
        keep &= ~torch.isin(prev, ids) & ~torch.isin(token, ids)
    if ignore_repeats and prev.shape[1] > 1:
        code = prev * vocab_size + token
        same = code.unsqueeze(2) == code.unsqueeze(1)                      # (rows, j, i): pair j equals pair i
        earlier = torch.ones(code.shape[1], code.shape[1], dtype=torch.bool).tril(-1)   # i < j
        keep &= ~(same & earlier).any(dim=2)
    return keep


def green_counts(blocks: torch.Tensor, green: GreenList, tokens: int | None = None, *, ignore_repeats: bool = False,
                 ignore_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Per block: how many of its scored tokens are green, and how many are scored (two arrays).

    The detector reads the first ``tokens`` tokens of each block (all by default) and scores every token
    after the first against the token before it: at most ``tokens - 1`` scored tokens per block (the first
    token's predecessor is not part of the text the detector sees).  ``ignore_ids``: pairs with one of
    these tokens (e.g. the tokenizer's special tokens, ``<unk>`` among them) are not scored;
    ``ignore_repeats``: a (previous token, token) pair is scored at its first occurrence in the block only.
    """
    b = torch.as_tensor(blocks).long()
    if b.ndim != 2:
        raise ValueError(f"blocks must be 2-D (blocks x tokens), got shape {tuple(b.shape)}")
    t = b.shape[1] if tokens is None else int(tokens)
    if not 2 <= t <= b.shape[1]:
        raise ValueError(f"tokens must lie in [2, {b.shape[1]}] (the block length), got {tokens!r}")
    b = b[:, :t]
    prev, tok = b[:, :-1], b[:, 1:]
    hits = green.is_green(prev, tok)
    keep = _scored(prev, tok, green.vocab_size, ignore_repeats, ignore_ids)
    return ((hits & keep).sum(dim=1).cpu().numpy().astype(np.int64),
            keep.sum(dim=1).cpu().numpy().astype(np.int64))


def z_from_counts(k, n, gamma: float) -> np.ndarray:
    """The one-proportion z statistic of ``k`` green tokens out of ``n`` under the null share ``gamma``
    (0 where nothing was scored: no evidence either way)."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (k - gamma * n) / np.sqrt(n * gamma * (1 - gamma))
    return np.where(n > 0, z, 0.0)


def z_scores(blocks: torch.Tensor, green: GreenList, tokens: int | None = None, **scoring) -> np.ndarray:
    """The detector's z-score of every block from its first ``tokens`` tokens (see :func:`green_counts`,
    whose keyword options ``ignore_repeats`` and ``ignore_ids`` pass through)."""
    k, n = green_counts(blocks, green, tokens, **scoring)
    return z_from_counts(k, n, green.effective_gamma)


def keys_for_null(key: int, n_keys: int) -> list[int]:
    """``n_keys`` keys other than ``key``, drawn reproducibly from it (the keys no text carried)."""
    draws = np.random.default_rng([int(key), 977]).integers(0, 2**62, size=int(n_keys) + 1)
    return [int(k) for k in draws if int(k) != int(key)][: int(n_keys)]


def null_over_keys(blocks: torch.Tensor, vocab_size: int, gamma: float, keys, tokens: int | None = None,
                   threshold: float = 4.0, **scoring) -> dict:
    """The z-test's null hypothesis judged over many keys, on text that carries none of them (e.g. human
    blocks).

    For every key: the mean z of the blocks (``mean_z`` per key) and how many blocks are flagged
    (``z > threshold``).  Over keys the per-key means are independent draws around 0, so their spread is
    their own standard error -- with one key, blocks that share frequent pairs share an offset and
    ``1 / sqrt(blocks)`` underestimates it.  The expected number flagged is exact: the binomial tail of
    every block's own number of scored tokens (``n`` at ``gamma``) beyond the threshold.
    """
    z = np.stack([z_scores(blocks, GreenList(vocab_size, gamma, int(k)), tokens, **scoring) for k in keys])
    _, n = green_counts(blocks, GreenList(vocab_size, gamma, int(keys[0])), tokens, **scoring)
    from scipy.stats import binom

    g = GreenList(vocab_size, gamma, int(keys[0])).effective_gamma
    crit = g * n + threshold * np.sqrt(n * g * (1 - g))           # flagged: green count above this
    tail = np.where(n > 0, binom.sf(np.floor(crit), n, g), 0.0)      # P(count > crit) under the null, per block
    flagged = int((z > threshold).sum())
    trials = int(z.size)
    expected = float(tail.mean())
    per_key = z.mean(axis=1)
    return {"keys": len(keys), "blocks": z.shape[1], "mean_z": per_key, "grand_mean": float(per_key.mean()),
            "sd_over_keys": float(per_key.std(ddof=1)) if len(per_key) > 1 else float("nan"),
            "naive_se": 1.0 / math.sqrt(z.shape[1]), "var_z": float(z.var(axis=1, ddof=1).mean()),
            "flagged": flagged, "trials": trials, "fpr": flagged / trials, "fpr_expected": expected,
            "fpr_p": float(binom.sf(flagged - 1, trials, expected)) if flagged else 1.0,
            "fpr_upper95": _clopper_pearson_upper(flagged, trials), "mean_scored": float(n.mean())}


def _clopper_pearson_upper(k: int, n: int, level: float = 0.95) -> float:
    """One-sided upper confidence bound of a binomial rate."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(level, k + 1, n - k))


def green_share_unique(blocks: torch.Tensor, green: GreenList, ignore_ids=None) -> dict[str, float]:
    """Radioactivity test over a set of blocks: every distinct (previous token, token) pair scored once.

    Returns the number of distinct pairs, the share of them that is green, and its z-score against
    ``effective_gamma`` (also the share over all pairs, repeats included, for comparison).
    """
    b = torch.as_tensor(blocks).long()
    if b.ndim != 2 or b.shape[1] < 2 or b.shape[0] < 1:
        raise ValueError(f"blocks must be 2-D with at least one block of two tokens, got shape {tuple(b.shape)}")
    return green_share_pairs(b[:, :-1], b[:, 1:], green, ignore_ids)


def green_share_pairs(prev: torch.Tensor, token: torch.Tensor, green: GreenList, ignore_ids=None) -> dict[str, float]:
    """The radioactivity count of :func:`green_share_unique` for given (previous token, token) pairs
    (pairs with a token of ``ignore_ids`` left out)."""
    prev, token = torch.as_tensor(prev).long(), torch.as_tensor(token).long()
    if prev.shape != token.shape or prev.numel() == 0:
        raise ValueError(f"prev and token must be non-empty and of one shape, got {tuple(prev.shape)}, "
                         f"{tuple(token.shape)}")
    pairs = torch.stack([prev.reshape(-1), token.reshape(-1)], dim=1)
    if ignore_ids is not None and len(ignore_ids):
        ids = torch.as_tensor(list(ignore_ids), dtype=torch.long)
        pairs = pairs[~torch.isin(pairs, ids).any(dim=1)]
        if len(pairs) == 0:
            raise ValueError("every pair involves an ignored token")
    all_hits = green.is_green(pairs[:, 0], pairs[:, 1])
    uniq = torch.unique(pairs, dim=0)
    hits = green.is_green(uniq[:, 0], uniq[:, 1])
    n, k = int(len(uniq)), int(hits.sum())
    g = green.effective_gamma
    return {"pairs": float(len(pairs)), "unique_pairs": float(n), "green_share": k / n,
            "green_z": float(z_from_counts(k, n, g)), "green_share_all": float(all_hits.float().mean())}
