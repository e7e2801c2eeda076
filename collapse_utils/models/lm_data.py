"""WikiText-2 for chapter 04: text, tokenizers and 64-token blocks.

Two dataset configurations exist (the chapter says which one a run used):

``wikitext-2-raw-v1``  the paper's configuration: raw text, loaded from local files when all three
                       splits are present (``COLLAPSE_DATA_DIR/wikitext-2-raw/``), otherwise downloaded
                       through the data registry (Hugging Face ``datasets``, written back to the
                       original files and checked against their sha256; needs a network), and as a
                       last resort read straight from ``datasets.load_dataset``.  Tokenised with the
                       model's own tokenizer (OPT's GPT-2 BPE).
``wikitext-2-v1``      the complete tokenised release (rare words replaced by ``<unk>``), all three
                       splits from local files through the data registry.  The offline presets use
                       it, with a byte-level BPE tokenizer trained on its training split.

How lines become tokens (``tokenize``):

``lines``   every non-blank line tokenised without special tokens, the ids concatenated (the local
            presets: no ``</s>`` markers, which beam search with a fixed length can never produce).
``hf_clm``  what Hugging Face's causal-LM fine-tuning recipe (``run_clm.py``) does: every row of the
            dataset -- one per line of the file, a blank line an empty row -- goes through
            ``tokenizer(rows)`` with the tokenizer's special tokens; OPT's tokenizer puts ``</s>`` in
            front of every row, so a blank row is a lone ``</s>``; the ids are concatenated (the
            recipe's ``group_texts``).  The paper preset.

Either way the ids are cut into exact ``block_size``-token blocks (the remainder is dropped).  Blocks never cross a split, and the
part of the training split used to pretrain the local base model is disjoint from the part the
recursion trains on (:func:`select_blocks`).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.data import DataError, cache_dir, dataset_file
from ..core.storage import atomic_write_bytes, fingerprint, read_cache

__all__ = [
    "DATA_CONFIGS",
    "SPLITS",
    "TOKENIZE_MODES",
    "LMData",
    "diversity",
    "encode_lines",
    "evenly_spaced",
    "file_rows",
    "load_lines",
    "load_rows",
    "load_tokenizer",
    "make_blocks",
    "opt_style_tokenizer",
    "prepare_lm_data",
    "select_blocks",
    "train_bpe_tokenizer",
]

SPLITS = ("train", "valid", "test")
DATA_CONFIGS = ("wikitext-2-v1", "wikitext-2-raw-v1")
#: OPT's special tokens and ids (pad 1, bos = eos = 2); the local tokenizer uses the same layout
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
_HF_SPLIT = {"train": "train", "valid": "validation", "test": "test"}


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------
def _clean(lines) -> list[str]:
    """Non-blank lines, each ending in one newline (blank separator lines carry no text)."""
    out = []
    for line in lines:
        if line is None or not str(line).strip():
            continue
        line = str(line)
        out.append(line if line.endswith("\n") else line + "\n")
    return out


_HEADING = re.compile(r"^\s*=(?: =)* .*? =(?: =)*\s*$")


def is_heading(line: str) -> bool:
    """WikiText section markup such as ``' = = Gameplay = = '``."""
    return bool(_HEADING.match(line))


def drop_heading_lines(lines: list[str]) -> list[str]:
    """The lines without WikiText's section headings (article text only)."""
    return [line for line in lines if not is_heading(line)]


#: how lines become tokens (see the module docstring)
TOKENIZE_MODES = ("lines", "hf_clm")


def file_rows(lines) -> list[str]:
    """Hugging Face ``wikitext`` rows from the lines of an original file: one row per line with its
    newline, a blank line (``" \n"``) an empty row -- the inverse of :func:`collapse_utils.core.data.rows_to_text`."""
    return [line if line.strip() else "" for line in lines]


def load_lines(config: str, split: str, path: str | os.PathLike | None = None) -> list[str]:
    """The non-blank lines of one split of WikiText-2 in the given configuration."""
    return _clean(load_rows(config, split, path))


def load_rows(config: str, split: str, path: str | os.PathLike | None = None) -> list[str]:
    """Every row of one split of WikiText-2 as Hugging Face ``datasets`` has it (blank lines as empty rows).

    ``wikitext-2-v1`` comes from the registry's verified local files (chapter 04's input check
    downloads them first where a network exists).  ``wikitext-2-raw-v1`` comes from local files when
    the split is there, else from the registry's download into the cache, else straight from
    Hugging Face ``datasets``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if config == "wikitext-2-v1":
        f = dataset_file("wikitext-2", f"wiki.{split}.tokens", path)
        return file_rows(f.read_text(encoding="utf-8").splitlines(keepends=True))
    if config == "wikitext-2-raw-v1":
        try:
            # local files, else the registry's sources (Hugging Face datasets first) into the verified cache
            f = dataset_file("wikitext-2-raw", f"wiki.{split}.raw", path, download=True)
            return file_rows(f.read_text(encoding="utf-8").splitlines(keepends=True))
        except DataError as local_err:
            try:
                import datasets  # noqa: F401
                from datasets import load_dataset

                ds = load_dataset("wikitext", "wikitext-2-raw-v1", split=_HF_SPLIT[split])
                return list(ds["text"])
            except Exception as exc:  # no network, no datasets, hub error
                raise DataError(
                    f"wikitext-2-raw-v1 split {split!r} is not available: not found locally ({local_err}) "
                    f"and Hugging Face datasets could not load 'wikitext'/'wikitext-2-raw-v1' ({exc}). "
                    "The paper preset needs a network; offline, use data_config='wikitext-2-v1'."
                ) from exc
    raise ValueError(f"data_config must be one of {DATA_CONFIGS}, got {config!r}")


# --------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------
def train_bpe_tokenizer(lines: list[str], vocab_size: int, save_dir: str | os.PathLike | None = None):
    """A byte-level BPE (GPT-2/OPT style) trained on ``lines``, wrapped as a transformers tokenizer.

    Special tokens mirror OPT's ids: ``<s>``=0, ``<pad>``=1, ``</s>``=2 (bos and eos), ``<unk>``=3
    (so the ``<unk>`` markers of wikitext-2-v1 stay one token).  Training is deterministic.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size), min_frequency=2, show_progress=False,
        special_tokens=[AddedToken(t, special=True) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(lines, trainer)
    # like OPT's tokenizer: with special tokens (the hf_clm recipe) every text starts with </s>
    from tokenizers import processors

    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B",
                                                       special_tokens=[("</s>", eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


def opt_style_tokenizer(vocab_json: str | os.PathLike, merges_txt: str | os.PathLike, save_dir=None):
    """An offline stand-in for OPT's tokenizer from GPT-2's BPE files (``vocab.json``, ``merges.txt``):
    the same byte-level BPE, OPT's special-token layout (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2 = bos = eos,
    ``<unk>`` 3; the GPT-2 ids moved up by four) and, like OPT's, ``</s>`` in front of every text
    tokenised with special tokens.  For tests and benchmarks where the hub cannot be reached."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    gpt2 = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({t: i + len(SPECIAL_TOKENS) for t, i in gpt2.items()})
    merges = [tuple(line.split(" ")) for line in Path(merges_txt).read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B",
                                                       special_tokens=[("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


def load_tokenizer(name_or_path: str | os.PathLike):
    """``AutoTokenizer.from_pretrained`` -- the same call for a hub name and a local folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(name_or_path))


def encode_lines(tokenizer, lines: list[str], chunk: int = 4096, special_tokens: bool = False) -> np.ndarray:
    """Token ids of the lines, concatenated in order, as int32 (with ``special_tokens``: each line
    through ``tokenizer(...)`` as it is by default, e.g. ``</s>`` in front for OPT's tokenizer)."""
    ids: list[int] = []
    for i in range(0, len(lines), chunk):
        enc = tokenizer(lines[i:i + chunk], add_special_tokens=special_tokens)["input_ids"]
        for row in enc:
            ids.extend(row)
    return np.asarray(ids, dtype=np.int32)


def make_blocks(ids, block_size: int = 64) -> torch.Tensor:
    """Cut a 1-D id sequence into exact ``block_size`` blocks (remainder dropped): LongTensor (n, block)."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    ids = np.asarray(ids).reshape(-1)
    n = len(ids) // block_size
    return torch.as_tensor(ids[: n * block_size].astype(np.int64)).view(n, block_size)


def evenly_spaced(n_total: int, k: int) -> np.ndarray:
    """``k`` distinct indices spread evenly over ``range(n_total)`` (all when k is 0 or >= n_total)."""
    if k <= 0 or k >= n_total:
        return np.arange(n_total)
    return np.unique(np.floor(np.arange(k) * (n_total / k)).astype(np.int64))


def select_blocks(train: torch.Tensor, n_train: int, n_base: int, holdout: bool):
    """Split the training blocks into a base-pretraining pool and a recursion pool.

    With ``holdout`` the first half of the training split (in text order) is reserved for
    pretraining the local base model and the recursion draws from the second half, so no block
    (and no article apart from the one straddling the cut) is in both.  Returns
    ``(recursion_idx, base_idx)`` as index arrays into ``train``.
    """
    n = len(train)
    if holdout:
        half = n // 2
        base_idx = evenly_spaced(half, n_base)
        rec_idx = half + evenly_spaced(n - half, n_train)
    else:
        base_idx = np.arange(0)
        rec_idx = evenly_spaced(n, n_train)
    return rec_idx, base_idx


# --------------------------------------------------------------------------------------------
# the prepared data of one run
# --------------------------------------------------------------------------------------------
@dataclass
class LMData:
    """Blocks for one run: recursion training set, base-pretraining set, validation and test."""

    config: str
    tokenizer_path: str
    train: torch.Tensor          # the recursion's real training blocks (generation 0's data)
    base: torch.Tensor           # held-out training blocks for pretraining the local base (may be empty)
    valid: torch.Tensor
    test: torch.Tensor
    block_size: int
    vocab_size: int
    info: dict = field(default_factory=dict)

    def describe(self) -> str:
        i = self.info
        return (
            f"dataset configuration **{self.config}** ({i.get('source', '')})"
            + ("; section-heading lines removed" if i.get("drop_headings") else "; all lines kept")
            + f"; tokenizer: {i.get('tokenizer', '')}; "
            + ("every row tokenised with the tokenizer's special tokens as in Hugging Face's causal-LM recipe "
               f"(blank rows included; {i.get('eos_tokens', {}).get('train', 0):,} `</s>` tokens in the training split); "
               if i.get("tokenize") == "hf_clm" else
               "non-blank lines tokenised without special tokens (no `</s>` between lines); ")
            + f"{self.block_size}-token blocks: train split {i['train_blocks_total']:,} blocks "
            f"({i['train_tokens']:,} tokens), of which {len(self.train):,} form the recursion's real training set"
            + (f" and {len(self.base):,} (from the other half of the split) pretrain the base model" if len(self.base)
               else "")
            + f"; validation {len(self.valid):,} of {i['valid_blocks_total']:,} blocks; "
            f"test {len(self.test):,} of {i['test_blocks_total']:,} blocks."
        )


def _folder_key(name: str) -> list[str]:
    """A local tokenizer folder's identity for cache keys: its files' names and contents."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return []
    return [f"{f.name}:{fingerprint(np.frombuffer(f.read_bytes(), dtype=np.uint8))}" for f in sorted(folder.glob("*"))
            if f.is_file() and ("token" in f.name or f.suffix in (".json", ".txt", ".model"))]


def _tokenized_splits(config: str, tokenizer_name: str, vocab_size: int, drop_headings: bool = False,
                      data_path=None, cache=None, tokenize: str = "lines"):
    """(tokenizer_path, {split: ids}, info) -- cached on disk, keyed by everything that matters."""
    from .._version import __version__

    if tokenize not in TOKENIZE_MODES:
        raise ValueError(f"tokenize must be one of {TOKENIZE_MODES}, got {tokenize!r}")
    if tokenizer_name == "local-bpe":
        if config != "wikitext-2-v1":
            raise ValueError("the local BPE tokenizer is trained on wikitext-2-v1; use data_config='wikitext-2-v1'")
        files = {s: dataset_file("wikitext-2", f"wiki.{s}.tokens", data_path) for s in SPLITS}
        key = fingerprint(["bpe", config, vocab_size, drop_headings, tokenize, __version__,
                           *[str(f.stat().st_size) for f in files.values()]], length=12)
    else:
        key = fingerprint(["hub", config, tokenizer_name, drop_headings, tokenize, __version__,
                            *_folder_key(tokenizer_name), str(data_path or "")], length=12)
    root = Path(cache) if cache is not None else cache_dir() / "lm"
    name = Path(tokenizer_name).name if Path(tokenizer_name).expanduser().is_dir() else tokenizer_name
    folder = root / f"{config}-{name.replace('/', '--')}-{vocab_size if tokenizer_name == 'local-bpe' else 'x'}-{key}"
    done = folder / "done.json"

    def load(path: Path):
        info = json.loads(path.read_text())
        ids = {s: np.load(folder / f"{s}.npy", allow_pickle=False) for s in SPLITS}
        tok_path = str(folder / "tokenizer") if tokenizer_name == "local-bpe" else tokenizer_name
        return tok_path, ids, info

    hit = read_cache(done, load, "cached tokenised WikiText-2", remove=folder)
    if hit is not None:
        return hit
    folder.mkdir(parents=True, exist_ok=True)
    rows = {s: load_rows(config, s, data_path) for s in SPLITS}
    if drop_headings:
        rows = {s: drop_heading_lines(v) for s, v in rows.items()}
    # lines: the non-blank rows; hf_clm: every row, blank ones included (a lone </s> each)
    texts = rows if tokenize == "hf_clm" else {s: _clean(v) for s, v in rows.items()}
    if tokenizer_name == "local-bpe":
        tok = train_bpe_tokenizer(_clean(rows["train"]), vocab_size, folder / "tokenizer")
        tok_path = str(folder / "tokenizer")
        tok_desc = f"byte-level BPE with {len(tok)} tokens trained on the WikiText-2 training split"
    else:
        tok = load_tokenizer(tokenizer_name)
        tok_path = tokenizer_name
        tok_desc = f"{tokenizer_name} ({len(tok)} tokens)"
    ids = {s: encode_lines(tok, texts[s], special_tokens=tokenize == "hf_clm") for s in SPLITS}
    for s in SPLITS:
        np.save(folder / f"{s}.npy", ids[s])
    source = ("local verified files (registry 'wikitext-2')" if config == "wikitext-2-v1"
              else "local files or Hugging Face datasets 'wikitext'/'wikitext-2-raw-v1'")
    eos = tok.convert_tokens_to_ids("</s>") if "</s>" in tok.get_vocab() else None
    info = {"source": source, "tokenizer": tok_desc, "drop_headings": bool(drop_headings), "vocab_size": len(tok),
            "tokenize": tokenize, "eos_tokens": {s: int((ids[s] == eos).sum()) if eos is not None else 0
                                                 for s in SPLITS},
            **{f"{s}_lines": len(texts[s]) for s in SPLITS}, **{f"{s}_tokens": len(ids[s]) for s in SPLITS}}
    atomic_write_bytes(done, json.dumps(info, indent=1).encode())
    return tok_path, ids, info


def prepare_lm_data(data_config: str = "wikitext-2-v1", tokenizer: str = "local-bpe", vocab_size: int = 4096,
                    block_size: int = 64, train_blocks: int = 0, base_blocks: int = 0, valid_blocks: int = 0,
                    test_blocks: int = 0, holdout: bool = True, drop_headings: bool = False, data_path=None,
                    cache=None, tokenize: str = "lines") -> LMData:
    """Load, tokenise and block WikiText-2; pick the (evenly spaced) subsets a run uses.

    ``train_blocks`` etc. = 0 means the whole split (the recursion pool when ``holdout``);
    ``drop_headings`` removes WikiText's section-heading lines (``= = Title = =``) from every split;
    ``tokenize`` is ``'lines'`` or ``'hf_clm'`` (see the module docstring).
    """
    tok_path, ids, info = _tokenized_splits(data_config, tokenizer, vocab_size, drop_headings, data_path, cache,
                                            tokenize)
    blocks = {s: make_blocks(ids[s], block_size) for s in SPLITS}
    rec_idx, base_idx = select_blocks(blocks["train"], train_blocks, base_blocks, holdout)
    info = dict(info)
    info.update({f"{s}_blocks_total": len(blocks[s]) for s in SPLITS})
    info["recursion_index_range"] = [int(rec_idx.min()), int(rec_idx.max())] if len(rec_idx) else []
    info["base_index_range"] = [int(base_idx.min()), int(base_idx.max())] if len(base_idx) else []
    return LMData(
        config=data_config, tokenizer_path=tok_path,
        train=blocks["train"][torch.as_tensor(rec_idx)],
        base=blocks["train"][torch.as_tensor(base_idx)] if len(base_idx) else blocks["train"][:0],
        valid=blocks["valid"][torch.as_tensor(evenly_spaced(len(blocks["valid"]), valid_blocks))],
        test=blocks["test"][torch.as_tensor(evenly_spaced(len(blocks["test"]), test_blocks))],
        block_size=block_size, vocab_size=int(info["vocab_size"]), info=info,
    )


# --------------------------------------------------------------------------------------------
# diversity of a set of token blocks
# --------------------------------------------------------------------------------------------
def diversity(blocks, reference_vocab: set | None = None, max_n: int = 3) -> dict[str, float]:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams, counted within blocks;
    unigram entropy in bits; and the share of ``reference_vocab`` (token ids) that still occurs."""
    arr = np.asarray(blocks.cpu() if hasattr(blocks, "cpu") else blocks)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"blocks must be a non-empty 2-D array, got shape {arr.shape}")
    out: dict[str, float] = {}
    for n in range(1, max_n + 1):
        if arr.shape[1] < n:
            break
        grams = np.stack([arr[:, i: arr.shape[1] - n + 1 + i] for i in range(n)], axis=-1).reshape(-1, n)
        uniq = np.unique(grams, axis=0).shape[0]
        out[f"distinct_{n}"] = uniq / len(grams)
    counts = np.array(list(Counter(arr.reshape(-1).tolist()).values()), dtype=float)
    p = counts / counts.sum()
    out["unigram_entropy"] = float(-(p * np.log2(p)).sum())
    out["types"] = float(len(counts))
    if reference_vocab:
        present = set(np.unique(arr).tolist())
        out["vocab_share"] = len(present & reference_vocab) / len(reference_vocab)
    return out
