"""Provenance inside the language-model loop of chapter 04: a crawl that fills with model text, detectors
that tell it apart, and filters that decide what the next generation is trained on.

**The crawl.**  Every generation ``g`` is trained on a *crawl* of ``crawl_blocks`` blocks: fresh human
blocks (WikiText-2 training blocks no earlier generation has seen) plus a share ``s_g`` of blocks written by
the previous generation's model -- continuations of other fresh human blocks, *sampled* as in the watermark
paper's main setting (:mod:`collapse_utils.models.lm_sample`; beam search, chapter 04's decoding, is an
option).  Of the model-written blocks, a share ``second_vendor_share`` is written without the watermark (a
"second vendor" that does not hold the key); the others carry it (:mod:`collapse_utils.models.watermark`).
The share ``s_g`` rises linearly from 0 at generation 0 to ``final_share`` at the last generation
(:func:`synthetic_shares`).  Which blocks are human, which are prompts, and which form the calibration set
is fixed per seed in advance (:func:`crawl_plan`).  Labels: 0 human, 1 watermarked, 2 second vendor.

**The calibration set** (per seed, written by the generation-0 model): ``calibration_blocks`` human blocks
and the continuations of as many other human blocks, with and without the watermark.  It measures the
watermark's cost (against the sampler's exact prediction), its null hypothesis over many keys, and trains
the unwatermarked detector (:func:`fit_detector`): a logistic regression on cheap features of a block --
its token losses under a *reference model* (the pretrained base, which never sees generated text) and its
distinct-1/2 (:func:`detector_features`).

**The arms** (:data:`ARMS`), one :class:`ProvenanceCollapse` run per arm and seed, all on the same crawl
plan; generation 0 (human data only) is shared by every arm:

``none``        train on the whole crawl;
``plain``       train on the whole crawl of a world where nobody watermarks (every model-written block
                without the key): collapse without the watermark's distortion;
``watermark``   drop every block whose watermark z-score exceeds ``z_threshold``;
``detector``    importance resampling with the detector (Drayson et al. 2025): weights
                ``(1 - p_machine) ** resample_bias``, every block available up to ``resample_repeats``
                times, ``resample_upsample`` times as many blocks drawn without replacement as the crawl has;
``surplexity``  keep the blocks the previous generation's model finds surprising (Gambetta et al.): a block
                is kept when its loss under that model reaches the ``surprise_quantile`` quantile of the
                losses of held-out human blocks (the calibration set's) under the same model -- a budget
                that uses no label;
``oracle``      keep exactly the human blocks (provenance known perfectly).

Everything that costs compute is cached by content (fitted models by :class:`~collapse_utils.models.lm.LMCollapse`,
generated continuations and the calibration beside the model that made them), so arms and reruns share it.
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
from .lm_sample import sample_continuations
from .lm_train import (generate_continuations, get_accelerator, load_model, perplexity_stats, sequence_nll,
                       token_nll)
from ..core.seeding import make_rng
from ..core.storage import dump_state, fingerprint, load_state
from .watermark import (GreenList, WatermarkLogitsProcessor, green_counts, green_share_unique, keys_for_null,
                        null_over_keys, z_scores)

__all__ = ["ARMS", "CrawlPlan", "CrawlSettings", "ProvenanceCollapse", "apply_filter", "auc", "continuation_nll",
           "crawl_plan", "detector_features", "filter_bookkeeping", "fit_detector", "green_mass", "green_mass_matrix",
           "jaccard", "kept_blocks", "most_surprising", "surprise_keep", "synthetic_shares", "token_nll",
           "vendor_split", "watermark_keep", "weighted_resample"]

EXPERIMENT = "opt_crawl"
ARMS = ("none", "plain", "watermark", "detector", "surplexity", "oracle")
DETECTORS = ("watermark", "perplexity", "classifier")
#: random streams of this module (integers beside the engine's named ones)
CRAWL_STREAM, RESAMPLE_STREAM, SAMPLE_STREAM = 16, 17, 18
#: the machine-written kinds of block (labels 1 and 2) and their metric suffixes
KINDS = {1: "wm", 2: "sv"}
#: special tokens of the OPT layout (<s>, <pad>, </s>, <unk>), used where the tokenizer cannot be read
SPECIAL_IDS = (0, 1, 2, 3)
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


def vendor_split(n_synthetic: int, second_vendor_share: float) -> tuple[int, int]:
    """How many of a crawl's ``n_synthetic`` model-written blocks carry the watermark and how many come from
    the second vendor (without the key): ``round(second_vendor_share * n_synthetic)`` of them."""
    n_sv = int(round(float(second_vendor_share) * int(n_synthetic)))
    return int(n_synthetic) - n_sv, n_sv


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


def _green_sum(mass: torch.Tensor, prev: torch.Tensor, g: GreenList, rows: int = 1024) -> float:
    """``(mass * g.mask(prev)).sum()`` in chunks of ``rows`` previous tokens (a large vocabulary's whole
    mask would not fit in memory)."""
    total = 0.0
    for i in range(0, len(prev), rows):
        total += float((mass[i:i + rows] * g.mask(prev[i:i + rows])).sum(dtype=torch.float64))
    return total


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

    keys = keys_for_null(green.params.key, other_keys)
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


def surprise_keep(nll: np.ndarray, human_nll: np.ndarray, quantile: float) -> tuple[np.ndarray, float]:
    """Gambetta et al.'s filter with a budget that uses no label: keep every block whose mean token loss
    reaches the ``quantile`` quantile of held-out human blocks' losses under the same model (so about
    ``1 - quantile`` of human text passes, whatever the crawl's make-up).  Returns the kept indices and
    the threshold."""
    if not 0.0 <= float(quantile) < 1.0:
        raise ValueError(f"quantile must lie in [0, 1), got {quantile!r}")
    h = np.asarray(human_nll, dtype=float)
    if h.size == 0:
        raise ValueError("the threshold needs held-out human blocks")
    cut = float(np.quantile(h, float(quantile)))
    return np.flatnonzero(np.asarray(nll, dtype=float) >= cut), cut


def kept_blocks(arm: str, labels: np.ndarray, *, z=None, z_threshold: float = 4.0, p_machine=None,
                surprise=None, human_surprise=None, surprise_quantile: float = 0.25, bias: float = 10.0,
                repeats: int = 3, upsample: float = 1.5, rng=None) -> np.ndarray:
    """The blocks of a crawl that an arm trains on (indices; a block drawn twice appears twice).
    ``labels``: 0 = human, > 0 = model-written, known only to the oracle; the other filters see only their
    scores."""
    labels = np.asarray(labels).astype(int)
    if arm in ("none", "plain"):   # the whole crawl
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
        return weighted_resample(p_machine, int(round(float(upsample) * len(labels))), bias, repeats, rng)
    if arm == "surplexity":    # Gambetta et al.: the surprising blocks, by a threshold from held-out human text
        if surprise is None or human_surprise is None:
            raise ValueError("the surplexity filter needs the previous model's losses on the crawl and on "
                             "held-out human blocks")
        return surprise_keep(surprise, human_surprise, surprise_quantile)[0]
    raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")


def jaccard(a, b) -> float:
    """|A ∩ B| / |A ∪ B| of two sets of block indices (copies do not count); 1 for two empty sets."""
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return len(a & b) / len(a | b) if a | b else 1.0


def filter_bookkeeping(labels: np.ndarray, idx: np.ndarray) -> dict:
    """What a filter did to a crawl: crawl size, model-written and watermarked counts, blocks kept (copies
    counted), model-written and watermarked blocks kept, blocks dropped and human blocks among them,
    distinct blocks kept and the most copies of one block; the share of the crawl's human blocks kept, and
    the Jaccard overlap of the distinct blocks kept with the oracle's set (the human blocks)."""
    labels = np.asarray(labels).astype(int)
    idx = np.asarray(idx, dtype=int)
    n = len(labels)
    human = np.flatnonzero(labels == 0)
    uniq, copies = np.unique(idx, return_counts=True)
    dropped = np.setdiff1d(np.arange(n), uniq)
    book = {"n_crawl": n, "n_crawl_synthetic": int(n - len(human)), "n_crawl_watermarked": int((labels == 1).sum()),
            "n_kept": int(len(idx)), "n_kept_synthetic": int((labels[idx] > 0).sum()),
            "n_kept_watermarked": int((labels[idx] == 1).sum()), "n_dropped": int(len(dropped)),
            "n_dropped_human": int((labels[dropped] == 0).sum()), "n_unique": int(len(uniq)),
            "max_copies": int(copies.max()) if len(copies) else 0}
    book["kept_synthetic_share"] = book["n_kept_synthetic"] / book["n_kept"] if book["n_kept"] else float("nan")
    book["human_kept_share"] = float(np.isin(human, uniq).mean()) if len(human) else float("nan")
    book["jaccard_oracle"] = jaccard(uniq, human)
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
    delta: float = 1.0
    key: int = 15485863
    z_threshold: float = 4.0
    resample_bias: float = 10.0
    resample_repeats: int = 3
    resample_upsample: float = 1.5
    second_vendor_share: float = 0.5
    surprise_quantile: float = 0.25
    decoding: str = "sample"
    temperature: float = 1.0
    top_k: int = 0
    null_keys: int = 100
    #: a pretrained model (:data:`collapse_utils.models.pretrained.PRETRAINED`) that scores the crawl of the
    #: no-filter arm as a second, independent reference-perplexity detector ("" = none)
    reference_model: str = ""

    def __post_init__(self):
        if self.arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {self.arm!r}")
        if self.decoding not in ("sample", "beam"):
            raise ValueError(f"decoding must be 'sample' or 'beam', got {self.decoding!r}")

    @property
    def watermarks(self) -> bool:
        """Whether this arm's world watermarks (every arm but ``plain``)."""
        return self.arm != "plain"


@functools.lru_cache(maxsize=1)
def _code_key() -> str:
    """Generated continuations depend on the training/generation code, the sampler and on the watermark's
    classes (read once per process, so that an edit of the sources during a run cannot split its caches)."""
    from . import lm_sample, lm_train

    return source_hash(lm_train, lm_sample, GreenList, WatermarkLogitsProcessor)


@functools.lru_cache(maxsize=1)
def _module_key() -> str:
    return source_hash(sys.modules[__name__])


def _special_ids(path) -> tuple[int, ...]:
    """The tokenizer's special tokens (``<unk>`` among them): the detector does not score pairs with one."""
    try:
        from .lm_data import load_tokenizer

        ids = tuple(sorted(set(int(i) for i in load_tokenizer(path).all_special_ids)))
        return ids or SPECIAL_IDS
    except Exception:  # noqa: BLE001 - a model folder without a readable tokenizer: OPT's layout
        return SPECIAL_IDS


class ProvenanceCollapse(LMCollapse):
    """One arm of the crawl for one seed, as an engine experiment (``run_recursion`` with the ``replace``
    regime: what :meth:`sample` returns -- the filtered crawl -- is the next training set).

    fit       = chapter 04's fine-tune of the base (cached by content, so generation 0 is shared by arms);
    sample    = write the next crawl's model-written blocks (sampled continuations of fresh prompts, most
                watermarked, a share from a second vendor without the key), score the crawl with every
                detector, filter it by the arm's rule;
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
        self._special = None
        self._pretrained = None

    def with_arm(self, arm: str, model_dir: str | os.PathLike | None = None,
                 progress: bool | None = None) -> ProvenanceCollapse:
        """A fresh experiment like this one (same class, base, data, crawl, watermark, training and decoding)
        that filters its crawls by ``arm``; ``model_dir`` (where fitted models are cached) and ``progress``
        replace this one's when given."""
        return type(self)(self.base, self.data, replace(self.settings, arm=arm), self.epochs, self.lr,
                          self.batch_size, self.num_beams, self.repetition_penalty, self.gen_batch_size,
                          self.model_dir if model_dir is None else model_dir,
                          progress=self.progress if progress is None else progress, patience=self.patience)

    def set_state(self, state) -> None:
        """Resume from a checkpoint; the timings stored with it belong to the execution that wrote it and
        are marked ``restored``, so that a table of this execution's compute leaves them out."""
        super().set_state(state)
        self.state["timing"] = [{**t, "restored": True} for t in self.state.get("timing", [])]

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

    @property
    def special_ids(self) -> tuple[int, ...]:
        if self._special is None:
            self._special = _special_ids(self.base.path)
        return self._special

    def z(self, blocks: torch.Tensor, tokens: int | None = None, green: GreenList | None = None) -> np.ndarray:
        """The detector's z-scores as this chapter scores: special tokens and repeated pairs left out."""
        return z_scores(blocks, green or self.green, tokens, ignore_repeats=True, ignore_ids=self.special_ids)

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

    def _decoding(self) -> dict:
        s = self.settings
        if s.decoding == "beam":
            return {"decoding": "beam", "beams": self.num_beams, "penalty": self.repetition_penalty}
        return {"decoding": "sample", "temperature": s.temperature, "top_k": s.top_k}

    def _write(self, path: str, prompts: torch.Tensor, watermark: bool, seed: int, desc: str, record: bool = False):
        s = self.settings
        proc = [WatermarkLogitsProcessor(self.green, s.delta)] if watermark else None
        if s.decoding == "beam":
            out = generate_continuations(self.model(path), prompts, self.data.block_size, self.num_beams,
                                         self.repetition_penalty, self.gen_batch_size, progress=self.progress,
                                         desc=desc, logits_processor=proc)
            return (out, None) if record else out
        return sample_continuations(self.model(path), prompts, self.data.block_size, temperature=s.temperature,
                                    top_k=s.top_k, seed=seed, batch_size=self.gen_batch_size, logits_processor=proc,
                                    record=record, progress=self.progress, desc=desc)

    def generate(self, model: FittedLM | str, prompts: torch.Tensor, watermark: bool, seed: int,
                 desc: str = "sampling"):
        """Continuations of ``prompts`` (watermarked or not; sampled with the random ``seed``, or by beam
        search), cached beside the model."""
        from ..core.parallel import thread_tag
        from ..core.storage import cached_tensor

        path = model.path if isinstance(model, FittedLM) else str(model)
        s = self.settings
        wm = {"gamma": s.gamma, "delta": s.delta, "key": s.key} if watermark else None
        key = fingerprint({**self._decoding(), "seed": int(seed), "new": self.data.block_size, "watermark": wm,
                           "code": _code_key(), "threads": thread_tag()}, prompts)
        cached = Path(path) / f"provenance-{key}.pt"

        def compute() -> torch.Tensor:
            with self.timed(desc, len(prompts)):
                return self._write(path, prompts, watermark, seed, desc)

        return cached_tensor(cached, (len(prompts), self.data.block_size), compute, "cached continuations")

    @staticmethod
    def draw_seed(seed: int, generation: int, purpose: int) -> int:
        """The sampler's random seed for one purpose (0 crawl, watermarked; 1 crawl, second vendor; 2 probe;
        3 calibration) of one generation of one seed: shared by every arm, so that arms whose models agree
        write the same text."""
        return int(make_rng(seed, generation, SAMPLE_STREAM + purpose).integers(0, 2**62))

    # -- calibration (generation 0, shared by every arm of a seed) ----------------------------------
    def calibration(self, model0: FittedLM, seed: int) -> dict:
        """The generation-0 model's calibration set, its scores and the fitted detectors (cached)."""
        from ..core.parallel import thread_tag
        from ..core.storage import atomic_write_bytes, read_cache

        if self._calib is not None and self._calib["model"] == model0.path:
            return self._calib
        s, plan, pool = self.settings, self.plan(seed), self.data.train
        human, prompts = pool[torch.as_tensor(plan.calib_human)], pool[torch.as_tensor(plan.calib_prompts)]
        key = fingerprint({"s": [s.gamma, s.delta, s.key, list(s.tokens), s.z_threshold, s.null_keys],
                           "dec": self._decoding(), "seed": seed, "code": _module_key(),
                           "gen": _code_key(), "threads": thread_tag(), "base": self.base.fingerprint}, human, prompts)
        cached = Path(model0.path) / f"calibration-{key}.npz"  # a state file: read back without running code
        hit = read_cache(cached, self._read_calibration, "cached calibration")
        if hit is None:
            hit = self._calibrate(model0, human, prompts, seed)
            atomic_write_bytes(cached, dump_state({**hit, "detectors": {t: detector_state(d)
                                                                        for t, d in hit["detectors"].items()}}))
        self._calib = hit
        return hit

    @staticmethod
    def _read_calibration(path: Path) -> dict:
        hit = load_state(path)
        if (not isinstance(hit, dict) or set(hit) != {"model", "metrics", "detectors", "rows", "null"}
                or not isinstance(hit["model"], str) or not isinstance(hit["metrics"], dict)
                or not isinstance(hit["detectors"], dict) or not isinstance(hit["rows"], list)
                or not isinstance(hit["null"], dict)):
            raise ValueError("not a calibration of this code")
        return {**hit, "detectors": {t: detector_from_state(d) for t, d in hit["detectors"].items()}}

    def _calibrate(self, model0: FittedLM, human: torch.Tensor, prompts: torch.Tensor, seed: int) -> dict:
        s = self.settings
        metrics, rows, detectors, null = {}, [], {}, {}
        cal_seed = self.draw_seed(seed, 0, 3)
        with self.timed("calibration: watermarked", len(prompts)):
            wm, rec_wm = self._write(model0.path, prompts, True, cal_seed, "calibration: watermarked", record=True)
        with self.timed("calibration: plain", len(prompts)):
            plain, rec_plain = self._write(model0.path, prompts, False, cal_seed, "calibration: plain", record=True)
        ref, gen = self.model(self.base.path), self.model(model0.path)
        nll = {"human": token_nll(ref, human), "watermarked": token_nll(ref, wm), "plain": token_nll(ref, plain)}
        blocks = {"human": human, "watermarked": wm, "plain": plain}
        y = np.r_[np.zeros(len(human)), np.ones(len(wm) + len(plain))]
        for t in s.tokens:
            z = {k: self.z(b, t) for k, b in blocks.items()}
            ppl_score = {k: -v[:, : t - 1].mean(1) for k, v in nll.items()}
            for k, lab in (("watermarked", "wm"), ("plain", "sv")):
                yk = np.r_[np.zeros(len(human)), np.ones(len(blocks[k]))]
                metrics[f"cal_auc_watermark_{lab}_T{t}"] = auc(yk, np.r_[z["human"], z[k]])
                metrics[f"cal_auc_perplexity_{lab}_T{t}"] = auc(yk, np.r_[ppl_score["human"], ppl_score[k]])
            x = np.vstack([detector_features(b, nll[k], t) for k, b in blocks.items()])
            detectors[t] = fit_detector(x, y)
            for k in blocks:
                rows.append({"source": k, "tokens": t, "z": z[k], "perplexity_score": ppl_score[k]})
        # the watermark's strength: the green share of the scored pairs of watermarked text
        for k, b in blocks.items():
            g, n = green_counts(b, self.green, ignore_repeats=True, ignore_ids=self.special_ids)
            metrics[f"green_share_{k}"] = float(g.sum() / max(n.sum(), 1))
        zb = {k: self.z(b) for k, b in blocks.items()}
        for k in blocks:
            metrics[f"z_mean_{k}"] = float(zb[k].mean())
            metrics[f"z_var_{k}"] = float(zb[k].var(ddof=1)) if len(zb[k]) > 1 else float("nan")
            metrics[f"flagged_{k}"] = float((zb[k] > s.z_threshold).mean())
        # the one key, every pair scored (repeats and special tokens included): the page shows the difference
        raw = z_scores(human, self.green)
        metrics["z_mean_human_all_pairs"] = float(raw.mean())
        # the null hypothesis over many keys, on the human blocks
        keys = keys_for_null(s.key, s.null_keys)
        for t in sorted({s.tokens[0], s.tokens[-1]}):
            r = null_over_keys(human, self.green.vocab_size, s.gamma, keys, t, s.z_threshold, ignore_repeats=True,
                               ignore_ids=self.special_ids)
            null[f"mean_z_T{t}"] = np.asarray(r.pop("mean_z"), dtype=float)
            metrics.update({f"null_{k}_T{t}": float(v) for k, v in r.items()})
        # the watermark's cost in perplexity, and the sampler's exact prediction of it
        for who, m in (("generator", gen), ("reference", ref)):
            for k in ("watermarked", "plain"):
                metrics[f"cont_ppl_{who}_{k}"] = float(np.exp(continuation_nll(m, prompts, blocks[k]).mean()))
        for k, rec in (("watermarked", rec_wm), ("plain", rec_plain)):
            if rec is not None:
                metrics[f"cost_nll_{k}"] = float(rec["nll"].mean())
                metrics[f"cost_expected_{k}"] = float(rec["expected"].mean())
                metrics[f"cost_se_{k}"] = float(np.sqrt(rec["variance"].sum()) / rec["nll"].size)
        for k in blocks:
            metrics[f"block_ppl_reference_{k}"] = float(np.exp(nll[k].mean()))
        return {"model": model0.path, "metrics": metrics, "detectors": detectors, "rows": rows, "null": null}

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
        """The next generation's training set: its crawl (fresh human blocks + this model's continuations of
        fresh prompts, watermarked except a second vendor's share), scored by every detector and filtered by
        the arm's rule."""
        s, g = self.settings, ctx.generation + 1
        plan, pool = self.plan(ctx.seed), self.data.train
        human = pool[torch.as_tensor(plan.human[g])]
        prompts = pool[torch.as_tensor(plan.prompts[g])]
        n_wm, n_sv = vendor_split(len(prompts), s.second_vendor_share)
        parts, labels = [human], [np.zeros(len(human), dtype=int)]
        if n_wm:  # the key holder's blocks: watermarked, except in a world where nobody watermarks
            parts.append(self.generate(model, prompts[:n_wm], s.watermarks, self.draw_seed(ctx.seed, g, 0),
                                       f"gen {ctx.generation}: crawl"))
            labels.append(np.full(n_wm, 1 if s.watermarks else 2))
        if n_sv:  # the second vendor's: never watermarked
            parts.append(self.generate(model, prompts[n_wm:], False, self.draw_seed(ctx.seed, g, 1),
                                       f"gen {ctx.generation}: crawl, second vendor"))
            labels.append(np.full(n_sv, 2))
        crawl, labels = torch.cat(parts), np.concatenate(labels)
        calib = self._load_calibration(ctx.seed)
        with self.timed("score crawl", len(crawl), g):
            pending, z_full, p_full, surprise, human_surprise, nll_ref = self._score(model, crawl, labels, calib)
        flagged = z_full > s.z_threshold
        for lab, name in ((1, "tpr"), (2, "flagged_sv"), (0, "fpr")):
            pending[f"watermark_{name}"] = float(flagged[labels == lab].mean()) if (labels == lab).any() else float("nan")
        idx, book = apply_filter(s.arm, labels, z=z_full, z_threshold=s.z_threshold, p_machine=p_full,
                                 surprise=surprise, human_surprise=human_surprise,
                                 surprise_quantile=s.surprise_quantile, bias=s.resample_bias,
                                 repeats=s.resample_repeats, upsample=s.resample_upsample,
                                 rng=make_rng(ctx.seed, g, RESAMPLE_STREAM))
        book["crawl_share"] = float((labels > 0).mean())
        self.state["books"][g] = book
        self.state["pending"][g] = pending
        self.state["scores"][g] = {"label": labels, "z": z_full, "perplexity_score": -nll_ref.mean(1),
                                   "p_machine": p_full, "kept": np.bincount(idx, minlength=len(labels))}
        return crawl[torch.as_tensor(idx)]

    def _score(self, model: FittedLM, crawl: torch.Tensor, labels: np.ndarray, calib: dict):
        """Every detector's AUC on a crawl, by tokens read -- all model-written blocks, the watermarked and
        the second vendor's against the human ones --, and the whole-block scores the filters use."""
        s = self.settings
        nll_ref = token_nll(self.model(self.base.path), crawl)
        pending = {}
        machine = (labels > 0).astype(int)
        for t in s.tokens:
            scores = {"watermark": self.z(crawl, t), "perplexity": -nll_ref[:, : t - 1].mean(1),
                      "classifier": calib["detectors"][t].predict_proba(detector_features(crawl, nll_ref, t))[:, 1]}
            for det, sc in scores.items():
                pending[f"auc_{det}_T{t}"] = auc(machine, sc)
                for lab, kind in KINDS.items():
                    sel = (labels == 0) | (labels == lab)
                    pending[f"auc_{det}_{kind}_T{t}"] = auc(labels[sel] == lab, sc[sel])
        if s.reference_model and s.arm == "none":  # the detection claims read the no-filter arm only
            with self.timed("score crawl: pretrained reference", len(crawl)):
                nll_pt = self.pretrained_nll(crawl, s.tokens)
            for t in s.tokens:
                sc = -nll_pt[t]
                pending[f"auc_pretrained_T{t}"] = auc(machine, sc)
                for lab, kind in KINDS.items():
                    sel = (labels == 0) | (labels == lab)
                    pending[f"auc_pretrained_{kind}_T{t}"] = auc(labels[sel] == lab, sc[sel])
        z_full = self.z(crawl)
        p_full = calib["detectors"][self.data.block_size].predict_proba(
            detector_features(crawl, nll_ref, self.data.block_size))[:, 1]
        surprise = human_surprise = None
        if s.arm == "surplexity":
            gen = self.model(model.path)
            surprise = token_nll(gen, crawl).mean(1)
            plan = self.plan(self._seed_of_plan())
            human_surprise = token_nll(gen, self.data.train[torch.as_tensor(plan.calib_human)]).mean(1)
            pending["auc_surprise_generator"] = auc(machine, surprise)
            pending["surprise_threshold"] = float(np.quantile(human_surprise, s.surprise_quantile))
        return pending, z_full, p_full, surprise, human_surprise, nll_ref

    def pretrained_nll(self, blocks: torch.Tensor, tokens) -> dict[int, np.ndarray]:
        """Reference perplexity from a pretrained model that never saw this book's text: for every ``t`` of
        ``tokens``, the mean token loss of each block's first ``t`` tokens, decoded to text and read again with
        the pretrained model's own tokenizer (:func:`~collapse_utils.models.pretrained.text_nll`)."""
        from .lm_data import load_tokenizer
        from .pretrained import model_folder, text_nll

        if self._pretrained is None:
            folder = model_folder(self.settings.reference_model)
            self._pretrained = (load_model(folder), load_tokenizer(folder), load_tokenizer(self.data.tokenizer_path))
        model, tok, local = self._pretrained
        return {t: text_nll(model, tok, local.batch_decode(blocks[:, :t].tolist(), skip_special_tokens=True))
                for t in tokens}

    def _seed_of_plan(self) -> int:
        return self._plan.seed

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
            out.update(n_crawl=float(len(comp.data)), n_crawl_synthetic=0.0, n_crawl_watermarked=0.0,
                       n_kept=float(len(comp.data)), n_kept_synthetic=0.0, n_kept_watermarked=0.0,
                       kept_synthetic_share=0.0, crawl_share=0.0, human_kept_share=1.0, jaccard_oracle=1.0)
        out.update(self.state["pending"].get(g, {}))
        # what this model writes itself, without a watermark, for the same test prompts in every arm
        probe = self.data.test[: s.probe_prompts]
        cont = self.generate(model, probe, False, self.draw_seed(ctx.seed, g, 2), f"gen {g}: probe")
        div = diversity(cont, self.real_vocab)
        out.update({f"probe_{k}": v for k, v in div.items() if k in ("distinct_1", "distinct_2", "distinct_3",
                                                                     "unigram_entropy", "vocab_share")})
        out.update({f"probe_{k}": v for k, v in green_share_unique(cont, self.green, self.special_ids).items()})
        self.state["examples"][g] = cont[0].tolist()
        return out
