"""Chapter 04 beam search: ``model.generate`` against :func:`collapse_utils.models.lm_beam.beam_search`.

    COLLAPSE_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_beam.py [--prompts 64] [--options] [--compile]

Builds the cpu-preset-sized OPT (vocabulary 2048, hidden 128, 2 layers, 4 heads, 128 positions), trains it
for a few steps on real WikiText-2 blocks (``--train-steps``; 0 = random init) so that its scores are not
near-uniform, and on ONE torch thread beam-searches 64 new tokens (5 beams, prompts in batches of 32, as
chapter 04 does) after the same real 64-token prompt blocks, once with ``generate`` (exactly the call of
``lm_train.generate_continuations``) and once with the fast path, for every repetition penalty asked.
The two are timed alternately, ``--repeats`` times each, and the best time of each is kept (the machine
may be shared); it prints blocks/s of both, the ratio, and whether the tokens are identical.
``--options`` also times what the library offers (bigger batches, a static cache, ``inference_mode``, output
options off) against the same baseline, and ``--compile`` ``torch.compile`` with a static cache.  Ratios
are given in wall time and in this process's CPU time (the steadier of the two on a shared machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from collapse_utils.models import lm, lm_train
from collapse_utils.tooling.config import load_preset
from collapse_utils.models.lm_beam import beam_search, fast_beam_unsupported_reason


def build_model(vocab: int, p: dict, blocks: torch.Tensor, steps: int, seed: int = 0):
    """The cpu-preset OPT, random init, then ``steps`` AdamW steps (batch 16, lr 3e-3) on ``blocks``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = lm_train.tiny_opt_config(vocab, p["hidden_size"], p["num_layers"], p["num_heads"],
                                   max_positions=2 * p["block_size"])
    model = AutoModelForCausalLM.from_config(cfg)
    if steps:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            b = blocks[torch.randint(0, len(blocks), (16,), generator=g)]
            loss = model(input_ids=b, labels=b).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        print(f"trained {steps} steps on real blocks: final training loss {float(loss.detach()):.2f} "
              f"(uniform: {torch.log(torch.tensor(float(vocab))):.2f})")
    return model.eval()


def generate_path(model, prompts, new_tokens, num_beams, penalty, batch_size, **extra):
    """``lm_train.generate_continuations``' call of ``model.generate`` (``extra``: library options)."""
    from transformers import GenerationConfig

    gcfg = GenerationConfig(num_beams=num_beams, do_sample=False, min_new_tokens=new_tokens,
                            max_new_tokens=new_tokens, repetition_penalty=penalty, pad_token_id=1, eos_token_id=2,
                            bos_token_id=2, early_stopping=False, num_return_sequences=1,
                            **{k: v for k, v in extra.items() if k != "inference_mode"})
    ctx = torch.inference_mode if extra.get("inference_mode") else torch.no_grad
    out = []
    with ctx():
        for s in range(0, len(prompts), batch_size):
            x = prompts[s:s + batch_size]
            out.append(model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gcfg)[:, x.shape[1]:])
    return torch.cat(out)


def decode_share(model, prompts, new_tokens, num_beams, penalty, batch_size) -> dict:
    """CPU time of generate in the work every token-identical path must repeat: in decoding steps, the
    attention kernel and the matrix products of the model, and the log_softmax and top-k over all
    ``num_beams * vocab`` candidates (same kernels, same shapes)."""
    F = torch.nn.functional
    spent = {"sdpa": 0.0, "linear": 0.0, "log_softmax": 0.0, "topk": 0.0}
    decoding = [False]
    originals = {"forward": model.forward, "sdpa": F.scaled_dot_product_attention, "linear": F.linear,
                 "log_softmax": F.log_softmax, "topk": torch.topk}

    def timer(name, fn, only_decoding=True):
        def wrapped(*args, **kw):
            c0 = time.process_time()
            out = fn(*args, **kw)
            if decoding[0] or not only_decoding:
                spent[name] += time.process_time() - c0
            return out
        return wrapped

    def forward(*args, **kw):
        ids = kw.get("input_ids", args[0] if args else None)
        decoding[0] = ids is not None and ids.shape[1] == 1
        try:
            return originals["forward"](*args, **kw)
        finally:
            decoding[0] = False

    def big_topk(x, k, *args, **kw):  # the (batch, num_beams * vocab) ranking, not the small ones
        c0 = time.process_time()
        out = originals["topk"](x, k, *args, **kw)
        if x.shape[-1] > 4 * num_beams:
            spent["topk"] += time.process_time() - c0
        return out

    model.forward = forward
    F.scaled_dot_product_attention = timer("sdpa", originals["sdpa"])
    F.linear = timer("linear", originals["linear"])
    F.log_softmax = timer("log_softmax", originals["log_softmax"], only_decoding=False)
    torch.topk = big_topk
    try:
        c0 = time.process_time()
        generate_path(model, prompts, new_tokens, num_beams, penalty, batch_size)
        total = time.process_time() - c0
    finally:
        model.forward = originals["forward"]
        F.scaled_dot_product_attention, F.linear = originals["sdpa"], originals["linear"]
        F.log_softmax, torch.topk = originals["log_softmax"], originals["topk"]
    floor = sum(spent.values())
    return {"floor_cpu_s": floor, "instrumented_total_cpu_s": total, **spent}


def best_of(fns: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Run every function ``repeats`` times, alternating; the best wall time, the best CPU time of this
    process (less sensitive to a shared machine), and the last output of each."""
    wall = {k: float("inf") for k in fns}
    cpu = dict(wall)
    outs = {}
    for _ in range(repeats):
        for k, f in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            outs[k] = f()
            wall[k] = min(wall[k], time.perf_counter() - w0)
            cpu[k] = min(cpu[k], time.process_time() - c0)
    return wall, cpu, outs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64, help="prompt blocks continued per timed run")
    ap.add_argument("--batch-size", type=int, default=None, help="prompts per call (default: the cpu preset's 32)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--num-beams", type=int, default=None, help="default: the cpu preset's 5")
    ap.add_argument("--penalties", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    ap.add_argument("--train-steps", type=int, default=200, help="AdamW steps on real blocks before timing (0: random init)")
    ap.add_argument("--random-prompts", action="store_true", help="random token prompts instead of real blocks")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each path (the best counts)")
    ap.add_argument("--options", action="store_true", help="also time the library's options")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile + static cache (compiles ~1 min)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    p = {**load_preset("cpu", "04"), "preset": "cpu", "run_name": ""}
    bs = a.batch_size or p["gen_batch_size"]
    nb = a.num_beams or p["num_beams"]
    data = lm.prepare_data(p)
    vocab = int(data.vocab_size)
    model = build_model(vocab, p, data.base, a.train_steps)
    if a.random_prompts:
        prompts = torch.randint(3, vocab, (a.prompts, p["block_size"]), generator=torch.Generator().manual_seed(1))
    else:
        prompts = data.train[: a.prompts]
    n_params = sum(t.numel() for t in model.parameters())
    try:
        load = f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    except OSError:  # pragma: no cover
        load = "load average unknown"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread; {load}")
    print(f"model: OPT {n_params:,} parameters (vocab {vocab}, hidden {p['hidden_size']}, {p['num_layers']} layers, "
          f"{p['num_heads']} heads); {len(prompts)} {'random' if a.random_prompts else 'WikiText-2'} prompts x "
          f"{prompts.shape[1]} tokens, {a.new_tokens} new tokens, {nb} beams, batches of {bs}; best of {a.repeats}")
    why = fast_beam_unsupported_reason(model, prompts, a.new_tokens, nb)
    if why:
        print(f"fast path does not apply: {why}")
        return 1
    n = len(prompts)
    # warm-up (first-call costs of both paths)
    generate_path(model, prompts[:2], a.new_tokens, nb, 3.0, bs)
    beam_search(model, prompts[:2], a.new_tokens, nb, 3.0, bs)
    all_ok = True
    for pen in a.penalties:
        wall, cpu, outs = best_of({
            "generate": lambda pen=pen: generate_path(model, prompts, a.new_tokens, nb, pen, bs),
            "fast": lambda pen=pen: beam_search(model, prompts, a.new_tokens, nb, pen, bs),
        }, a.repeats)
        same = torch.equal(outs["generate"], outs["fast"])
        all_ok &= same
        print(f"penalty {pen:g}: generate {n / wall['generate']:6.1f} blocks/s | fast {n / wall['fast']:6.1f} blocks/s"
              f" | ratio {wall['generate'] / wall['fast']:.2f}x wall, {cpu['generate'] / cpu['fast']:.2f}x CPU time"
              f" | tokens identical: {same}")
    bound = decode_share(model, prompts, a.new_tokens, nb, a.penalties[-1], bs)
    g_cpu, f_cpu = cpu["generate"], cpu["fast"]  # the last penalty's best CPU times (uninstrumented)
    print(f"floor (penalty {a.penalties[-1]:g}): {bound['floor_cpu_s']:.2f} s CPU of generate's work must be repeated by any "
          f"token-identical path (decoding steps: sdpa {bound['sdpa']:.2f} s, matrix products {bound['linear']:.2f} s; "
          f"log_softmax {bound['log_softmax']:.2f} s; top-k over beams x vocab {bound['topk']:.2f} s), so no such path "
          f"beats generate ({g_cpu:.2f} s) by more than {g_cpu / bound['floor_cpu_s']:.2f}x; the fast path takes "
          f"{f_cpu:.2f} s ({f_cpu - bound['floor_cpu_s']:.2f} s above the floor: prompt pass, layer norms, embeddings, "
          f"residuals, penalty, bookkeeping)")
    if a.options:
        pen = a.penalties[-1]
        print(f"\nlibrary options (penalty {pen:g}; ratio = plain generate time / option time; identical = same tokens "
              f"as plain generate at batch {bs}):")
        ref_fn = lambda: generate_path(model, prompts, a.new_tokens, nb, pen, bs)  # noqa: E731
        options = {
            f"generate, batch {max(1, bs // 2)}": lambda: generate_path(model, prompts, a.new_tokens, nb, pen, max(1, bs // 2)),
            f"generate, batch {2 * bs}": lambda: generate_path(model, prompts, a.new_tokens, nb, pen, 2 * bs),
            "generate, cache_implementation='static'":
                lambda: generate_path(model, prompts, a.new_tokens, nb, pen, bs, cache_implementation="static"),
            "generate under torch.inference_mode":
                lambda: generate_path(model, prompts, a.new_tokens, nb, pen, bs, inference_mode=True),
            "generate, output_scores/return_dict off, disable_compile":
                lambda: generate_path(model, prompts, a.new_tokens, nb, pen, bs, output_scores=False,
                                      return_dict_in_generate=False, disable_compile=True),
        }
        for name, fn in options.items():
            fn()  # warm-up
            wall, cpu, outs = best_of({"ref": ref_fn, "opt": fn}, a.repeats)
            print(f"  {name:58s} ratio {wall['ref'] / wall['opt']:.2f}x wall, {cpu['ref'] / cpu['opt']:.2f}x CPU | "
                  f"identical: {torch.equal(outs['ref'], outs['opt'])}")
    if a.compile:
        pen = a.penalties[-1]
        # torch.compile of the forward pass with a static cache (fixed shapes: it compiles once)
        ref_fn = lambda: generate_path(model, prompts, a.new_tokens, nb, pen, bs)  # noqa: E731
        eager_forward = model.forward
        try:
            t0 = time.perf_counter()
            model.forward = torch.compile(eager_forward, dynamic=False)
            comp = lambda: generate_path(model, prompts, a.new_tokens, nb, pen, bs, cache_implementation="static")  # noqa: E731
            comp()
            t_compile = time.perf_counter() - t0
            wall_c, cpu_c, out_c = best_of({"opt": comp}, a.repeats)
            model.forward = eager_forward
            wall_r, cpu_r, out_r = best_of({"ref": ref_fn}, a.repeats)
            print(f"  {'generate, static cache + torch.compile(model.forward)':58s} ratio "
                  f"{wall_r['ref'] / wall_c['opt']:.2f}x wall, {cpu_r['ref'] / cpu_c['opt']:.2f}x CPU | identical: "
                  f"{torch.equal(out_r['ref'], out_c['opt'])} (compiling took {t_compile:.0f} s)")
        except Exception as e:  # compilers differ between machines; report, do not fail
            model.forward = eager_forward
            print(f"  torch.compile failed: {type(e).__name__}: {str(e)[:200]}")
    print(f"\nall fast-path outputs identical to generate: {all_ok}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
