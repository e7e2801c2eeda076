"""Study module of the chapter notebooks/04_language_models.md (see :mod:`collapse_utils.chapters`).

The experiment itself -- data, the pretrained base, the engine experiment :class:`~collapse_utils.models.lm.LMCollapse`
-- lives in :mod:`collapse_utils.models.lm`.  This module holds what the page needs: the parameters and inputs
check, the run plan (settings (a), (b) and the repetition-penalty ablation, seeds side by side in
worker processes), the result object, tables, figures and the claims of the paper that the run tests.

Two settings, as in the paper:

(a) ``epochs_a`` epochs, no original data kept (the engine's ``replace`` regime);
(b) ``epochs_b`` epochs, a random ``keep_fraction`` of the original blocks kept each generation
    (``keep_real(keep_fraction)``).

and two comparisons on the first ``comparison_seeds`` seeds of setting (a):

``prompts``      setting (a) with the other prompt source (the paper continues the *original* blocks;
                 "chained" continues the previous generation's text);
``penalty-<x>``  setting (a) with repetition penalty ``x``, for every ``x`` of ``ablation_penalties``
                 other than the main ``repetition_penalty`` (the paper's ablation: none vs 2.0).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .claims import Claim, finite, judge
from ..core.params import Checker
from ..core.engine import run_recursion
from ..models.lm import LOCAL_MODEL, PROMPT_SOURCES, Base, LMCollapse, prepare_base, prepare_data
from ..models.lm_data import DATA_CONFIGS, TOKENIZE_MODES, LMData, load_tokenizer
from .plotting import finish, palette, regime_colors
from ..core.regimes import parse_regime

__all__ = [
    "SETTINGS",
    "LMResult",
    "SettingResult",
    "check_inputs",
    "claims",
    "collect",
    "combine",
    "comparison_markdown",
    "continuations_markdown",
    "histogram_table",
    "plot_comparisons",
    "penalty_choice_markdown",
    "comparison_arms",
    "plot_diversity",
    "plot_ppl_histograms",
    "plot_test_perplexity",
    "prepare_base",
    "prepare_data",
    "run",
    "run_setting",
    "run_settings",
    "comparison_settings",
    "setting_spec",
    "test_perplexity_table",
    "training_table",
    "validate_params",
]

SETTINGS = ("a", "b")  # the main settings; comparison_settings(p) lists the comparisons
SETTING_LABELS = {
    "a": "(a) {epochs} {ep}, no original data",
    "b": "(b) {epochs} {ep}, {pct:g}% original data kept",
    "prompts": "(a) with {prompts} prompts",
    "penalty": "(a) with repetition penalty {penalty:g}",
}
# A run can only show collapse if fine-tuning on the real data moves the model at all: model 0's test
# perplexity must differ from the base's by more than this share (the smoke preset's models barely learn).
LEARNS = 0.01
# Setting (b) "degrades only slightly": its relative rise is at most this share of setting (a)'s.
SLIGHT = 0.5


# --------------------------------------------------------------------------------------------
# parameters and inputs
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
    c.choice("prompts", PROMPT_SOURCES).choice("tokenize", TOKENIZE_MODES)
    c.int("comparison_seeds", 0, 100)
    pens = p.get("ablation_penalties")
    c.check(isinstance(pens, (list, tuple)) and len(pens) > 0 and len(set(pens)) == len(pens)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 100 for x in pens),
            f"ablation_penalties must be a non-empty list of distinct numbers in (0, 100], got {pens!r}")
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
        c.check(p["comparison_seeds"] <= p["seeds"],
                f"comparison_seeds ({p['comparison_seeds']}) cannot exceed seeds ({p['seeds']}): the comparisons "
                "are set beside setting (a) on the same seeds")
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

    Raises :class:`~collapse_utils.core.data.DataError` with what is missing and how to provide it.
    """
    from ..core.data import DataError, dataset_file
    from ..models.lm_data import SPLITS

    if p["data_config"] == "wikitext-2-v1":
        for split in SPLITS:
            dataset_file("wikitext-2", f"wiki.{split}.tokens", download=True)
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


def _other_prompts(p: dict) -> str:
    return next(x for x in PROMPT_SOURCES if x != p["prompts"])


def comparison_settings(p: dict) -> list[str]:
    """The comparison settings this run makes (none with ``comparison_seeds = 0``): setting (a) with the
    other prompt source, and with each ablation penalty that is not the main one."""
    if not p["comparison_seeds"]:
        return []
    return ["prompts"] + [f"penalty-{x:g}" for x in p["ablation_penalties"]
                          if float(x) != float(p["repetition_penalty"])]


def setting_spec(p: dict, setting: str) -> dict:
    """Regime, epochs, prompt source, repetition penalty, seeds and label of one setting."""
    spec = {"regime": "replace", "epochs": p["epochs_a"], "penalty": float(p["repetition_penalty"]),
            "prompts": p["prompts"], "seeds": list(range(p["seeds"]))}
    if setting == "b":
        spec.update(regime=f"keep_real({p['keep_fraction']:g})", epochs=p["epochs_b"])
    elif setting == "prompts":
        spec.update(prompts=_other_prompts(p), seeds=list(range(p["comparison_seeds"])))
    elif setting.startswith("penalty-"):
        try:
            pen = float(setting.split("-", 1)[1])
        except ValueError:
            raise ValueError(f"a penalty setting is 'penalty-<number>', got {setting!r}") from None
        spec.update(penalty=pen, seeds=list(range(p["comparison_seeds"])))
    elif setting != "a":
        raise ValueError(f"setting must be 'a', 'b', 'prompts' or 'penalty-<x>', got {setting!r}")
    key = "penalty" if setting.startswith("penalty-") else setting
    spec["label"] = SETTING_LABELS[key].format(epochs=spec["epochs"], pct=100 * p["keep_fraction"],
                                               penalty=spec["penalty"], prompts=spec["prompts"],
                                               ep="epoch" if spec["epochs"] == 1 else "epochs")
    return spec


def _labels(p: dict) -> dict:
    return {s: setting_spec(p, s)["label"] for s in (*SETTINGS, *comparison_settings(p))}


# --------------------------------------------------------------------------------------------
# the run plan
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
                     progress=job["progress"], patience=p["patience"], prompts=spec["prompts"], regime=regime)
    res = run_recursion(exp, data.train, p["generations"], regime, seed=seed,
                        checkpoint_dir=ckpt / f"{job['setting']}-seed{seed}", progress=job["progress"],
                        columns={"setting": job["setting"], "epochs": spec["epochs"],
                                 "repetition_penalty": spec["penalty"], "prompts": spec["prompts"]})
    return res.metrics, res.bookkeeping.assign(seed=seed), exp.state["per_seq"], exp.state["examples"]


def run_settings(p: dict, data: LMData, base: Base, settings, run_dir: str | os.PathLike,
                 progress: bool = True) -> dict[str, SettingResult]:
    """Run several settings -- ``'a'``, ``'b'``, and the comparisons of :func:`comparison_settings` --
    for their seeds, every (setting, seed) pair one job of one pool.

    Each job is one ``run_recursion`` call checkpointed in ``run_dir/checkpoints/<setting>-seed<k>``,
    so an interrupted run resumes (and one written by other code is recomputed); fitted models and their
    beam-search outputs live (content-addressed, keyed by the training code too) in
    ``run_dir/checkpoints/models`` and are reused -- the comparisons share setting (a)'s generation-0
    model, so run them after (a).  With ``parallel_runs > 1`` on a CPU the jobs run side by side in
    worker processes, the longest first (:func:`collapse_utils.core.parallel.run_jobs`); serial or parallel,
    each job computes with ``threads_per_run`` torch threads, so the results are identical either way.
    """
    from ..core.parallel import run_jobs

    specs = {s: setting_spec(p, s) for s in settings}
    tok = load_tokenizer(data.tokenizer_path)
    ckpt = Path(run_dir) / "checkpoints"
    jobs = [{"p": p, "spec": spec, "data": data, "base": base, "setting": s, "seed": seed, "ckpt": ckpt}
            for s, spec in specs.items() for seed in spec["seeds"]]
    workers = 1 if torch.cuda.is_available() else max(1, min(int(p.get("parallel_runs", 1)), len(jobs)))
    for j in jobs:
        j["progress"] = progress and workers == 1
    # longest first (more epochs per generation), so that the last jobs of the pool are short ones
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i]["spec"]["epochs"])
    t0 = time.time()
    done = run_jobs(_run_seed, [jobs[i] for i in order], workers, threads_per_run=p["threads_per_run"],
                    progress=progress and workers > 1, desc=f"settings {', '.join(specs)}: runs",
                    label=lambda j: f"{j['setting']} seed {j['seed']}")
    results = [None] * len(jobs)
    for i, r in zip(order, done):
        results[i] = r
    seconds = time.time() - t0
    out = {}
    for s, spec in specs.items():
        mets, seqs, exs, books = [], [], [], []
        for job, (metrics, book, per_seq, examples) in zip(jobs, results):
            if job["setting"] != s:
                continue
            seed = job["seed"]
            mets.append(metrics)
            books.append(book.assign(setting=s))
            for g, ppl in sorted(per_seq.items()):
                seqs.append(pd.DataFrame({"setting": s, "seed": seed, "generation": g, "perplexity": ppl}))
            for g, ids in sorted(examples.items()):
                exs.append({"setting": s, "seed": seed, "generation": g,
                            "text": tok.decode(ids, skip_special_tokens=False)})
        if mets:
            out[s] = SettingResult(s, spec["label"], pd.concat(mets, ignore_index=True),
                                   pd.concat(seqs, ignore_index=True), pd.DataFrame(exs),
                                   pd.concat(books, ignore_index=True), seconds)
    return out


def run_setting(p: dict, data: LMData, base: Base, setting: str, run_dir: str | os.PathLike,
                progress: bool = True) -> SettingResult:
    """One setting for its seeds (see :func:`run_settings`)."""
    return run_settings(p, data, base, [setting], run_dir, progress)[setting]


def combine(*results: SettingResult | None) -> dict[str, pd.DataFrame]:
    """The tidy metrics table and the extra tables of several settings."""
    res = [r for r in results if r is not None and len(r.metrics)]
    return {
        "metrics": pd.concat([r.metrics for r in res], ignore_index=True),
        "per_sequence_perplexity": pd.concat([r.per_seq for r in res], ignore_index=True),
        "continuations": pd.concat([r.examples for r in res], ignore_index=True),
        "bookkeeping": pd.concat([r.bookkeeping for r in res], ignore_index=True),
    }


@dataclass
class LMResult:
    """The chapter's result: the base model's test perplexity and the tables of every setting run."""

    base_ppl: float
    metrics: pd.DataFrame
    per_seq: pd.DataFrame
    continuations: pd.DataFrame
    bookkeeping: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        """The extra tables written beside metrics.csv."""
        return {"per_sequence_perplexity": self.per_seq, "continuations": self.continuations,
                "bookkeeping": self.bookkeeping}


def collect(base: Base | float, *results: SettingResult | None) -> LMResult:
    """One result object from the settings run (a comparison that was skipped may be ``None``)."""
    t = combine(*results)
    ppl = base.test_ppl if isinstance(base, Base) else float(base)
    return LMResult(ppl, t["metrics"], t["per_sequence_perplexity"], t["continuations"], t["bookkeeping"])


def run(p: dict, data: LMData, base: Base, run_dir: str | os.PathLike, progress: bool = True) -> LMResult:
    """Settings (a) and (b), then the comparisons (if ``comparison_seeds > 0``), in one call."""
    res = run_settings(p, data, base, SETTINGS, run_dir, progress)
    if comparison_settings(p):
        res.update(run_settings(p, data, base, comparison_settings(p), run_dir, progress))
    return collect(base, *res.values())


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def _wide(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics.pivot_table(index=["setting", "seed", "generation"], columns="metric", values="value").reset_index()


def test_perplexity_table(metrics: pd.DataFrame, settings=("a", "b")) -> pd.DataFrame:
    """Per generation and setting: the corpus test perplexity exp(mean token NLL), mean over seeds with
    its minimum and maximum over seeds, the mean of per-sequence perplexities, and the median per-sequence
    perplexity of the training data under model 0."""
    w = _wide(metrics)
    w = w[w["setting"].isin(settings)]
    rows = []
    for (s, g), d in w.groupby(["setting", "generation"]):
        rows.append({"setting": s, "generation": int(g), "seeds": len(d),
                     "test ppl (corpus)": d["test_ppl"].mean(), "min over seeds": d["test_ppl"].min(),
                     "max over seeds": d["test_ppl"].max(),
                     "per-sequence mean": d["test_ppl_seq_mean"].mean(),
                     "data ppl under gen 0 (median)": d["data_gen0_ppl_seq_median"].mean()})
    return pd.DataFrame(rows)


def histogram_table(per_seq: pd.DataFrame, generations=None) -> pd.DataFrame:
    """Quantiles of the per-sequence perplexities under model 0, per setting and generation (seeds pooled)."""
    d = per_seq if generations is None else per_seq[per_seq["generation"].isin(list(generations))]
    d = d.assign(perplexity=d["perplexity"].astype(np.float64))  # stored as float32; report plain decimals
    q = d.groupby(["setting", "generation"])["perplexity"]
    return pd.DataFrame({"sequences": q.size(), "5%": q.quantile(0.05), "median": q.median(),
                         "95%": q.quantile(0.95), "max": q.max()}).reset_index()


def training_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per setting and generation (mean over seeds): the epoch whose checkpoint was kept and its real
    validation loss -- which shows how many of the allotted epochs were of any use."""
    w = _wide(metrics)
    cols = ["best_epoch", "epochs_run", "val_loss"]
    t = w.groupby(["setting", "generation"])[cols].mean().reset_index()
    return t.pivot_table(index="generation", columns="setting", values=cols).round(3)


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


def penalty_choice_markdown(claims: list[Claim], p: dict) -> str:
    """Why this run's settings use their repetition penalty, from the ablation's measurements (a
    paragraph of Markdown; every number comes from the run's ``penalty-worse`` claim).

    The decoding itself is judged on generation 1's training data -- the text model 0, trained on real
    data only, writes -- where the two penalties differ in nothing else."""
    c = next((c for c in claims if c.id == "penalty-worse"), None)
    main = float(p["repetition_penalty"])
    local = p["model_name"] == LOCAL_MODEL
    if c is None or not finite(c.extra.get("low_distinct2_gen1"), c.extra.get("high_distinct2_gen1")):
        return (f"This run's settings (a) and (b) generate with repetition penalty {main:g}; the ablation was not "
                "run (`comparison_seeds = 0`), so this page cannot say what the penalty changes.")
    lo, hi = c.extra["low_penalty"], c.extra["high_penalty"]
    g_lo, g_hi = c.extra["low_distinct2_gen1"], c.extra["high_distinct2_gen1"]
    l_lo, l_hi = c.extra["low_distinct2_last"], c.extra["high_distinct2_last"]
    real = c.extra.get("real_distinct2", float("nan"))
    loops = g_lo < 0.5 * g_hi
    text = (f"In the text that model 0 writes (generation 1's training data), distinct-2 is {g_lo:.2f} with penalty "
            f"{lo:g} and {g_hi:.2f} with penalty {hi:g}"
            + (f", against {real:.2f} in the real data" if finite(real) else "")
            + f" (means over the comparison seeds; at the last generation {l_lo:.2f} and {l_hi:.2f}): "
            + (f"with penalty {lo:g} beam search settles into loops of a few tokens from the first generation on "
               "(the table above shows the text). " if loops else
               f"penalty {lo:g} does not make model 0's text loop more than penalty {hi:g} at this size. "))
    if local:
        text += (f"The local presets generate with penalty {main:g}, the paper's ablation value: without a penalty "
                 "a model as small as the local OPT tends to loop from generation 1 on, and a training set of loops "
                 "says little about what the paper's OPT-125m does. "
                 + ("This run shows that loop. " if loops else "This run does not show that loop, so the choice "
                    "rests on other runs; the ablation's claims below hold either way. ")
                 + ("With either penalty, model 0's text has less than half the distinct word pairs of the real text."
                    if finite(real) and max(g_lo, g_hi) < 0.5 * real else ""))
    else:
        text += (f"This run generates with penalty {main:g}"
                 + (", as the paper's text describes (plain beam search)." if main == 1.0 else "."))
    return text + " The claims below say whether the paper's two statements about the penalty hold in this run."


def comparison_markdown(p: dict, data: LMData, base: Base) -> str:
    """How this run differs from the paper: a Markdown table, the paper's column from its text and
    official code, this run's column from its parameters, data and base model."""
    i = base.info
    if i.get("local"):
        model = (f"OPT architecture with {i['n_params']:,} parameters, pretrained here on "
                 f"{i['blocks']:,} held-out blocks ({i['epochs']} epoch{'s' if i['epochs'] != 1 else ''})")
        tokenizer = f"byte-level BPE with {i['vocab']:,} tokens trained on the WikiText-2 training split"
    else:
        model = f"`{p['model_name']}`, loaded by name"
        tokenizer = f"the tokenizer of `{p['model_name']}`"
    train = "all of it" if p["train_blocks"] == 0 else f"{len(data.train):,} training blocks"
    stop = ("every epoch run" if p["patience"] == 0 else
            f"stop after {p['patience']} epoch{'s' if p['patience'] != 1 else ''} without improvement")
    rows = [
        ("model", "OPT-125m, pretrained on 180B tokens, loaded by name", model),
        ("data", "`wikitext-2-raw-v1`, all of it (about 37k training blocks)",
         f"`{p['data_config']}`{', headings dropped' if p['drop_headings'] else ''}, {train}"),
        ("tokenizer", "OPT's GPT-2 BPE, 50k tokens", tokenizer),
        ("fine-tuning", "AdamW 2·10⁻⁵, batch 128, every epoch run",
         f"AdamW {p['lr']:g}, batch {p['batch_size']}, {stop}"),
        ("epochs (a) / (b), real data kept in (b)", "5 / 10, 10%",
         f"{p['epochs_a']} / {p['epochs_b']}, {100 * p['keep_fraction']:g}%"),
        ("tokenisation", "the official code: concatenate, tokenize, 64-token blocks (Hugging Face's recipe "
         "puts `</s>` before every row, blank rows included)",
         "every row with the tokenizer's special tokens (the recipe)" if p["tokenize"] == "hf_clm" else
         "non-blank lines without special tokens, concatenated"),
        ("prompts", "the original training blocks, every generation",
         f"{p['prompts']} blocks" + (f"; {p['comparison_seeds']} seed(s) also with {_other_prompts(p)} prompts"
                                     if p["comparison_seeds"] else "")),
        ("decoding", "beam search, 5 beams, 64 new tokens; no repetition penalty in the text, 3.0 in the "
         "official code, 2.0 in the text's ablation",
         f"beam search, {p['num_beams']} beams, {p['block_size']} new tokens, repetition penalty "
         f"{p['repetition_penalty']:g}"
         + (f"; ablation {', '.join(f'{x:g}' for x in p['ablation_penalties'])}" if p["comparison_seeds"] else "")),
        ("generations, seeds", "9 and 5", f"{p['generations']} and {p['seeds']}"),
        ("histograms", "loss per batch in the official code", "perplexity per sequence"),
    ]
    out = ["| | paper | this run (`" + str(p.get("preset", "")) + "` preset) |", "| --- | --- | --- |"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def plot_test_perplexity(metrics: pd.DataFrame, p: dict, base_ppl: float | None = None):
    """Real-test perplexity per generation.  Markers: the corpus perplexity exp(mean token NLL) -- the
    number the tables and the text use -- averaged over seeds, with bars from the smallest to the largest
    seed (a range, not an uncertainty, with so few seeds); dotted: the mean of per-sequence perplexities."""
    import matplotlib.pyplot as plt

    w = _wide(metrics)
    labels = _labels(p)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, s, c in zip(axes, ("a", "b"), regime_colors([setting_spec(p, s)["regime"] for s in ("a", "b")])):
        d = w[w["setting"] == s].groupby("generation")
        g = np.array(sorted(w.loc[w["setting"] == s, "generation"].unique()))
        mean = d["test_ppl"].mean().reindex(g).values
        lo, hi = d["test_ppl"].min().reindex(g).values, d["test_ppl"].max().reindex(g).values
        k = int(d.size().max())
        ax.errorbar(g, mean, yerr=[mean - lo, hi - mean], color=c, marker="o", capsize=3,
                    label=f"corpus, mean of {k} seed{'s' if k > 1 else ''}" + (" (bars: min–max)" if k > 1 else ""))
        ax.plot(g, d["test_ppl_seq_mean"].mean().reindex(g).values, color=c, ls=":", marker=".",
                label="mean per-sequence")
        if base_ppl is not None:
            ax.axhline(base_ppl, color="grey", ls="--", lw=1, label="base, before fine-tuning")
        ax.set_xticks(g)
        finish(ax, "generation", "perplexity on the real test set", labels[s], fontsize="small")
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


def comparison_arms(p: dict, kind: str) -> list[tuple[str, str]]:
    """(setting, label) of each arm of a comparison on the comparison seeds: ``kind='prompts'`` --
    original vs chained prompts; ``kind='penalty'`` -- one arm per ablation penalty (the main penalty's
    arm is setting (a) itself)."""
    if kind == "prompts":
        arms = {p["prompts"]: "a", _other_prompts(p): "prompts"}
        return [(arms[x], f"{x} prompts" + (" (paper)" if x == "original" else "")) for x in PROMPT_SOURCES]
    if kind == "penalty":
        main = float(p["repetition_penalty"])
        return [("a" if float(x) == main else f"penalty-{x:g}",
                 f"penalty {x:g}" + (" (none)" if float(x) == 1.0 else "")) for x in p["ablation_penalties"]]
    raise ValueError(f"kind must be 'prompts' or 'penalty', got {kind!r}")


def plot_comparisons(metrics: pd.DataFrame, p: dict):
    """Setting (a) on the comparison seeds: original vs chained prompts (top row) and the ablation
    penalties (bottom row) -- real-test perplexity, the generated data's median perplexity under model 0,
    and distinct-2 of the generated data."""
    import matplotlib.pyplot as plt

    w = _wide(metrics)
    seeds = list(range(p["comparison_seeds"]))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.4))
    for row, kind in enumerate(("prompts", "penalty")):
        arms = comparison_arms(p, kind)
        for (s, lab), c in zip(arms, palette(len(arms))):
            d = w[(w["setting"] == s) & w["seed"].isin(seeds)].groupby("generation").mean(numeric_only=True)
            if d.empty:
                continue
            axes[row, 0].plot(d.index, d["test_ppl"], marker="o", color=c, label=lab)
            axes[row, 1].plot(d.index, d["data_gen0_ppl_seq_median"], marker="o", color=c, label=lab)
            axes[row, 2].plot(d.index, d["distinct_2"], marker="o", color=c, label=lab)
        what = "prompts" if kind == "prompts" else "repetition penalty"
        finish(axes[row, 0], "generation", "corpus perplexity", f"{what}: real test set")
        axes[row, 1].set_yscale("log")
        finish(axes[row, 1], "generation", "median perplexity under generation 0", f"{what}: generated data")
        finish(axes[row, 2], "generation", "distinct-2", f"{what}: diversity of generated data")
    fig.suptitle(f"setting (a), seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} (means)",
                 y=1.0, fontsize="medium")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# claims
# --------------------------------------------------------------------------------------------
def _by_seed(w: pd.DataFrame, setting: str, metric: str) -> pd.DataFrame:
    """seeds x generations table of one metric of one setting (empty if the setting was not run)."""
    d = w[w["setting"] == setting]
    if d.empty or metric not in d:
        return pd.DataFrame()
    return d.pivot_table(index="seed", columns="generation", values=metric).sort_index(axis=1)


def _rise(t: pd.DataFrame) -> pd.Series:
    """Per seed: last generation over generation 0, minus one (a relative change)."""
    if t.empty or t.shape[1] < 2:
        return pd.Series(dtype=float)
    return t.iloc[:, -1] / t.iloc[:, 0] - 1


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %" if finite(x) else "n/a"


def _mean(x) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def claims(result: LMResult, p: dict) -> list[Claim]:
    """The paper's statements about the OPT experiment, each with a verdict computed from this run.

    Every verdict needs fine-tuning on the real data to move the model at all (model 0's test perplexity
    more than ``LEARNS`` away from the base's): otherwise the run is "not visible at this preset".
    """
    w = _wide(result.metrics)
    ta = _by_seed(w, "a", "test_ppl")
    tb = _by_seed(w, "b", "test_ppl")
    last = int(ta.columns[-1]) if not ta.empty else 0
    base, m0 = float(result.base_ppl), _mean(ta.iloc[:, 0]) if not ta.empty else float("nan")
    change = m0 / base - 1 if finite(base, m0) else float("nan")
    learns = finite(change) and abs(change) > LEARNS
    out = [Claim(
        "finetune-improves",
        "Fine-tuning the pretrained base on the real training data lowers its test perplexity (model 0)",
        "115 → 34 (OPT-125m, zero-shot → fine-tuned)",
        f"{base:.1f} → {m0:.1f} ({_pct(change)})", "fig-04-test-perplexity",
        judge(change < 0, visible=learns),
        extra={"base_ppl": base, "model0_ppl": m0, "change_pct": 100 * change})]

    # (a): real-test perplexity rises over the generations, in every seed
    ra, rb = _rise(ta), _rise(tb)
    a_visible = learns and last >= 2 and len(ra) > 0 and finite(*ra)
    a_holds = bool(len(ra)) and bool((ra > 0).all())
    ba = _by_seed(w, "a", "best_epoch")
    later = ba.iloc[:, 1:].to_numpy().ravel() if ba.shape[1] > 1 else np.array([])
    out.append(Claim(
        "a-rises", "Setting (a), no original data kept: perplexity on the real test set rises over the generations",
        "rises (from about 34 at model 0)",
        f"{m0:.1f} → {_mean(ta.iloc[:, -1]) if not ta.empty else float('nan'):.1f} at generation {last} "
        f"({_pct(_mean(ra))}; per seed {', '.join(_pct(x) for x in ra)})", "fig-04-test-perplexity",
        judge(a_holds, visible=a_visible),
        extra={"model0_ppl": m0, "last_ppl": _mean(ta.iloc[:, -1]) if not ta.empty else float("nan"),
               "rise_pct": 100 * _mean(ra), "last_generation": last, "seeds": int(len(ra)),
               "first_epoch_fits": int(np.sum(later == 1)), "later_fits": int(len(later))}))

    # (b) against (a): the relative rise over model 0 at the last generation (means over seeds)
    rise_a, rise_b = _mean(ra), _mean(rb)
    cmp_visible = a_visible and a_holds and len(rb) > 0 and finite(rise_b)
    bk = result.bookkeeping
    bk = bk[(bk["setting"] == "b") & (bk["generation"] == 1)] if {"setting", "generation"} <= set(bk) else bk[:0]
    kept = int(bk["n_real"].iloc[0]) if len(bk) and "n_real" in bk else 0
    b_last = _mean(tb.iloc[:, -1]) if not tb.empty else float("nan")
    measured = f"(b) {_pct(rise_b)} against (a) {_pct(rise_a)} at generation {last}"
    out.append(Claim(
        "b-rises-less", f"Setting (b), a share of the original data kept each generation ({100 * p['keep_fraction']:g} "
        "%; paper 10 %): test perplexity rises less than in setting (a)", "(b) below (a)", measured, "fig-04-test-perplexity",
        judge(rise_b < rise_a, visible=cmp_visible),
        extra={"rise_pct": 100 * rise_b, "last_ppl": b_last, "model0_ppl": _mean(tb.iloc[:, 0]) if not tb.empty
               else float("nan")}))
    ratio = rise_b / rise_a if finite(rise_a, rise_b) and rise_a > 0 else float("nan")
    out.append(Claim(
        "b-only-slightly", "Setting (b) degrades only slightly: its rise is much smaller than (a)'s "
        f"(criterion: at most {SLIGHT:.0%} of it)", "degrades only slightly",
        f"{measured}: {ratio:.2f} of (a)'s rise" if finite(ratio) else measured, "fig-04-test-perplexity",
        judge(finite(ratio) and ratio <= SLIGHT, visible=cmp_visible),
        extra={"ratio": ratio, "kept_blocks": kept}))

    # training data under model 0, setting (a), seeds pooled
    h = histogram_table(result.per_seq[result.per_seq["setting"] == "a"]).set_index("generation")

    def q(g, col):
        return float(h.loc[g, col]) if g in h.index else float("nan")

    med0, med1 = q(0, "median"), q(1, "median")
    out.append(Claim(
        "data-more-probable", "Generated data are more probable under model 0 than the real data: the "
        "per-sequence perplexities pile up at low values", "mass moves to low perplexity",
        f"median under model 0: real {med0:.1f}, generation 1 {med1:.1f}", "fig-04-histograms",
        judge(finite(med0, med1) and med1 < med0, visible=learns and last >= 1 and finite(med0, med1)),
        extra={"median_real": med0, "median_gen1": med1, "q95_real": q(0, "95%"), "q95_gen1": q(1, "95%")}))

    tail1 = q(1, "95%") / med1 if finite(med1) else float("nan")
    taill = q(last, "95%") / q(last, "median") if finite(q(last, "median")) else float("nan")
    out.append(Claim(
        "long-tail", "Later generations grow a long tail of improbable sequences (under model 0) that "
        "generation 1 did not have", "a long high-perplexity tail appears",
        f"95th percentile / median: {tail1:.2f} at generation 1, {taill:.2f} at generation {last}",
        "fig-04-histograms",
        judge(finite(tail1, taill) and taill > tail1, visible=learns and last >= 3 and finite(tail1, taill)),
        extra={"tail_gen1": tail1, "tail_last": taill, "median_last": q(last, "median"),
               "q95_last": q(last, "95%")}))

    # diversity of the training data, setting (a)
    d2, vs = _by_seed(w, "a", "distinct_2"), _by_seed(w, "a", "vocab_share")
    r2, rv = _rise(d2), _rise(vs)
    first2, last2 = (_mean(d2.iloc[:, 0]), _mean(d2.iloc[:, -1])) if not d2.empty else (float("nan"),) * 2
    firstv, lastv = (_mean(vs.iloc[:, 0]), _mean(vs.iloc[:, -1])) if not vs.empty else (float("nan"),) * 2
    out.append(Claim(
        "diversity-falls", "The generated text loses diversity: fewer distinct word pairs and a shrinking share "
        "of the real vocabulary (the tails disappear)", "tails of the distribution disappear",
        f"distinct-2 {first2:.2f} → {last2:.2f}, vocabulary share {firstv:.2f} → {lastv:.2f} (setting a)",
        "fig-04-diversity",
        judge(len(r2) > 0 and bool((r2 < 0).all() and (rv < 0).all()),
              visible=learns and last >= 1 and len(r2) > 0 and finite(*r2, *rv)),
        extra={"distinct2_real": first2, "distinct2_last": last2, "vocab_real": firstv, "vocab_last": lastv}))

    # the comparisons, on the comparison seeds: each arm's last-generation test perplexity and rise
    cseeds = list(range(int(p["comparison_seeds"])))

    def arm(setting: str) -> tuple[pd.Series, pd.Series]:
        t = _by_seed(w, setting, "test_ppl")
        t = t.loc[t.index.isin(cseeds)] if not t.empty else t
        return (t.iloc[:, -1] if not t.empty else pd.Series(dtype=float)), _rise(t)

    def d2_last(setting: str, generation: int | None = None) -> float:
        """distinct-2 of the generated data at the last (or the given) generation, mean over comparison seeds."""
        t = _by_seed(w, setting, "distinct_2")
        t = t.loc[t.index.isin(cseeds)] if not t.empty else t
        if t.empty or (generation is not None and generation not in t.columns):
            return float("nan")
        return _mean(t.iloc[:, -1] if generation is None else t[generation])

    cmp_ok = learns and last >= 2
    # prompts: does continuing the model's own text (chained) degrade more than the paper's original prompts?
    arms_p = dict((lab.split(" ")[0], s) for s, lab in comparison_arms(p, "prompts"))
    (lo, ro), (lc, rc) = arm(arms_p["original"]), arm(arms_p["chained"])
    both = len(ro) > 0 and len(rc) > 0 and len(ro) == len(rc)
    out.append(Claim(
        "chained-prompts-worse", "Beyond the paper: when the prompts are the previous generation's text too "
        "(chained), errors compound and the real-test perplexity rises more than with the paper's original "
        "prompts (same seeds)", "(not in the paper; the paper prompts with the original blocks)",
        f"rise by generation {last}: original {_pct(_mean(ro))}, chained {_pct(_mean(rc))}",
        "fig-04-comparisons",
        judge(both and _mean(rc) > _mean(ro), visible=cmp_ok and both and finite(*ro, *rc)),
        extra={"original_rise_pct": 100 * _mean(ro), "chained_rise_pct": 100 * _mean(rc),
               "original_last_ppl": _mean(lo), "chained_last_ppl": _mean(lc), "seeds": len(cseeds)}))

    # the paper's ablation: no penalty vs 2.0 (or whichever two penalties ablation_penalties names)
    pens = sorted(float(x) for x in p["ablation_penalties"])
    arm_of = {float(x): s for x, (s, _) in zip(p["ablation_penalties"], comparison_arms(p, "penalty"))}
    lo_pen, hi_pen = pens[0], pens[-1]
    (l_lo, r_lo), (l_hi, r_hi) = arm(arm_of[lo_pen]), arm(arm_of[hi_pen])
    pair = len(pens) > 1 and len(l_lo) > 0 and len(l_hi) > 0 and len(l_lo) == len(l_hi)
    ratio_pen = _mean(l_hi) / _mean(l_lo) if pair and _mean(l_lo) > 0 else float("nan")
    out.append(Claim(
        "penalty-no-prevent", f"A repetition penalty does not prevent collapse: with penalty {hi_pen:g} the later "
        "models are still worse on the real test set than model 0, in every seed",
        "with the penalty the later models get worse",
        f"penalty {hi_pen:g}: {_pct(_mean(r_hi))} by generation {last} (per seed "
        f"{', '.join(_pct(x) for x in r_hi)})", "fig-04-comparisons",
        judge(len(r_hi) > 0 and bool((r_hi > 0).all()), visible=cmp_ok and hi_pen > 1 and len(r_hi) > 0
              and finite(*r_hi)),
        extra={"penalty": hi_pen, "rise_pct": 100 * _mean(r_hi), "last_ppl": _mean(l_hi),
               "distinct2_last": d2_last(arm_of[hi_pen])}))
    out.append(Claim(
        "penalty-worse", f"The paper's ablation: with penalty {hi_pen:g} the later models are worse than with "
        f"penalty {lo_pen:g} (criterion: higher test perplexity at the last generation, mean over the same seeds)",
        "perplexities roughly double with penalty 2.0",
        f"generation {last}: penalty {lo_pen:g} {_mean(l_lo):.1f}, penalty {hi_pen:g} {_mean(l_hi):.1f} "
        f"(ratio {ratio_pen:.2f})", "fig-04-comparisons",
        judge(finite(ratio_pen) and ratio_pen > 1, visible=cmp_ok and pair and finite(ratio_pen)),
        extra={"low_penalty": lo_pen, "high_penalty": hi_pen, "low_last_ppl": _mean(l_lo), "high_last_ppl": _mean(l_hi),
               "ratio": ratio_pen, "low_rise_pct": 100 * _mean(r_lo), "low_distinct2_last": d2_last(arm_of[lo_pen]),
               "high_distinct2_last": d2_last(arm_of[hi_pen]), "low_distinct2_gen1": d2_last(arm_of[lo_pen], 1),
               "high_distinct2_gen1": d2_last(arm_of[hi_pen], 1), "real_distinct2": first2,
               "seeds": len(cseeds)}))
    return out
