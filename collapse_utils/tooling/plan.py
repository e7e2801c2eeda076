"""A plan before the bill: the runs a preset makes and what they will cost.

``python -m collapse_utils plan 04 --preset paper`` lists the independent runs of a chapter at a preset (the
jobs :func:`collapse_utils.core.parallel.run_jobs` dispatches, which a Dask cluster can spread) and the work
each does, in the units the chapter's time goes into: VAE image-steps, language-model training tokens and
beam-searched blocks, or -- for the numpy chapters -- sample-generations (one sample of one run drawn and
fitted in one generation).  Two estimates follow:

- **CPU**: the work times per-unit costs measured on the book's development machine (:data:`MEASURED`: CPU
  seconds of one thread, so the machine's load does not enter), for one thread and for the parallel runs
  the preset allows;
- **GPU** (model chapters 03, 04, 06): FLOPs per unit (counted with ``torch.utils.flop_counter`` on the
  chapters' own models) over a named GPU's dense peak at an assumed utilisation, with a floor per
  optimizer step or decoding step for kernel-launch overheads (:data:`GPUS`).

Estimates are upper bounds of the order of magnitude: early stopping, caches shared between conditions
(generation 0, the base model) and a faster CPU all make a run cheaper.  ``--measure`` re-measures the
per-unit costs on the machine at hand (about a minute) instead of using :data:`MEASURED`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import CHAPTERS, PRESETS, get_chapter, load_preset

__all__ = ["MEASURED", "GPUS", "Item", "Plan", "plan", "format_plan", "cost_table", "measure"]

#: Per-unit costs in CPU seconds of ONE thread (``time.process_time`` with ``torch.set_num_threads(1)``),
#: measured on the development machine (2 vCPUs, Linux x86_64, torch 2.13 CPU wheel) on 2026-12-07 while
#: it ran about 12 other jobs (load average ~11): process time counts only this process's own CPU
#: seconds, so the load stretches the wall clock but not these numbers.  FLOPs were counted with
#: ``torch.utils.flop_counter.FlopCounterMode`` on the same models (multiply-add = 2 FLOPs).
MEASURED: dict[str, float] = {
    # chapter 03's convolutional VAE (capacity 64, 20 latent dims): one image through a training step
    "vae_s_per_image_step_bs64": 0.0008314,
    "vae_s_per_image_step_bs256": 0.0006686,
    "vae_flops_per_image_step": 8.134e+07,
    # chapters 04/06: OPT-architecture models of the cpu preset (vocab 2048, hidden 128, 2 layers) and of
    # OPT-125m's configuration (vocab 50272, hidden 768, 12 layers), built locally with random weights;
    # training: one AdamW step on 64-token blocks; generation: 64 new tokens from a 64-token prompt, 5 beams
    "lm_cpu_params": 6.92e+05,
    "lm_cpu_train_s_per_token": 5.961e-05,
    "lm_cpu_train_flops_per_token": 3.932e+06,
    "lm_cpu_beam5_s_per_block": 0.03547,
    "lm_cpu_beam5_flops_per_block": 6.672e+08,
    "lm_opt125m_params": 1.252e+08,
    "lm_opt125m_train_s_per_token": 0.009995,
    "lm_opt125m_train_flops_per_token": 7.413e+08,
    "lm_opt125m_beam5_s_per_block": 3.645,
    "lm_opt125m_beam5_flops_per_block": 1.326e+11,
    # SmolLM2-135M (the pretrained model of the pretrained preset, chapters 04 and 06), measured on 2026-12-07
    # with one thread on the idle development machine (wall seconds, issue 27): fine-tuning 92 tokens/s with
    # validation and saving, beam search (5 beams, 64 new tokens, 8 prompts a call) 0.43 blocks/s; its FLOPs
    # are OPT-125m's counted ones scaled by the number of parameters
    "lm_smollm2_params": 1.345e+08,
    "lm_smollm2_train_s_per_token": 0.01087,
    "lm_smollm2_train_flops_per_token": 7.964e+08,
    "lm_smollm2_beam5_s_per_block": 2.326,
    "lm_smollm2_beam5_flops_per_block": 1.424e+11,
    # the numpy chapters: their own run() at the smoke preset, in process (CPU seconds)
    "ch01_smoke_run_s": 0.466,
    "ch02_smoke_run_s": 1.05,
    "ch05_smoke_run_s": 0.7507,
    "ch07_smoke_run_s": 0.5267,
}

#: WikiText-2 (raw) train split in OPT's tokenizer (GPT-2's byte-level BPE): 2,051,910 whitespace-separated
#: words (wiki.train.tokens) x 1.156 BPE tokens per word (measured on the valid split: 247,289 BPE tokens of
#: wiki.valid.raw with the GPT-2 BPE files of the book's data folder / 213,886 words of wiki.valid.tokens)
#: -- the paper preset's training set, about 37,000 blocks of 64 tokens
WIKITEXT2_TRAIN_WORDS = 2_051_910
BPE_TOKENS_PER_WORD = 1.156

#: GPUs for the FLOP-based estimate: dense peak (TF32 tensor cores: the book trains in float32, which torch
#: runs as TF32 where allowed; the estimate does not assume bf16), assumed utilisation of that peak for
#: training and for beam-search decoding (small batches, memory-bound), and a floor per step (kernel
#: launches of a small model, which leave a large GPU mostly idle)
GPUS: dict[str, dict] = {
    "H100": {"name": "NVIDIA H100 SXM", "peak": 494.7e12, "util_train": 0.30, "util_decode": 0.10,
             "step_floor_s": 1.5e-3},
    "A100": {"name": "NVIDIA A100 SXM", "peak": 156e12, "util_train": 0.30, "util_decode": 0.10,
             "step_floor_s": 2.0e-3},
}


@dataclass
class Item:
    """One group of runs of ``generations``: ``seeds`` independent runs (rows of a batch, or seeds), computed
    as ``jobs`` separate jobs (what run_jobs dispatches and a cluster can spread; 1 for a vectorised batch)."""
    name: str
    jobs: int
    generations: int
    work: dict[str, float]  # unit -> amount, for all the group's runs together
    cpu_s: float = 0.0
    gpu_s: float | None = None
    seeds: int | None = None  # runs in the group (default: jobs)

    def __post_init__(self):
        if self.seeds is None:
            self.seeds = self.jobs


@dataclass
class Plan:
    chapter: str
    title: str
    preset: str
    items: list[Item]
    parallel_runs: int = 1       # runs side by side the preset asks for on one machine
    threads_per_run: int = 1
    gpu: str = "H100"
    notes: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        return sum(i.jobs for i in self.items)

    @property
    def runs(self) -> int:
        return sum(i.seeds for i in self.items)

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of one thread for the whole preset."""
        return sum(i.cpu_s for i in self.items)

    @property
    def gpu_seconds(self) -> float | None:
        vals = [i.gpu_s for i in self.items if i.gpu_s is not None]
        return sum(vals) if vals else None

    def verdict(self) -> str:
        one_machine = self.cpu_seconds / max(1, self.parallel_runs)
        if one_machine < 3600:
            return "one machine: under an hour on a CPU"
        if one_machine < 24 * 3600:
            return "one machine: hours on a CPU (a cluster shortens it)"
        if self.gpu_seconds is not None and self.gpu_seconds < 24 * 3600:
            return f"GPUs: days or more on a CPU, {fmt_seconds(self.gpu_seconds)} of {GPUS[self.gpu]['name']} time"
        return "a cluster: days or more on one machine"


# ---------------------------------------------------------------------------------------------------------
# units -> seconds
# ---------------------------------------------------------------------------------------------------------
def _m(key: str, measured: dict | None) -> float:
    value = (measured or MEASURED).get(key, MEASURED.get(key, 0.0))
    if not value or value <= 0:
        raise RuntimeError(f"no measurement {key!r}: run `python -m collapse_utils plan --measure`")
    return float(value)


def _lm_rates(size: dict, measured) -> dict[str, float]:
    """CPU seconds per training token and per beam-searched block, FLOPs of both, for an OPT of ``size``:
    the measured OPT-125m numbers for that configuration, else the cpu-size numbers scaled by parameters."""
    if size.get("opt125m") or size.get("smollm2"):
        key = "lm_opt125m" if size.get("opt125m") else "lm_smollm2"
        scale = 1.0
    else:
        key = "lm_cpu"
        n = _opt_params(size["vocab_size"], size["hidden_size"], size["num_layers"])
        scale = n / _m("lm_cpu_params", measured)
    return {"train_s": _m(f"{key}_train_s_per_token", measured) * scale,
            "train_flops": _m(f"{key}_train_flops_per_token", measured) * scale,
            "beam_s": _m(f"{key}_beam5_s_per_block", measured) * scale,
            "beam_flops": _m(f"{key}_beam5_flops_per_block", measured) * scale}


def _opt_params(vocab: int, hidden: int, layers: int, positions: int = 256) -> float:
    """Parameters of an OPT (tied embeddings, ffn = 4 x hidden)."""
    return vocab * hidden + positions * hidden + layers * (12 * hidden * hidden + 13 * hidden) + 2 * hidden


def _gpu_seconds(flops: float, steps: float, util_key: str, gpu: str) -> float:
    g = GPUS[gpu]
    return max(flops / (g["peak"] * g[util_key]), steps * g["step_floor_s"])


# ---------------------------------------------------------------------------------------------------------
# chapters: runs and work
# ---------------------------------------------------------------------------------------------------------
def _numpy_work(cid: str, p: dict) -> list[tuple[str, int, int, float]]:
    """(study, runs, generations, sample-generations) of a numpy chapter's studies."""
    g = p.get
    if cid == "01":
        # the exact sampler draws each row's sufficient statistics: a generation costs O(rows), whatever M;
        # the draws sampler draws M samples per row; the categorical chain's multinomial costs O(states)
        S, G = g("seeds", 0), g("generations", 0)
        Gs, Ga, Sa = g("schedule_generations", 0), g("accumulate_generations", 0), g("accumulate_seeds", 0)
        Sd, Gd = g("draws_check_seeds", 0), g("draws_check_generations", 0)
        main_m = sum(g("sample_sizes", [])) if g("sampler", "exact") == "draws" else len(g("sample_sizes", []))
        return [("gaussian: every M x 2 estimators", S, G, 2.0 * S * G * main_m),
                ("sampler check (draws vs exact)", 2 * Sd, Gd, Sd * Gd * (g("sample_sizes", [100])[0] + 1.0)),
                ("size schedules", 3 * S, Gs, 3.0 * S * Gs),
                ("replace vs accumulate", 2 * Sa, Ga, 2.0 * Sa * Ga),
                ("categorical chain (to absorption, at most)", g("discrete_seeds", 0), g("discrete_max_generations", 0),
                 float(g("discrete_seeds", 0)) * g("discrete_max_generations", 0) * g("discrete_states", 0))]
    if cid == "02":
        S, G, N = g("seeds", 0), g("generations", 0), g("n_samples", 1000)
        RS, RG = g("regime_seeds", 0), g("regime_generations", 0)
        regimes = g("regimes", [])
        reg = sum(RS * N * (RG * (RG + 1) / 2.0 if str(r).startswith("accumulate") else RG) for r in regimes)
        return [("blob + two Gaussians (batched EM)", 2 * S, G, 2.0 * S * G * N),
                ("expressivity (K = 1)", S, G, 0.1 * S * G * N),  # one Gaussian: closed form, no EM
                ("regimes", len(regimes) * RS, RG, float(reg)),
                ("speed check", g("bench_seeds", 0) + g("bench_sklearn_seeds", 0), g("bench_generations", 0),
                 (g("bench_seeds", 0) + 20.0 * g("bench_sklearn_seeds", 0)) * g("bench_generations", 0) * N)]
    if cid == "05":
        arms = len(g("real_shares", [])) * len(g("real_sources", [])) * (1 + len(g("sampling_biases", [])))
        return [("regression", g("reg_seeds", 0), g("reg_generations", 0),
                 3.0 * g("reg_seeds", 0) * g("reg_generations", 0) * g("reg_samples", 0) * g("reg_features", 1)),
                ("gaussian", g("gauss_seeds", 0), g("gauss_generations", 0),
                 3.0 * g("gauss_seeds", 0) * g("gauss_generations", 0) * g("gauss_samples", 0)),
                ("mixture", arms * g("mix_seeds", 0), g("mix_generations", 0),
                 20.0 * arms * g("mix_seeds", 0) * g("mix_generations", 0) * g("mix_samples", 0)),
                ("verifier", g("verifier_seeds", 0), 1,
                 float(g("verifier_seeds", 0)) * g("verifier_grid", 1) * sum(g("verifier_sizes", []))
                 * len(g("generator_errors", [])) * g("verifier_features", 1)),
                ("selection", g("selection_seeds", 0), g("selection_generations", 0),
                 2.0 * g("selection_seeds", 0) * g("selection_generations", 0) * g("selection_samples", 0)),
                ("tails", g("tail_seeds", 0), g("tail_points", 0),
                 float(g("tail_seeds", 0)) * g("tail_max_size", 0) * len(g("tail_cutoffs", []))
                 * len(g("tail_clean_shares", [])))]
    if cid == "07":
        S, W = g("seeds", 0), g("weight_synthetic", [])
        return [("weighted mean", S, g("generations", 0),
                 float(S) * g("generations", 0) * len(W) * g("weight_points", 1) * (g("weight_real", 0) + max(W or [0]))),
                ("strong collapse (least squares)", g("strong_seeds", 0), 1,
                 float(g("strong_seeds", 0)) * sum(g("strong_sizes", [])) * len(g("strong_fractions", []))
                 * g("strong_dim", 1)),
                ("forgetting (multinomial)", g("forget_seeds", 0), g("forget_generations", 0),
                 float(g("forget_seeds", 0)) * g("forget_generations", 0) * g("forget_states", 0)),
                ("temperature (multinomial)", g("temp_seeds", 0), g("temp_generations", 0),
                 float(g("temp_seeds", 0)) * g("temp_generations", 0) * len(g("temps", [])) * len(g("temp_samples", []))
                 * g("temp_states", 0)),
                ("GLM", g("glm_seeds", 0), g("glm_generations", 0),
                 float(g("glm_seeds", 0)) * g("glm_generations", 0) * g("glm_samples", 100) * g("glm_features", 10)),
                ("verifier", g("verifier_seeds", 0), g("verifier_generations", 0),
                 float(g("verifier_seeds", 0)) * g("verifier_generations", 0) * g("verifier_samples", 0)
                 * len(g("verifier_centres", [])))]
    raise KeyError(cid)


def _numpy_plan(cid: str, p: dict, measured) -> list[Item]:
    """Sample-generations per study; CPU seconds = the chapter's measured smoke run scaled by its work."""
    smoke = sum(w for *_, w in _numpy_work(cid, load_preset("smoke", cid)))
    per_unit = _m(f"ch{cid}_smoke_run_s", measured) / smoke
    return [Item(name, 1, int(gens), {"sample-generations": w}, cpu_s=w * per_unit, seeds=int(runs))
            for name, runs, gens, w in _numpy_work(cid, p) if w > 0]


def _vae_plan(p: dict, measured, gpu: str) -> list[Item]:
    bs, n_train, epochs = int(p["batch_size"]), int(p["n_train"]), int(p["epochs"])
    steps = epochs * math.ceil(n_train / bs)  # every generation, every condition (chapter 03)
    s_img = _m("vae_s_per_image_step_bs64" if bs < 160 else "vae_s_per_image_step_bs256", measured)
    flops = _m("vae_flops_per_image_step", measured)
    S, G, C = int(p["seeds"]), int(p["generations"]), len(p["conditions"])
    items = []
    # the classifier (trained once, cached): a small CNN, costed like the VAE's image-steps
    clf_img = int(p["classifier_epochs"]) * int(p["classifier_n_train"])
    items.append(Item("digit classifier (once, cached)", 1, 0, {"image-steps": clf_img}, cpu_s=clf_img * s_img,
                      gpu_s=_gpu_seconds(clf_img * flops, clf_img / 128, "util_train", gpu)))
    # generation 0 is fitted once per seed and shared by the conditions; then C x G fits per seed
    fits = S * (1 + C * G)
    img = fits * steps * bs
    ev = S * C * (G + 1) * int(p["n_eval"])  # decoded, classified and encoded images (~1/3 of a step each)
    for cond in p["conditions"]:  # each condition its share (the shared generation-0 fits spread evenly)
        name = f"{cond} (seeds x generations 0..{G})"
        w = {"image-steps": img / C, "eval images": ev / C}
        cpu = (img / C + ev / C / 3) * s_img
        gsec = _gpu_seconds((img + ev / 3) / C * flops, (fits * steps + ev / bs) / C, "util_train", gpu)
        items.append(Item(name, S, G, w, cpu_s=cpu, gpu_s=gsec))
    return items


def _lm_size(p: dict) -> dict:
    from ..models.pretrained import is_registry_model

    if is_registry_model(p.get("model_name")):
        return {"smollm2": True, "name": p["model_name"]}
    if str(p.get("model_name", "local-opt")) != "local-opt":
        return {"opt125m": True, "name": p["model_name"]}
    return {"vocab_size": p["vocab_size"], "hidden_size": p["hidden_size"], "num_layers": p["num_layers"],
            "name": f"local OPT (vocab {p['vocab_size']}, hidden {p['hidden_size']}, {p['num_layers']} layers)"}


def _train_blocks(p: dict, key: str = "train_blocks") -> int:
    """Training blocks of the real data: the preset's, or all of WikiText-2's train split (``0``)."""
    n = int(p.get(key, 0) or 0)
    if n:
        return n
    return math.ceil(WIKITEXT2_TRAIN_WORDS * BPE_TOKENS_PER_WORD / int(p["block_size"]))


def _lm_item(name, jobs, gens, epochs, blocks, gen_blocks, p, r, gpu) -> Item:
    T = int(p["block_size"])
    train_tok = jobs * (gens + 1) * epochs * blocks * T
    gen_blk = jobs * gens * gen_blocks
    eval_tok = jobs * (gens + 1) * blocks * T  # perplexities: one forward pass (~1/3 of a training token)
    cpu = train_tok * r["train_s"] + gen_blk * r["beam_s"] + eval_tok * r["train_s"] / 3
    batch = max(1, int(p.get("batch_size", 8)))
    gb = max(1, int(p.get("gen_batch_size", 8)))
    gsec = (_gpu_seconds((train_tok + eval_tok / 3) * r["train_flops"], (train_tok + eval_tok / 3) / (batch * T),
                         "util_train", gpu)
            + _gpu_seconds(gen_blk * r["beam_flops"], gen_blk / gb * T, "util_decode", gpu))
    return Item(name, jobs, gens, {"train tokens": train_tok, "beam-5 blocks": gen_blk, "eval tokens": eval_tok},
                cpu_s=cpu, gpu_s=gsec)


def _lm04_plan(p: dict, measured, gpu: str) -> list[Item]:
    from ..chapters.language_models import comparison_settings

    size = _lm_size(p)
    r = _lm_rates(size, measured)
    G, S, CS = int(p["generations"]), int(p["seeds"]), int(p["comparison_seeds"])
    blocks = _train_blocks(p)
    items = []
    if not size.get("opt125m") and int(p.get("base_blocks", 0)):
        tok = int(p["base_blocks"]) * int(p["base_epochs"]) * int(p["block_size"])
        items.append(Item(f"base model: {size['name']} pre-trained (once, cached)", 1, 0, {"train tokens": tok},
                          cpu_s=tok * r["train_s"],
                          gpu_s=_gpu_seconds(tok * r["train_flops"], tok / (int(p["batch_size"]) * int(p["block_size"])),
                                             "util_train", gpu)))
    items.append(_lm_item("(a) replace, epochs_a", S, G, int(p["epochs_a"]), blocks, blocks, p, r, gpu))
    items.append(_lm_item(f"(b) keep_real({p['keep_fraction']:g}), epochs_b", S, G, int(p["epochs_b"]), blocks,
                          math.ceil(blocks * (1 - float(p["keep_fraction"]))), p, r, gpu))
    for s in comparison_settings(p):
        items.append(_lm_item(f"comparison {s}", CS, G, int(p["epochs_a"]), blocks, blocks, p, r, gpu))
    if p.get("pretrained"):  # the pretrained study: (a) and (b) again, from the pretrained model
        q = {**p, **p["pretrained"]}
        rq, nq = _lm_rates(_lm_size(q), measured), _train_blocks(q)
        Gq, Sq = int(q["generations"]), int(q["seeds"])
        items.append(_lm_item(f"pretrained study (a): {q['model_name']}", Sq, Gq, int(q["epochs_a"]), nq, nq, q, rq,
                              gpu))
        items.append(_lm_item(f"pretrained study (b): {q['model_name']}", Sq, Gq, int(q["epochs_b"]), nq,
                              math.ceil(nq * (1 - float(q["keep_fraction"]))), q, rq, gpu))
    return items


def _lm06_plan(p: dict, measured, gpu: str) -> list[Item]:
    size = _lm_size(p)
    r = _lm_rates(size, measured)
    G, S, A = int(p["generations"]), int(p["seeds"]), len(p["arms"])
    crawl, calib, T = int(p["crawl_blocks"]), int(p["calibration_blocks"]), int(p["block_size"])
    items = []
    if not size.get("opt125m") and int(p.get("base_blocks", 0)):
        tok = int(p["base_blocks"]) * int(p["base_epochs"]) * T
        items.append(Item(f"base model: {size['name']} pre-trained (once, cached)", 1, 0, {"train tokens": tok},
                          cpu_s=tok * r["train_s"],
                          gpu_s=_gpu_seconds(tok * r["train_flops"], tok / (int(p["batch_size"]) * T), "util_train", gpu)))
    # per seed: the calibration set (generated, scored), then every arm's crawl recursion; the synthetic
    # share of each crawl is generated by the previous generation's model, the probes every generation
    gen_blocks = crawl * float(p["final_share"]) + int(p["probe_prompts"])
    it = _lm_item(f"seeds x {A} arms (one job per seed)", S * A, G, int(p["epochs"]), crawl, math.ceil(gen_blocks),
                  p, r, gpu)
    it.jobs = S
    items.append(it)
    cal = _lm_item("calibration set per seed", S, 1, 0, calib, calib, p, r, gpu)
    items.append(cal)
    if p.get("reference_model"):  # the pretrained scorer reads the no-filter arm's crawls at every length
        rq = _lm_rates(_lm_size({"model_name": p["reference_model"]}), measured)
        tok = S * G * crawl * sum(int(t) for t in p["tokens"])
        items.append(Item(f"pretrained scorer: {p['reference_model']} (no-filter arm)", S, G, {"eval tokens": tok},
                          cpu_s=tok * rq["train_s"] / 3,
                          gpu_s=_gpu_seconds(tok * rq["train_flops"] / 3, tok / (16 * T), "util_train", gpu)))
    return items


def plan(chapter: str, preset: str, measured: dict | None = None, gpu: str = "H100") -> Plan:
    """The runs of ``chapter`` at ``preset`` and their estimated cost (see the module docstring)."""
    ch = get_chapter(chapter)
    p = load_preset(preset, ch.id)
    if gpu not in GPUS:
        raise KeyError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    notes = []
    if ch.id in ("01", "02", "05", "07"):
        items = _numpy_plan(ch.id, p, measured)
        notes.append(f"numpy chapter: CPU seconds = its measured smoke run ({_m(f'ch{ch.id}_smoke_run_s', measured):.1f} "
                     "CPU s) scaled by sample-generations; no GPU estimate (vectorised numpy, one process)")
    elif ch.id == "03":
        items = _vae_plan(p, measured, gpu)
    elif ch.id == "04":
        items = _lm04_plan(p, measured, gpu)
    elif ch.id == "06":
        items = _lm06_plan(p, measured, gpu)
    else:
        raise KeyError(f"no cost model for chapter {ch.id}")
    if ch.id == "04" and p.get("pretrained"):
        notes.append(f"pretrained study: {p['pretrained']['model_name']}, costed from its measured rates on one thread")
    if ch.id in ("04", "06") and _lm_size(p).get("opt125m"):
        notes.append(f"{p['model_name']}: costed as a model of OPT-125m's configuration; WikiText-2 train = "
                     f"{_train_blocks(p):,} blocks of {p['block_size']} BPE tokens")
    return Plan(ch.id, ch.title, preset, items, parallel_runs=int(p.get("parallel_runs", 1) or 1),
                threads_per_run=int(p.get("threads_per_run", 1) or 1), gpu=gpu, notes=notes)


# ---------------------------------------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------------------------------------
def fmt_seconds(s: float) -> str:
    if s < 1:
        return "<1 s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _fmt_n(x: float) -> str:
    return f"{x:,.0f}" if x < 1e7 else f"{x:.2e}"


def format_plan(pl: Plan) -> str:
    g = GPUS[pl.gpu]
    lines = [f"chapter {pl.chapter} ({pl.title}) at preset {pl.preset}: {pl.runs:,} runs in {pl.jobs} jobs", ""]
    w = max(len(i.name) for i in pl.items)
    lines.append(f"  {'runs':<{w}}  {'seeds':>6}  {'jobs':>5}  {'gens':>5}  {'CPU (1 thread)':>14}  "
                 f"{'GPU (' + pl.gpu + ')':>12}  work")
    for i in pl.items:
        work = ", ".join(f"{_fmt_n(v)} {k}" for k, v in i.work.items() if v)
        gs = fmt_seconds(i.gpu_s) if i.gpu_s is not None else "-"
        lines.append(f"  {i.name:<{w}}  {i.seeds:>6}  {i.jobs:>5}  {i.generations:>5}  {fmt_seconds(i.cpu_s):>14}  "
                     f"{gs:>12}  {work}")
    lines.append("")
    cpu = pl.cpu_seconds
    lines.append(f"  CPU: {fmt_seconds(cpu)} of one thread in all; with parallel_runs={pl.parallel_runs} on one machine "
                 f"about {fmt_seconds(cpu / pl.parallel_runs)}; on a cluster with one worker per job about "
                 f"{fmt_seconds(max(i.cpu_s / max(1, i.jobs) for i in pl.items))} (the longest job)")
    if pl.gpu_seconds is not None:
        lines.append(f"  GPU: {fmt_seconds(pl.gpu_seconds)} of {g['name']} time (dense TF32 peak "
                     f"{g['peak'] / 1e12:.0f} TFLOP/s at {g['util_train']:.0%} for training, {g['util_decode']:.0%} "
                     f"for beam search, at least {g['step_floor_s'] * 1e3:.1f} ms per step)")
    lines.extend(f"  note: {n}" for n in pl.notes)
    lines.append(f"  verdict: {pl.verdict()}")
    return "\n".join(lines)


def cost_table(preset: str = "paper", gpu: str = "H100", measured: dict | None = None) -> str:
    """A Markdown table of every chapter's estimate at ``preset`` (README, "Beyond one machine")."""
    rows = ["| chapter | runs (jobs) | CPU, one thread | CPU, parallel_runs of the preset | "
            f"GPU ({gpu}) | verdict |", "|---|---|---|---|---|---|"]
    for cid in CHAPTERS:
        try:
            pl = plan(cid, preset, measured, gpu)
        except Exception:  # a chapter without a notebook in this checkout
            continue
        gs = fmt_seconds(pl.gpu_seconds) if pl.gpu_seconds is not None else "-"
        rows.append(f"| {cid} {pl.title} | {pl.runs:,} ({pl.jobs}) | {fmt_seconds(pl.cpu_seconds)} | "
                    f"{fmt_seconds(pl.cpu_seconds / pl.parallel_runs)} ({pl.parallel_runs}) | {gs} | {pl.verdict()} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------------------
def measure(progress: bool = True) -> dict[str, float]:
    """The per-unit costs of :data:`MEASURED` on this machine (CPU seconds of one thread; a minute or two)."""
    import importlib
    import time

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import vae
    from ..models.lm_train import tiny_opt_config

    out: dict[str, float] = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)

    def cpu(fn) -> float:
        t = time.process_time()
        fn()
        return time.process_time() - t

    def say(msg):
        if progress:
            print(msg, flush=True)

    try:
        for bs in (64, 256):
            cfg = vae.TrainConfig(epochs=1, batch_size=bs, device="cpu")
            x = torch.rand(bs * 4, 1, 28, 28)
            vae.train_vae(x[:bs], cfg, 0, steps=1)
            out[f"vae_s_per_image_step_bs{bs}"] = cpu(lambda: vae.train_vae(x, cfg, 0, steps=4)) / (4 * bs)  # noqa: B023
        m = vae.TrainConfig(epochs=1, batch_size=64, device="cpu").new_model(0)
        with FlopCounterMode(display=False) as fc:
            outs = m(torch.rand(64, 1, 28, 28))
            sum(o.float().sum() for o in (outs if isinstance(outs, (tuple, list)) else [outs])
                if torch.is_tensor(o)).backward()
        out["vae_flops_per_image_step"] = fc.get_total_flops() / 64
        say(f"VAE: {out['vae_s_per_image_step_bs64'] * 1e3:.2f} ms per image-step")
        from transformers import OPTForCausalLM

        sizes = {"cpu": (2048, 128, 2, 4, 16, 8, 256), "opt125m": (50272, 768, 12, 12, 4, 2, 2050)}
        for name, (V, H, L, heads, B, nprompt, pos) in sizes.items():
            torch.manual_seed(0)
            model = OPTForCausalLM(tiny_opt_config(V, H, L, heads, max_positions=pos))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            ids = torch.randint(3, V, (B, 64))

            def step():
                model(input_ids=ids, labels=ids).loss.backward()  # noqa: B023
                opt.step()  # noqa: B023
                opt.zero_grad()  # noqa: B023

            step()
            out[f"lm_{name}_params"] = float(sum(q.numel() for q in model.parameters()))
            out[f"lm_{name}_train_s_per_token"] = cpu(step) / (B * 64)
            with FlopCounterMode(display=False) as fc:
                model(input_ids=ids, labels=ids).loss.backward()
            opt.zero_grad()
            out[f"lm_{name}_train_flops_per_token"] = fc.get_total_flops() / (B * 64)
            model.eval()
            prompts = torch.randint(3, V, (nprompt, 64))

            def gen():
                model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),  # noqa: B023
                               num_beams=5, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=1)

            with torch.no_grad():
                out[f"lm_{name}_beam5_s_per_block"] = cpu(gen) / nprompt
                with FlopCounterMode(display=False) as fc:
                    gen()
            out[f"lm_{name}_beam5_flops_per_block"] = fc.get_total_flops() / nprompt
            say(f"LM {name}: {out[f'lm_{name}_train_s_per_token'] * 1e3:.2f} ms per training token, "
                f"{out[f'lm_{name}_beam5_s_per_block']:.2f} s per beam-5 block")
        for cid in ("01", "02", "05", "07"):
            mod = importlib.import_module(CHAPTERS[cid].module)
            p = mod.Params.from_values(load_preset("smoke", cid))
            out[f"ch{cid}_smoke_run_s"] = cpu(lambda: mod.run(p, progress=False))  # noqa: B023
            say(f"chapter {cid} at smoke: {out[f'ch{cid}_smoke_run_s']:.1f} CPU s")
    finally:
        torch.set_num_threads(before)
    return out


def main(chapter: str | None, preset: str | None, gpu: str = "H100", do_measure: bool = False,
         table: bool = False) -> int:
    measured = measure() if do_measure else None
    if table:
        print(cost_table(preset or "paper", gpu, measured))
        return 0
    chapters = [chapter] if chapter and chapter != "all" else list(CHAPTERS)
    presets = [preset] if preset else list(PRESETS)
    blocks = [format_plan(plan(c, pr, measured, gpu)) for c in chapters for pr in presets]
    print("\n\n".join(blocks))
    return 0
