"""Provenance inside the language-model loop of chapter 04: a crawl that fills with model text, detectors
that tell it apart, and filters that decide what the next generation is trained on.

**The crawl.**  Every generation ``g`` is trained on a *crawl* of ``crawl_blocks`` blocks: fresh human
blocks (WikiText-2 training blocks no earlier generation has seen) plus a share ``s_g`` of blocks written by
the previous generation's model -- beam-search continuations of other fresh human blocks, exactly as in
chapter 04, and watermarked (:mod:`collapse_utils.models.watermark`).  The share rises linearly from 0 at
generation 0 to ``final_share`` at the last generation (:func:`synthetic_shares`).  Which blocks are human,
which are prompts, and which form the calibration set is fixed per seed in advance (:func:`crawl_plan`).

**The calibration set** (per seed, written by the generation-0 model): ``calibration_blocks`` human blocks
and the continuations of as many other human blocks, with and without the watermark.  It measures the
watermark's power and cost, and trains the unwatermarked detector (:func:`fit_detector`): a logistic
regression on cheap features of a block -- its token losses under a *reference model* (the pretrained
base, which never sees generated text) and its distinct-1/2 (:func:`detector_features`).

**The arms** (:data:`ARMS`), one :class:`ProvenanceCollapse` run per arm and seed, all on the same crawl
plan; generation 0 (human data only) is shared by every arm:

``none``        train on the whole crawl;
``watermark``   drop every block whose watermark z-score exceeds ``z_threshold``;
``detector``    importance resampling with the detector (Drayson et al. 2025): weights
                ``(1 - p_machine) ** resample_bias``, every block available up to ``resample_repeats``
                times, as many blocks drawn without replacement as the crawl has;
``surplexity``  keep the blocks the previous generation's model finds most surprising (highest loss;
                Gambetta et al.), as many as the oracle keeps;
``oracle``      keep exactly the human blocks (provenance known perfectly).

Everything that costs compute is cached by content (fitted models by :class:`~collapse_utils.models.lm.LMCollapse`,
beam-search outputs and the calibration beside the model that made them), so arms and reruns share it.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..core.engine import GenerationContext, source_hash
from .lm import Base, FittedLM, LMCollapse
from .lm_data import LMData, diversity
from .lm_train import (generate_continuations, get_accelerator, load_model, perplexity_stats, sequence_nll,
                       token_nll)
from ..core.seeding import make_rng
from ..core.storage import dump_state, fingerprint, load_state
from .watermark import GreenList, WatermarkLogitsProcessor, green_share_unique, z_scores

__all__ = ["ARMS", "CrawlPlan", "CrawlSettings", "ProvenanceCollapse", "apply_filter", "auc", "continuation_nll",
           "crawl_plan", "detector_features", "filter_bookkeeping", "kept_blocks", "fit_detector", "green_mass", "green_mass_matrix", "most_surprising", "synthetic_shares", "token_nll",
           "watermark_keep", "weighted_resample"]

EXPERIMENT = "opt_crawl"
ARMS = ("none", "watermark", "detector", "surplexity", "oracle")
DETECTORS = ("watermark", "perplexity", "classifier")
#: random streams of this module (integers beside the engine's named ones)
CRAWL_STREAM, RESAMPLE_STREAM = 16, 17
FEATURES = ("mean token loss", "sd of token loss", "max token loss", "distinct-1", "distinct-2")


# --------------------------------------------------------------------------------------------
# the crawl plan
# --------------------------------------------------------------------------------------------
def synthetic_shares(generations: int, final_share: float) -> list[float]:
    """The share of model-written blocks in the crawl of each generation: 0 at generation 0, rising
    linearly to ``final_share`` at the last generation."""
    if int(generations) < 1:
        raise ValueError(f"generations must be >= 1, got {generations!r}")
    if not 0.0 < float(final_share) < 1.0:
        raise ValueError(f"final_share must lie strictly between 0 and 1, got {final_share!r}")
    return [float(final_share) * g / int(generations) for g in range(int(generations) + 1)]


@dataclass
class CrawlPlan:
    """Indices into the pool of human blocks, fixed per seed: the calibration set, and for every
    generation the human blocks of its crawl and the prompts the previous model continues."""

    seed: int
    calib_human: np.ndarray
    calib_prompts: np.ndarray
    human: list[np.ndarray]
    prompts: list[np.ndarray]

    def n_synthetic(self, g: int) -> int:
        return len(self.prompts[g])


def pool_size(crawl_blocks: int, generations: int, calibration_blocks: int) -> int:
    """How many distinct human blocks a run consumes: a crawl per generation and the calibration set."""
    return int(crawl_blocks) * (int(generations) + 1) + 2 * int(calibration_blocks)


def crawl_plan(n_pool: int, crawl_blocks: int, generations: int, final_share: float, calibration_blocks: int,
               seed: int) -> CrawlPlan:
    """Draw (from ``seed`` alone) which pool blocks play which part; no block plays two parts."""
    need = pool_size(crawl_blocks, generations, calibration_blocks)
    if n_pool < need:
        raise ValueError(f"the crawl needs {need} human blocks ({crawl_blocks} per generation for "
                         f"{generations + 1} generations and 2 x {calibration_blocks} for calibration) but the pool "
                         f"has {n_pool}; lower crawl_blocks, generations or calibration_blocks")
    perm = make_rng(seed, 0, CRAWL_STREAM).permutation(n_pool)
    m = int(calibration_blocks)
    human, prompts = [], []
    for g, share in enumerate(synthetic_shares(generations, final_share)):
        chunk = perm[2 * m + g * crawl_blocks: 2 * m + (g + 1) * crawl_blocks]
        n_syn = int(round(share * crawl_blocks))
        human.append(np.sort(chunk[: crawl_blocks - n_syn]))
        prompts.append(np.sort(chunk[crawl_blocks - n_syn:]))
    return CrawlPlan(int(seed), np.sort(perm[:m]), np.sort(perm[m: 2 * m]), human, prompts)


# --------------------------------------------------------------------------------------------
# scores: token losses, features, the detector, AUC
# --------------------------------------------------------------------------------------------
def green_mass_matrix(model, blocks: torch.Tensor, vocab_size: int, batch_size: int = 64):
    """What a model predicts after every token of ``blocks``, summed by the token it has just read:
    (distinct previous tokens, matrix distinct-previous x vocabulary of summed next-token probabilities,
    number of positions)."""
    dev = get_accelerator().device
    model = model.to(dev).eval()
    prev = blocks[:, :-1].long()
    uniq, inv = torch.unique(prev.reshape(-1), return_inverse=True)
    inv = inv.reshape(prev.shape)
    mass = torch.zeros(len(uniq), vocab_size, dtype=torch.float32, device=dev)
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            b = blocks[i:i + batch_size].long().to(dev)
            probs = torch.softmax(model(input_ids=b).logits[:, :-1].float(), dim=-1)
            if probs.shape[-1] != vocab_size:
                raise ValueError(f"the model scores {probs.shape[-1]} tokens but the watermark has {vocab_size}")
            mass.index_add_(0, inv[i:i + batch_size].reshape(-1).to(dev), probs.reshape(-1, vocab_size))
    return uniq.to(dev), mass, int(prev.numel())


def _green_sum(mass: torch.Tensor, prev: torch.Tensor, g: GreenList) -> float:
    """``(mass * g.mask(prev)).sum()``, with the green-list arithmetic in 32-bit integers (twice as fast)."""
    rank = g.rank.to(device=mass.device, dtype=torch.int32)
    shift = g.shift.to(device=mass.device, dtype=torch.int32)[prev]
    green = (rank.unsqueeze(0) + shift.unsqueeze(1)) % g.vocab_size < g.n_green
    return float((mass * green).sum(dtype=torch.float64))


def green_mass(matrix, green: GreenList, reference=None, other_keys: int = 30) -> dict[str, float]:
    """Radioactivity in reading mode, from probabilities: the probability a model puts on the green list
    after every token of a real (human) text, averaged over positions (``matrix`` from
    :func:`green_mass_matrix`).

    For one key that average can differ from ``gamma`` by chance -- peaked predictions fall wholly in or out
    of a list -- and similar models share the deviation.  So the statistic is the model's mass *minus a
    reference model's* (one that never read watermarked text, e.g. the base, on the same text), and its null
    distribution is the same difference for ``other_keys`` other keys, which no training text carried:
    ``z`` = (difference for the key - mean over other keys) / their standard deviation, and ``p`` the share
    of keys, the key included, whose difference is at least the key's (an exact rank test when the model
    and the reference do not depend on the key).
    """
    uniq, mass, n = matrix
    if reference is not None:
        r_uniq, r_mass, r_n = reference
        if r_n != n or not torch.equal(r_uniq, uniq):
            raise ValueError("the reference must have read the same text")
        mass = mass - r_mass

    def stat(g: GreenList) -> float:
        return _green_sum(mass, uniq, g) / n

    keys = np.random.default_rng(green.params.key).integers(0, 2**62, size=other_keys + 1)
    keys = [int(k) for k in keys if int(k) != green.params.key][:other_keys]
    s = stat(green)
    null = np.array([stat(GreenList(green.vocab_size, green.gamma, k)) for k in keys])
    sd = float(null.std(ddof=1)) if len(null) > 1 else float("nan")
    return {"mass": s, "mass_null_mean": float(null.mean()), "mass_null_sd": sd,
            "mass_z": (s - float(null.mean())) / sd if sd > 0 else float("nan"),
            "mass_p": (1 + int((null >= s).sum())) / (1 + len(null))}


def continuation_nll(model, prompts: torch.Tensor, continuations: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Mean loss of each continuation's tokens *given its prompt* (the perplexity a reader with this model
    assigns to what was written after the prompt), one value per row."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts for {len(continuations)} continuations")
    dev = get_accelerator().device
    model = model.to(dev).eval()
    p = prompts.shape[1]
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            x = torch.cat([prompts[i:i + batch_size], continuations[i:i + batch_size]], dim=1).long().to(dev)
            logits = model(input_ids=x).logits[:, p - 1:-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, p:], reduction="none")
            out.append(nll.mean(dim=1).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def _distinct(rows: np.ndarray, n: int) -> np.ndarray:
    if rows.shape[1] < n:
        return np.ones(len(rows))
    grams = np.stack([rows[:, i: rows.shape[1] - n + 1 + i] for i in range(n)], axis=-1)
    return np.array([len({tuple(g) for g in r}) / len(r) for r in grams])


def detector_features(blocks: torch.Tensor, nll: np.ndarray, tokens: int) -> np.ndarray:
    """Cheap features of the first ``tokens`` tokens of every block (:data:`FEATURES`): the mean, standard
    deviation and maximum of their ``tokens - 1`` token losses under the reference model (``nll`` from
    :func:`token_nll`), and the shares of distinct tokens and distinct token pairs."""
    b = np.asarray(torch.as_tensor(blocks))[:, :tokens]
    x = np.asarray(nll)[:, : tokens - 1]
    if len(b) != len(x) or b.shape[1] != tokens or x.shape[1] != tokens - 1:
        raise ValueError(f"need {tokens} tokens and {tokens - 1} losses per block, got {b.shape} and {x.shape}")
    return np.column_stack([x.mean(1), x.std(1), x.max(1), _distinct(b, 1), _distinct(b, 2)])


def fit_detector(features: np.ndarray, labels: np.ndarray):
    """The unwatermarked detector: standardised features, logistic regression (1 = written by a model).
    ``predict_proba(x)[:, 1]`` is its probability that a block is machine-written."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels).astype(int)
    if set(np.unique(y)) != {0, 1}:
        raise ValueError("the detector needs human (0) and machine (1) examples")
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(features, y)


def detector_state(detector) -> dict:
    """A fitted :func:`fit_detector` as plain values and arrays (its settings and fitted attributes), for a
    state file; :func:`detector_from_state` rebuilds it, predicting exactly as before, without a pickle."""
    (_, scaler), (_, logistic) = detector.steps
    return {"scaler": dict(vars(scaler)), "logistic": dict(vars(logistic))}


def detector_from_state(state: dict):
    """The detector :func:`detector_state` described (settings and fitted attributes checked by name)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def rebuild(cls, attrs):
        params = set(cls().get_params())
        if not isinstance(attrs, dict) or not params <= set(attrs) or not all(
                isinstance(k, str) and (k in params or re.fullmatch(r"[a-z][a-z0-9_]*_", k)) for k in attrs):
            raise ValueError(f"not a stored {cls.__name__}")
        est = cls(**{k: attrs[k] for k in params})
        for k in set(attrs) - params:
            setattr(est, k, attrs[k])
        return est

    if not isinstance(state, dict) or set(state) != {"scaler", "logistic"}:
        raise ValueError("not a stored detector")
    return make_pipeline(rebuild(StandardScaler, state["scaler"]), rebuild(LogisticRegression, state["logistic"]))


def auc(labels, scores) -> float:
    """Area under the ROC curve (machine = 1 is the positive class; higher score = more machine-like);
    nan when one class is missing."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=float)
    if len(np.unique(y)) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


# --------------------------------------------------------------------------------------------
# the filters (pure functions on scores: indices of the blocks kept, and what happened)
# --------------------------------------------------------------------------------------------
def watermark_keep(z: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the blocks whose watermark z-score is at most ``threshold`` (the others are dropped)."""
    return np.flatnonzero(~(np.asarray(z, dtype=float) > float(threshold)))


def weighted_resample(p_machine: np.ndarray, n_out: int, bias: float, repeats: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Drayson et al.'s importance resampling: every block is available ``repeats`` times, each copy with
    weight ``(1 - p_machine) ** bias``; ``n_out`` copies are drawn without replacement.  Returns the
    (sorted) block index of every copy drawn -- a block may appear up to ``repeats`` times."""
    p = np.asarray(p_machine, dtype=float)
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("p_machine must lie in [0, 1]")
    if int(repeats) < 1 or float(bias) < 0:
        raise ValueError(f"repeats must be >= 1 and bias >= 0, got {repeats!r}, {bias!r}")
    w = (1.0 - p) ** float(bias)
    pool = np.repeat(np.arange(len(p)), int(repeats))
    wp = w[pool]
    if int(n_out) > int(np.count_nonzero(wp)):
        raise ValueError(f"cannot draw {n_out} copies: only {np.count_nonzero(wp)} have a positive weight")
    idx = rng.choice(pool, size=int(n_out), replace=False, p=wp / wp.sum())
    return np.sort(idx)


def most_surprising(nll: np.ndarray, k: int) -> np.ndarray:
    """Indices (sorted) of the ``k`` blocks with the highest mean token loss (ties: the earlier block)."""
    nll = np.asarray(nll, dtype=float)
    if not 0 <= int(k) <= len(nll):
        raise ValueError(f"k must lie in [0, {len(nll)}], got {k!r}")
    order = np.argsort(-nll, kind="stable")
    return np.sort(order[: int(k)])


def kept_blocks(arm: str, labels: np.ndarray, *, z=None, z_threshold: float = 4.0, p_machine=None,
                surprise=None, bias: float = 1.0, repeats: int = 3, rng=None) -> np.ndarray:
    """The blocks of a crawl that an arm trains on (indices; a block drawn twice appears twice).
    ``labels``: 1 = model-written, known only to the oracle; the other filters see only their scores."""
    labels = np.asarray(labels).astype(int)
    if arm == "none":          # the whole crawl
        return np.arange(len(labels))
    if arm == "oracle":        # exactly the human blocks
        return np.flatnonzero(labels == 0)
    if arm == "watermark":     # drop every block whose z-score says "watermarked"
        if z is None:
            raise ValueError("the watermark filter needs z-scores")
        return watermark_keep(z, z_threshold)
    if arm == "detector":      # Drayson et al.: resample with weights (1 - p_machine) ** bias
        if p_machine is None or rng is None:
            raise ValueError("the detector's resampling needs p_machine and a random generator")
        return weighted_resample(p_machine, len(labels), bias, repeats, rng)
    if arm == "surplexity":    # Gambetta et al.: the most surprising blocks, as many as the crawl has human ones
        if surprise is None:
            raise ValueError("the surplexity filter needs the previous model's losses")
        return most_surprising(surprise, int((labels == 0).sum()))
    raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")


def filter_bookkeeping(labels: np.ndarray, idx: np.ndarray) -> dict:
    """What a filter did to a crawl: crawl size and synthetic count, blocks kept (copies counted),
    model-written blocks kept, blocks dropped and human blocks among them, distinct blocks kept and the
    most copies of one block."""
    labels = np.asarray(labels).astype(int)
    n = len(labels)
    n_human = int((labels == 0).sum())
    uniq, copies = np.unique(idx, return_counts=True)
    dropped = np.setdiff1d(np.arange(n), uniq)
    book = {"n_crawl": n, "n_crawl_synthetic": int(n - n_human), "n_kept": int(len(idx)),
            "n_kept_synthetic": int(labels[idx].sum()), "n_dropped": int(len(dropped)),
            "n_dropped_human": int((labels[dropped] == 0).sum()), "n_unique": int(len(uniq)),
            "max_copies": int(copies.max()) if len(copies) else 0}
    book["kept_synthetic_share"] = book["n_kept_synthetic"] / book["n_kept"] if book["n_kept"] else float("nan")
    return book


def apply_filter(arm: str, labels: np.ndarray, **scores) -> tuple[np.ndarray, dict]:
    """The training set an arm keeps from a crawl (:func:`kept_blocks`) and its bookkeeping
    (:func:`filter_bookkeeping`); a filter that keeps nothing is an error."""
    idx = kept_blocks(arm, labels, **scores)
    book = filter_bookkeeping(labels, idx)
    if len(idx) == 0:
        raise RuntimeError(f"the {arm} filter dropped every block of the crawl")
    return idx, book


# --------------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrawlSettings:
    """What a crawl run needs besides chapter 04's training and generation settings."""

    arm: str
    crawl_blocks: int
    generations: int
    final_share: float
    calibration_blocks: int
    probe_prompts: int
    tokens: tuple[int, ...]
    gamma: float = 0.25
    delta: float = 2.0
    key: int = 15485863
    z_threshold: float = 4.0
    resample_bias: float = 1.0
    resample_repeats: int = 3

    def __post_init__(self):
        if self.arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {self.arm!r}")


@functools.lru_cache(maxsize=1)
def _code_key() -> str:
    """Beam-search outputs depend on the training/generation code and on the watermark's two classes
    (read once per process, so that an edit of the sources during a run cannot split its caches)."""
    from . import lm_train

    return source_hash(lm_train, GreenList, WatermarkLogitsProcessor)


@functools.lru_cache(maxsize=1)
def _module_key() -> str:
    return source_hash(sys.modules[__name__])


class ProvenanceCollapse(LMCollapse):
    """One arm of the crawl for one seed, as an engine experiment (``run_recursion`` with the ``replace``
    regime: what :meth:`sample` returns -- the filtered crawl -- is the next training set).

    fit       = chapter 04's fine-tune of the base (cached by content, so generation 0 is shared by arms);
    sample    = write the next crawl's synthetic blocks (watermarked beam search of its prompts), score the
                crawl with every detector, filter it by the arm's rule;
    evaluate  = real-test perplexity; radioactivity in reading mode (:func:`green_mass`: the probability
                the model puts on the key's green lists while reading the real test blocks, beyond the
                base's, against other keys); what the filter did; the detectors' AUCs on this
                generation's crawl; and the model's own unwatermarked continuations of ``probe_prompts``
                test blocks: their diversity and their share of green tokens.
    """

    name = EXPERIMENT

    def __init__(self, base: Base, data: LMData, settings: CrawlSettings, epochs: int, lr: float, batch_size: int,
                 num_beams: int, repetition_penalty: float, gen_batch_size: int,
                 model_dir: str | os.PathLike | None = None, progress: bool = False, patience: int = 0):
        super().__init__(base, data, epochs, lr, batch_size, num_beams, repetition_penalty, gen_batch_size,
                         len(data.train), 0, "." if model_dir is None else model_dir, progress=progress,
                         patience=patience)
        self.model_dir = None if model_dir is None else Path(model_dir)  # set by with_arm before a run
        self.settings = settings
        self.state = {"gen0_path": None, "fits": {}, "books": {}, "pending": {}, "scores": {}, "examples": {},
                      "timing": []}
        self._models: dict[str, object] = {}
        self._green = None
        self._plan = None
        self._calib = None
        self._ref_mass = None

    def with_arm(self, arm: str, model_dir: str | os.PathLike | None = None,
                 progress: bool | None = None) -> ProvenanceCollapse:
        """A fresh experiment like this one (same class, base, data, crawl, watermark, training and decoding)
        that filters its crawls by ``arm``; ``model_dir`` (where fitted models are cached) and ``progress``
        replace this one's when given."""
        return type(self)(self.base, self.data, replace(self.settings, arm=arm), self.epochs, self.lr,
                          self.batch_size, self.num_beams, self.repetition_penalty, self.gen_batch_size,
                          self.model_dir if model_dir is None else model_dir,
                          progress=self.progress if progress is None else progress, patience=self.patience)

    # -- helpers -------------------------------------------------------------------------------
    @contextmanager
    def timed(self, step: str, blocks: int, generation: int = -1):
        """Record the wall and CPU seconds of a step (the CPU seconds do not grow when others share the
        machine, so they size the presets); only steps actually computed are recorded, not cache hits."""
        w, c = time.perf_counter(), time.process_time()
        yield
        self.state["timing"].append({"step": step, "generation": generation, "blocks": blocks,
                                     "wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c})

    @property
    def green(self) -> GreenList:
        if self._green is None:
            from transformers import AutoConfig

            vocab = AutoConfig.from_pretrained(self.base.path).vocab_size
            self._green = GreenList(int(vocab), self.settings.gamma, self.settings.key)
        return self._green

    def plan(self, seed: int) -> CrawlPlan:
        if self._plan is None or self._plan.seed != seed:
            s = self.settings
            self._plan = crawl_plan(len(self.data.train), s.crawl_blocks, s.generations, s.final_share,
                                    s.calibration_blocks, seed)
        return self._plan

    def model(self, path: str):
        """A loaded model (the reference base and the latest two others stay loaded)."""
        if path not in self._models:
            keep = {self.base.path}
            for old in [k for k in self._models if k not in keep][:-1]:
                del self._models[old]
            self._models[path] = load_model(path)
        return self._models[path]

    def generate(self, model: FittedLM | str, prompts: torch.Tensor, watermark: bool, desc: str = "beam search"):
        """Beam-search continuations of ``prompts`` (watermarked or not), cached beside the model."""
        from ..core.parallel import thread_tag
        from ..core.storage import cached_tensor

        path = model.path if isinstance(model, FittedLM) else str(model)
        s = self.settings
        wm = {"gamma": s.gamma, "delta": s.delta, "key": s.key} if watermark else None
        key = fingerprint({"beams": self.num_beams, "penalty": self.repetition_penalty, "new": self.data.block_size,
                     "watermark": wm, "code": _code_key(), "threads": thread_tag()}, prompts)
        cached = Path(path) / f"provenance-{key}.pt"
        proc = [WatermarkLogitsProcessor(self.green, s.delta)] if watermark else None

        def compute() -> torch.Tensor:
            with self.timed(desc, len(prompts)):
                return generate_continuations(self.model(path), prompts, self.data.block_size, self.num_beams,
                                              self.repetition_penalty, self.gen_batch_size, progress=self.progress,
                                              desc=desc, logits_processor=proc)

        return cached_tensor(cached, (len(prompts), self.data.block_size), compute, "cached beam-search continuations")

    # -- calibration (generation 0, shared by every arm of a seed) ----------------------------------
    def calibration(self, model0: FittedLM, seed: int) -> dict:
        """The generation-0 model's calibration set, its scores and the fitted detectors (cached)."""
        from ..core.parallel import thread_tag
        from ..core.storage import atomic_write_bytes, read_cache

        if self._calib is not None and self._calib["model"] == model0.path:
            return self._calib
        s, plan, pool = self.settings, self.plan(seed), self.data.train
        human, prompts = pool[torch.as_tensor(plan.calib_human)], pool[torch.as_tensor(plan.calib_prompts)]
        key = fingerprint({"s": [s.gamma, s.delta, s.key, list(s.tokens), s.z_threshold], "beams": self.num_beams,
                     "penalty": self.repetition_penalty, "code": _module_key(),
                     "gen": _code_key(), "threads": thread_tag(), "base": self.base.fingerprint}, human, prompts)
        cached = Path(model0.path) / f"calibration-{key}.npz"  # a state file: read back without running code
        hit = read_cache(cached, self._read_calibration, "cached calibration")
        if hit is None:
            hit = self._calibrate(model0, human, prompts)
            atomic_write_bytes(cached, dump_state({**hit, "detectors": {t: detector_state(d)
                                                                        for t, d in hit["detectors"].items()}}))
        self._calib = hit
        return hit

    @staticmethod
    def _read_calibration(path: Path) -> dict:
        hit = load_state(path)
        if (not isinstance(hit, dict) or set(hit) != {"model", "metrics", "detectors", "rows"}
                or not isinstance(hit["model"], str) or not isinstance(hit["metrics"], dict)
                or not isinstance(hit["detectors"], dict) or not isinstance(hit["rows"], list)):
            raise ValueError("not a calibration of this code")
        return {**hit, "detectors": {t: detector_from_state(d) for t, d in hit["detectors"].items()}}

    def _calibrate(self, model0: FittedLM, human: torch.Tensor, prompts: torch.Tensor) -> dict:
        s = self.settings
        wm = self.generate(model0, prompts, True, "calibration: watermarked")
        plain = self.generate(model0, prompts, False, "calibration: plain")
        ref, gen = self.model(self.base.path), self.model(model0.path)
        nll = {"human": token_nll(ref, human), "watermarked": token_nll(ref, wm), "plain": token_nll(ref, plain)}
        blocks = {"human": human, "watermarked": wm, "plain": plain}
        metrics, rows, detectors = {}, [], {}
        y = np.r_[np.zeros(len(human)), np.ones(len(wm))]
        for t in s.tokens:
            z = {k: z_scores(b, self.green, t) for k, b in blocks.items()}
            ppl_score = {k: -v[:, : t - 1].mean(1) for k, v in nll.items()}
            metrics[f"cal_auc_watermark_T{t}"] = auc(y, np.r_[z["human"], z["watermarked"]])
            metrics[f"cal_auc_perplexity_T{t}"] = auc(y, np.r_[ppl_score["human"], ppl_score["watermarked"]])
            x = np.vstack([detector_features(human, nll["human"], t), detector_features(wm, nll["watermarked"], t)])
            detectors[t] = fit_detector(x, y)
            for k in blocks:
                rows.append({"source": k, "tokens": t, "z": z[k], "perplexity_score": ppl_score[k]})
        zb = {k: z_scores(b, self.green) for k, b in blocks.items()}
        for k in ("human", "plain"):
            metrics[f"z_mean_{k}"] = float(zb[k].mean())
            metrics[f"z_var_{k}"] = float(zb[k].var(ddof=1)) if len(zb[k]) > 1 else float("nan")
        metrics["z_mean_watermarked"] = float(zb["watermarked"].mean())
        for k in blocks:
            metrics[f"flagged_{k}"] = float((zb[k] > s.z_threshold).mean())
        for who, m in (("generator", gen), ("reference", ref)):
            for k in ("watermarked", "plain"):
                metrics[f"cont_ppl_{who}_{k}"] = float(np.exp(continuation_nll(m, prompts, blocks[k]).mean()))
        for k in blocks:
            metrics[f"block_ppl_reference_{k}"] = float(np.exp(nll[k].mean()))
        return {"model": model0.path, "metrics": metrics, "detectors": detectors, "rows": rows}

    # -- protocol -------------------------------------------------------------------------------
    def fit(self, data: torch.Tensor, ctx: GenerationContext) -> FittedLM:
        """Chapter 04's fine-tune (cached by content); its time is recorded when it was computed here."""
        if self.model_dir is None:
            raise ValueError("this experiment has no model_dir to cache its fitted models in: run it through the "
                             "chapter's run(), or build it with model_dir=... (or .with_arm(arm, model_dir=...))")
        w, c = time.perf_counter(), time.process_time()
        out = super().fit(data, ctx)
        wall = time.perf_counter() - w
        if wall >= 0.5 * out.fit.seconds:  # a cache hit loads in a small fraction of the training time
            self.state["timing"].append({"step": "fine-tune", "generation": ctx.generation, "blocks": len(data),
                                         "wall_s": wall, "cpu_s": time.process_time() - c})
        return out

    def sample(self, model: FittedLM, n: int, ctx: GenerationContext) -> torch.Tensor:
        """The next generation's training set: its crawl (fresh human blocks + this model's watermarked
        continuations of fresh prompts), scored by every detector and filtered by the arm's rule."""
        s, g = self.settings, ctx.generation + 1
        plan, pool = self.plan(ctx.seed), self.data.train
        human = pool[torch.as_tensor(plan.human[g])]
        syn = self.generate(model, pool[torch.as_tensor(plan.prompts[g])], True, f"gen {ctx.generation}: crawl")
        crawl = torch.cat([human, syn])
        labels = np.r_[np.zeros(len(human), dtype=int), np.ones(len(syn), dtype=int)]
        calib = self._load_calibration(ctx.seed)
        with self.timed("score crawl", len(crawl), g):
            pending, z_full, p_full, surprise, nll_ref = self._score(model, crawl, labels, calib)
        flagged = z_full > s.z_threshold
        pending["watermark_tpr"] = float(flagged[labels == 1].mean()) if labels.any() else float("nan")
        pending["watermark_fpr"] = float(flagged[labels == 0].mean())
        idx, book = apply_filter(s.arm, labels, z=z_full, z_threshold=s.z_threshold, p_machine=p_full,
                                 surprise=surprise, bias=s.resample_bias, repeats=s.resample_repeats,
                                 rng=make_rng(ctx.seed, g, RESAMPLE_STREAM))
        book["crawl_share"] = float(labels.mean())
        self.state["books"][g] = book
        self.state["pending"][g] = pending
        self.state["scores"][g] = {"label": labels, "z": z_full, "perplexity_score": -nll_ref.mean(1),
                                   "p_machine": p_full, "kept": np.bincount(idx, minlength=len(labels))}
        return crawl[torch.as_tensor(idx)]

    def _score(self, model: FittedLM, crawl: torch.Tensor, labels: np.ndarray, calib: dict):
        """Every detector's AUC on a crawl, by tokens read, and the whole-block scores the filters use."""
        s = self.settings
        nll_ref = token_nll(self.model(self.base.path), crawl)
        pending = {}
        for t in s.tokens:
            pending[f"auc_watermark_T{t}"] = auc(labels, z_scores(crawl, self.green, t))
            pending[f"auc_perplexity_T{t}"] = auc(labels, -nll_ref[:, : t - 1].mean(1))
            p = calib["detectors"][t].predict_proba(detector_features(crawl, nll_ref, t))[:, 1]
            pending[f"auc_classifier_T{t}"] = auc(labels, p)
        z_full = z_scores(crawl, self.green)
        p_full = calib["detectors"][self.data.block_size].predict_proba(
            detector_features(crawl, nll_ref, self.data.block_size))[:, 1]
        surprise = token_nll(self.model(model.path), crawl).mean(1) if s.arm == "surplexity" else None
        if surprise is not None:
            pending["auc_surplexity_self"] = auc(labels, -surprise)
        return pending, z_full, p_full, surprise, nll_ref

    def _load_calibration(self, seed: int) -> dict:
        if self._calib is None:
            self.calibration(FittedLM(self.state["gen0_path"], 0, None), seed)
        return self._calib

    def evaluate(self, model: FittedLM, comp, ctx: GenerationContext) -> dict:
        s, g = self.settings, ctx.generation
        if g == 0:
            self.state["gen0_path"] = model.path
            self.calibration(model, ctx.seed)
        m = self.model(model.path)
        with self.timed("test perplexity", len(self.data.test), g):
            out = perplexity_stats(sequence_nll(m, self.data.test), "test")
        # radioactivity in reading mode (after Sander et al.): the model reads the real test blocks; does it
        # put more probability on the key's green lists than the base does, compared with other keys?
        with self.timed("green mass", len(self.data.test), g):
            if self._ref_mass is None:
                self._ref_mass = green_mass_matrix(self.model(self.base.path), self.data.test, self.green.vocab_size)
            mat = green_mass_matrix(m, self.data.test, self.green.vocab_size)
            out.update({f"radio_{k}": v for k, v in green_mass(mat, self.green, self._ref_mass).items()})
        out.update(val_loss=model.fit.best_val_loss, best_epoch=float(model.fit.best_epoch),
                   epochs_run=float(len(model.fit.val_losses)), n_train=float(len(comp.data)))
        book = self.state["books"].get(g)
        if book is not None:
            out.update({k: float(v) for k, v in book.items()})
        else:  # generation 0: the human crawl, kept whole
            out.update(n_crawl=float(len(comp.data)), n_crawl_synthetic=0.0, n_kept=float(len(comp.data)),
                       n_kept_synthetic=0.0, kept_synthetic_share=0.0, crawl_share=0.0)
        out.update(self.state["pending"].get(g, {}))
        # what this model writes itself, without a watermark, for the same test prompts in every arm
        probe = self.data.test[: s.probe_prompts]
        cont = self.generate(model, probe, False, f"gen {g}: probe")
        div = diversity(cont, self.real_vocab)
        out.update({f"probe_{k}": v for k, v in div.items() if k in ("distinct_1", "distinct_2", "distinct_3",
                                                                     "unigram_entropy", "vocab_share")})
        out.update({f"probe_{k}": v for k, v in green_share_unique(cont, self.green).items()})
        self.state["examples"][g] = cont[0].tolist()
        return out
