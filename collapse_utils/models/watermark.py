"""A green-list watermark for language models (Kirchenbauer et al. 2023) and its z-score detector.

The scheme ("A watermark for large language models", ICML 2023, the "soft" watermark):

* a secret ``key`` and the previous token ``t[i-1]`` select a *green list*: a share ``gamma`` of the
  vocabulary;
* while the model writes, every green token's score gets ``+ delta`` before the next token is chosen
  (:class:`WatermarkLogitsProcessor`, a ``transformers`` ``LogitsProcessor``: it works inside
  ``model.generate``, beam search included);
* the detector, who knows the key but not the model, counts how many of ``n`` scored tokens are green;
  without the watermark each is green with probability ``gamma`` whatever the text, so

  .. math::  z = (|s|_G - \\gamma n) / \\sqrt{n \\gamma (1 - \\gamma)}

  is approximately standard normal, and watermarked text has large ``z`` (:func:`z_scores`).

The green lists here (:class:`GreenList`) are exact: every previous token has exactly
``round(gamma * V)`` green tokens.  The key fixes a random permutation of the vocabulary (``rank``)
and a random offset for every previous token (``shift``); token ``t`` is green after ``prev`` when
``(rank[t] + shift[prev]) mod V < round(gamma * V)`` -- a window of the key's random order that moves
with the previous token.  This costs one gather per step for any vocabulary size (OPT's 50k
included), needs no random generator per step, and makes every token green with probability exactly
``gamma`` when the text does not depend on the key -- the null hypothesis of the z-test.

Radioactivity (Sander et al. 2024, "Watermarking makes language models radioactive"): text written
by a model that was *trained* on watermarked text -- without any watermark at generation -- can still
carry an excess of green tokens.  Repeated (previous token, token) pairs would bias that test, so
:func:`green_share_unique` scores every distinct pair once, as Sander et al. do; :func:`green_share_pairs`
scores given pairs, e.g. a real text's tokens and a model's top-1 predictions after them (their "reading
mode", which needs no generation at all).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["GreenList", "WatermarkLogitsProcessor", "green_counts", "green_share_pairs", "green_share_unique",
           "z_from_counts", "z_scores"]


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
    if not problems:
        n_green = int(round(float(gamma) * int(vocab_size)))
        if not 1 <= n_green <= int(vocab_size) - 1:
            problems.append(f"gamma={gamma} of a {vocab_size}-token vocabulary leaves {n_green} green tokens; "
                            "it must leave at least one green and one red token")
    if problems:
        raise ValueError("invalid watermark: " + "; ".join(problems))


class GreenList:
    """The green lists of one key: ``gamma`` of a ``vocab_size``-token vocabulary after every token.

    Deterministic under ``key`` (a non-negative integer); ``effective_gamma`` is the exact share
    ``round(gamma * vocab_size) / vocab_size`` that the z-test uses.
    """

    def __init__(self, vocab_size: int, gamma: float = 0.25, key: int = 15485863):
        _check_green_list(vocab_size, gamma, key)
        self.params = _Params(int(vocab_size), float(gamma), int(key))
        self.vocab_size = int(vocab_size)
        self.n_green = int(round(float(gamma) * self.vocab_size))  # every green list has exactly this many tokens
        gen = torch.Generator().manual_seed(int(key))
        self.rank = torch.randperm(self.vocab_size, generator=gen)  # the key's random order of the vocabulary
        self.shift = torch.randint(0, self.vocab_size, (self.vocab_size,), generator=gen)  # one offset per token
        self._on: dict = {}

    @property
    def gamma(self) -> float:
        return self.params.gamma

    @property
    def effective_gamma(self) -> float:
        return self.n_green / self.vocab_size

    def describe(self) -> dict:
        return {"vocab_size": self.vocab_size, "gamma": self.gamma, "key": self.params.key, "n_green": self.n_green}

    def _tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._on:
            self._on[key] = (self.rank.to(device), self.shift.to(device))
        return self._on[key]

    def _check(self, ids: torch.Tensor) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")

    def mask(self, prev: torch.Tensor) -> torch.Tensor:
        """Boolean ``(len(prev), vocab_size)``: the green list after each previous token."""
        prev = torch.as_tensor(prev).long().reshape(-1)
        self._check(prev)
        rank, shift = self._tables(prev.device)
        return (rank.unsqueeze(0) + shift[prev].unsqueeze(1)) % self.vocab_size < self.n_green

    def is_green(self, prev: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Elementwise: is ``token`` green after ``prev`` (tensors of one shape)."""
        prev, token = torch.as_tensor(prev).long(), torch.as_tensor(token).long()
        self._check(prev)
        self._check(token)
        rank, shift = self._tables(prev.device)
        return (rank[token] + shift[prev]) % self.vocab_size < self.n_green


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
def green_counts(blocks: torch.Tensor, green: GreenList, tokens: int | None = None) -> tuple[np.ndarray, int]:
    """Per block: how many of its scored tokens are green, and how many are scored.

    The detector reads the first ``tokens`` tokens of each block (all by default) and scores every token
    after the first against the token before it: ``tokens - 1`` scored tokens per block (the first
    token's predecessor is not part of the text the detector sees).
    """
    b = torch.as_tensor(blocks).long()
    if b.ndim != 2:
        raise ValueError(f"blocks must be 2-D (blocks x tokens), got shape {tuple(b.shape)}")
    t = b.shape[1] if tokens is None else int(tokens)
    if not 2 <= t <= b.shape[1]:
        raise ValueError(f"tokens must lie in [2, {b.shape[1]}] (the block length), got {tokens!r}")
    b = b[:, :t]
    hits = green.is_green(b[:, :-1], b[:, 1:])
    return hits.sum(dim=1).cpu().numpy().astype(np.int64), t - 1


def z_from_counts(k, n, gamma: float) -> np.ndarray:
    """The one-proportion z statistic of ``k`` green tokens out of ``n`` under the null share ``gamma``."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (k - gamma * n) / np.sqrt(n * gamma * (1 - gamma))


def z_scores(blocks: torch.Tensor, green: GreenList, tokens: int | None = None) -> np.ndarray:
    """The detector's z-score of every block from its first ``tokens`` tokens (see :func:`green_counts`)."""
    k, n = green_counts(blocks, green, tokens)
    return z_from_counts(k, n, green.effective_gamma)


def green_share_unique(blocks: torch.Tensor, green: GreenList) -> dict[str, float]:
    """Radioactivity test over a set of blocks: every distinct (previous token, token) pair scored once.

    Returns the number of distinct pairs, the share of them that is green, and its z-score against
    ``effective_gamma`` (also the share over all pairs, repeats included, for comparison).
    """
    b = torch.as_tensor(blocks).long()
    if b.ndim != 2 or b.shape[1] < 2 or b.shape[0] < 1:
        raise ValueError(f"blocks must be 2-D with at least one block of two tokens, got shape {tuple(b.shape)}")
    return green_share_pairs(b[:, :-1], b[:, 1:], green)


def green_share_pairs(prev: torch.Tensor, token: torch.Tensor, green: GreenList) -> dict[str, float]:
    """The radioactivity count of :func:`green_share_unique` for given (previous token, token) pairs -- e.g.
    the tokens of a real text and a model's top-1 predictions after each of them (Sander et al.'s reading
    mode, which needs no generation)."""
    prev, token = torch.as_tensor(prev).long(), torch.as_tensor(token).long()
    if prev.shape != token.shape or prev.numel() == 0:
        raise ValueError(f"prev and token must be non-empty and of one shape, got {tuple(prev.shape)}, "
                         f"{tuple(token.shape)}")
    pairs = torch.stack([prev.reshape(-1), token.reshape(-1)], dim=1)
    all_hits = green.is_green(pairs[:, 0], pairs[:, 1])
    uniq = torch.unique(pairs, dim=0)
    hits = green.is_green(uniq[:, 0], uniq[:, 1])
    n, k = int(len(uniq)), int(hits.sum())
    g = green.effective_gamma
    return {"pairs": float(len(pairs)), "unique_pairs": float(n), "green_share": k / n,
            "green_z": float(z_from_counts(k, n, g)), "green_share_all": float(all_hits.float().mean())}
