"""Fast beam search for small OPT models on a CPU, token for token identical to ``model.generate``.

Chapter 04 continues every 64-token prompt block with exactly 64 new tokens by
``model.generate(num_beams=k, do_sample=False, min_new_tokens=T, max_new_tokens=T, repetition_penalty=p,
early_stopping=False, num_return_sequences=1)`` (length_penalty 1.0).  For the cpu-preset OPT (2 layers,
hidden 128) the model's arithmetic per step is small, and generate spends more than half of its time
around it: the ``DynamicCache`` grows by ``torch.cat`` (a copy of the whole cache per step and layer)
and is reordered by ``index_select`` (a second copy), the logits processors copy the score matrix
several times, and the prompt pass runs on ``k`` copies of every prompt and computes the LM head at
every prompt position.  :func:`beam_search` does the same computation without that:

* the prompt pass runs once per prompt (its ``k`` copies in generate are identical rows), at the last
  position only through the LM head, and fills a preallocated key/value buffer;
* decoding steps run the model's own layers (written out operation for operation in
  :func:`_forward_inline` after a bit-for-bit check against the modules, else the modules themselves),
  so the attention kernel (sdpa) and the matrix products see the same shapes as in generate;
* beams are not moved in the buffer: a parent's first child keeps its row; a further child takes the
  row of a beam of the same prompt that left no child, and only the positions where that row's tokens
  differ from the parent's are copied;
* the beam bookkeeping of transformers' ``GenerationMixin._beam_search`` (transformers 5.x) is
  re-implemented on small tensors.

Semantics reproduced (and tested against generate in ``tests/test_lm_beam.py``):

* scores: ``log_softmax`` of the float32 logits of the last position, then generate's processors in
  generate's order -- the repetition penalty (``p != 1``): every token id present in the beam's prompt +
  generated-so-far tokens gets ``score * p`` if ``score < 0`` else ``score / p``; then ``min_length`` /
  ``min_new_tokens`` set the EOS score to ``-inf`` at every step (min = max new tokens), so no hypothesis
  ends early and every continuation has exactly ``new_tokens`` tokens;
* running scores: beam 0 of a prompt starts at 0, beams 1..k-1 at ``-1e9`` (the first step expands
  beam 0 only); a candidate's score is running score + processed log-probability;
* the 2k rule: each prompt keeps the ``2 * num_beams`` best of its ``num_beams * vocab`` candidates
  (``torch.topk``; generate keeps ``max(2, 1 + #eos) * num_beams``), beam = index // vocab, token =
  index % vocab, and the next ``k`` running beams are ``torch.topk(candidate + hit * -1e9, k)`` of those;
* ties: ``torch.topk`` orders equal values by an unspecified rule that depends on their positions and
  on ``k``.  Candidates are ranked first with the rows in buffer order and ``k = 2 * num_beams + 1``;
  when those values are all distinct the result cannot depend on either.  A prompt with a tie among them
  is ranked again exactly as generate ranks it (rows in generate's beam order, ``k = 2 * num_beams``),
  so equal scores are ordered as generate orders them (``stats['reranked']`` counts these);
* the last step: all candidates hit the length limit; the first ``k`` are finished with score
  ``sum_logprob / new_tokens ** 1.0`` (length_penalty 1), merged with the ``k`` empty finished slots
  (``-1e9``) and the best by ``torch.topk`` is returned (num_return_sequences 1).  Nothing finishes
  earlier, so ``early_stopping=False`` and its heuristic never end the search before;
* ``num_beams == 1`` is generate's greedy search: ``argmax`` (first of equal maxima) of the processed
  *logits* (no ``log_softmax``), as generate does.

Identity also rests on properties of the CPU kernels that the tests check on the machine they run on:
a row's results do not depend on the other rows of its batch (so prompts are not repeated ``k`` times
in the prompt pass, beams can stay in their rows, and equal token histories have equal keys/values).
:func:`fast_beam_unsupported_reason` limits the fast path to the case covered: an ``OPTForCausalLM`` in
eval mode on the CPU, float32, sdpa attention (the default), prompts of equal length without padding,
``2 * num_beams < vocab``, prompt + new tokens within the position table, one EOS id, and a model
``generation_config`` that adds no other processor; extra processors passed in (``logits_processor``) must
be row-wise (:func:`rowwise_processor`, e.g. chapter 06's watermark) and run after the built-in ones, as
in generate.  Everything else -- GPUs, several processes, other settings -- keeps ``model.generate``
(``lm_train.generate_continuations``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core.progress import progress_disabled

__all__ = ["beam_search", "fast_beam_supported", "fast_beam_unsupported_reason", "rowwise_processor"]

# fields of the model's generation_config that would add a logits processor or change the search of
# greedy / beam search (generate fills unset fields of the config it is given from the model's)
_NEUTRAL_GENERATION_FIELDS = {
    "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "sequence_bias": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False), "exponential_decay_length_penalty": (None,),
    "diversity_penalty": (None, 0.0), "num_beam_groups": (None, 1), "constraints": (None,),
    "force_words_ids": (None,), "length_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
    "guidance_scale": (None, 1.0), "watermarking_config": (None,), "token_healing": (None, False),
    "dola_layers": (None,), "prompt_lookup_num_tokens": (None,), "assistant_model": (None,),
    "custom_generate": (None,), "low_memory": (None, False),
}


def _is_neutral(value, neutral) -> bool:
    return any(value is n or (type(value) in (int, float, bool) and value == n) for n in neutral)


def fast_beam_unsupported_reason(model, prompts: torch.Tensor | None = None, new_tokens: int = 64,
                                 num_beams: int = 5) -> str | None:
    """Why :func:`beam_search` would not reproduce ``generate`` for these arguments (None: it applies)."""
    try:
        import transformers
        from transformers import OPTForCausalLM
    except Exception as e:  # pragma: no cover - transformers is a dependency of the chapter
        return f"transformers not importable ({e})"
    if not transformers.__version__.startswith("5."):
        return f"transformers {transformers.__version__}: the beam bookkeeping reproduced is that of 5.x"
    if not isinstance(model, OPTForCausalLM):
        return f"not an OPTForCausalLM ({type(model).__name__})"
    if model.training:
        return "model is in training mode (dropout)"
    params = list(model.parameters())
    if any(p.device.type != "cpu" for p in params):
        return "model is not on the CPU (use generate)"
    if any(p.dtype != torch.float32 for p in params):
        return "model is not float32"
    attn = getattr(model.config, "_attn_implementation", None)
    if attn != "sdpa":  # eager attention needs generate's explicit causal mask; not reproduced here
        return f"attention implementation {attn!r} (supported: sdpa, transformers' default)"
    if model.config.is_encoder_decoder:
        return "encoder-decoder model"
    eos = model.config.eos_token_id
    if not isinstance(eos, int):
        return f"eos_token_id must be one int (got {eos!r})"
    vocab = model.lm_head.out_features
    if not (0 <= eos < vocab):
        return f"eos_token_id {eos} outside the vocabulary"
    if int(num_beams) < 1:
        return "num_beams < 1"
    if 2 * int(num_beams) + 1 > vocab:
        return f"vocabulary ({vocab}) too small for {num_beams} beams"
    if int(new_tokens) < 1:
        return "new_tokens < 1"
    gc = getattr(model, "generation_config", None)
    if gc is not None:
        for name, neutral in _NEUTRAL_GENERATION_FIELDS.items():
            v = getattr(gc, name, None)
            if not _is_neutral(v, neutral):
                return f"model.generation_config.{name} = {v!r} changes generate's search"
    if prompts is not None:
        if prompts.ndim != 2 or prompts.shape[1] < 1:
            return "prompts must be a 2-d LongTensor (n, L) with L >= 1"
        if prompts.dtype not in (torch.int64, torch.int32):
            return "prompts must hold integer token ids"
        if prompts.shape[1] + int(new_tokens) > model.config.max_position_embeddings:
            return "prompt + new tokens exceed max_position_embeddings"
        if len(prompts) and (int(prompts.min()) < 0 or int(prompts.max()) >= vocab):
            return "token ids outside the vocabulary"
    return None


def fast_beam_supported(model, prompts: torch.Tensor | None = None, new_tokens: int = 64, num_beams: int = 5) -> bool:
    """True when :func:`beam_search` applies (see :func:`fast_beam_unsupported_reason`)."""
    return fast_beam_unsupported_reason(model, prompts, new_tokens, num_beams) is None


class _KVBuffer:
    """Preallocated keys/values (rows, heads, prompt + new tokens, head_dim) per layer, duck-typed as the
    ``cache`` argument of ``OPTAttention``: ``update`` writes the new keys/values at ``pos`` and returns
    views of positions ``[0, pos + q)`` (the caller sets ``pos`` before every forward pass)."""

    def __init__(self, layers: int, rows: int, heads: int, length: int, head_dim: int, dtype, device):
        # one allocation: keys of every layer, then values of every layer
        self.all = torch.empty((2 * layers, rows, heads, length, head_dim), dtype=dtype, device=device)
        self.k = list(self.all[:layers].unbind(0))
        self.v = list(self.all[layers:].unbind(0))
        self.pos = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        end = self.pos + key_states.shape[2]
        k, v = self.k[layer_idx], self.v[layer_idx]
        k[:, :, self.pos:end].copy_(key_states)
        v[:, :, self.pos:end].copy_(value_states)
        return k[:, :, :end], v[:, :, :end]


class _PrefillCapture:
    """Cache stand-in for the prompt pass: keeps contiguous keys/values, as ``DynamicCache`` hands them
    to the attention on the first pass."""

    def __init__(self, layers: int):
        self.k = [None] * layers
        self.v = [None] * layers

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = key_states.contiguous(), value_states.contiguous()
        self.k[layer_idx], self.v[layer_idx] = k, v
        return k, v


def _embed(model, ids: torch.Tensor, start: int):
    dec = model.model.decoder
    rows, q = ids.shape
    pos_ids = torch.arange(start, start + q, device=ids.device).unsqueeze(0).expand(rows, q)
    h = dec.embed_tokens(ids)
    pos = dec.embed_positions(None, start, position_ids=pos_ids)
    if dec.project_in is not None:
        h = dec.project_in(h)
    return h + pos, pos_ids


def _head(model, h: torch.Tensor) -> torch.Tensor:
    dec = model.model.decoder
    h = h[:, -1:, :]
    if dec.final_layer_norm is not None:
        h = dec.final_layer_norm(h)
    if dec.project_out is not None:
        h = dec.project_out(h)
    return model.lm_head(h)[:, -1, :].to(dtype=torch.float32)


def _forward_modules(model, ids: torch.Tensor, start: int, cache) -> torch.Tensor:
    """Float32 logits of the last position of ``ids`` (rows, q) at positions ``start..start+q-1``, through
    the model's own ``OPTDecoderLayer`` modules (with ``cache`` as their cache)."""
    h, pos_ids = _embed(model, ids, start)
    for layer in model.model.decoder.layers:
        h = layer(h, attention_mask=None, position_ids=pos_ids, cache=cache, use_cache=True)
    return _head(model, h)


def _forward_inline(model, ids: torch.Tensor, start: int, cache) -> torch.Tensor:
    """:func:`_forward_modules` with the decoder layers written out (transformers 5's OPT layer with sdpa
    attention, operation for operation), which saves the Python overhead of ~20 module calls per step.
    Used only after :func:`_inline_matches` found it bit-identical to the modules for this model."""
    F = torch.nn.functional
    h, _ = _embed(model, ids, start)
    for li, layer in enumerate(model.model.decoder.layers):
        att, ln1, ln2 = layer.self_attn, layer.self_attn_layer_norm, layer.final_layer_norm
        heads, hd = att.num_heads, att.head_dim
        residual = h
        if layer.do_layer_norm_before:
            h = F.layer_norm(h, ln1.normalized_shape, ln1.weight, ln1.bias, ln1.eps)
        bsz, q_len, _ = h.shape
        q = (F.linear(h, att.q_proj.weight, att.q_proj.bias) * att.scaling).view(bsz, -1, heads, hd).transpose(1, 2)
        k = F.linear(h, att.k_proj.weight, att.k_proj.bias).view(bsz, -1, heads, hd).transpose(1, 2)
        v = F.linear(h, att.v_proj.weight, att.v_proj.bias).view(bsz, -1, heads, hd).transpose(1, 2)
        k, v = cache.update(k, v, li)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, scale=1.0, is_causal=q_len > 1)
        o = o.reshape(o.shape[0], -1, q_len, v.shape[-1]).transpose(1, 2).contiguous()
        o = F.linear(o.reshape(bsz, q_len, -1).contiguous(), att.out_proj.weight, att.out_proj.bias)
        h = residual + o
        if not layer.do_layer_norm_before:
            h = F.layer_norm(h, ln1.normalized_shape, ln1.weight, ln1.bias, ln1.eps)
        shape = h.shape
        h = h.reshape(-1, h.size(-1))
        residual = h
        if layer.do_layer_norm_before:
            h = F.layer_norm(h, ln2.normalized_shape, ln2.weight, ln2.bias, ln2.eps)
        h = layer.activation_fn(F.linear(h, layer.fc1.weight, layer.fc1.bias))
        h = (residual + F.linear(h, layer.fc2.weight, layer.fc2.bias)).view(shape)
        if not layer.do_layer_norm_before:
            h = F.layer_norm(h, ln2.normalized_shape, ln2.weight, ln2.bias, ln2.eps)
    return _head(model, h)


def _inline_matches(model, prompts: torch.Tensor) -> bool:
    """Do :func:`_forward_inline` and :func:`_forward_modules` give the same bits (logits, keys, values) on
    a short prompt pass and two single-token steps?  Checked once per model."""
    import weakref

    hit = _INLINE_OK.get(id(model))
    if hit is not None and hit[0]() is model:
        return hit[1]
    cfg = model.config
    n_layers = len(model.model.decoder.layers)
    length = max(1, min(prompts.shape[1], cfg.max_position_embeddings - 2, 8))
    x = prompts[:3, :length].repeat_interleave(3, dim=0)
    out = []
    for fwd in (_forward_modules, _forward_inline):
        kv = _KVBuffer(n_layers, len(x), cfg.num_attention_heads, length + 2,
                       cfg.hidden_size // cfg.num_attention_heads, next(model.parameters()).dtype, x.device)
        res = [fwd(model, x, 0, kv)]
        for step in range(2):
            kv.pos = length + step
            res.append(fwd(model, x[:, step:step + 1].flip(0), kv.pos, kv))
        out.append(res + kv.k + kv.v)
    ok = all(torch.equal(a, b) for a, b in zip(*out))
    _INLINE_OK[id(model)] = (weakref.ref(model), ok)
    return ok


_INLINE_OK: dict = {}


def rowwise_processor(proc) -> bool:
    """Whether a logits processor declares itself row-wise (a class attribute ``rowwise = True``): row ``i``
    of its output depends on row ``i`` of ``input_ids`` and ``scores`` alone, so it gives the same numbers
    whatever the order of the rows (e.g. :class:`collapse_utils.models.watermark.WatermarkLogitsProcessor`)."""
    return getattr(proc, "rowwise", False) is True


def _penalise_(scores: torch.Tensor, history: torch.Tensor, penalty: float) -> None:
    """generate's RepetitionPenaltyLogitsProcessor, in place: every token id in a row of ``history``
    (prompt + generated so far) gets ``score * penalty`` if ``score < 0`` else ``score / penalty``."""
    vals = scores.gather(1, history)
    scores.scatter_(1, history, torch.where(vals < 0, vals * penalty, vals / penalty))


def _search_batch(model, forward, prompts: torch.Tensor, new_tokens: int, num_beams: int, penalty: float,
                  eos: int, stats: dict, processors=()) -> torch.Tensor:
    """One chunk of prompts (what one ``generate`` call gets): LongTensor (len(prompts), new_tokens)."""
    cfg = model.config
    b, L = prompts.shape
    nb = num_beams
    rows = b * nb
    vocab = model.lm_head.out_features
    heads = cfg.num_attention_heads
    head_dim = cfg.hidden_size // heads
    n_layers = len(model.model.decoder.layers)
    dev = prompts.device
    dtype = next(model.parameters()).dtype

    # Prompt pass on the unique prompts: generate runs it on num_beams identical copies of every
    # prompt, whose rows (and so keys/values and logits) are the same.
    pre = _PrefillCapture(n_layers)
    logits = _forward_modules(model, prompts, 0, pre).repeat_interleave(nb, dim=0)  # (rows, V)
    kv = _KVBuffer(n_layers, rows, heads, L + new_tokens, head_dim, dtype, dev)
    for i in range(n_layers):
        for buf, x in ((kv.k[i], pre.k[i]), (kv.v[i], pre.v[i])):
            buf[:, :, :L].view(b, nb, heads, L, head_dim).copy_(x[:, None])
    del pre
    # the tokens of the beam held in each buffer row: prompt, then generated (all of them count for
    # the repetition penalty)
    hist = torch.empty(rows, L + new_tokens, dtype=torch.long, device=dev)
    hist[:, :L].view(b, nb, L).copy_(prompts[:, None])
    stats["steps"] += new_tokens

    if nb == 1:  # generate's greedy search: argmax of the processed logits (no log_softmax)
        for t in range(new_tokens):
            if t:
                kv.pos = L + t - 1
                logits = forward(model, hist[:, L + t - 1:L + t], L + t - 1, kv)
            if penalty != 1.0:
                _penalise_(logits, hist[:, :L + t], penalty)
            logits[:, eos] = -math.inf
            for proc in processors:
                logits = proc(hist[:, :L + t], logits)
            hist[:, L + t] = torch.argmax(logits, dim=-1)
        return hist[:, L:].clone()
    return _beam_loop(model, forward, logits, kv, hist, b, nb, L, new_tokens, vocab, penalty, eos, stats,
                      processors)


def _beam_loop(model, forward, logits, kv, hist, b, nb, L, new_tokens, vocab, penalty, eos,
               stats, processors=()) -> torch.Tensor:
    """generate's beam search over the buffer rows (see the module docstring).

    generate keeps beam ``j`` of prompt ``g`` in row ``g * nb + j`` and moves every row's cache when the
    beams are reordered.  Here a beam stays in its buffer row for as long as it lives: a parent's first
    child takes over the parent's row, a further child gets the row of a beam of the same prompt that
    left no children (and a copy of the parent's keys/values), and ``lpos[row]`` remembers the index
    ``j`` the beam has in generate's order.  Row-wise operations give the same numbers in either order;
    the one place order matters is ``torch.topk`` over the ``num_beams * vocab`` candidates of a prompt,
    whose ties it breaks by position (and differently for different ``k``).  So the candidates are first
    ranked in row order with ``k = 2 * num_beams + 1``; where those values are all distinct, the first
    ``2 * num_beams`` are generate's candidates in generate's order whatever the order of the rows.  Where
    two of them are equal, that prompt is ranked again exactly as generate ranks it: rows in generate's
    order, ``k = 2 * num_beams``.
    """
    dev = hist.device
    rows = b * nb
    k2 = 2 * nb
    n_layers = len(kv.k)
    heads, length = kv.k[0].shape[1], kv.k[0].shape[2]
    use_penalty = penalty != 1.0
    neg_inf = -math.inf
    hist_np = hist.numpy()
    running_np = np.zeros(rows, dtype=np.float32)  # score of the beam in each row
    running_np.reshape(b, nb)[:, 1:] = -1e9
    running = torch.from_numpy(running_np)
    lpos = np.tile(np.arange(nb), b)  # generate's index of the beam in each row
    group_base = np.repeat(np.arange(b) * nb, nb)  # first row of each row's prompt
    base_k = (np.arange(b) * nb)[:, None]
    top_mask_penalty = (~torch.cat([torch.ones(nb, dtype=torch.bool, device=dev),
                                    torch.zeros(k2 - nb, dtype=torch.bool, device=dev)]))[None, :] * -1.0e9
    for t in range(new_tokens):
        if t:
            kv.pos = L + t - 1
            logits = forward(model, hist[:, L + t - 1:L + t], L + t - 1, kv)
        logp = torch.nn.functional.log_softmax(logits, dim=-1)
        if use_penalty:
            _penalise_(logp, hist[:, :L + t], penalty)
        logp[:, eos] = neg_inf
        for proc in processors:  # row-wise processors (checked by the caller): buffer order is fine
            logp = proc(hist[:, :L + t], logp)
        logp += running[:, None]
        vals, idx = torch.topk(logp.view(b, nb * vocab), k=k2 + 1)
        v_np = vals.numpy()
        tie = (v_np[:, :-1] == v_np[:, 1:]).any(axis=1) | np.isnan(v_np).any(axis=1)
        top_scores = vals[:, :k2]
        i_np = idx.numpy()[:, :k2]
        top_rows = base_k + i_np // vocab
        redo = np.nonzero(tie)[0]
        if len(redo):
            # rank those prompts again exactly as generate does: rows in generate's order, k = 2 * nb
            # (torch.topk orders equal values differently for different k)
            stats["reranked"] += len(redo)
            row_of = np.empty(rows, dtype=np.int64)  # row_of[g * nb + j]: buffer row of generate's beam j
            row_of[group_base + lpos] = np.arange(rows)
            sub = row_of.reshape(b, nb)[redo].reshape(-1)
            s2, i2 = torch.topk(logp.index_select(0, torch.from_numpy(sub)).view(len(redo), nb * vocab), k=k2)
            top_scores = top_scores.clone()
            top_scores[torch.from_numpy(redo)] = s2
            i2 = i2.numpy()
            i_np = i_np.copy()
            i_np[redo] = i2
            top_rows = top_rows.copy()
            top_rows[redo] = row_of.reshape(b, nb)[redo[:, None], i2 // vocab]
        top_tok = i_np % vocab
        if t == new_tokens - 1:
            # generate's _update_finished_beams on the last step, nothing finished before: the first
            # num_beams candidates, length-normalised, against num_beams placeholders at -1e9; the best wins.
            fin = top_scores / (float(new_tokens) ** 1.0) + top_mask_penalty
            merged = torch.cat([torch.full((b, nb), -1e9, dtype=torch.float32, device=dev), fin], dim=1)
            best = torch.topk(merged, k=nb)[1][:, 0].numpy() - nb  # index into the 2k candidates
            if (best < 0).any():
                raise RuntimeError("no finished hypothesis scored above the -1e9 placeholders")
            ar = np.arange(b)
            res = hist[torch.from_numpy(top_rows[ar, best]), L:].clone()
            res[:, t] = torch.from_numpy(top_tok[ar, best])
            return res
        if (top_tok == eos).any():  # impossible while EOS is -inf and vocab > 2 * num_beams
            raise RuntimeError("an EOS candidate was selected before the last step")
        # hits are all False: adding hits * -1e9 (-0.0) changes no value; rank the 2k as generate does
        nxt = torch.topk(top_scores + torch.zeros_like(top_scores) * -1.0e9, k=nb)[1].numpy()
        parent = np.take_along_axis(top_rows, nxt, axis=1).reshape(-1)  # (rows,) in generate's new order
        token = np.take_along_axis(top_tok, nxt, axis=1).reshape(-1)
        score = np.take_along_axis(top_scores.numpy(), nxt, axis=1).reshape(-1)
        # the buffer row of every new beam
        order = np.argsort(parent, kind="stable")
        ps = parent[order]
        later = np.zeros(rows, dtype=bool)
        later[1:] = ps[1:] == ps[:-1]
        dest = parent.copy()
        extra = order[later]  # new beams whose parent row is taken by an earlier child
        if len(extra):
            free = np.setdiff1d(np.arange(rows), parent)  # rows whose beams left no child
            src = parent[extra]
            dest[extra] = free
            if t:
                # copy the parent's generated keys/values, from the first position where the two rows'
                # tokens differ (equal token histories give equal keys/values, row by row)
                same = hist_np[src, L:L + t] == hist_np[free, L:L + t]
                start = np.cumprod(same, axis=1).sum(axis=1)  # equal leading positions of each pair
                count = t - start
                total = int(count.sum())
                if total:
                    first = np.cumsum(count) - count
                    pos = L + np.repeat(start, count) + (np.arange(total) - np.repeat(first, count))
                    # as indices into all buffers seen as one (2 * layers * rows * heads * length, head_dim)
                    off = (np.arange(2 * n_layers)[:, None] * (rows * heads * length)
                           + np.arange(heads)[None, :] * length).reshape(1, -1)
                    from_t = torch.from_numpy(((np.repeat(src, count) * heads * length + pos)[:, None] + off).reshape(-1))
                    to_t = torch.from_numpy(((np.repeat(free, count) * heads * length + pos)[:, None] + off).reshape(-1))
                    flat = kv.all.view(-1, kv.all.shape[-1])
                    flat.index_copy_(0, to_t, flat.index_select(0, from_t))
                    stats["kv_positions_copied"] += total
                    stats["kv_rows_copied"] += len(free)
                hist_np[free, L:L + t] = hist_np[src, L:L + t]
        hist_np[dest, L + t] = token
        running_np[dest] = score
        lpos[dest] = np.tile(np.arange(nb), b)
    raise AssertionError("unreachable")


def beam_search(model, prompts: torch.Tensor, new_tokens: int = 64, num_beams: int = 5,
                repetition_penalty: float = 1.0, batch_size: int = 32, progress: bool = False,
                desc: str = "beam search", stats: dict | None = None, logits_processor=None) -> torch.Tensor:
    """Exactly ``new_tokens`` tokens after every prompt: LongTensor (n, new_tokens), token for token what
    ``model.generate`` returns after the prompt when called on the same ``batch_size`` chunks of
    ``prompts`` with ``num_beams``, ``do_sample=False``, ``min_new_tokens = max_new_tokens = new_tokens``,
    ``repetition_penalty``, ``early_stopping=False``, ``length_penalty=1.0``, ``num_return_sequences=1``,
    an all-ones attention mask, and the model's own ``eos_token_id``.

    ``stats`` (a dict, optional) receives counters: ``steps``, ``reranked`` (prompt-steps ranked again
    in generate's order because of ties), ``kv_rows_copied`` / ``kv_positions_copied`` and
    ``inline`` (whether the written-out layers were used).  ``logits_processor``: extra processors that
    ``generate`` would get in its ``logits_processor`` list (it applies them after the built-in ones, and
    so does this); only *row-wise* ones (:func:`rowwise_processor`), whose output row depends on that
    row's tokens and scores alone, since the beams are not kept in generate's row order.  Raises
    ``ValueError`` listing every problem when the fast path does not apply
    (:func:`fast_beam_unsupported_reason`); call ``generate`` then.
    """
    from tqdm.auto import tqdm

    problems = []
    if not isinstance(prompts, torch.Tensor):
        raise ValueError("prompts must be a LongTensor (n, L)")
    if int(batch_size) < 1:
        problems.append(f"batch_size must be >= 1 (got {batch_size})")
    if not float(repetition_penalty) > 0:
        problems.append(f"repetition_penalty must be > 0 (got {repetition_penalty})")
    why = fast_beam_unsupported_reason(model, prompts, new_tokens, num_beams)
    if why:
        problems.append(why)
    processors = tuple(logits_processor or ())
    odd = [type(p).__name__ for p in processors if not rowwise_processor(p)]
    if odd:
        problems.append(f"logits processors not marked row-wise: {', '.join(odd)}")
    if problems:
        raise ValueError("fast beam search does not apply: " + "; ".join(problems))
    counters = {"steps": 0, "reranked": 0, "kv_rows_copied": 0, "kv_positions_copied": 0}
    n = len(prompts)
    new_tokens, num_beams, batch_size = int(new_tokens), int(num_beams), int(batch_size)
    prompts = prompts.long()
    eos = int(model.config.eos_token_id)
    chunks = []
    with torch.inference_mode():
        inline = n > 0 and _inline_matches(model, prompts)
        forward = _forward_inline if inline else _forward_modules
        for s in tqdm(range(0, n, batch_size), desc=desc, leave=False, disable=progress_disabled(progress)):
            chunks.append(_search_batch(model, forward, prompts[s:s + batch_size], new_tokens, num_beams,
                                        float(repetition_penalty), eos, counters, processors))
    if stats is not None:
        stats.update(counters, inline=bool(inline) if n else False)
    return torch.cat(chunks) if chunks else torch.zeros(0, new_tokens, dtype=torch.long)
