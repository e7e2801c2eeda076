"""Chapter 04 benchmark: training tokens/s and beam-search blocks/s of the cpu-preset model, and an
estimate of the paper preset's wall time per generation on one GPU.

    COLLAPSE_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_lm.py [--preset cpu]

Everything is measured in one run on this machine and printed with the ratios the chapter's budget
depends on.  Where no GPU is present the paper-preset figure is an ESTIMATE from FLOP counts and an
assumed sustained GPU throughput (printed, adjustable with --gpu-tflops / --step-overhead-ms), with the
number of WikiText-2-raw training blocks estimated from the local GPT-2 BPE files.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from collapse_utils.models import lm, lm_data, lm_train
from collapse_utils.tooling.config import load_preset

OPT125M_PARAMS = 125_239_296       # facebook/opt-125m, embeddings included (tied head)
OPT125M_LAYERS, OPT125M_HIDDEN, OPT125M_VOCAB = 12, 768, 50_272


def measure_training(p, data, model_path, blocks: int, epochs: int) -> dict:
    """:func:`lm_train.finetune` against bare optimiser steps on the same batches.

    The workload is one fine-tune of the chapter: ``blocks`` training blocks for ``epochs`` epochs with the
    preset's batch size, validation on the preset's validation blocks after every epoch, the model loaded
    from disk before and the best checkpoint saved after.  The bare loop takes the very same batches
    (the same seeded shuffle) through forward, backward and AdamW, after one untimed warm-up step; its
    time is the floor the fine-tune is measured against.
    """
    from torch.utils.data import DataLoader, TensorDataset

    train = data.train[:blocks]
    bs, seed = p["batch_size"], 0
    out = Path(model_path).parent / "finetuned"
    t0 = time.perf_counter()
    info = lm_train.finetune(model_path, train, data.valid, out, epochs, p["lr"], bs, seed=seed)
    t_ft = time.perf_counter() - t0
    model = lm_train.load_model(model_path).train()
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    dl = DataLoader(TensorDataset(train.long()), batch_size=bs, shuffle=True, generator=gen)
    warm = train[:bs]
    model(input_ids=warm, labels=warm).loss.backward()
    opt.zero_grad(set_to_none=True)
    steps, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for (b,) in dl:
            model(input_ids=b, labels=b).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
    t_bare = time.perf_counter() - t0
    # what finetune() does besides the steps: one validation pass per epoch (timed here once)
    t0 = time.perf_counter()
    lm_train.sequence_nll(model, data.valid, batch_size=max(bs, 32))
    t_val = time.perf_counter() - t0
    return {"finetune_s": t_ft, "bare_s": t_bare, "steps": steps, "validation_s": t_val * epochs,
            "finetune_tokens_per_s": info.tokens_seen / t_ft, "step_tokens_per_s": steps * bs * train.shape[1] / t_bare,
            "ratio": t_ft / t_bare}


def measure_generation(p, data, model_path, blocks: int) -> dict:
    model = lm_train.load_model(model_path)
    prompts = data.train[:blocks]
    lm_train.generate_continuations(model, prompts[:2], 64, p["num_beams"], p["repetition_penalty"], 2)  # warm-up
    t0 = time.perf_counter()
    lm_train.generate_continuations(model, prompts, 64, p["num_beams"], p["repetition_penalty"], p["gen_batch_size"])
    dt = time.perf_counter() - t0
    # per-step cost of beam search with a model too small to matter: the library's own overhead
    from transformers import AutoModelForCausalLM

    micro = AutoModelForCausalLM.from_config(lm_train.tiny_opt_config(64, 8, 1, 1, max_positions=160)).eval()
    x = torch.randint(3, 64, (1, 64))
    t1 = time.perf_counter()
    lm_train.generate_continuations(micro, x, 64, p["num_beams"], p["repetition_penalty"], 1)
    overhead = (time.perf_counter() - t1) / 64
    return {"gen_blocks_per_s": blocks / dt, "beam_step_overhead_ms": 1000 * overhead}


def raw_train_blocks_estimate() -> tuple[int, str]:
    """WikiText-2-raw train blocks under OPT's GPT-2 BPE, estimated offline.

    The raw training split is not available here.  Tokenise the tokenised release's train split with the
    GPT-2 BPE and scale by the raw/tokenised token ratio measured on the validation split, where both
    forms exist.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from collapse_utils.core.data import dataset_file

    bpe = models.BPE.from_file(str(dataset_file("gpt2-bpe", "vocab.json")), str(dataset_file("gpt2-bpe", "merges.txt")))
    raw = Tokenizer(bpe)
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    n = {}
    for cfg in ("wikitext-2-v1", "wikitext-2-raw-v1"):
        n[cfg] = len(lm_data.encode_lines(tok, lm_data.load_lines(cfg, "valid")))
    train_tok = len(lm_data.encode_lines(tok, lm_data.load_lines("wikitext-2-v1", "train")))
    ratio = n["wikitext-2-raw-v1"] / n["wikitext-2-v1"]
    est = int(train_tok * ratio) // 64
    return est, (f"GPT-2 BPE: wikitext-2-v1 train {train_tok:,} tokens x raw/tokenised ratio {ratio:.3f} "
                 f"(valid: {n['wikitext-2-raw-v1']:,} / {n['wikitext-2-v1']:,} tokens)")


def paper_estimate(n_blocks: int, gpu_tflops: float, step_overhead_ms: float, epochs: int, n_valid: int = 3_800,
                   n_test: int = 4_300, gen_batch: int = 128, beams: int = 5) -> dict:
    """FLOP-count estimate of one paper-preset generation of OPT-125m on one GPU."""
    tokens = n_blocks * 64
    attn = 2 * OPT125M_LAYERS * 64 * OPT125M_HIDDEN  # attention score+value FLOPs per token at length 64 (fwd)
    fwd_per_token = 2 * OPT125M_PARAMS + attn
    train = epochs * (3 * fwd_per_token * tokens + fwd_per_token * n_valid * 64)
    # beam search: the prompt (64 tokens) and 64 new tokens for each of `beams` beams
    gen_tokens = n_blocks * beams * (64 + 64)
    gen = fwd_per_token * gen_tokens
    steps = int(np.ceil(n_blocks / gen_batch)) * 64
    evals = fwd_per_token * (n_test + n_blocks) * 64
    flops_s = gpu_tflops * 1e12
    t_train, t_gen = train / flops_s, gen / flops_s + steps * step_overhead_ms / 1000
    return {"train_s": t_train, "gen_s": t_gen, "eval_s": evals / flops_s, "total_s": t_train + t_gen + evals / flops_s,
            "train_pflop": train / 1e15, "gen_pflop": gen / 1e15, "decode_steps": steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu", choices=["smoke", "cpu"])
    ap.add_argument("--train-blocks", type=int, default=512, help="blocks of the timed fine-tune (cpu preset: 512)")
    ap.add_argument("--train-epochs", type=int, default=3, help="epochs of the timed fine-tune")
    ap.add_argument("--gen-blocks", type=int, default=64, help="blocks continued in the timed beam search")
    ap.add_argument("--gpu-tflops", type=float, default=25.0,
                    help="ASSUMED sustained fp32 throughput of one GPU for the estimate (TFLOP/s)")
    ap.add_argument("--step-overhead-ms", type=float, default=None,
                    help="ASSUMED per-step beam-search overhead on the GPU (default: the CPU-measured one)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the chapter's runs use 1)")
    a = ap.parse_args(argv)
    p = {**load_preset(a.preset, "04"), "preset": a.preset, "run_name": ""}
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
          f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    data = lm.prepare_data(p)
    tok = lm_data.load_tokenizer(data.tokenizer_path)
    scratch = Path(tempfile.mkdtemp(prefix="bench_lm_"))
    folder = scratch / "model"
    lm_train.new_local_model(lm_train.tiny_opt_config(len(tok), p["hidden_size"], p["num_layers"], p["num_heads"],
                                                      max_positions=2 * p["block_size"]), 0, folder, tok)
    n_params = sum(t.numel() for t in lm_train.load_model(folder).parameters())
    print(f"{a.preset}-preset model: {n_params:,} parameters, vocabulary {len(tok):,}, batch {p['batch_size']}, "
          f"{p['num_beams']} beams, repetition penalty {p['repetition_penalty']}")
    tr = measure_training(p, data, folder, a.train_blocks, a.train_epochs)
    ge = measure_generation(p, data, folder, a.gen_blocks)
    print(f"training:   {a.train_blocks} blocks x {a.train_epochs} epochs ({tr['steps']} steps of {p['batch_size']}): "
          f"finetune() {tr['finetune_s']:.2f} s, the same batches as bare optimiser steps {tr['bare_s']:.2f} s "
          f"-> finetune / bare = {tr['ratio']:.2f} (target <= 1.3; of the difference, validation after every epoch "
          f"~ {tr['validation_s']:.2f} s; the rest is loading, Accelerate's wrapping, the kept checkpoint and saving)")
    print(f"            {tr['step_tokens_per_s']:,.0f} tokens/s in bare steps, {tr['finetune_tokens_per_s']:,.0f} tokens/s "
          "through finetune()")
    print(f"generation: {ge['gen_blocks_per_s']:.2f} blocks/s (64 new tokens, {p['num_beams']} beams, "
          f"{p['gen_batch_size']} prompts per call); beam-search overhead {ge['beam_step_overhead_ms']:.2f} ms/step")
    per_block_train = 64 / tr["step_tokens_per_s"]
    per_block_gen = 1 / ge["gen_blocks_per_s"]
    print(f"ratio: continuing one block costs {per_block_gen / per_block_train:.1f}x one training epoch over it; "
          f"a generation of setting (a) ({p['epochs_a']} epochs) spends "
          f"{per_block_gen / (per_block_gen + p['epochs_a'] * per_block_train):.0%} of its time in beam search")
    n = len(data.train)
    est_gen = n * (p["epochs_a"] * per_block_train + per_block_gen)
    print(f"cpu-preset estimate: one generation of setting (a) on {n} blocks ~ {est_gen:.0f} s "
          f"(setting b ~ {n * (p['epochs_b'] * per_block_train + 0.9 * per_block_gen):.0f} s)")

    print("\nPaper preset (facebook/opt-125m, all of wikitext-2-raw-v1 train) on one GPU:")
    if torch.cuda.is_available():
        print("  a GPU is present: run the chapter with --preset paper for a measurement; the estimate follows.")
    else:
        print("  NO GPU in this session: the numbers below are an ESTIMATE, not a measurement.")
    n_blocks, how = raw_train_blocks_estimate()
    overhead = a.step_overhead_ms if a.step_overhead_ms is not None else ge["beam_step_overhead_ms"]
    print(f"  training blocks: ~{n_blocks:,} ({how})")
    print(f"  assumptions: {a.gpu_tflops:g} TFLOP/s sustained (fp32, no mixed precision, as the paper preset runs), "
          f"{overhead:.1f} ms of beam-search overhead per decoding step (measured on this CPU with a micro model)")
    p_paper = load_preset("paper", "04")
    for s, ep in (("a", p_paper["epochs_a"]), ("b", p_paper["epochs_b"])):
        e = paper_estimate(n_blocks, a.gpu_tflops, overhead, ep, gen_batch=p_paper["gen_batch_size"])
        print(f"  setting ({s}), {ep} epochs: training {e['train_pflop']:.1f} PFLOP ~ {e['train_s'] / 60:.1f} min, "
              f"beam search {e['gen_pflop']:.1f} PFLOP + {e['decode_steps']:,} steps ~ {e['gen_s'] / 60:.1f} min, "
              f"evaluation ~ {e['eval_s'] / 60:.1f} min -> ~ {e['total_s'] / 60:.0f} min per generation")
    ea = paper_estimate(n_blocks, a.gpu_tflops, overhead, p_paper["epochs_a"])["total_s"]
    eb = paper_estimate(n_blocks, a.gpu_tflops, overhead, p_paper["epochs_b"])["total_s"]
    total = p_paper["seeds"] * (p_paper["generations"] + 1) * (ea + eb)
    print(f"  whole paper preset ({p_paper['seeds']} seeds x {p_paper['generations'] + 1} models x 2 settings, "
          f"ablation not counted): ~ {total / 3600:.0f} GPU-hours")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
