"""The language-model experiment of chapter 04: OPT fine-tuned on WikiText-2, generation after generation.

The experiment (Shumailov et al. 2024, the OPT-125m section): generation 0 fine-tunes a pretrained
OPT on real WikiText-2 64-token blocks; for every training block it beam-searches (5 beams)
exactly 64 new tokens; those continuations are the next generation's training set, on which a
fresh copy of the *pretrained base* is fine-tuned again, and so on.

This module holds the algorithm only: the data and the base model (:func:`prepare_data`,
:func:`prepare_base`) and the engine experiment :class:`LMCollapse` (fit = fine-tune, sample =
beam search, evaluate = real-test perplexity, the per-sequence perplexity of the training data under
the generation-0 model, diversity, one fixed prompt's continuation).  The chapter's run plan
(settings (a), (b) and the repetition-penalty ablation), tables, figures and claims live in
:mod:`collapse_utils.chapters.language_models`.  Modules: :mod:`collapse_utils.models.lm_data` (text,
tokenizer, blocks), :mod:`collapse_utils.models.lm_train` (models, Accelerate training, generation).
"""
from __future__ import annotations

import os

# Passive OpenMP waiting keeps torch's CPU threads from spinning when the (small, shared) machine
# is busy; it only takes effect if torch has not been imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy
import functools
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.engine import Experiment, GenerationContext, source_hash
from ..core.storage import fingerprint
from ..core.regimes import Regime, parse_regime
from .lm_data import LMData, diversity, load_tokenizer, prepare_lm_data
from .lm_train import (
    FitInfo,
    finetune,
    generate_continuations,
    load_model,
    new_local_model,
    perplexity_stats,
    sequence_nll,
    tiny_opt_config,
)

__all__ = ["EXPERIMENT", "LOCAL_MODEL", "PROMPT_SOURCES", "Base", "FittedLM", "LMCollapse", "model_source",
           "prepare_base", "prepare_data"]

LOCAL_MODEL = "local-opt"
PRUNE_BYTES = 100 * 2**20  # fitted models larger than this are deleted once no longer needed
EXPERIMENT = "opt_wikitext2"
#: where the prompts of each generation's beam search come from (see LMCollapse.prompts_for)
PROMPT_SOURCES = ("original", "chained")


# --------------------------------------------------------------------------------------------
# data and base model
# --------------------------------------------------------------------------------------------
def prepare_data(p: dict, data_path=None, cache=None) -> LMData:
    """Tokenised, blocked WikiText-2 for a run (see :func:`collapse_utils.models.lm_data.prepare_lm_data`)."""
    local = p["model_name"] == LOCAL_MODEL
    return prepare_lm_data(
        data_config=p["data_config"], tokenizer="local-bpe" if local else model_source(p["model_name"]),
        vocab_size=p["vocab_size"], block_size=p["block_size"], train_blocks=p["train_blocks"],
        base_blocks=p["base_blocks"] if local else 0, valid_blocks=p["valid_blocks"], test_blocks=p["test_blocks"],
        holdout=local, drop_headings=p["drop_headings"], data_path=data_path, cache=cache,
        tokenize=p.get("tokenize", "lines"),
    )


def model_source(name: str) -> str:
    """What ``from_pretrained`` reads for a model name: a registry model's converted folder
    (:func:`collapse_utils.models.pretrained.model_folder`), else the name (a hub name or a folder) itself."""
    from .pretrained import is_registry_model, model_folder

    return str(model_folder(name)) if is_registry_model(name) else name


@dataclass
class Base:
    """The model every generation starts from: a hub name, or a folder with a locally pretrained OPT."""

    path: str
    fingerprint: str
    test_ppl: float
    info: dict = field(default_factory=dict)

    def short_path(self) -> str:
        """The base's folder as a page prints it: relative to the results folder (never the machine's
        absolute path), else its last two parts."""
        from ..core.results import results_root

        path = Path(self.path)
        try:
            return path.resolve().relative_to(results_root().resolve()).as_posix()
        except ValueError:
            return "/".join(path.parts[-2:])

    def describe(self) -> str:
        if self.info.get("local"):
            i = self.info
            return (f"Base model: a small OPT ({i['n_params']:,} parameters; {i['layers']} "
                    f"layer{'s' if i['layers'] != 1 else ''}, hidden "
                    f"{i['hidden']}, {i['heads']} heads, vocabulary {i['vocab']:,}) pretrained from scratch for "
                    f"{i['epochs']} epoch{'s' if i['epochs'] != 1 else ''} on {i['blocks']:,} held-out training blocks (best validation loss "
                    f"{i['best_val_loss']:.3f} at epoch {i['best_epoch']}); saved with `save_pretrained` to "
                    f"`{self.short_path()}` and loaded back with `AutoModelForCausalLM.from_pretrained`. "
                    f"Its perplexity on the real test blocks before any fine-tuning: {self.test_ppl:.1f}.")
        if self.info.get("registry"):
            from .pretrained import describe

            return (f"Base model: {describe(self.info['registry'])}. It was fetched and verified through the dataset "
                    f"registry (entry `{self.info['registry']}`), converted once to a Hugging Face folder and loaded "
                    f"with `AutoModelForCausalLM.from_pretrained`; perplexity on the real test blocks before any "
                    f"fine-tuning: {self.test_ppl:.1f}.")
        return (f"Base model: `{self.path}` loaded by name with `AutoModelForCausalLM.from_pretrained`; "
                f"perplexity on the real test blocks before any fine-tuning: {self.test_ppl:.1f}.")


def prepare_base(p: dict, data: LMData, cache_root: str | os.PathLike, progress: bool = True) -> Base:
    """The pretrained base.  For ``model_name='local-opt'``: a small OPT initialised (seeded),
    saved with ``save_pretrained``, pretrained on the held-out training blocks and saved again --
    cached in ``cache_root`` under a fingerprint of everything that shapes it (the per-run thread
    count included: the base is computed with ``threads_per_run`` threads like every run)."""
    from ..core.parallel import run_threads

    with run_threads(p["threads_per_run"]):
        return _prepare_base(p, data, cache_root, progress)


def _prepare_base(p: dict, data: LMData, cache_root: str | os.PathLike, progress: bool) -> Base:
    from ..core.parallel import thread_tag
    from ..core.storage import atomic_write_bytes, read_cache

    if p["model_name"] != LOCAL_MODEL:
        from .pretrained import is_registry_model

        name = p["model_name"]
        source = model_source(name)
        model = load_model(source)
        ppl = perplexity_stats(sequence_nll(model, data.test), "test")["test_ppl"]
        info = {"local": False, "n_params": int(sum(t.numel() for t in model.parameters()))}
        if is_registry_model(name):
            info["registry"] = name
        return Base(source, fingerprint(name, Path(source).name), ppl, info)
    keys = {k: p[k] for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "base_epochs", "base_lr",
                              "batch_size", "block_size")}
    fp = fingerprint(keys, thread_tag(), data.tokenizer_path, data.base, data.valid, length=12)
    folder = Path(cache_root) / f"base-{fp}"

    def load(done: Path) -> Base:
        meta = json.loads(done.read_text())
        load_model(folder / "model")  # proves the weights are readable
        return Base(str(folder / "model"), fp, meta["test_ppl"], meta["info"])

    hit = read_cache(folder / "base.json", load, "cached base model", remove=folder)
    if hit is not None:
        return hit
    tok = load_tokenizer(data.tokenizer_path)
    cfg = tiny_opt_config(len(tok), p["hidden_size"], p["num_layers"], p["num_heads"],
                          max_positions=2 * p["block_size"])
    from ..core.seeding import derive_seed

    init = new_local_model(cfg, derive_seed(0, 0, "fit"), folder / "init", tok)
    info = finetune(init, data.base, data.valid, folder / "model", epochs=p["base_epochs"], lr=p["base_lr"],
                    batch_size=p["batch_size"], seed=derive_seed(0, 0, "data"), progress=progress,
                    desc="pretrain base")
    tok.save_pretrained(str(folder / "model"))
    model = load_model(folder / "model")
    ppl = perplexity_stats(sequence_nll(model, data.test), "test")["test_ppl"]
    meta = {"test_ppl": ppl, "info": {
        "local": True, "n_params": int(sum(t.numel() for t in model.parameters())), "layers": p["num_layers"],
        "hidden": p["hidden_size"], "heads": p["num_heads"], "vocab": len(tok), "epochs": p["base_epochs"],
        "blocks": len(data.base), "best_val_loss": info.best_val_loss, "best_epoch": info.best_epoch,
        "seconds": info.seconds, "tokens_per_s": info.tokens_seen / max(info.seconds, 1e-9)}}
    shutil.rmtree(folder / "init", ignore_errors=True)
    atomic_write_bytes(folder / "base.json", json.dumps(meta, indent=1).encode())
    return Base(str(folder / "model"), fp, ppl, meta["info"])


# --------------------------------------------------------------------------------------------
# the experiment (one seed per run_recursion call)
# --------------------------------------------------------------------------------------------
def _folder_bytes(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@functools.lru_cache(maxsize=1)
def _train_code_key() -> str:
    """Fitted models and beam-search outputs are cached by content; the key includes the code that made them."""
    from . import lm_beam, lm_train

    return source_hash(lm_train, lm_beam)


@dataclass
class FittedLM:
    """A fine-tuned generation: where its weights are and how training went."""

    path: str
    generation: int
    fit: FitInfo


class LMCollapse(Experiment):
    """fit = fine-tune the base on the blocks; sample = beam-search continuations of training blocks;
    evaluate = real-test perplexity, data perplexity under generation 0, diversity, one example."""

    name = EXPERIMENT
    batched = False

    def __init__(self, base: Base, data: LMData, epochs: int, lr: float, batch_size: int, num_beams: int,
                 repetition_penalty: float, gen_batch_size: int = 64, n_diversity: int | None = None,
                 prompt_index: int = 0, model_dir: str | os.PathLike | None = None, progress: bool = False,
                 patience: int = 0, prompts: str = "original", regime: str | Regime = "replace"):
        if prompts not in PROMPT_SOURCES:
            raise ValueError(f"prompts must be one of {PROMPT_SOURCES}, got {prompts!r}")
        self.prompts, self.regime = prompts, parse_regime(regime)
        self.base, self.data = base, data
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.num_beams, self.repetition_penalty = int(num_beams), float(repetition_penalty)
        self.gen_batch_size, self.prompt_index, self.patience = int(gen_batch_size), int(prompt_index), int(patience)
        # diversity is measured on as many blocks as a generation writes (None: what the regime writes)
        self.n_diversity = int(n_diversity if n_diversity is not None else self.regime.n_synthetic(len(data.train)))
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.progress = progress
        self.real_vocab = set(np.unique(data.train.numpy()).tolist())
        self.state: dict = self._empty_state()
        self._train = None
        self._gen0 = None
        self._own_models: list[str] = []

    @staticmethod
    def _empty_state() -> dict:
        return {"gen0_path": None, "per_seq": {}, "examples": {}, "fits": {}}

    def variant(self, **changes) -> LMCollapse:
        """A fresh copy (no state: a new run) with some settings changed, e.g.
        ``exp.variant(epochs=10, regime="keep_real(0.1)")``; ``n_diversity`` follows a new regime."""
        unknown = sorted(k for k in changes if k.startswith("_") or not hasattr(self, k))
        if unknown:
            raise TypeError(f"LMCollapse has no setting {unknown}")
        new = copy.copy(self)
        for k, v in changes.items():
            setattr(new, k, v)
        new.regime = parse_regime(new.regime)
        if "regime" in changes and "n_diversity" not in changes:
            new.n_diversity = int(new.regime.n_synthetic(len(new.data.train)))
        new.model_dir = Path(new.model_dir) if new.model_dir is not None else None
        new.state = self._empty_state()
        new._train, new._gen0, new._own_models = None, None, []
        return new

    # -- state that must survive a resume -----------------------------------------------------
    def get_state(self):
        return self.state

    def set_state(self, state) -> None:
        if state:
            self.state = state

    # -- protocol -------------------------------------------------------------------------------
    def fit(self, data: torch.Tensor, ctx: GenerationContext) -> FittedLM:
        from ..core.parallel import thread_tag
        from ..core.storage import atomic_write_bytes, read_cache

        if self.model_dir is None:
            raise ValueError("LMCollapse needs a model_dir to keep its fitted models (run() sets one)")
        seed = ctx.int_seed("fit")
        fp = fingerprint({"base": self.base.fingerprint, "epochs": self.epochs, "lr": self.lr,
                          "bs": self.batch_size, "seed": seed, "patience": self.patience, "code": _train_code_key(),
                          "threads": thread_tag()}, data, self.data.valid)
        out = self.model_dir / f"model-{fp}"
        meta = out / "fit.json"

        def load(path: Path) -> FitInfo:
            info = FitInfo(**json.loads(path.read_text()))
            if not any(out.glob("*.safetensors")) and not any(out.glob("*.bin")):
                raise FileNotFoundError("the fitted weights are missing")
            return info

        # same base, data, settings, seed and threads: the fit is deterministic, reuse it
        info = read_cache(meta, load, "cached fine-tuned model", remove=out)
        if info is None:
            info = finetune(self.base.path, data, self.data.valid, out, self.epochs, self.lr, self.batch_size,
                            seed, patience=self.patience, progress=self.progress,
                            desc=f"gen {ctx.generation}: fine-tune")
            atomic_write_bytes(meta, json.dumps(asdict(info)).encode())
        self._train = data
        # keep disk use bounded for big models (OPT-125m is 0.5 GB a copy): generation 0 stays, the previous
        # one goes; small models stay, so that a rerun after an interruption or a code change reuses them
        gen0 = self.state.get("gen0_path")
        for old in self._own_models:
            if old not in (gen0, str(out)) and Path(old).exists() and _folder_bytes(old) > PRUNE_BYTES:
                shutil.rmtree(old, ignore_errors=True)
        self._own_models = [str(out)]
        self.state["fits"][ctx.generation] = {"best_epoch": info.best_epoch, "best_val_loss": info.best_val_loss,
                                              "seconds": info.seconds}
        return FittedLM(str(out), ctx.generation, info)

    def prompts_for(self, n: int, ctx: GenerationContext) -> torch.Tensor:
        """The blocks whose continuations form the next generation's synthetic data (``n`` of them).

        ``prompts='original'`` (the paper): the model goes through the *original* training blocks and
        continues each, so that a model without error would reproduce the original data.  When the next
        training set keeps a share of the original blocks (``keep_real``), the model continues exactly the
        other ones -- the regime's draw of kept blocks is known in advance
        (:meth:`~collapse_utils.core.regimes.Regime.kept_real_indices` with the generator it will use).
        ``prompts='chained'`` (a comparison): the model continues the blocks it was itself trained on --
        the previous generation's continuations -- all of them or a random ``n`` (in their order).
        """
        if self.prompts == "original":
            train = self.data.train
            if n >= len(train):
                return train
            if self.regime.name == "keep_real" and self.regime.n_synthetic(len(train)) == n:
                kept = self.regime.kept_real_indices(len(train), len(train), ctx.next_regime_rng())
                idx = np.setdiff1d(np.arange(len(train)), kept)
            else:
                idx = np.sort(ctx.rng("sample").choice(len(train), size=n, replace=False))
            return train[torch.as_tensor(idx)]
        train = self._train
        if n >= len(train):
            return train
        idx = np.sort(ctx.rng("sample").choice(len(train), size=n, replace=False))
        return train[torch.as_tensor(idx)]

    def sample(self, model: FittedLM, n: int, ctx: GenerationContext) -> torch.Tensor:
        """The next generation's synthetic data: the model beam-searches ``block_size`` new tokens after
        each of ``n`` prompt blocks (:meth:`prompts_for`); the continuations alone are the new blocks."""
        prompts = self.prompts_for(n, ctx)
        return self._stored(model, prompts, lambda: generate_continuations(
            load_model(model.path), prompts, self.data.block_size, self.num_beams, self.repetition_penalty,
            self.gen_batch_size, progress=self.progress, desc=f"gen {ctx.generation}: beam search"))

    def _stored(self, model: FittedLM, prompts: torch.Tensor, compute) -> torch.Tensor:
        """Beam search is deterministic: its output is stored beside the model and reused by a rerun."""
        from ..core.parallel import thread_tag
        from ..core.storage import cached_tensor

        key = fingerprint({"beams": self.num_beams, "penalty": self.repetition_penalty, "new": self.data.block_size,
                           "code": _train_code_key(), "threads": thread_tag()}, prompts)
        cached = Path(model.path) / f"continuations-{key}.pt"
        return cached_tensor(cached, (len(prompts), self.data.block_size), compute, "cached beam-search continuations")

    def _gen0_model(self):
        path = self.state["gen0_path"]
        if self._gen0 is None or self._gen0[0] != path:
            self._gen0 = (path, load_model(path))
        return self._gen0[1]

    def evaluate(self, model: FittedLM, comp, ctx: GenerationContext) -> dict:
        g = ctx.generation
        m = load_model(model.path)
        out = perplexity_stats(sequence_nll(m, self.data.test), "test")
        out["val_loss"] = model.fit.best_val_loss
        out["best_epoch"] = float(model.fit.best_epoch)
        out["epochs_run"] = float(len(model.fit.val_losses))
        if g == 0:
            self.state["gen0_path"] = model.path
        # this generation's training data (the generated part; real data at generation 0) under model 0
        data = comp.data if g == 0 else comp.data[comp.n_real:]
        nll0 = sequence_nll(self._gen0_model(), data)
        self.state["per_seq"][g] = np.exp(nll0).astype(np.float32)
        out.update(perplexity_stats(nll0, "data_gen0"))
        # diversity of the generated text, on as many blocks as a generation produces
        div = data
        if g == 0 and len(div) > self.n_diversity:
            idx = np.sort(ctx.rng("eval").choice(len(div), size=self.n_diversity, replace=False))
            div = div[torch.as_tensor(idx)]
        out.update(diversity(div, self.real_vocab))
        # one fixed real prompt, continued by this generation
        prompt = self.data.test[self.prompt_index: self.prompt_index + 1]
        cont = generate_continuations(m, prompt, self.data.block_size, self.num_beams, self.repetition_penalty, 1)
        self.state["examples"][g] = cont[0].tolist()
        return out
