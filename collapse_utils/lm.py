"""Chapter 04: language models collapse -- OPT fine-tuned on WikiText-2, generation after generation.

The experiment (Shumailov et al. 2024, the OPT-125m section): generation 0 fine-tunes a pretrained
OPT on real WikiText-2 64-token blocks; for every training block it beam-searches (5 beams)
exactly 64 new tokens; those continuations are the next generation's training set, on which a
fresh copy of the *pretrained base* is fine-tuned again, and so on.  Two settings:

(a) 5 epochs, no original data kept (the engine's ``replace`` regime);
(b) 10 epochs, a random 10% of the original blocks kept each generation (``keep_real(0.1)``).

What is measured per generation: perplexity of the real test set, the per-sequence perplexity of
that generation's training data under the generation-0 model, the diversity of the generated
text, and one fixed prompt's continuation.  Modules: :mod:`collapse_utils.lm_data` (text,
tokenizer, blocks), :mod:`collapse_utils.lm_train` (models, Accelerate training, generation).
"""
from __future__ import annotations

import os

# Passive OpenMP waiting keeps torch's CPU threads from spinning when the (small, shared) machine
# is busy; it only takes effect if torch has not been imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import functools
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import Checker
from .engine import Experiment, GenerationContext, run_recursion, source_hash
from .lm_data import DATA_CONFIGS, LMData, diversity, load_tokenizer, prepare_lm_data
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
from .plotting import finish, palette
from .regimes import parse_regime

__all__ = [
    "SETTINGS",
    "Base",
    "LMCollapse",
    "SettingResult",
    "closing_note",
    "combine",
    "continuations_markdown",
    "histogram_table",
    "plot_ablation",
    "plot_diversity",
    "plot_ppl_histograms",
    "plot_test_perplexity",
    "prepare_base",
    "prepare_data",
    "run_setting",
    "setting_spec",
    "summary_numbers",
    "test_perplexity_table",
    "training_table",
    "validate_params",
]

LOCAL_MODEL = "local-opt"
PRUNE_BYTES = 100 * 2**20  # fitted models larger than this are deleted once no longer needed
EXPERIMENT = "opt_wikitext2"
SETTINGS = ("a", "b", "ablation")
SETTING_LABELS = {
    "a": "(a) {epochs} {ep}, no original data",
    "b": "(b) {epochs} {ep}, {pct:g}% original data kept",
    "ablation": "(a) with repetition penalty {penalty:g}",
}


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
def validate_params(p: dict) -> None:
    """Check every parameter; raise one ParamError listing all problems (before any compute)."""
    c = Checker(p, "04")
    c.int("seeds", 1, 100).int("generations", 1, 1000)
    c.choice("data_config", DATA_CONFIGS).choice("drop_headings", (True, False))
    name = p.get("model_name")
    c.check(isinstance(name, str) and bool(name.strip()),
            f"model_name must be '{LOCAL_MODEL}' or a Hugging Face model name/folder, got {name!r}")
    c.int("vocab_size", 300, 200_000).int("hidden_size", 8, 8192).int("num_layers", 1, 64).int("num_heads", 1, 128)
    c.int("base_blocks", 0).int("base_epochs", 0, 1000).float("base_lr", 0.0, 1.0, open_lo=True)
    c.int("train_blocks", 0).int("valid_blocks", 0).int("test_blocks", 0)
    c.int("block_size", 2, 1024).int("num_beams", 1, 64).float("repetition_penalty", 0.0, 100.0, open_lo=True)
    c.int("epochs_a", 1, 1000).int("epochs_b", 1, 1000).float("keep_fraction", 0.0, 1.0, open_lo=True, open_hi=True)
    c.float("lr", 0.0, 1.0, open_lo=True).int("batch_size", 1, 1 << 16).int("gen_batch_size", 1, 1 << 16)
    c.int("patience", 0, 1000).int("parallel_runs", 1, 64).int("threads_per_run", 1, 256)
    c.float("ablation_penalty", 0.0, 100.0, open_lo=True).int("ablation_seeds", 0, 100)
    c.ints("hist_generations", lo=0).int("prompt_index", 0)
    ok = not c.problems
    if ok:
        local = p["model_name"] == LOCAL_MODEL
        c.check(not local or p["data_config"] == "wikitext-2-v1",
                f"model_name='{LOCAL_MODEL}' trains its tokenizer on the offline wikitext-2-v1 training split; "
                "set data_config='wikitext-2-v1' (the paper's wikitext-2-raw-v1 goes with facebook/opt-125m)")
        c.check(not local or p["hidden_size"] % p["num_heads"] == 0,
                f"hidden_size ({p['hidden_size']}) must be divisible by num_heads ({p['num_heads']})")
        c.check(not local or p["base_blocks"] >= 1, "a local OPT needs base_blocks >= 1 to pretrain its base")
        c.check(not local or p["base_epochs"] >= 1, "a local OPT needs base_epochs >= 1 to pretrain its base")
        c.check(p["ablation_seeds"] <= p["seeds"],
                f"ablation_seeds ({p['ablation_seeds']}) cannot exceed seeds ({p['seeds']}): the ablation "
                "reuses the main run's seeds for its comparison")
        c.check(p["train_blocks"] == 0 or round(p["keep_fraction"] * p["train_blocks"]) >= 1,
                f"keep_fraction {p['keep_fraction']} of {p['train_blocks']} training blocks keeps no real block")
        c.check(p["test_blocks"] == 0 or p["prompt_index"] < p["test_blocks"],
                f"prompt_index ({p['prompt_index']}) must be < test_blocks ({p['test_blocks']})")
        c.check(local or p["block_size"] * 2 <= 2048, "block_size too long for OPT's 2048 positions")
    c.done()


def _offline(*extra: str) -> bool:
    """True when Hugging Face may not download (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, or ``extra`` set)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *extra))


def check_inputs(p: dict) -> None:
    """Before any compute: the text the run reads is present and verified, and a hub model can be loaded.

    Raises :class:`~collapse_utils.data.DataError` with what is missing and how to provide it.
    """
    from .data import DataError, dataset_file
    from .lm_data import SPLITS

    if p["data_config"] == "wikitext-2-v1":
        for split in SPLITS:
            dataset_file("wikitext-2", f"wiki.{split}.tokens")
    else:
        datasets_offline = _offline("HF_DATASETS_OFFLINE")
        for split in SPLITS:
            try:
                dataset_file("wikitext-2-raw", f"wiki.{split}.raw")
            except DataError as exc:
                if "corrupt" in str(exc) or not datasets_offline:
                    raise  # a damaged file is an error; a missing one is loaded through `datasets` online
                raise DataError(f"{exc} -- and Hugging Face datasets cannot fetch 'wikitext'/'wikitext-2-raw-v1' "
                                "while HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set; unset it where a network "
                                "exists, or use data_config='wikitext-2-v1'") from None
    name = p["model_name"]
    if name == LOCAL_MODEL:
        return
    if Path(name).expanduser().is_dir():
        if not (Path(name).expanduser() / "config.json").exists():
            raise DataError(f"model_name={name!r} is a folder without config.json; pass a folder written by "
                            "save_pretrained, a Hugging Face model name, or 'local-opt'")
        return
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise DataError(
                f"model_name={name!r} is a Hugging Face hub name, but HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set "
                "and the model is not in the local Hugging Face cache; where a network exists unset those "
                "variables, or pass a folder written by save_pretrained, or use model_name='local-opt'")


def setting_spec(p: dict, setting: str) -> dict:
    """Regime, epochs, repetition penalty, seeds and label of one setting."""
    if setting == "a":
        spec = {"regime": "replace", "epochs": p["epochs_a"], "penalty": p["repetition_penalty"],
                    "seeds": list(range(p["seeds"]))}
    elif setting == "b":
        spec = {"regime": f"keep_real({p['keep_fraction']:g})", "epochs": p["epochs_b"],
                    "penalty": p["repetition_penalty"], "seeds": list(range(p["seeds"]))}
    elif setting == "ablation":
        spec = {"regime": "replace", "epochs": p["epochs_a"], "penalty": p["ablation_penalty"],
                    "seeds": list(range(p["ablation_seeds"]))}
    else:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    spec["label"] = SETTING_LABELS[setting].format(epochs=spec["epochs"], pct=100 * p["keep_fraction"],
                                                   penalty=spec["penalty"],
                                                   ep="epoch" if spec["epochs"] == 1 else "epochs")
    return spec


# --------------------------------------------------------------------------------------------
# data and base model
# --------------------------------------------------------------------------------------------
def prepare_data(p: dict, data_path=None, cache=None) -> LMData:
    """Tokenised, blocked WikiText-2 for a run (see :func:`collapse_utils.lm_data.prepare_lm_data`)."""
    local = p["model_name"] == LOCAL_MODEL
    return prepare_lm_data(
        data_config=p["data_config"], tokenizer="local-bpe" if local else p["model_name"],
        vocab_size=p["vocab_size"], block_size=p["block_size"], train_blocks=p["train_blocks"],
        base_blocks=p["base_blocks"] if local else 0, valid_blocks=p["valid_blocks"], test_blocks=p["test_blocks"],
        holdout=local, drop_headings=p["drop_headings"], data_path=data_path, cache=cache,
    )


def _sha(*tensors_or_objs) -> str:
    h = hashlib.sha256()
    for x in tensors_or_objs:
        if isinstance(x, torch.Tensor):
            h.update(x.contiguous().numpy().tobytes())
            h.update(str(tuple(x.shape)).encode())
        else:
            h.update(json.dumps(x, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@dataclass
class Base:
    """The model every generation starts from: a hub name, or a folder with a locally pretrained OPT."""

    path: str
    fingerprint: str
    test_ppl: float
    info: dict = field(default_factory=dict)

    def describe(self) -> str:
        if self.info.get("local"):
            i = self.info
            return (f"Base model: a small OPT ({i['n_params']:,} parameters; {i['layers']} layers, hidden "
                    f"{i['hidden']}, {i['heads']} heads, vocabulary {i['vocab']:,}) pretrained from scratch for "
                    f"{i['epochs']} epoch{'s' if i['epochs'] != 1 else ''} on {i['blocks']:,} held-out training blocks (best validation loss "
                    f"{i['best_val_loss']:.3f} at epoch {i['best_epoch']}); loaded with "
                    f"`AutoModelForCausalLM.from_pretrained('{self.path}')`. "
                    f"Its perplexity on the real test blocks before any fine-tuning: {self.test_ppl:.1f}.")
        return (f"Base model: `{self.path}` loaded by name with `AutoModelForCausalLM.from_pretrained`; "
                f"perplexity on the real test blocks before any fine-tuning: {self.test_ppl:.1f}.")


def prepare_base(p: dict, data: LMData, cache_root: str | os.PathLike, progress: bool = True) -> Base:
    """The pretrained base.  For ``model_name='local-opt'``: a small OPT initialised (seeded),
    saved with ``save_pretrained``, pretrained on the held-out training blocks and saved again --
    cached in ``cache_root`` under a fingerprint of everything that shapes it (the per-run thread
    count included: the base is computed with ``threads_per_run`` threads like every run)."""
    from .parallel import run_threads

    with run_threads(p["threads_per_run"]):
        return _prepare_base(p, data, cache_root, progress)


def _prepare_base(p: dict, data: LMData, cache_root: str | os.PathLike, progress: bool) -> Base:
    from .parallel import thread_tag
    from .storage import atomic_write_bytes, read_cache

    if p["model_name"] != LOCAL_MODEL:
        model = load_model(p["model_name"])
        ppl = perplexity_stats(sequence_nll(model, data.test), "test")["test_ppl"]
        return Base(p["model_name"], _sha(p["model_name"]), ppl, {"local": False})
    keys = {k: p[k] for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "base_epochs", "base_lr",
                              "batch_size", "block_size")}
    fp = _sha(keys, thread_tag(), data.tokenizer_path, data.base, data.valid)
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
    from .seeding import derive_seed

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
    from . import lm_train

    return source_hash(lm_train)


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
                 repetition_penalty: float, gen_batch_size: int, n_diversity: int, prompt_index: int,
                 model_dir: str | os.PathLike, progress: bool = False, patience: int = 0):
        self.base, self.data = base, data
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.num_beams, self.repetition_penalty = int(num_beams), float(repetition_penalty)
        self.gen_batch_size, self.n_diversity = int(gen_batch_size), int(n_diversity)
        self.prompt_index, self.patience = int(prompt_index), int(patience)
        self.model_dir = Path(model_dir)
        self.progress = progress
        self.real_vocab = set(np.unique(data.train.numpy()).tolist())
        self.state: dict = {"gen0_path": None, "per_seq": {}, "examples": {}, "fits": {}}
        self._train = None
        self._gen0 = None
        self._own_models: list[str] = []

    # -- state that must survive a resume -----------------------------------------------------
    def get_state(self):
        return self.state

    def set_state(self, state) -> None:
        if state:
            self.state = state

    # -- protocol -------------------------------------------------------------------------------
    def fit(self, data: torch.Tensor, ctx: GenerationContext) -> FittedLM:
        from .parallel import thread_tag
        from .storage import atomic_write_bytes, read_cache

        seed = ctx.int_seed("fit")
        fp = _sha({"base": self.base.fingerprint, "epochs": self.epochs, "lr": self.lr, "bs": self.batch_size,
                   "seed": seed, "patience": self.patience, "code": _train_code_key(), "threads": thread_tag()},
                  data, self.data.valid)
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
        """The training blocks whose continuations form the next data: all of them, or a random
        ``n`` of them (in their order) when part of the next training set is real data."""
        train = self._train
        if n >= len(train):
            return train
        idx = np.sort(ctx.rng("sample").choice(len(train), size=n, replace=False))
        return train[torch.as_tensor(idx)]

    def sample(self, model: FittedLM, n: int, ctx: GenerationContext) -> torch.Tensor:
        prompts = self.prompts_for(n, ctx)
        # beam search is deterministic: its output is stored beside the model and reused by a rerun
        import io

        from .parallel import thread_tag
        from .storage import atomic_write_bytes, read_cache

        key = _sha({"beams": self.num_beams, "penalty": self.repetition_penalty, "new": self.data.block_size,
                    "code": _train_code_key(), "threads": thread_tag()}, prompts)
        cached = Path(model.path) / f"continuations-{key}.pt"

        def load(path: Path) -> torch.Tensor:
            out = torch.load(path, weights_only=True)
            if not isinstance(out, torch.Tensor) or out.shape != (len(prompts), self.data.block_size):
                raise ValueError(f"expected a tensor of shape {(len(prompts), self.data.block_size)}")
            return out

        hit = read_cache(cached, load, "cached beam-search continuations")
        if hit is not None:
            return hit
        m = load_model(model.path)
        out = generate_continuations(m, prompts, self.data.block_size, self.num_beams, self.repetition_penalty,
                                     self.gen_batch_size, progress=self.progress,
                                     desc=f"gen {ctx.generation}: beam search")
        buf = io.BytesIO()
        torch.save(out, buf)
        atomic_write_bytes(cached, buf.getvalue())
        return out

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


# --------------------------------------------------------------------------------------------
# running a setting
# --------------------------------------------------------------------------------------------
@dataclass
class SettingResult:
    """Everything one setting produced, over its seeds."""

    setting: str
    label: str
    metrics: pd.DataFrame       # tidy (experiment, regime, seed, generation, metric, value, setting, ...)
    per_seq: pd.DataFrame       # (setting, seed, generation, perplexity): data under the generation-0 model
    examples: pd.DataFrame      # (setting, seed, generation, text)
    bookkeeping: pd.DataFrame
    seconds: float = 0.0


def _run_seed(job: dict) -> tuple:
    """One setting x seed through the engine (in this process or in a worker process)."""
    p, spec, data, seed, ckpt = job["p"], job["spec"], job["data"], job["seed"], job["ckpt"]
    regime = parse_regime(spec["regime"])
    exp = LMCollapse(job["base"], data, spec["epochs"], p["lr"], p["batch_size"], p["num_beams"], spec["penalty"],
                     p["gen_batch_size"], regime.n_synthetic(len(data.train)), p["prompt_index"], ckpt / "models",
                     progress=job["progress"], patience=p["patience"])
    res = run_recursion(exp, data.train, p["generations"], regime, seed=seed,
                        checkpoint_dir=ckpt / f"{job['setting']}-seed{seed}", progress=job["progress"],
                        columns={"setting": job["setting"], "epochs": spec["epochs"],
                                 "repetition_penalty": spec["penalty"]})
    return res.metrics, res.bookkeeping.assign(seed=seed), exp.state["per_seq"], exp.state["examples"]


def run_setting(p: dict, data: LMData, base: Base, setting: str, run_dir: str | os.PathLike,
                progress: bool = True) -> SettingResult:
    """Run one setting -- (a), (b) or the repetition-penalty ablation -- for its seeds.

    Each seed is one ``run_recursion`` call checkpointed in ``run_dir/checkpoints/<setting>-seed<k>``,
    so an interrupted run resumes (and one written by other code is recomputed); fitted models and their
    beam-search outputs live (content-addressed, keyed by the training code too) in
    ``run_dir/checkpoints/models`` and are reused.
    With ``parallel_runs > 1`` on a CPU the seeds run side by side in worker processes
    (:func:`collapse_utils.parallel.run_jobs`); serial or parallel, each seed computes with
    ``threads_per_run`` torch threads, so the results are identical either way.
    """
    import time

    from .parallel import run_jobs

    spec = setting_spec(p, setting)
    tok = load_tokenizer(data.tokenizer_path)
    ckpt = Path(run_dir) / "checkpoints"
    workers = int(p.get("parallel_runs", 1))
    if torch.cuda.is_available() or len(spec["seeds"]) < 2:
        workers = 1
    jobs = [{"p": p, "spec": spec, "data": data, "base": base, "setting": setting, "seed": seed, "ckpt": ckpt,
             "progress": progress and workers == 1} for seed in spec["seeds"]]
    t0 = time.time()
    results = run_jobs(_run_seed, jobs, workers, threads_per_run=p["threads_per_run"],
                       progress=progress and workers > 1, desc=f"setting {setting}: seeds")
    mets, seqs, exs, books = [], [], [], []
    for job, (metrics, book, per_seq, examples) in zip(jobs, results):
        seed = job["seed"]
        mets.append(metrics)
        books.append(book)
        for g, ppl in sorted(per_seq.items()):
            seqs.append(pd.DataFrame({"setting": setting, "seed": seed, "generation": g, "perplexity": ppl}))
        for g, ids in sorted(examples.items()):
            exs.append({"setting": setting, "seed": seed, "generation": g,
                        "text": tok.decode(ids, skip_special_tokens=False)})
    return SettingResult(setting, spec["label"], pd.concat(mets, ignore_index=True),
                         pd.concat(seqs, ignore_index=True), pd.DataFrame(exs), pd.concat(books, ignore_index=True),
                         time.time() - t0)


def combine(*results: SettingResult) -> dict[str, pd.DataFrame]:
    """The tidy metrics table and the extra tables of several settings."""
    res = [r for r in results if r is not None and len(r.metrics)]
    return {
        "metrics": pd.concat([r.metrics for r in res], ignore_index=True),
        "per_sequence_perplexity": pd.concat([r.per_seq for r in res], ignore_index=True),
        "continuations": pd.concat([r.examples for r in res], ignore_index=True),
        "bookkeeping": pd.concat([r.bookkeeping for r in res], ignore_index=True),
    }


# --------------------------------------------------------------------------------------------
# tables and figures
# --------------------------------------------------------------------------------------------
def _wide(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics.pivot_table(index=["setting", "seed", "generation"], columns="metric", values="value").reset_index()


def test_perplexity_table(metrics: pd.DataFrame, settings=("a", "b")) -> pd.DataFrame:
    """Per generation and setting: corpus test perplexity and per-sequence mean, mean ± std over seeds."""
    w = _wide(metrics)
    w = w[w["setting"].isin(settings)]
    rows = []
    for (s, g), d in w.groupby(["setting", "generation"]):
        sd = (lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else float("nan"))
        rows.append({"setting": s, "generation": int(g), "seeds": len(d),
                     "test ppl (corpus)": d["test_ppl"].mean(), "± over seeds": sd(d["test_ppl"]),
                     "per-sequence mean": d["test_ppl_seq_mean"].mean(),
                     "± std over sequences": d["test_ppl_seq_std"].mean(),
                     "data ppl under gen 0 (median)": d["data_gen0_ppl_seq_median"].mean()})
    return pd.DataFrame(rows)


def _labels(p: dict) -> dict:
    return {s: setting_spec(p, s)["label"] for s in SETTINGS}


def plot_test_perplexity(metrics: pd.DataFrame, p: dict, base_ppl: float | None = None):
    """Real-test perplexity per generation: mean over seeds ± std over seeds (error bars) of the
    mean per-sequence perplexity, and the mean ± std over test sequences (shaded)."""
    import matplotlib.pyplot as plt

    w = _wide(metrics)
    labels = _labels(p)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, s, c in zip(axes, ("a", "b"), palette(2)):
        d = w[w["setting"] == s].groupby("generation")
        g = np.array(sorted(w.loc[w["setting"] == s, "generation"].unique()))
        mean = d["test_ppl_seq_mean"].mean().reindex(g).values
        seed_sd = d["test_ppl_seq_mean"].std(ddof=1).reindex(g).fillna(0).values
        seq_sd = d["test_ppl_seq_std"].mean().reindex(g).values
        ax.fill_between(g, mean - seq_sd, mean + seq_sd, color=c, alpha=0.15, linewidth=0,
                        label="± std over test sequences")
        ax.errorbar(g, mean, yerr=seed_sd, color=c, marker="o", capsize=3,
                    label=f"mean over {int(d.size().max())} seed{'s' if d.size().max() > 1 else ''} ± std over seeds")
        ax.plot(g, d["test_ppl"].mean().reindex(g).values, color=c, ls=":", marker=".",
                label="corpus perplexity exp(mean NLL)")
        if base_ppl is not None:
            ax.axhline(base_ppl, color="grey", ls="--", lw=1, label="base model, before fine-tuning")
        ax.set_xticks(g)
        finish(ax, "generation", "perplexity on the real test set", labels[s])
    axes[1].tick_params(labelleft=True)
    fig.tight_layout()
    return fig


def plot_ppl_histograms(per_seq: pd.DataFrame, p: dict, generations=None):
    """Per-sequence perplexity of each generation's training data under the generation-0 model
    (seeds pooled): one row per generation, one column per setting, log x axis, share of sequences per
    bin (bins of equal width in log perplexity)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

    labels = _labels(p)
    wanted = list(generations if generations is not None else p["hist_generations"])
    d_ab = per_seq[per_seq["setting"].isin(["a", "b"])]
    gens = [g for g in wanted if g in set(d_ab["generation"])]
    vals = d_ab["perplexity"].to_numpy()
    vals = vals[np.isfinite(vals) & (vals > 0)]
    bins = np.logspace(np.log10(vals.min()) - 0.05, np.log10(vals.max()) + 0.05, 60)
    ticks = [m * 10.0**e for e in range(-1, 7) for m in (1, 2, 5) if bins[0] <= m * 10.0**e <= bins[-1]]
    fig, axes = plt.subplots(len(gens), 2, figsize=(11, 1.25 * len(gens) + 1.2), sharex=True, squeeze=False)
    colors = palette(len(gens))
    for col, s in enumerate(("a", "b")):
        d = d_ab[d_ab["setting"] == s]
        for row, (g, c) in enumerate(zip(gens, colors)):
            ax = axes[row, col]
            x = d.loc[d["generation"] == g, "perplexity"].to_numpy()
            if len(x):
                ax.hist(x, bins=bins, weights=np.full(len(x), 1 / len(x)), color=c, alpha=0.8)
                ax.axvline(np.median(x), color="k", lw=1, ls=":")
            ax.set_xscale("log")
            # plain numbers at 1-2-5 steps instead of crowded log-axis labels
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
            ax.set_ylabel(f"gen {g}" + (" (real)" if g == 0 else ""), rotation=0, ha="right", va="center")
            ax.tick_params(axis="y", labelsize="x-small")
        axes[0, col].set_title(labels[s])
    fig.supxlabel("perplexity of a training sequence under the generation-0 model (log scale)", fontsize="small")
    fig.supylabel("share of sequences per bin (dotted: median)", fontsize="small")
    fig.tight_layout()
    return fig


def plot_diversity(metrics: pd.DataFrame, p: dict):
    """Distinct-1/2/3, unigram entropy and the share of the real vocabulary produced, per generation."""
    import matplotlib.pyplot as plt

    w = _wide(metrics)
    labels = _labels(p)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    cols = palette(3)
    styles = {"a": "-", "b": "--"}
    for s in ("a", "b"):
        d = w[w["setting"] == s].groupby("generation").mean(numeric_only=True)
        for n, c in zip((1, 2, 3), cols):
            axes[0].plot(d.index, d[f"distinct_{n}"], ls=styles[s], color=c, marker="o", ms=3,
                         label=f"distinct-{n}, {s}")
        axes[1].plot(d.index, d["unigram_entropy"], ls=styles[s], color="k", marker="o", ms=3, label=labels[s])
        axes[2].plot(d.index, d["vocab_share"], ls=styles[s], color="k", marker="o", ms=3, label=labels[s])
    finish(axes[0], "generation", "unique n-grams / all n-grams", "distinct-n of the training data", ncol=2)
    finish(axes[1], "generation", "unigram entropy (bits)", "token entropy")
    finish(axes[2], "generation", "share of the real training vocabulary", "tokens still produced")
    fig.tight_layout()
    return fig


def plot_ablation(metrics: pd.DataFrame, p: dict):
    """Setting (a) with the official repetition penalty vs the ablation penalty, on the same seeds."""
    import matplotlib.pyplot as plt

    w = _wide(metrics)
    seeds = sorted(w.loc[w["setting"] == "ablation", "seed"].unique())
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for s, c in zip(("a", "ablation"), palette(2)):
        d = w[(w["setting"] == s) & w["seed"].isin(seeds)].groupby("generation").mean(numeric_only=True)
        pen = p["repetition_penalty"] if s == "a" else p["ablation_penalty"]
        lab = f"repetition penalty {pen:g}"
        axes[0].plot(d.index, d["test_ppl_seq_mean"], marker="o", color=c, label=lab)
        axes[1].plot(d.index, d["data_gen0_ppl_seq_median"], marker="o", color=c, label=lab)
        axes[2].plot(d.index, d["distinct_2"], marker="o", color=c, label=lab)
    finish(axes[0], "generation", "mean per-sequence perplexity", "real test set")
    axes[1].set_yscale("log")
    finish(axes[1], "generation", "median perplexity under generation 0", "generated training data")
    finish(axes[2], "generation", "distinct-2", "diversity of generated data")
    fig.suptitle(f"setting (a), seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}", y=1.02,
                 fontsize="medium")
    fig.tight_layout()
    return fig


def continuations_markdown(examples: pd.DataFrame, data: LMData, p: dict, setting: str = "a",
                           seed: int = 0, max_chars: int = 400) -> str:
    """A Markdown table: the fixed test prompt, then each generation's beam-search continuation, with the
    number of different tokens in it (a continuation of whitespace tokens only is said so)."""
    tok = load_tokenizer(data.tokenizer_path)
    prompt = tok.decode(data.test[p["prompt_index"]].tolist(), skip_special_tokens=False)

    def esc(t: str) -> str:
        t = " ".join(t.split())
        t = t if len(t) <= max_chars else t[:max_chars] + " …"
        return t.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*").replace(
            "_", "\\_").replace("@", "&#64;")

    def show(text: str) -> tuple[str, int]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if not text.strip():
            names = sorted(set(tok.convert_ids_to_tokens(ids)))
            return f"*(only whitespace: the token{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))})*", \
                len(names)
        return esc(text), len(set(ids))

    d = examples[(examples["setting"] == setting) & (examples["seed"] == seed)].sort_values("generation")
    rows = ["| generation | different tokens | text |", "| ---: | ---: | --- |",
            f"| prompt (real test block) | {len(set(data.test[p['prompt_index']].tolist()))} | {esc(prompt)} |"]
    for r in d.itertuples():
        text, n = show(r.text)
        rows.append(f"| {int(r.generation)} | {n} | {text} |")
    return f"**{_labels(p)[setting]}, seed {seed}**\n\n" + "\n".join(rows)


def summary_numbers(metrics: pd.DataFrame) -> dict:
    """Headline numbers for the closing note: first/last generation test perplexity per setting."""
    t = test_perplexity_table(metrics, settings=("a", "b", "ablation"))
    out = {}
    for s, d in t.groupby("setting"):
        d = d.sort_values("generation")
        out[s] = {"first": float(d["test ppl (corpus)"].iloc[0]), "last": float(d["test ppl (corpus)"].iloc[-1]),
                  "last_generation": int(d["generation"].iloc[-1]),
                  "per_generation": [round(float(v), 2) for v in d["test ppl (corpus)"]]}
    return out


def histogram_table(per_seq: pd.DataFrame, generations=None) -> pd.DataFrame:
    """Quantiles of the per-sequence perplexities under model 0, per setting and generation (seeds pooled)."""
    d = per_seq if generations is None else per_seq[per_seq["generation"].isin(list(generations))]
    d = d.assign(perplexity=d["perplexity"].astype(np.float64))  # stored as float32; report plain decimals
    q = d.groupby(["setting", "generation"])["perplexity"]
    return pd.DataFrame({"sequences": q.size(), "5%": q.quantile(0.05), "median": q.median(),
                         "95%": q.quantile(0.95), "max": q.max()}).reset_index()


def closing_note(metrics: pd.DataFrame, per_seq: pd.DataFrame, p: dict, base: Base | None = None) -> str:
    """The 'What we saw' numbers, computed from this run's tables (Markdown)."""
    t = test_perplexity_table(metrics, settings=("a", "b", "ablation"))
    labels = _labels(p)
    lines = []
    if base is not None:
        lines.append(f"- Base model before fine-tuning: test perplexity {base.test_ppl:.1f}.")
    for s in ("a", "b", "ablation"):
        d = t[t["setting"] == s].sort_values("generation")
        if d.empty:
            continue
        seq = ", ".join(f"{v:.1f}" for v in d["test ppl (corpus)"])
        first, last = d["test ppl (corpus)"].iloc[0], d["test ppl (corpus)"].iloc[-1]
        k = int(d["seeds"].iloc[0])
        lines.append(f"- {labels[s]} ({k} seed{'s' if k > 1 else ''}): test perplexity per generation "
                     f"0–{int(d['generation'].iloc[-1])}: {seq}; generation {int(d['generation'].iloc[-1])} is "
                     f"{100 * (last / first - 1):+.0f}% relative to model 0.")
    h = histogram_table(per_seq[per_seq["setting"] == "a"])
    if len(h) > 1:
        g0, gl = h.iloc[0], h.iloc[-1]
        lines.append(f"- Setting (a), training data under model 0: median per-sequence perplexity {g0['median']:.1f} "
                     f"for the real data (generation 0) and {gl['median']:.1f} for generation {int(gl['generation'])}'s "
                     f"data; the 95th percentile goes from {g0['95%']:.1f} to {gl['95%']:.1f}, the maximum from "
                     f"{g0['max']:.1f} to {gl['max']:.1f}.")
    w = _wide(metrics)
    for s in ("a", "b"):
        d = w[w["setting"] == s].groupby("generation").mean(numeric_only=True)
        if len(d) > 1:
            lines.append(f"- Diversity, {labels[s]}: distinct-2 {d['distinct_2'].iloc[0]:.3f} → "
                         f"{d['distinct_2'].iloc[-1]:.3f}, unigram entropy {d['unigram_entropy'].iloc[0]:.2f} → "
                         f"{d['unigram_entropy'].iloc[-1]:.2f} bits, share of the real vocabulary produced "
                         f"{d['vocab_share'].iloc[0]:.2f} → {d['vocab_share'].iloc[-1]:.2f}.")
    return "\n".join(lines)


def training_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per setting and generation (mean over seeds): the epoch whose checkpoint was kept and its real
    validation loss -- which shows how many of the allotted epochs were of any use."""
    w = _wide(metrics)
    cols = ["best_epoch", "epochs_run", "val_loss"]
    t = w.groupby(["setting", "generation"])[cols].mean().reset_index()
    return t.pivot_table(index="generation", columns="setting", values=cols).round(3)
