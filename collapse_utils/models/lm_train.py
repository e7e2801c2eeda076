"""OPT models for chapter 04: load by name, fine-tune under Accelerate, beam-search, per-sequence NLL.

Every model -- ``facebook/opt-125m`` from the hub or a small OPT saved locally -- is loaded through
the same ``AutoModelForCausalLM.from_pretrained(name_or_path)`` call (:func:`load_model`).
Training (:func:`finetune`) runs under Hugging Face Accelerate, so the same code runs on one CPU,
one GPU, or several processes started with ``accelerate launch``; this module is also a command
line script for such launches::

    accelerate launch --multi_gpu --num_processes 2 -m collapse_utils.models.lm_train \
        --model facebook/opt-125m --blocks blocks.pt --out path/to/out --epochs 5

On a machine without GPUs the same command with ``COLLAPSE_FORCE_CPU=1`` starts two CPU processes
that train together over gloo (``accelerate launch --cpu`` alone starts a single process).

Settings follow the official code (github.com/iliaishacked/curse_recurse): AdamW (weight decay
0.01, torch's default), a cosine schedule stepped once per epoch (``CosineAnnealingLR(T_max=epochs,
eta_min=1e-6)``, Lightning's default interval), the checkpoint with the lowest validation loss
(checked after every epoch) is the one kept, and generation is beam search with
``min_new_tokens = max_new_tokens`` so every continuation has exactly that many tokens.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.progress import progress_disabled

__all__ = [
    "FitInfo",
    "beam_continuations",
    "cap_threads",
    "finetune",
    "generate_continuations",
    "get_accelerator",
    "load_model",
    "main",
    "token_nll",
    "new_local_model",
    "perplexity_stats",
    "sequence_nll",
    "tiny_opt_config",
]


def cap_threads() -> None:
    """For the command line (``accelerate launch``): COLLAPSE_TORCH_THREADS threads per process, if set.

    Inside the book, the threads of a run are set by the run itself
    (:func:`collapse_utils.core.parallel.run_threads`), never here."""
    want = os.environ.get("COLLAPSE_TORCH_THREADS")
    if want:
        torch.set_num_threads(int(want))


_ACCELERATOR = None


def get_accelerator():
    """One Accelerator per process (CPU, one GPU, or the processes of ``accelerate launch``)."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        _ACCELERATOR = Accelerator(cpu=os.environ.get("COLLAPSE_FORCE_CPU") == "1")
    return _ACCELERATOR


def tiny_opt_config(vocab_size: int, hidden: int = 128, layers: int = 2, heads: int = 4, ffn: int | None = None,
                    max_positions: int = 128, dropout: float = 0.1):
    """A small OPT (same architecture as OPT-125m: pre-LayerNorm, learned positions, ReLU, tied head)."""
    from transformers import OPTConfig

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    return OPTConfig(
        vocab_size=int(vocab_size), hidden_size=int(hidden), num_hidden_layers=int(layers),
        ffn_dim=int(ffn or 4 * hidden), num_attention_heads=int(heads), max_position_embeddings=int(max_positions),
        word_embed_proj_dim=int(hidden), dropout=dropout, attention_dropout=0.0, activation_function="relu",
        do_layer_norm_before=True, pad_token_id=1, bos_token_id=2, eos_token_id=2, tie_word_embeddings=True,
    )


def new_local_model(config, seed: int, save_dir: str | os.PathLike, tokenizer=None):
    """A freshly initialised OPT written with ``save_pretrained`` (so it loads like a hub model)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(int(seed) % (2**63))
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(save_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(save_dir))
    return Path(save_dir)


def load_model(name_or_path: str | os.PathLike):
    """``AutoModelForCausalLM.from_pretrained`` -- the one loading path for hub names and local folders."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(name_or_path))
    return model


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@dataclass
class FitInfo:
    """What one fine-tuning run did."""

    path: str
    best_epoch: int
    val_losses: list[float]
    train_losses: list[float]
    seconds: float
    tokens_seen: int
    num_processes: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def best_val_loss(self) -> float:
        return float(min(self.val_losses))


def _mean_loss(model, loader, accelerator) -> float:
    """Token-averaged loss over a loader (all blocks have the same length), gathered over processes."""
    model.eval()
    sums = []
    with torch.no_grad():
        for (batch,) in loader:
            logits = model(input_ids=batch).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
            sums.append(accelerator.gather_for_metrics(nll.mean(dim=1)))
    model.train()
    return float(torch.cat(sums).mean())


def finetune(model_path: str | os.PathLike, train_blocks: torch.Tensor, valid_blocks: torch.Tensor, out_dir,
             epochs: int, lr: float, batch_size: int, seed: int, weight_decay: float = 0.01, eta_min: float = 1e-6,
             patience: int = 0, progress: bool = False, desc: str = "fine-tune") -> FitInfo:
    """Fine-tune the model at ``model_path`` on ``train_blocks``; keep the epoch with the lowest
    validation loss; save it with ``save_pretrained`` to ``out_dir``.

    ``batch_size`` is the global batch (split over ``accelerate launch`` processes).  ``patience`` > 0
    stops once the validation loss has not improved for that many epochs (0: always run every epoch,
    as the official code does); the schedule is the same either way, so the kept checkpoint only
    differs when the validation loss would have come back below its best later on.
    """
    from accelerate.utils import set_seed

    acc = get_accelerator()
    t0 = time.time()
    set_seed(int(seed) % (2**32))
    model = load_model(model_path)
    train_dl, valid_dl = _loaders(train_blocks, valid_blocks, batch_size, seed, acc.num_processes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=min(eta_min, lr))
    model, opt, train_dl, valid_dl = acc.prepare(model, opt, train_dl, valid_dl)
    best, best_epoch, val_losses, train_losses, tokens = None, -1, [], [], 0
    for epoch in _epochs(epochs, desc, progress, acc):
        train_loss, seen = _train_epoch(model, train_dl, opt, acc)
        sched.step()
        train_losses.append(train_loss)
        tokens += seen
        val_losses.append(_mean_loss(model, valid_dl, acc))
        if best is None or val_losses[-1] < min(val_losses[:-1]):  # the best checkpoint so far
            best_epoch, best = epoch + 1, _cpu_copy(acc.unwrap_model(model).state_dict())
        if patience and epoch + 1 - best_epoch >= patience:  # early stopping (0: every epoch runs)
            break
    _save_best(acc, model, best, out_dir)
    return FitInfo(str(out_dir), best_epoch, val_losses, train_losses, time.time() - t0, tokens, acc.num_processes)


def _train_epoch(model, loader, opt, acc) -> tuple[float, int]:
    """One pass over the training blocks, one AdamW step per batch: (mean batch loss, tokens seen)."""
    model.train()
    total, batches, tokens = 0.0, 0, 0
    for (batch,) in loader:
        out = model(input_ids=batch, labels=batch)  # next-token cross-entropy
        acc.backward(out.loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        total += float(out.loss.detach())
        batches += 1
        tokens += batch.numel() * acc.num_processes
    return total / max(batches, 1), tokens


def _loaders(train_blocks: torch.Tensor, valid_blocks: torch.Tensor, batch_size: int, seed: int, processes: int):
    """Shuffled training batches (seeded) and validation batches; ``batch_size`` is split over processes."""
    from torch.utils.data import DataLoader, TensorDataset

    per_device = max(1, math.ceil(batch_size / processes))
    gen = torch.Generator().manual_seed(int(seed) % (2**63))
    train_dl = DataLoader(TensorDataset(train_blocks.long()), batch_size=per_device, shuffle=True, generator=gen)
    valid_dl = DataLoader(TensorDataset(valid_blocks.long()), batch_size=max(per_device, 32), shuffle=False)
    return train_dl, valid_dl


def _epochs(epochs: int, desc: str, progress: bool, acc):
    """``range(epochs)`` behind a progress bar (closed when the loop ends or breaks)."""
    from tqdm.auto import tqdm

    yield from tqdm(range(epochs), desc=desc, leave=False,
                    disable=progress_disabled(progress) or not acc.is_local_main_process)


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _save_best(acc, model, best: dict, out_dir) -> None:
    """Load the best epoch's weights and write them with ``save_pretrained`` (main process)."""
    final = acc.unwrap_model(model)
    final.load_state_dict(best)
    out_dir = Path(out_dir)
    acc.wait_for_everyone()
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        final.save_pretrained(str(out_dir))
    acc.wait_for_everyone()
    acc.free_memory()


# --------------------------------------------------------------------------------------------
# evaluation and generation
# --------------------------------------------------------------------------------------------
def _device():
    return get_accelerator().device


def _token_losses(model, blocks: torch.Tensor, batch_size: int):
    """Per-token next-token losses (float32, on the CPU), one (batch, length - 1) tensor per batch."""
    dev = _device()
    model = model.to(dev).eval()
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            b = blocks[i:i + batch_size].long().to(dev)
            logits = model(input_ids=b).logits[:, :-1].float()
            yield torch.nn.functional.cross_entropy(logits.transpose(1, 2), b[:, 1:], reduction="none").cpu()


def token_nll(model, blocks: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Per-token negative log-likelihood (nats) of every block: array (n, length - 1); entry ``j`` is the
    loss of token ``j + 1`` given the tokens before it (row means are :func:`sequence_nll`)."""
    out = list(_token_losses(model, blocks, batch_size))
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, blocks.shape[1] - 1))


def sequence_nll(model, blocks: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Mean next-token negative log-likelihood of every block (nats), one value per sequence.

    Per-token losses come from ``cross_entropy(..., reduction='none')`` and are averaged within
    each sequence -- not per batch as in the official code -- so ``exp`` of the result is each
    sequence's own perplexity.
    """
    out = [nll.mean(dim=1) for nll in _token_losses(model, blocks, batch_size)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def perplexity_stats(nll: np.ndarray, prefix: str) -> dict[str, float]:
    """Corpus perplexity exp(mean token NLL) and the mean / std / median of per-sequence perplexities."""
    ppl = np.exp(nll)
    return {
        f"{prefix}_ppl": float(np.exp(nll.mean())),
        f"{prefix}_ppl_seq_mean": float(ppl.mean()),
        f"{prefix}_ppl_seq_std": float(ppl.std(ddof=1)) if len(ppl) > 1 else float("nan"),
        f"{prefix}_ppl_seq_median": float(np.median(ppl)),
    }


def beam_continuations(model, prompts: torch.Tensor, new_tokens: int = 64, num_beams: int = 5,
                       repetition_penalty: float = 3.0, logits_processor=None) -> torch.Tensor:
    """The generation step: beam search writes exactly ``new_tokens`` tokens after every prompt block.

    Deterministic (no sampling); the end token is forbidden until the last position
    (``min_new_tokens = max_new_tokens``), so every continuation has the same length.  The repetition
    penalty divides (multiplies) the positive (negative) score of every token already in the beam.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    cfg = model.config
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 1
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else 2
    search = GenerationConfig(
        num_beams=int(num_beams), do_sample=False, min_new_tokens=int(new_tokens), max_new_tokens=int(new_tokens),
        repetition_penalty=float(repetition_penalty), pad_token_id=pad, eos_token_id=eos, bos_token_id=eos,
        early_stopping=False, num_return_sequences=1,
    )
    with torch.no_grad():
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), generation_config=search,
                             logits_processor=LogitsProcessorList(logits_processor or []))
    return out[:, prompts.shape[1]:]


def generate_continuations(model, prompts: torch.Tensor, new_tokens: int = 64, num_beams: int = 5,
                           repetition_penalty: float = 3.0, batch_size: int = 64, progress: bool = False,
                           desc: str = "beam search", logits_processor=None, fast: bool = True) -> torch.Tensor:
    """:func:`beam_continuations` of every prompt block, in batches: LongTensor (n, new_tokens).

    Where :func:`collapse_utils.models.lm_beam.beam_search` applies (``fast``; a small OPT on the CPU in
    one process, extra processors only if row-wise, as the watermark is), it runs instead: the same
    tokens as ``model.generate`` without its per-step overhead (tested token for token in
    ``tests/test_lm_beam.py`` and ``tests/test_lm.py``).  ``logits_processor``: extra ``transformers``
    logits processors (e.g. a watermark), applied after the built-in ones as ``generate`` applies them.
    With several ``accelerate launch`` processes the prompts are split between them and the
    continuations gathered back in order.
    """
    from tqdm.auto import tqdm

    acc = get_accelerator()
    dev = acc.device
    model = model.to(dev).eval()
    if fast and acc.num_processes == 1:
        # small OPT on a CPU: the same search as generate's, token for token, without its per-step overhead
        from .lm_beam import beam_search, fast_beam_unsupported_reason, rowwise_processor

        if (fast_beam_unsupported_reason(model, prompts, new_tokens, num_beams) is None
                and all(rowwise_processor(p) for p in logits_processor or ())):
            return beam_search(model, prompts, new_tokens, num_beams, repetition_penalty, batch_size,
                               progress=progress, desc=desc, logits_processor=logits_processor)
    idx = list(range(len(prompts)))
    chunks: list[tuple[int, torch.Tensor]] = []
    with acc.split_between_processes(idx) as mine:
        starts = list(range(0, len(mine), batch_size))
        for s in tqdm(starts, desc=desc, leave=False, disable=progress_disabled(progress) or not acc.is_local_main_process):
            rows = mine[s:s + batch_size]
            p = prompts[rows].long().to(dev)
            cont = beam_continuations(model, p, new_tokens, num_beams, repetition_penalty, logits_processor).cpu()
            if cont.shape != (len(rows), new_tokens):
                raise RuntimeError(f"generation returned {tuple(cont.shape)}, expected {(len(rows), new_tokens)}")
            chunks.append((rows[0], cont))
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        chunks = gather_object(chunks)
    chunks.sort(key=lambda c: c[0])
    return torch.cat([c for _, c in chunks]) if chunks else torch.zeros(0, new_tokens, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# command line (for `accelerate launch`)
# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fine-tune an OPT on 64-token blocks under Accelerate, "
                                 "then beam-search continuations of some training blocks.")
    ap.add_argument("--model", required=True, help="hub name or local folder (from_pretrained)")
    ap.add_argument("--blocks", required=True, help="torch file with {'train': LongTensor, 'valid': LongTensor}")
    ap.add_argument("--out", required=True, help="output folder: the best model and result.json")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generate", type=int, default=0, help="continue this many training blocks")
    ap.add_argument("--num-beams", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repetition-penalty", type=float, default=3.0)
    a = ap.parse_args(argv)
    cap_threads()
    data = torch.load(a.blocks, weights_only=True)
    info = finetune(a.model, data["train"], data["valid"], Path(a.out) / "model", a.epochs, a.lr, a.batch_size,
                    a.seed)
    acc = get_accelerator()
    result = asdict(info)
    result["process_index"] = acc.process_index
    if a.generate:
        cont = generate_continuations(load_model(info.path), data["train"][: a.generate], a.new_tokens, a.num_beams,
                                      a.repetition_penalty, batch_size=8)
        result["generated_shape"] = list(cont.shape)
        if acc.is_main_process:
            torch.save(cont, Path(a.out) / "generated.pt")
    if acc.is_main_process:
        (Path(a.out) / "result.json").write_text(json.dumps(result, indent=1))
    acc.wait_for_everyone()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
