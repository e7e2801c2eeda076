"""Sampling from a causal language model, as the watermark paper writes (Kirchenbauer et al. 2023, multinomial
sampling): every new token is drawn from the model's next-token distribution -- after the logits processors
(e.g. the watermark's ``+ delta`` on the green list), divided by a temperature and, optionally, cut to the
``top_k`` most probable tokens.  No repetition penalty.  The end token is forbidden, so that every continuation
has exactly ``new_tokens`` tokens (as ``min_new_tokens = max_new_tokens`` does in ``generate``).

Deterministic under ``seed`` (a ``torch.Generator`` drives every draw).  With ``record=True`` the sampler also
returns, for every sampled token, what the perplexity of the text under the model will be made of: the
token's loss under the model's own distribution ``p`` (temperature 1, no processor, nothing forbidden),
and the exact mean and variance of that loss under the distribution ``q`` the token was drawn from.  The
mean loss of the text then lies within a few ``sqrt(sum var) / n`` of the mean of the expected losses
(a martingale central limit theorem): an exact prediction of a watermark's cost in perplexity.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["sample_continuations"]


def _device():
    from .lm_train import get_accelerator

    return get_accelerator().device


def sample_continuations(model, prompts: torch.Tensor, new_tokens: int = 64, *, temperature: float = 1.0,
                         top_k: int = 0, seed: int = 0, batch_size: int = 64, logits_processor=None,
                         record: bool = False, progress: bool = False, desc: str = "sampling"):
    """``new_tokens`` sampled tokens after every prompt row: LongTensor ``(n, new_tokens)`` (and, with
    ``record``, a dict of float64 arrays ``(n, new_tokens)``: ``nll`` -- each token's loss under the
    model's own distribution --, ``expected`` and ``variance`` of that loss under the sampling
    distribution)."""
    from tqdm.auto import tqdm

    from ..core.progress import progress_disabled

    if not (float(temperature) > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if int(top_k) < 0:
        raise ValueError(f"top_k must be >= 0 (0: the whole vocabulary), got {top_k!r}")
    dev = _device()
    model = model.to(dev).eval()
    eos = model.config.eos_token_id if model.config.eos_token_id is not None else 2
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    procs = list(logits_processor or [])
    import inspect

    new_api = "cache" in inspect.signature(model.forward).parameters  # transformers >= 5.x names the KV cache "cache"

    def step(ids, mask, past):
        kw = {} if past is None else ({"cache": past} if new_api else {"past_key_values": past})
        res = model(input_ids=ids, attention_mask=mask, use_cache=True, **kw)
        nxt_past = getattr(res, "cache", None) if new_api else None
        return (nxt_past if nxt_past is not None else res.past_key_values), res.logits[:, -1].float()

    out, rec = [], {"nll": [], "expected": [], "variance": []}
    starts = range(0, len(prompts), int(batch_size))
    with torch.no_grad():
        for s in tqdm(starts, desc=desc, leave=False, disable=progress_disabled(progress)):
            ids = prompts[s:s + int(batch_size)].long().to(dev)
            mask = torch.ones_like(ids)
            past, logits = step(ids, mask, None)
            cols, r_nll, r_exp, r_var = [], [], [], []
            for _ in range(int(new_tokens)):
                scores = logits.clone()
                scores[:, eos] = -float("inf")
                for proc in procs:
                    scores = proc(ids, scores)
                scores = scores / float(temperature)
                if top_k and int(top_k) < scores.shape[-1]:
                    kth = torch.topk(scores, int(top_k), dim=-1).values[:, -1:]
                    scores = scores.masked_fill(scores < kth, -float("inf"))
                q = torch.softmax(scores, dim=-1)
                nxt = torch.multinomial(q.cpu(), 1, generator=gen).to(dev)
                if record:
                    logp = torch.log_softmax(logits, dim=-1)
                    e = -(q * torch.where(q > 0, logp, 0.0)).sum(-1)
                    e2 = (q * torch.where(q > 0, logp, 0.0) ** 2).sum(-1)
                    r_nll.append(-logp.gather(1, nxt).squeeze(1))
                    r_exp.append(e)
                    r_var.append((e2 - e ** 2).clamp_min(0))
                cols.append(nxt)
                ids = torch.cat([ids, nxt], dim=1)
                mask = torch.ones_like(ids)
                past, logits = step(nxt, mask, past)
            out.append(torch.cat(cols, dim=1).cpu())
            if record:
                for k, v in zip(("nll", "expected", "variance"), (r_nll, r_exp, r_var)):
                    rec[k].append(torch.stack(v, dim=1).double().cpu())
    tokens = torch.cat(out) if out else torch.zeros(0, int(new_tokens), dtype=torch.long)
    if not record:
        return tokens
    return tokens, {k: (torch.cat(v).numpy() if v else np.zeros((0, int(new_tokens)))) for k, v in rec.items()}
