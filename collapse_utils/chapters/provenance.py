"""Study module of the chapter notebooks/06_provenance.md (see :mod:`collapse_utils.chapters`).

The algorithms -- the green-list watermark (:mod:`collapse_utils.models.watermark`), the crawl, the detectors and
the filters (:mod:`collapse_utils.models.provenance`) -- live in model modules.  This module holds what the page
needs: the parameters and inputs check, the run plan (every seed one job: generation 0 and the calibration
first, then each filtering arm through the engine; seeds side by side in worker processes), the result
object, tables, figures and the claims the run tests.

Chapter 04's data and pretrained base are reused: the same data and base parameters give the same cache
keys, and the base is looked up in chapter 04's cache folder (``<results>/04_language_models/_cache``),
pretrained there if it is missing.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from .claims import Claim, finite, judge
from ..core.engine import Loop
from ..core.params import ChapterParams, Checker, param
from ..models.lm import LOCAL_MODEL, Base
from ..models.lm import prepare_base as _lm_prepare_base
from ..models.lm import prepare_data as _lm_prepare_data
from ..models.lm_data import DATA_CONFIGS, TOKENIZE_MODES, LMData
from .plotting import finish, palette
from ..models.provenance import ARMS, DETECTORS, CrawlSettings, ProvenanceCollapse, pool_size, synthetic_shares

__all__ = [
    "ARM_LABELS",
    "Params",
    "ProvenanceResult",
    "arm_settings",
    "auc_table",
    "base_cache",
    "bookkeeping_table",
    "check_inputs",
    "claims",
    "cost_table",
    "default_loop",
    "describe_data",
    "experiment",
    "crawl_table",
    "filter_table",
    "lm_params",
    "plot_crawl",
    "plot_detectors",
    "plot_filtering",
    "plot_radioactivity",
    "plot_watermark",
    "prepare_base",
    "prepare_data",
    "roc_points",
    "run",
    "timing_table",
]

ARM_LABELS = {
    "none": "no filter",
    "watermark": "drop watermarked blocks",
    "detector": "detector-weighted resampling",
    "surplexity": "keep the most surprising",
    "oracle": "oracle: human blocks only",
}
#: one colour (index into the colour-blind palette) and marker per arm in every figure of the page
ARM_STYLE = {"none": (0, "o"), "watermark": (1, "s"), "detector": (2, "^"), "surplexity": (4, "D"), "oracle": (7, "v")}
DETECTOR_LABELS = {"watermark": "watermark z-score", "perplexity": "reference perplexity",
                   "classifier": "classifier (cheap features)"}
# fine-tuning must move model 0's test perplexity away from the base's by more than this share, or no
# comparison between generations means anything (as in chapter 04)
LEARNS = 0.01
# the watermark "detects" when its AUC on a full block reaches this
AUC_WATERMARK = 0.99
# the unwatermarked detector "detects" when its AUC on a full block reaches this
AUC_DETECTOR = 0.9
# a z-score above this is evidence beyond chance (Kirchenbauer et al.'s threshold); the radioactivity test
RADIO_Z = 4.0
# "as effective as the human-data baseline": within this share of the oracle's perplexity, or below it
MATCH = 0.01
# an AUC criterion can be tested when a detector without any power would meet it by chance in under 1 %
# of runs: the Mann-Whitney z of the criterion under the null must reach this (one-sided 1 %)
CHANCE_Z = 2.326
# the null of the z-scores (variance 1) can be tested when three standard errors of a sample variance,
# 3 * sqrt(2 / (n - 1)), stay below 1: then a variance of 0 or of 2 would fail the criterion
NULL_MIN_BLOCKS = 20


# --------------------------------------------------------------------------------------------
# parameters and inputs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Params(ChapterParams):
    """Chapter 06's parameters; the defaults are the ``cpu`` preset (the presets list what differs)."""

    chapter: ClassVar[str] = "06"
    seeds: int = param(2, "seeds (0, 1, ...); every arm runs on every seed", lo=1, hi=100)
    generations: int = param(4, "generations after model 0", lo=1, hi=100)
    final_share: float = param(0.5, "model-written share of the last crawl (0 at generation 0, linear in between)",
                               lo=0.0, hi=1.0, open_lo=True, open_hi=True)
    crawl_blocks: int = param(256, "blocks in every generation's crawl", lo=4, hi=1 << 20)
    calibration_blocks: int = param(128, "human blocks, and model-0 continuations, of the calibration set",
                                    lo=2, hi=1 << 20)
    probe_prompts: int = param(32, "test blocks every model continues without a watermark (diversity)",
                               lo=1, hi=1 << 20)
    arms: list = param(list(ARMS), "filtering arms ('none' is the baseline)", kind="any")
    gamma: float = param(0.25, "watermark: green share of the vocabulary", lo=0.0, hi=1.0, open_lo=True,
                         open_hi=True)
    delta: float = param(2.0, "watermark: bonus added to green tokens' scores", lo=0.0, hi=100.0)
    watermark_key: int = param(15485863, "watermark: the secret key", lo=0, hi=2**63 - 1)
    z_threshold: float = param(4.0, "a block is 'watermarked' above this z-score", lo=0.0, hi=100.0, open_lo=True)
    tokens: list = param([8, 16, 32, 64], "tokens the detectors read (the last is block_size)", kind="ints", lo=2)
    resample_bias: float = param(1.0, "detector resampling: weight (1 - p_machine) ** resample_bias", lo=0.0,
                                 hi=100.0)
    resample_repeats: int = param(3, "detector resampling: copies of a block available to the draw", lo=1, hi=100)
    data_config: str = param("wikitext-2-v1", "as chapter 04: wikitext-2-v1 (local) or wikitext-2-raw-v1",
                             choices=DATA_CONFIGS)
    model_name: str = param(LOCAL_MODEL, "as chapter 04: 'local-opt' or a Hugging Face name/folder", kind="any")
    drop_headings: bool = param(True, "as chapter 04: drop WikiText section-heading lines", choices=(True, False))
    tokenize: str = param("lines", "as chapter 04: lines or hf_clm", choices=TOKENIZE_MODES)
    vocab_size: int = param(2048, "local tokenizer: byte-level BPE vocabulary size", lo=300, hi=200_000)
    hidden_size: int = param(128, "local OPT: hidden size", lo=8, hi=8192)
    num_layers: int = param(2, "local OPT: decoder layers", lo=1, hi=64)
    num_heads: int = param(4, "local OPT: attention heads", lo=1, hi=128)
    base_blocks: int = param(8000, "local OPT: held-out training blocks used to pretrain the base", lo=0)
    base_epochs: int = param(2, "local OPT: pretraining epochs", lo=0, hi=1000)
    base_lr: float = param(0.003, "local OPT: pretraining learning rate", lo=0.0, hi=1.0, open_lo=True)
    valid_blocks: int = param(64, "validation blocks for checkpoint selection (0: the whole split)", lo=0)
    test_blocks: int = param(256, "test blocks for perplexity (0: the whole split)", lo=0)
    block_size: int = param(64, "tokens per block, and new tokens generated per block", lo=2, hi=1024)
    epochs: int = param(5, "fine-tuning epochs per generation", lo=1, hi=1000)
    lr: float = param(0.0003, "fine-tuning learning rate (AdamW, cosine schedule per epoch)", lo=0.0, hi=1.0,
                      open_lo=True)
    batch_size: int = param(16, "fine-tuning batch size", lo=1, hi=1 << 16)
    patience: int = param(2, "stop fine-tuning after this many epochs without improvement (0: never)", lo=0,
                          hi=1000)
    num_beams: int = param(5, "beam width of the generation", lo=1, hi=64)
    repetition_penalty: float = param(2.0, "repetition penalty of the generation", lo=0.0, hi=100.0, open_lo=True)
    gen_batch_size: int = param(32, "prompts per beam-search call", lo=1, hi=1 << 16)
    parallel_runs: int = param(2, "seeds side by side in worker processes (CPU only; wall time only)", lo=1, hi=64)
    threads_per_run: int = param(1, "torch CPU threads of each run (and of the base): part of the result", lo=1,
                                 hi=256)

    @classmethod
    def check(cls, values) -> None:
        """The declared checks and the two rules no declaration can say (arms, model_name), reported together;
        then the constraints between parameters."""
        c = Checker(values, cls.chapter)
        for name, s in cls.specs().items():
            c.spec(name, s)
        arms = values.get("arms")
        c.check(isinstance(arms, (list, tuple)) and len(arms) > 0 and len(set(arms)) == len(arms)
                and all(a in ARMS for a in arms) and "none" in arms,
                f"arms must be a list of distinct arms from {list(ARMS)} that includes 'none' (the baseline), "
                f"got {arms!r}")
        name = values.get("model_name")
        c.check(isinstance(name, str) and bool(name.strip()),
                f"model_name must be '{LOCAL_MODEL}' or a Hugging Face model name/folder, got {name!r}")
        if not c.problems:
            cls.cross_checks(c, values)
        c.done()

    @classmethod
    def cross_checks(cls, c: Checker, p) -> None:
        local = p["model_name"] == LOCAL_MODEL
        c.check(all(t <= p["block_size"] for t in p["tokens"]),
                f"every entry of tokens must be <= block_size ({p['block_size']}), got {p['tokens']!r}")
        c.check(sorted(set(p["tokens"])) == list(p["tokens"]) and p["tokens"][-1] == p["block_size"],
                f"tokens must be increasing and end with block_size ({p['block_size']}; the filters score whole "
                f"blocks), got {p['tokens']!r}")
        n_syn = int(round(p["final_share"] / p["generations"] * p["crawl_blocks"]))
        c.check(n_syn >= 1, f"final_share {p['final_share']} of {p['crawl_blocks']} crawl blocks over "
                f"{p['generations']} generations leaves no model-written block at generation 1")
        c.check(int(round(p["final_share"] * p["crawl_blocks"])) < p["crawl_blocks"],
                "the last crawl must keep at least one human block")
        c.check(not local or 1 <= round(p["gamma"] * p["vocab_size"]) <= p["vocab_size"] - 1,
                f"gamma {p['gamma']} of a {p['vocab_size']}-token vocabulary leaves no green or no red token")
        c.check(not local or p["data_config"] == "wikitext-2-v1",
                f"model_name='{LOCAL_MODEL}' trains its tokenizer on the offline wikitext-2-v1 training split; "
                "set data_config='wikitext-2-v1'")
        c.check(not local or p["hidden_size"] % p["num_heads"] == 0,
                f"hidden_size ({p['hidden_size']}) must be divisible by num_heads ({p['num_heads']})")
        c.check(not local or (p["base_blocks"] >= 1 and p["base_epochs"] >= 1),
                "a local OPT needs base_blocks >= 1 and base_epochs >= 1 to pretrain its base")
        c.check(p["test_blocks"] == 0 or p["probe_prompts"] <= p["test_blocks"],
                f"probe_prompts ({p['probe_prompts']}) cannot exceed test_blocks ({p['test_blocks']}): the probes "
                "are test blocks")
        c.check(local or p["block_size"] * 2 <= 2048, "block_size too long for OPT's 2048 positions")


def check_inputs(p: dict) -> None:
    """Before any compute: chapter 04's inputs check (text present and verified, a hub model reachable)."""
    from .language_models import check_inputs as lm_check

    lm_check(p)


def lm_params(p: dict) -> dict:
    """Chapter 04's parameter names for its data and base functions; the recursion's training pool is
    exactly as many blocks as the crawl consumes (the base and its cache key do not depend on it)."""
    keys = ("data_config", "model_name", "drop_headings", "tokenize", "vocab_size", "hidden_size", "num_layers",
            "num_heads", "base_blocks", "base_epochs", "base_lr", "valid_blocks", "test_blocks", "block_size",
            "batch_size", "threads_per_run")
    out = {k: p[k] for k in keys}
    out["train_blocks"] = pool_size(p["crawl_blocks"], p["generations"], p["calibration_blocks"])
    return out


def prepare_data(p: dict) -> LMData:
    """WikiText-2 blocks as in chapter 04, with a training pool large enough for every crawl."""
    data = _lm_prepare_data(lm_params(p))
    need = pool_size(p["crawl_blocks"], p["generations"], p["calibration_blocks"])
    if len(data.train) < need:
        from ..core.params import ParamError

        raise ParamError(f"the crawl needs {need} distinct human training blocks but this data configuration has "
                         f"{len(data.train)} available to the recursion; lower crawl_blocks, generations or "
                         "calibration_blocks")
    return data


def describe_data(data: LMData) -> str:
    """Chapter 04's description of the blocks, with what this chapter does with the training split's blocks:
    no recursion trains on a fixed real set here; they are the pool every crawl draws its human blocks from."""
    return data.describe().replace(
        "form the recursion's real training set",
        "form this chapter's pool of human blocks (the calibration set, the human part of every crawl and the "
        "prompts of every model-written block, each block used once)")


def base_cache() -> Path:
    """Chapter 04's cache of pretrained bases (shared: the same parameters give the same base)."""
    from ..core.results import results_root

    return results_root() / "04_language_models" / "_cache"


def prepare_base(p: dict, data: LMData, cache_root=None, progress: bool = True) -> Base:
    """Chapter 04's pretrained base, from its cache when present (pretrained and cached there otherwise)."""
    return _lm_prepare_base(lm_params(p), data, cache_root or base_cache(), progress=progress)


def arm_settings(p: dict, arm: str) -> CrawlSettings:
    return CrawlSettings(arm=arm, crawl_blocks=p["crawl_blocks"], generations=p["generations"],
                         final_share=p["final_share"], calibration_blocks=p["calibration_blocks"],
                         probe_prompts=p["probe_prompts"], tokens=tuple(p["tokens"]), gamma=p["gamma"],
                         delta=p["delta"], key=p["watermark_key"], z_threshold=p["z_threshold"],
                         resample_bias=p["resample_bias"], resample_repeats=p["resample_repeats"])


# --------------------------------------------------------------------------------------------
# the run plan
# --------------------------------------------------------------------------------------------
def experiment(p: Params, data: LMData, base: Base, arm: str = "watermark") -> ProvenanceCollapse:
    """The chapter's experiment for one filtering arm, from the parameters (what :func:`default_loop` uses)."""
    return ProvenanceCollapse(base, data, arm_settings(p, arm), epochs=p["epochs"], lr=p["lr"],
                              batch_size=p["batch_size"], patience=p["patience"], num_beams=p["num_beams"],
                              repetition_penalty=p["repetition_penalty"], gen_batch_size=p["gen_batch_size"])


def default_loop(p: Params) -> Loop:
    """The chapter's main recursion: chapter 04's language-model loop on a crawl that fills with model text,
    filtered by one arm (``run`` runs it once per arm of ``arms``); data and base from chapter 04's caches."""
    data = prepare_data(p)
    return Loop(experiment=experiment(p, data, prepare_base(p, data)), regime="replace",
                generations=p["generations"])


def _frames(obj: dict, seed: int, arm: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    books = pd.DataFrame([{"arm": arm, "seed": seed, "generation": g, **b} for g, b in sorted(obj["books"].items())])
    rows = []
    for g, sc in sorted(obj["scores"].items()):
        n = len(sc["label"])
        rows.append(pd.DataFrame({"arm": arm, "seed": seed, "generation": g, "block": np.arange(n),
                                  "label": sc["label"], "z": sc["z"], "perplexity_score": sc["perplexity_score"],
                                  "p_machine": sc["p_machine"], "copies_kept": sc["kept"]}))
    return books, (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame())


def _run_seed(job: dict) -> dict:
    """One seed: generation 0 and the calibration (shared by the arms), then every arm through the engine."""
    from ..core.engine import GenerationContext, run_recursion

    seed, loop, ckpt = job["seed"], job["loop"], job["ckpt"]

    def arm_experiment(arm: str) -> ProvenanceCollapse:
        return loop.experiment.with_arm(arm, model_dir=ckpt / "models", progress=job["progress"])

    first = arm_experiment("none")
    plan = first.plan(seed)
    real = first.data.train[plan.human[0]]
    ctx = GenerationContext(seed=seed, generation=0)
    model0 = first.fit(real, ctx)
    calib = first.calibration(model0, seed)
    metrics, books, scores = [], [], []
    timing = [pd.DataFrame(first.state["timing"]).assign(arm="generation 0 and calibration")]
    for arm in job["arms"]:
        exp = arm_experiment(arm)
        res = run_recursion(exp, real, loop.generations, loop.regime, seed=seed,
                            checkpoint_dir=ckpt / f"{arm}-seed{seed}" if job["checkpoints"] else None,
                            progress=job["progress"], columns={"arm": arm})
        metrics.append(res.metrics)
        b, s = _frames(exp.state, seed, arm)
        books.append(b)
        scores.append(s)
        timing.append(pd.DataFrame(exp.state["timing"]).assign(arm=arm))
    cal = pd.DataFrame([{"experiment": "watermark_calibration", "seed": seed, "generation": 0, "metric": k,
                         "value": float(v), "arm": "calibration"} for k, v in calib["metrics"].items()])
    zrows = pd.concat([pd.DataFrame({"seed": seed, "source": r["source"], "tokens": r["tokens"], "z": r["z"],
                                     "perplexity_score": r["perplexity_score"]}) for r in calib["rows"]],
                      ignore_index=True)
    return {"metrics": pd.concat([*metrics, cal], ignore_index=True), "books": pd.concat(books, ignore_index=True),
            "scores": pd.concat(scores, ignore_index=True), "calibration": zrows,
            "timing": pd.concat(timing, ignore_index=True).assign(seed=seed)}


@dataclass
class ProvenanceResult:
    """The chapter's result: tidy metrics (every arm, seed and generation, and the calibration), the
    filters' bookkeeping, every crawl block's detector scores, and the calibration blocks' scores."""

    base_ppl: float
    metrics: pd.DataFrame
    bookkeeping: pd.DataFrame
    scores: pd.DataFrame
    calibration: pd.DataFrame
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    timing: pd.DataFrame = field(default_factory=pd.DataFrame)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The extra tables written beside metrics.csv (timing.csv: the steps computed in this execution)."""
        return {"bookkeeping": self.bookkeeping, "crawl_scores": self.scores, "calibration_scores": self.calibration,
                "timing": self.timing}

    def wide(self) -> pd.DataFrame:
        return _wide(self.metrics)


def run(p: Params, loop: Loop | None = None, *, checkpoint_root: str | os.PathLike | None = None,
        progress: bool = True) -> ProvenanceResult:
    """The loop (default: :func:`default_loop`) once per arm of ``arms``, for every seed (``seeds`` jobs;
    ``parallel_runs`` of them side by side on a CPU).

    Each job fits generation 0 on the seed's first human crawl, writes and scores the calibration set,
    then runs the loop's experiment with each arm's filter (:meth:`ProvenanceCollapse.with_arm`) through
    ``run_recursion`` with the loop's regime and generations, checkpointed per arm and seed under
    ``checkpoint_root``.  Fitted models and beam-search outputs are cached by content in
    ``checkpoint_root/models`` (a temporary folder without a root), so the arms share generation 0 and a
    rerun recomputes nothing.  Every job computes with ``threads_per_run`` threads, so serial and parallel
    runs give identical numbers.
    """
    import tempfile

    import torch

    from ..core.parallel import run_jobs

    t0 = time.time()
    loop = default_loop(p) if loop is None else loop
    planned = getattr(getattr(loop.experiment, "settings", None), "generations", loop.generations)
    if loop.generations != planned:
        raise ValueError(f"the loop runs {loop.generations} generations but its experiment's crawl plan has "
                         f"{planned}; build both from the same number")
    workers = 1 if torch.cuda.is_available() else p["parallel_runs"]
    arms = [a for a in ARMS if a in p["arms"]]  # the book's order: baseline first, oracle last
    with tempfile.TemporaryDirectory(prefix="collapse-06-") as tmp:
        ckpt = Path(checkpoint_root) if checkpoint_root is not None else Path(tmp)
        jobs = [{"loop": loop, "seed": s, "arms": arms, "ckpt": ckpt, "checkpoints": checkpoint_root is not None,
                 "progress": progress} for s in range(p["seeds"])]
        out = run_jobs(_run_seed, jobs, workers=workers, threads_per_run=p["threads_per_run"], progress=progress,
                       desc="seeds", label=lambda j: f"seed {j['seed']}")
    metrics = pd.concat([o["metrics"] for o in out], ignore_index=True)
    metrics["regime"] = metrics["regime"].where(metrics["arm"] == "calibration", f"crawl({p['final_share']:g})")
    metrics["regime"] = metrics["regime"].fillna("none")
    metrics["experiment"] = metrics["experiment"].fillna("watermark_calibration")
    cols = ["experiment", "regime", "seed", "generation", "metric", "value", "arm"]
    metrics = metrics[cols + [c for c in metrics.columns if c not in cols]]
    return ProvenanceResult(float(loop.experiment.base.test_ppl), metrics,
                            pd.concat([o["books"] for o in out], ignore_index=True),
                            pd.concat([o["scores"] for o in out], ignore_index=True),
                            pd.concat([o["calibration"] for o in out], ignore_index=True),
                            seconds=time.time() - t0, info={"arms": arms, "workers": workers},
                            timing=pd.concat([o["timing"] for o in out], ignore_index=True))


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def _wide(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics.pivot_table(index=["arm", "seed", "generation"], columns="metric", values="value").reset_index()


def _arm(w: pd.DataFrame, arm: str, metric: str) -> pd.DataFrame:
    """seeds x generations of one metric of one arm (empty when absent)."""
    d = w[w["arm"] == arm]
    if d.empty or metric not in d:
        return pd.DataFrame()
    return d.pivot_table(index="seed", columns="generation", values=metric).sort_index(axis=1)


def crawl_table(p: dict) -> pd.DataFrame:
    """The crawl of each generation: its size and how many blocks a model wrote."""
    shares = synthetic_shares(p["generations"], p["final_share"])
    n = p["crawl_blocks"]
    return pd.DataFrame({"generation": range(len(shares)),
                         "model-written blocks": [int(round(s * n)) for s in shares],
                         "human blocks": [n - int(round(s * n)) for s in shares],
                         "model-written share": [int(round(s * n)) / n for s in shares]})


def auc_table(metrics: pd.DataFrame, generation: int = 1, arm: str = "none") -> pd.DataFrame:
    """AUC of every detector by the number of tokens it reads, on one generation's crawl of one arm
    (mean over seeds), beside the watermark's and the reference perplexity's AUC on the calibration set."""
    w = _wide(metrics)
    d = w[(w["arm"] == arm) & (w["generation"] == generation)].mean(numeric_only=True)
    c = w[w["arm"] == "calibration"].mean(numeric_only=True)
    toks = sorted({int(m.split("_T")[1]) for m in metrics["metric"].unique() if m.startswith("auc_watermark_T")})
    rows = []
    for t in toks:
        row = {"tokens read": t}
        for det in DETECTORS:
            row[f"{DETECTOR_LABELS[det]} (crawl, gen {generation})"] = d.get(f"auc_{det}_T{t}", np.nan)
        row["watermark (calibration)"] = c.get(f"cal_auc_watermark_T{t}", np.nan)
        row["reference perplexity (calibration)"] = c.get(f"cal_auc_perplexity_T{t}", np.nan)
        rows.append(row)
    return pd.DataFrame(rows).set_index("tokens read")


def cost_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """What the watermark costs and how it scores, on the calibration set (mean over seeds)."""
    c = _wide(metrics)
    c = c[c["arm"] == "calibration"].mean(numeric_only=True)
    rows = []
    for k, lab in (("human", "human blocks"), ("plain", "model 0, no watermark"),
                   ("watermarked", "model 0, watermarked")):
        rows.append({"text": lab,
                     "perplexity under model 0 (given the prompt)": c.get(f"cont_ppl_generator_{k}", np.nan),
                     "perplexity under the base (given the prompt)": c.get(f"cont_ppl_reference_{k}", np.nan),
                     "block perplexity under the base": c.get(f"block_ppl_reference_{k}", np.nan),
                     "mean z (whole block)": c.get(f"z_mean_{k}", np.nan),
                     "share flagged (z above threshold)": c.get(f"flagged_{k}", np.nan)})
    return pd.DataFrame(rows).set_index("text")


def filter_table(metrics: pd.DataFrame, arms=ARMS) -> pd.DataFrame:
    """Per arm: real-test perplexity at generation 0 and at the last generation (mean, min and max over
    seeds), the last training set's size and model-written share, and what the last model writes: the
    distinct-2 of its probe continuations and their green-token z-score (radioactivity)."""
    w = _wide(metrics)
    rows = []
    for arm in arms:
        t = _arm(w, arm, "test_ppl")
        if t.empty:
            continue
        last = t.columns[-1]
        d = w[(w["arm"] == arm) & (w["generation"] == last)]
        rows.append({"arm": ARM_LABELS[arm], "test ppl, gen 0": t.iloc[:, 0].mean(),
                     f"test ppl, gen {last}": t.iloc[:, -1].mean(), "min over seeds": t.iloc[:, -1].min(),
                     "max over seeds": t.iloc[:, -1].max(), "blocks trained on": d["n_kept"].mean(),
                     "model-written share kept": d["kept_synthetic_share"].mean(),
                     "probe distinct-2": d["probe_distinct_2"].mean(), "green-mass z (reading)": d["radio_mass_z"].mean(),
                     "green z, probe text": d["probe_green_z"].mean()})
    return pd.DataFrame(rows).set_index("arm")


def bookkeeping_table(books: pd.DataFrame) -> pd.DataFrame:
    """What each filter did to each crawl (mean over seeds): blocks in the crawl and written by a model,
    blocks kept (copies counted) and model-written ones among them, blocks dropped and human ones among
    them, distinct blocks kept and the most copies of one block."""
    cols = ["n_crawl", "n_crawl_synthetic", "n_kept", "n_kept_synthetic", "n_dropped", "n_dropped_human",
            "n_unique", "max_copies"]
    t = books.groupby(["arm", "generation"])[cols].mean().reset_index()
    t["arm"] = pd.Categorical(t["arm"], [a for a in ARMS if a in set(t["arm"])], ordered=True)
    return t.sort_values(["arm", "generation"]).set_index(["arm", "generation"]).round(1)


def timing_table(timing: pd.DataFrame) -> pd.DataFrame:
    """Where the compute went: per kind of step (fine-tunes, beam searches by purpose, scoring), how many
    were computed (cache hits are not counted), the blocks they handled, and their wall and CPU seconds,
    summed over seeds and arms.  CPU seconds do not grow when other programs share the machine."""
    if timing is None or timing.empty:
        return pd.DataFrame(columns=["steps", "blocks", "wall_s", "cpu_s", "cpu_ms_per_block"])
    kind = timing["step"].str.replace(r"^gen \d+: ", "", regex=True)
    t = timing.assign(kind=kind).groupby("kind").agg(steps=("step", "size"), blocks=("blocks", "sum"),
                                                      wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"))
    t["cpu_ms_per_block"] = 1000 * t["cpu_s"] / t["blocks"].clip(lower=1)
    return t.sort_values("cpu_s", ascending=False)


def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) of a score's ROC curve."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=float))
    return fpr, tpr


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def _arm_style(arm: str) -> dict:
    import seaborn as sns

    c, m = ARM_STYLE[arm]
    return {"color": sns.color_palette("colorblind", 10)[c], "marker": m, "ls": "--" if arm == "oracle" else "-",
            "label": ARM_LABELS[arm]}


def _roc_axes(ax, n_negative: float) -> None:
    """A log false-positive axis from one negative block (the smallest rate a run can show) to 1, and chance."""
    lo = 1.0 / max(float(n_negative), 1.0)
    xs = np.logspace(np.log10(lo), 0, 50)
    ax.plot(xs, xs, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.5, 1.0)
    ax.set_ylim(-0.02, 1.02)


#: three-panel figures: a width whose text stays readable when the page scales the figure to its column
WIDE = (11.5, 4.0)


def _legend_below(ax, handles=None, labels=None, ncol: int = 1, **kw):
    """A legend under a panel, outside the data (the saved figure grows to hold it)."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=ncol, **kw)


def _figure_legend(fig, axes, ncol: int = 3):
    """One legend under all panels, for entries the panels share (the arms, the detectors)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol)


def plot_crawl(metrics: pd.DataFrame, p: dict, base_ppl: float | None = None):
    """Section 1: the no-filter arm's real-test perplexity per generation (mean over seeds, bars from the
    smallest to the largest seed) and the crawl's model-written share."""
    import matplotlib.pyplot as plt

    w = _wide(metrics)
    t = _arm(w, "none", "test_ppl")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    g = np.asarray(t.columns, dtype=int)
    mean, lo, hi = t.mean().values, t.min().values, t.max().values
    c = palette(3)
    k = len(t)
    ax.errorbar(g, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, color=c[0],
                label=f"no filter: mean of {k} seed{'s' if k > 1 else ''}" + (" (bars: min–max)" if k > 1 else ""))
    if base_ppl is not None:
        ax.axhline(base_ppl, color="grey", ls="--", lw=1, label="base, before fine-tuning")
    ax.set_xticks(g)
    finish(ax, "generation", "perplexity on the real test set", "a crawl that fills with model text", legend=False)
    ax2 = ax.twinx()
    shares = synthetic_shares(p["generations"], p["final_share"])
    ax2.bar(np.arange(len(shares)), shares, color=c[1], alpha=0.25, width=0.5, label="model-written share of the crawl")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("model-written share of the crawl")
    ax2.grid(False)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    # the legend sits under the axes, where no marker can overprint it
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    fig.tight_layout()
    return fig


def plot_watermark(result: ProvenanceResult, p: dict):
    """Section 2, on the calibration set (seeds pooled): z-scores of a whole block against N(0, 1), the
    watermark's ROC curve for each number of tokens read, and AUC against tokens read for the watermark
    and the reference perplexity."""
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    cal = result.calibration
    toks = sorted(cal["tokens"].unique())
    fig, axes = plt.subplots(1, 3, figsize=WIDE)
    full = cal[cal["tokens"] == toks[-1]]
    names = {"human": "human blocks", "plain": "model 0, no watermark", "watermarked": "model 0, watermarked"}
    zs = full["z"].to_numpy()
    bins = np.linspace(min(-4.0, zs.min()), max(4.0, zs.max()), 50)
    for (src, lab), c in zip(names.items(), palette(3)):
        z = full.loc[full["source"] == src, "z"].to_numpy()
        axes[0].hist(z, bins=bins, density=True, alpha=0.5, color=c, label=f"{lab} ({len(z)})")
    xs = np.linspace(bins[0], bins[-1], 300)
    axes[0].plot(xs, norm.pdf(xs), color="k", lw=1, label="N(0, 1)")
    axes[0].axvline(p["z_threshold"], color="k", ls=":", lw=1, label=f"threshold z = {p['z_threshold']:g}")
    finish(axes[0], f"z-score of the first {toks[-1]} tokens", "density", "green tokens: z-scores", legend=False)
    _legend_below(axes[0])
    for t, c in zip(toks, palette(len(toks))):
        d = cal[(cal["tokens"] == t) & cal["source"].isin(["human", "watermarked"])]
        fpr, tpr = roc_points(d["source"] == "watermarked", d["z"])
        axes[1].plot(fpr, tpr, color=c, label=f"{t} tokens")
    _roc_axes(axes[1], (cal["source"] == "human").sum() / len(toks))
    finish(axes[1], "false-positive rate (log scale)", "true-positive rate", "watermark ROC (calibration)",
           legend=False)
    _legend_below(axes[1], ncol=2)
    tab = auc_table(result.metrics)
    for col, c, m in (("watermark (calibration)", palette(3)[0], "o"),
                      ("reference perplexity (calibration)", palette(3)[1], "s")):
        axes[2].plot(tab.index, tab[col], marker=m, color=c, label=col.replace(" (calibration)", ""))
    axes[2].set_xscale("log", base=2)
    axes[2].set_xticks(list(tab.index))
    axes[2].set_xticklabels([str(t) for t in tab.index])
    finish(axes[2], "tokens read", "AUC", "power against tokens read", legend=False)
    _legend_below(axes[2])
    fig.tight_layout()
    return fig


def plot_detectors(result: ProvenanceResult, p: dict):
    """Section 3: ROC curves of the three detectors on a whole block of the generation-1 crawl (seeds
    pooled), AUC against tokens read on that crawl, and the AUC on a whole block of each generation's
    crawl in the no-filter arm (means over seeds)."""
    import matplotlib.pyplot as plt

    sc = result.scores
    d = sc[(sc["arm"] == "none") & (sc["generation"] == 1)]
    fig, axes = plt.subplots(1, 3, figsize=WIDE)
    cols = dict(zip(DETECTORS, palette(3)))
    score_of = {"watermark": "z", "perplexity": "perplexity_score", "classifier": "p_machine"}
    for det in DETECTORS:
        if len(d) and d["label"].nunique() == 2:
            fpr, tpr = roc_points(d["label"], d[score_of[det]])
            axes[0].plot(fpr, tpr, color=cols[det], label=DETECTOR_LABELS[det])
    _roc_axes(axes[0], int((d["label"] == 0).sum()))
    finish(axes[0], "false-positive rate (log scale)", "true-positive rate",
           f"ROC, {p['block_size']} tokens, gen-1 crawl", legend=False)
    tab = auc_table(result.metrics)
    for det in DETECTORS:
        axes[1].plot(tab.index, tab[f"{DETECTOR_LABELS[det]} (crawl, gen 1)"], marker="o", color=cols[det],
                     label=DETECTOR_LABELS[det])
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(list(tab.index))
    axes[1].set_xticklabels([str(t) for t in tab.index])
    finish(axes[1], "tokens read", "AUC", "generation-1 crawl", legend=False)
    w = _wide(result.metrics)
    for det in DETECTORS:
        for t_read, ls in ((p["tokens"][0], "-"), (p["block_size"], ":")):
            t = _arm(w, "none", f"auc_{det}_T{t_read}")
            if not t.empty:
                axes[2].plot(t.columns, t.mean().values, marker="o", ms=4, ls=ls, color=cols[det])
    axes[2].plot([], [], color="grey", ls="-", label=f"right panel: {p['tokens'][0]} tokens read")
    axes[2].plot([], [], color="grey", ls=":", label=f"right panel: {p['block_size']} tokens read")
    axes[2].set_xticks(range(1, p["generations"] + 1))
    finish(axes[2], "generation of the crawl (no filter)", "AUC", "as the models drift", legend=False)
    fig.tight_layout()
    _figure_legend(fig, axes, ncol=3)
    return fig


def plot_filtering(metrics: pd.DataFrame, p: dict):
    """Section 4, every arm (means over seeds): real-test perplexity, the model-written share of what each
    generation is trained on, and the distinct-2 of what each generation's model writes for the probe
    prompts."""
    import matplotlib.pyplot as plt

    w = _wide(metrics)
    arms = [a for a in ARMS if a in set(w["arm"])]
    fig, axes = plt.subplots(1, 3, figsize=WIDE)
    for arm in arms:
        d = w[w["arm"] == arm].groupby("generation").mean(numeric_only=True)
        kw = dict(ms=5, **_arm_style(arm))
        axes[0].plot(d.index, d["test_ppl"], **kw)
        axes[1].plot(d.index, d["kept_synthetic_share"], **kw)
        axes[2].plot(d.index, d["probe_distinct_2"], **kw)
    for ax in axes:
        ax.set_xticks(range(p["generations"] + 1))
    finish(axes[0], "generation", "perplexity on the real test set", "real-test perplexity", legend=False)
    finish(axes[1], "generation", "model-written share of training set", "what each generation learns from",
           legend=False)
    finish(axes[2], "generation", "distinct-2 of the probe continuations", "what each generation writes",
           legend=False)
    fig.tight_layout()
    _figure_legend(fig, axes[:1], ncol=3)
    return fig


def plot_radioactivity(metrics: pd.DataFrame, p: dict):
    """Section 5, per generation and arm (means over seeds).  Left: reading mode -- the z-score of the extra
    probability the model puts on the key's green lists (beyond the base's) while reading the real test
    blocks, against other keys.  Right: the z-score of the green share of the distinct token pairs of the
    model's own unwatermarked probe continuations, each against gamma with its own number of pairs, beside
    ± 4 (the band a text that knows nothing of the key stays in)."""
    import matplotlib.pyplot as plt

    w = _wide(metrics)
    arms = [a for a in ARMS if a in set(w["arm"])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0))
    g = np.arange(p["generations"] + 1)
    for arm in arms:
        d = w[w["arm"] == arm].groupby("generation").mean(numeric_only=True)
        axes[0].plot(d.index, d["radio_mass_z"], ms=5, **_arm_style(arm))
        axes[1].plot(d.index, d["probe_green_z"], ms=5, **_arm_style(arm))
    for ax in axes:
        ax.axhline(RADIO_Z, color="k", lw=1, ls=":")
        ax.axhline(0, color="grey", lw=1)
        ax.set_xticks(g)
    axes[1].axhspan(-RADIO_Z, RADIO_Z, color="grey", alpha=0.15, lw=0)
    axes[0].plot([], [], color="k", lw=1, ls=":", label=f"z = {RADIO_Z:g} (the claims' threshold)")
    axes[1].fill_between([], [], [], color="grey", alpha=0.15, lw=0, label=f"within ± {RADIO_Z:g}: no evidence")
    finish(axes[0], "generation", "z of the green-list probability", "reading mode: the model reads real text",
           legend=False)
    finish(axes[1], "generation", "z of the green share of distinct pairs", "its own unwatermarked text",
           legend=False)
    fig.tight_layout()
    _figure_legend(fig, axes, ncol=3)
    return fig


# --------------------------------------------------------------------------------------------
# claims
# --------------------------------------------------------------------------------------------
def _mean(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.mean(x)) if x.size else float("nan")


def _last(t: pd.DataFrame) -> pd.Series:
    return t.iloc[:, -1] if not t.empty else pd.Series(dtype=float)


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %" if finite(x) else "n/a"


def chance_z(criterion: float, n_pos: float, n_neg: float) -> float:
    """How far an AUC of ``criterion`` lies above what a detector without power gives (AUC 0.5), in
    standard deviations of the AUC under that null (Mann-Whitney, normal approximation): a small z means a
    powerless detector often reaches the criterion by chance, so the run is too small to test it."""
    n1, n2 = float(n_pos), float(n_neg)
    if not finite(n1, n2) or n1 < 1 or n2 < 1:
        return float("nan")
    return (criterion - 0.5) * n1 * n2 / float(np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12))


def claims(result: ProvenanceResult, p: dict) -> list[Claim]:
    """What each section tests, with a verdict computed from this run (see the chapter's claims table)."""
    w = result.wide()
    T = int(p["block_size"])
    tmin = int(p["tokens"][0])
    last = int(p["generations"])
    seeds = int(w.loc[w["arm"] == "none", "seed"].nunique())

    def at(arm: str, metric: str, g: int) -> pd.Series:
        d = w[(w["arm"] == arm) & (w["generation"] == g)]
        return d.set_index("seed")[metric] if metric in d and len(d) else pd.Series(dtype=float)

    # -- 1: the crawl ----------------------------------------------------------------------
    tn = _arm(w, "none", "test_ppl")
    base = float(result.base_ppl)
    m0 = _mean(tn.iloc[:, 0]) if not tn.empty else float("nan")
    learns = finite(base, m0) and abs(m0 / base - 1) > LEARNS
    rise = (_last(tn) / tn.iloc[:, 0] - 1) if tn.shape[1] > 1 else pd.Series(dtype=float)
    crawl_visible = learns and last >= 2 and len(rise) > 0 and finite(*rise)
    moved = 100 * abs(m0 / base - 1) if finite(base, m0) else float("nan")
    learn_gate = (f"fine-tuning that moves model 0's real-test perplexity more than {100 * LEARNS:g} % from the "
                  f"base's (here {moved:.1f} %)")
    crawl_gate = f"{learn_gate} and at least 2 generations (here {last})"
    crawl_holds = len(rise) > 0 and bool((rise > 0).all())
    out = [Claim(
        "crawl-rises", f"A crawl whose model-written share rises to {100 * p['final_share']:g} %, trained on without "
        "a filter: real-test perplexity rises over the generations, in every seed",
        "collapse when models train on their own output; the paper asks for provenance",
        f"{m0:.1f} at generation 0 → {_mean(_last(tn)):.1f} at generation {last} ({_pct(_mean(rise))}; per seed "
        f"{', '.join(_pct(x) for x in rise)})", "fig-06-crawl", judge(crawl_holds, visible=crawl_visible),
        gate=crawl_gate,
        extra={"base_ppl": base, "model0_ppl": m0, "last_ppl": _mean(_last(tn)), "rise_pct": 100 * _mean(rise),
               "last_generation": last, "final_share_pct": 100 * p["final_share"], "seeds": seeds})]

    # -- 2: the watermark ------------------------------------------------------------------
    n_syn1, n_hum1 = _mean(at("none", "n_crawl_synthetic", 1)), _mean(at("none", "n_crawl", 1)) - _mean(
        at("none", "n_crawl_synthetic", 1))
    z_wm, z_det = chance_z(AUC_WATERMARK, n_syn1, n_hum1), chance_z(AUC_DETECTOR, n_syn1, n_hum1)

    def auc_gate(criterion: float, z: float) -> str:
        return (f"enough blocks in the generation-1 crawl that a detector without power reaches AUC {criterion:g} "
                f"by chance in under 1 % of runs (Mann–Whitney z at least {CHANCE_Z:.2f}; here {n_syn1:.0f} "
                f"model-written and {n_hum1:.0f} human blocks per seed, z = {z:.1f})")
    a_hi, a_lo = _mean(at("none", f"auc_watermark_T{T}", 1)), _mean(at("none", f"auc_watermark_T{tmin}", 1))
    out.append(Claim(
        "watermark-detects", f"A green-list watermark (gamma {p['gamma']:g}, delta {p['delta']:g}) in the beam search "
        f"is detected from the text alone: AUC at least {AUC_WATERMARK} on whole blocks of the generation-1 crawl, "
        "and no lower than on the fewest tokens read",
        "detectable from short spans; the evidence grows with the number of tokens",
        f"AUC {a_lo:.3f} at {tmin} tokens, {a_hi:.3f} at {T} tokens", "fig-06-watermark",
        judge(finite(a_hi, a_lo) and a_hi >= AUC_WATERMARK and a_hi >= a_lo,
              visible=finite(z_wm) and z_wm >= CHANCE_Z and finite(a_hi, a_lo)),
        gate=auc_gate(AUC_WATERMARK, z_wm),
        extra={"auc_full": a_hi, "auc_min": a_lo, "tokens": T, "tokens_min": tmin,
               "tpr": _mean(at("none", "watermark_tpr", 1)), "fpr": _mean(at("none", "watermark_fpr", 1)),
               "synthetic_blocks": n_syn1, "human_blocks": n_hum1}))

    cal = result.calibration
    zh = cal[(cal["tokens"] == T) & (cal["source"] == "human")]["z"].to_numpy(dtype=float)
    n = len(zh)
    zmean, zvar = (float(zh.mean()), float(zh.var(ddof=1))) if n > 1 else (float("nan"), float("nan"))
    se_var = np.sqrt(2 / (n - 1)) if n > 1 else float("nan")
    null_ok = finite(zmean, zvar) and abs(zmean) <= 3 / np.sqrt(n) and abs(zvar - 1) <= 3 * se_var
    out.append(Claim(
        "watermark-null", "Human text is scored as the null hypothesis says: z-scores of human blocks have mean 0 "
        "and variance 1 (criterion: both within three standard errors)", "z ≈ N(0, 1) without the watermark",
        f"{n} human blocks: mean {zmean:.2f}, variance {zvar:.2f}", "fig-06-watermark",
        judge(null_ok, visible=n >= NULL_MIN_BLOCKS),
        gate=f"at least {NULL_MIN_BLOCKS} human blocks, so that three standard errors of the variance stay below 1 "
             f"(here {n})", extra={"mean": zmean, "var": zvar, "blocks": n}))

    cw = w[w["arm"] == "calibration"].set_index("seed")
    ratio = (cw["cont_ppl_generator_watermarked"] / cw["cont_ppl_generator_plain"]) if len(cw) else pd.Series(
        dtype=float)
    ratio_ref = (cw["cont_ppl_reference_watermarked"] / cw["cont_ppl_reference_plain"]) if len(cw) else pd.Series(
        dtype=float)
    ppl_plain = _mean(cw.get("cont_ppl_generator_plain", []))
    ppl_wm = _mean(cw.get("cont_ppl_generator_watermarked", []))
    out.append(Claim(
        "watermark-cost", f"The watermark costs perplexity (at the one delta of this run, {p['delta']:g}): the "
        "watermarked continuations are less probable under the model that wrote them than its unwatermarked ones, "
        "in every seed; the size of the cost is reported, not judged",
        "a cost that grows with delta; beam search keeps it small (Kirchenbauer et al.; not tested here: one delta, "
        "no sampling to compare with)",
        f"perplexity ×{_mean(ratio):.2f} under model 0 ({ppl_plain:.1f} → {ppl_wm:.1f}), ×{_mean(ratio_ref):.2f} "
        "under the base", "cost table, section 2",
        judge(len(ratio) > 0 and bool((ratio > 1).all()), visible=len(ratio) > 0 and finite(*ratio)),
        gate="the calibration set's continuations written with and without the watermark",
        extra={"ratio": _mean(ratio), "ratio_reference": _mean(ratio_ref),
               "ppl_plain": ppl_plain, "ppl_watermarked": ppl_wm}))

    # -- 3: detection without a watermark -----------------------------------------------------
    ac, ap = _mean(at("none", f"auc_classifier_T{T}", 1)), _mean(at("none", f"auc_perplexity_T{T}", 1))
    out.append(Claim(
        "detector-detects", "Without a watermark, a logistic regression on cheap features (token losses under the "
        f"base model, distinct-1/2), trained on the calibration set, separates the generation-1 crawl: AUC at least "
        f"{AUC_DETECTOR} on whole blocks", "(beyond the paper)",
        f"classifier AUC {ac:.3f}, reference perplexity alone {ap:.3f} at {T} tokens", "fig-06-detectors",
        judge(finite(ac) and ac >= AUC_DETECTOR, visible=finite(z_det) and z_det >= CHANCE_Z and finite(ac)),
        gate=auc_gate(AUC_DETECTOR, z_det),
        extra={"auc": ac, "auc_perplexity": ap, "auc_min": _mean(at("none", f"auc_classifier_T{tmin}", 1)),
               "auc_perplexity_min": _mean(at("none", f"auc_perplexity_T{tmin}", 1))}))
    # drift: on the fewest tokens read, where the AUC is not pinned at 1
    a1, al = _mean(at("none", f"auc_classifier_T{tmin}", 1)), _mean(at("none", f"auc_classifier_T{tmin}", last))
    p1, pl = _mean(at("none", f"auc_perplexity_T{tmin}", 1)), _mean(at("none", f"auc_perplexity_T{tmin}", last))
    out.append(Claim(
        "detector-drifts", "The classifier trained on generation-0 text loses power as later generations drift: "
        f"reading {tmin} tokens, its AUC on the last crawl (no filter) is below its AUC on the generation-1 crawl",
        "(beyond the paper)",
        f"{tmin} tokens: classifier AUC {a1:.3f} at generation 1, {al:.3f} at generation {last}; reference "
        f"perplexity {p1:.3f} → {pl:.3f}", "fig-06-detectors",
        judge(finite(a1, al) and al < a1,
              visible=learns and last >= 2 and finite(z_det) and z_det >= CHANCE_Z and finite(a1, al)),
        gate=f"models that drift: {crawl_gate}; and {auc_gate(AUC_DETECTOR, z_det)}",
        extra={"auc_first": a1, "auc_last": al, "auc_perplexity_first": p1, "auc_perplexity_last": pl,
               "auc_full_last": _mean(at("none", f"auc_classifier_T{T}", last)), "tokens": tmin}))

    # -- 4: filtering inside the loop ---------------------------------------------------------
    lasts = {a: _last(_arm(w, a, "test_ppl")) for a in ARMS}
    none_last = lasts["none"]
    cmp_visible = crawl_visible and crawl_holds
    cmp_gate = (f"a collapse to prevent: the crawl's claim testable ({crawl_gate}) and real-test perplexity rising "
                "without a filter in every seed")

    def beats_none(arm: str) -> tuple[bool, bool]:
        x = lasts[arm]
        ok = len(x) > 0 and len(x) == len(none_last)
        return ok and bool((x < none_last.reindex(x.index)).all()), cmp_visible and ok and finite(*x)

    for arm, cid, paper in (
            ("oracle", "oracle-helps", "the paper: access to original human data"),
            ("watermark", "watermark-filter-helps", "provenance by watermark (the paper's recommendation)"),
            ("detector", "detector-filter-helps", "prevents collapse (Drayson et al. 2025)"),
            ("surplexity", "surplexity-helps", "mitigates collapse without knowing provenance (Gambetta et al.)")):
        holds, vis = beats_none(arm)
        out.append(Claim(
            cid, f"Filtering the crawl by '{ARM_LABELS[arm]}' leaves a better model than no filter: lower real-test "
            f"perplexity at the last generation, in every seed", paper,
            f"generation {last}: {_mean(lasts[arm]):.1f} against {_mean(none_last):.1f} without a filter"
            + (f" and {_mean(lasts['oracle']):.1f} for the oracle" if arm != "oracle" else ""), "fig-06-filtering",
            judge(holds, visible=vis), gate=cmp_gate + ("" if len(lasts[arm]) else f"; and the arm '{arm}' run"),
            extra={"last_ppl": _mean(lasts[arm]), "none_last_ppl": _mean(none_last),
                   "oracle_last_ppl": _mean(lasts["oracle"]),
                   "vs_none_pct": 100 * (_mean(lasts[arm]) / _mean(none_last) - 1) if len(lasts[arm]) else float("nan")}))
    det, orc, sur = _mean(lasts["detector"]), _mean(lasts["oracle"]), _mean(lasts["surplexity"])
    out.append(Claim(
        "detector-beats-oracle", "Detector-weighted resampling does better than training on the human blocks alone "
        "(lower mean real-test perplexity at the last generation)",
        "improves on purely human data when enough human data are present (Drayson et al. 2025)",
        f"generation {last}: {det:.1f} against the oracle's {orc:.1f}", "fig-06-filtering",
        judge(finite(det, orc) and det < orc, visible=cmp_visible and finite(det, orc)), gate=cmp_gate,
        extra={"last_ppl": det, "oracle_last_ppl": orc}))
    out.append(Claim(
        "surplexity-matches-oracle", "Keeping the most surprising blocks is as effective as the human-data baseline "
        f"(criterion: mean real-test perplexity at the last generation at most {100 * MATCH:g} % above the oracle's)",
        "at least as effective as human-data baselines (Gambetta et al.)",
        f"generation {last}: {sur:.1f} against the oracle's {orc:.1f}", "fig-06-filtering",
        judge(finite(sur, orc) and sur <= orc * (1 + MATCH), visible=cmp_visible and finite(sur, orc)),
        gate=cmp_gate, extra={"last_ppl": sur, "oracle_last_ppl": orc}))

    # -- 5: radioactivity ---------------------------------------------------------------------
    rz_none, rz_orc = at("none", "radio_mass_z", last), at("oracle", "radio_mass_z", last)
    radio_holds = len(rz_none) > 0 and bool((rz_none > RADIO_Z).all()) and (
        len(rz_orc) == 0 or bool((rz_orc < RADIO_Z).all()))
    out.append(Claim(
        "radioactive", "A model trained on a crawl with watermarked text is radioactive: reading real text, it puts "
        "more probability on the key's green lists than the base does, beyond what other keys show (z above "
        f"{RADIO_Z:g} in every seed), while the oracle's model does not",
        "watermarked training data make a model radioactive (Sander et al. 2024)",
        f"generation {last}: mean z {_mean(rz_none):.1f} without a filter, {_mean(rz_orc):.1f} for the oracle "
        f"(own unwatermarked text: green share {_mean(at('none', 'probe_green_share', last)):.3f} and "
        f"{_mean(at('oracle', 'probe_green_share', last)):.3f}; gamma {p['gamma']:g})", "fig-06-radioactivity",
        judge(radio_holds, visible=learns and len(rz_none) > 0 and finite(*rz_none)), gate=learn_gate,
        extra={"z_none": _mean(rz_none), "z_oracle": _mean(rz_orc),
               "z_watermark_arm": _mean(at("watermark", "radio_mass_z", last)),
               "z_detector_arm": _mean(at("detector", "radio_mass_z", last)),
               "mass_none": _mean(at("none", "radio_mass", last)),
               "probe_share_none": _mean(at("none", "probe_green_share", last)),
               "probe_share_oracle": _mean(at("oracle", "probe_green_share", last)),
               "probe_z_none": _mean(at("none", "probe_green_z", last)),
               "probe_z_oracle": _mean(at("oracle", "probe_green_z", last))}))
    return out
