"""Study module of chapter 03 (notebooks/03_vae_mnist.md): a VAE on MNIST, trained on its own samples.

The page's side of the chapter contract (:mod:`collapse_utils.chapters`): parameters, the run plan
(conditions x seeds through the recursion engine), tables, figures and the paper's claims tested by
the run.  The model, its training and the engine experiment are :mod:`collapse_utils.models.vae`.
"""
from __future__ import annotations

import copy
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.engine import Loop
from ..core.params import ChapterParams, Checker, param
from ..models import vae
from .claims import NOT_RUN, NOT_VISIBLE, Claim, finite, judge

__all__ = ["spread_text",
    "GEN0_CONFIDENCE_FLOOR", "GEN0_CONFIDENCE_TOLERANCE", "MIN_GEN0_ENTROPY", "MIN_SHARE", "REFERENCE_GEN0_CONFIDENCE",
    "MIN_REFERENCE_EPOCHS", "REFERENCE_CURVE", "reference_curve", "reference_epochs", "epochs_text",
    "budget_claim", "budget_note", "budget_sentence", "budget_table", "plot_budget", "run_budget_study",
    "Condition", "Params", "SharedGenerationZero", "Study", "bookkeeping_table", "can_tell", "check_inputs", "claims", "class_fractions", "elbo_rise_note",
    "faded_digits", "fading_digits", "gen0_claim", "gen0_confidence_threshold", "gen0_entropy",
    "glue_page_numbers", "grid_generations", "load_classifier", "load_data", "page_numbers", "parse_condition",
    "plot_class_distribution", "plot_class_entropy", "plot_latent_kde", "plot_latent_norm_kde",
    "plot_latent_spread", "plot_real_digits", "plot_sample_grids", "plot_test_elbo", "run", "default_loop",
    "run_study",
    "save_artifacts", "seed_matrix", "setup_torch", "replace_scope", "spread_note", "spread_table", "steps_per_generation",
    "too_small",
    "summary", "train_config",
]

MIN_GEN0_ENTROPY = 2.0  # bits: generation 0 must make several digits (else it draws no recognisable digits,
#                          and the claims about later generations cannot be judged)
MIN_SHARE = 0.05        # a digit "present" at generation 0 makes at least this share of its samples

# Does generation 0 draw digits?  The yardstick is the chapter's classifier's mean top-class probability
# (``classifier_confidence``) on images decoded from N(0, I).  REFERENCE_GEN0_CONFIDENCE is its value for a
# reference VAE trained with the paper's and the official notebook's settings (all 60,000 images, 30 epochs,
# batch 256, seed 0) -- our measurement, not a number the paper reports -- measured once on the CPU (one thread, about two hours on a shared machine) with
# ``python benchmarks/bench_vae.py --paper-reference`` on 10,000 samples.  Its learning curve, epoch:
# confidence (real-test negative ELBO): 1: 0.754 (120.7), 2: 0.762 (111.7), 5: 0.767 (104.7),
# 10: 0.785 (102.0), 15: 0.793 (100.7), 20: 0.802 (99.4), 25: 0.805 (99.3), 30: 0.8105 (98.4) -- still rising
# slowly; even fully trained, a fifth of the probability mass goes to other classes (ambiguous samples).
# A run's generation 0 draws digits when its confidence is at least GEN0_CONFIDENCE_FLOOR or within
# GEN0_CONFIDENCE_TOLERANCE of the reference value, whichever is lower (here: 0.7605), and its samples
# span several digits (class entropy at least MIN_GEN0_ENTROPY bits).
REFERENCE_GEN0_CONFIDENCE = 0.8105
GEN0_CONFIDENCE_TOLERANCE = 0.05
GEN0_CONFIDENCE_FLOOR = 0.85
#: The reference VAE's learning curve, as measured by the run above (one CPU thread, seed 0, on a shared
#: machine; recorded in commit e49f859): (epoch, classifier confidence on 10,000 prior samples, negative
#: ELBO of all 10,000 real test images in nats).  ``python benchmarks/bench_vae.py --paper-reference
#: --every 1`` measures it again, printing each epoch's confidence and test_neg_elbo on one line.
REFERENCE_CURVE = (
    (1, 0.754, 120.7), (2, 0.762, 111.7), (5, 0.767, 104.7), (10, 0.785, 102.0),
    (15, 0.793, 100.7), (20, 0.802, 99.4), (25, 0.805, 99.3), (30, 0.8105, 98.4),
)
#: generation 0 must explain the real test images at least as well as the reference after this many of
#: its 30 epochs (a tenth of its training), besides drawing digits by the confidence and entropy criteria.
#: Chosen (issue 23) knowing that the cpu preset's generation 0 matches about 3.2-3.6 epochs on seeds 0-3:
#: it passes it with little margin and fails a fit at the level of the reference's first two epochs.
MIN_REFERENCE_EPOCHS = 3

# ---------------------------------------------------------------------------------------------
# Conditions (regime x synthetic-data mode) and the study over seeds
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    regime: str
    synthetic: str

    @property
    def label(self) -> str:
        return f"{self.regime} / {self.synthetic}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "_", f"{self.regime}-{self.synthetic}").strip("_")


def parse_condition(spec: str) -> Condition:
    """``"replace/fresh"``, ``"replace/fixed"``, ``"keep_real(0.1)/fixed"``, ``"accumulate/fixed"``..."""
    from ..core.regimes import parse_regime

    if not isinstance(spec, str) or spec.count("/") != 1:
        raise ValueError(f"a condition looks like '<regime>/<fresh|fixed>', e.g. 'replace/fresh', got {spec!r}")
    reg, mode = (s.strip() for s in spec.split("/"))
    regime = parse_regime(reg)
    if mode not in ("fresh", "fixed"):
        raise ValueError(f"condition {spec!r}: the synthetic-data mode must be 'fresh' or 'fixed', got {mode!r}")
    if mode == "fresh" and regime.name != "replace":
        raise ValueError(f"condition {spec!r}: fresh samples (a new decoder batch every step) exist only under "
                         f"'replace'; mixing with real or earlier data needs a materialised set, use "
                         f"'{regime}/fixed'")
    return Condition(str(regime), mode)


@dataclass
class Study:
    """All runs of the chapter: tidy metrics, bookkeeping and per-generation artifacts."""

    metrics: pd.DataFrame
    bookkeeping: pd.DataFrame
    artifacts: dict[tuple[str, int], dict[int, dict]] = field(default_factory=dict)
    conditions: list[Condition] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    steps: int = 0  # gradient steps of every generation's fit
    generations: int | None = None  # generations after generation 0 (the loop's); None: the parameters'
    classifier_accuracy: float = float("nan")  # the digit classifier's accuracy on the real test images
    #: the budget study: tidy metrics of the main condition, one seed, at other numbers of steps per
    #: generation (column ``steps``); None when the run has none (``budget_factors`` empty)
    budget: pd.DataFrame | None = None

    def wide(self) -> pd.DataFrame:
        idx = ["condition", "regime", "synthetic", "seed", "generation"]
        return self.metrics.pivot_table(index=idx, columns="metric", values="value").reset_index()


def setup_torch(threads: int = 1) -> None:
    """Set torch's CPU threads for computing in this process (the notebook's own cells).

    Everything the chapter computes -- the classifier, every run -- goes through
    :func:`collapse_utils.core.parallel.run_threads` with ``threads_per_run`` threads instead, so the
    numbers never depend on this setting or on ``parallel_runs``."""
    torch.set_num_threads(int(threads))


def train_config(params: dict) -> vae.TrainConfig:
    return vae.TrainConfig(latent_dims=params.get("latent_dims", 20), capacity=params.get("capacity", 64),
                           epochs=params["epochs"], batch_size=params["batch_size"], lr=float(params["lr"]),
                           weight_decay=params.get("weight_decay", 1e-5),
                           device=vae.resolve_device(params["device"]))


def steps_per_generation(params: dict) -> int:
    """Gradient steps of every generation's fit: ``epochs * ceil(n_train / batch_size)``, in every
    condition (under accumulate they range over the growing pool)."""
    return int(params["epochs"]) * math.ceil(int(params["n_train"]) / int(params["batch_size"]))


def load_data(params: dict, path=None, download: bool = True) -> dict:
    """The real training subset (``n_train`` images, seeded) and ``n_test_eval`` real test images.

    Files are looked up as in :mod:`collapse_utils.core.data`; missing ones are downloaded from a mirror
    and verified where a network exists (e.g. on Colab), otherwise a DataError says how to provide them.
    """
    from ..models.mnist import mnist_tensor

    x, y = mnist_tensor("train", params["n_train"], seed=params["data_seed"], path=path, download=download)
    xt, yt = mnist_tensor("test", params["n_test_eval"], seed=params["data_seed"], path=path, download=download)
    return {"train_x": x, "train_y": y, "test_x": xt, "test_y": yt}


def load_classifier(params: dict, progress: bool = True):
    """The MNIST classifier of the chapter (trained once on real data, then cached) and its test accuracy."""
    from ..models.classifier import ClassifierConfig, load_or_train
    from ..core.parallel import run_threads

    cfg = ClassifierConfig(epochs=params["classifier_epochs"], n_train=params["classifier_n_train"])
    with run_threads(params["threads_per_run"]):
        return load_or_train(cfg, progress=progress, download=True)


def default_loop(p) -> Loop:
    """The chapter's main recursion: the first of ``p.conditions`` (at every preset the official
    notebook's ``replace/fresh``), ``p.generations`` generations of the VAE of ``p``."""
    main = parse_condition(p["conditions"][0])
    return Loop(experiment=vae.VAEExperiment(train_config(p), synthetic=main.synthetic, n_eval=p["n_eval"]),
                regime=main.regime, generations=p["generations"])


def run(p, loop: Loop | None = None, *, checkpoint_root: str | Path | None = None, progress: bool = True) -> Study:
    """The chapter: the real MNIST subset, the digit classifier, then every condition x seed
    (:func:`run_study`); ``loop`` (default :func:`default_loop`) is the main condition."""
    loop = default_loop(p) if loop is None else loop
    _conditions(p, loop)  # a loop whose pieces do not fit together is refused before any compute
    data = load_data(p)
    clf, acc = load_classifier(p, progress=progress)
    study = run_study(p, data, clf, loop=loop, checkpoint_root=checkpoint_root, progress=progress)
    study.classifier_accuracy = float(acc)
    study.budget = run_budget_study(p, data, clf, study, loop=loop, checkpoint_root=checkpoint_root,
                                    progress=progress)
    return study


class SharedGenerationZero:
    """An experiment whose generation 0 is read from ``folder`` when it was fitted before.

    Generation 0 is the same fit in every condition (same seed, same real images): the first
    condition of a seed trains it with the wrapped experiment's own ``fit`` and stores it, the
    others load it.  Everything else is the wrapped experiment's (``__getattr__``)."""

    def __init__(self, experiment, folder: str | Path, key: str):
        self.experiment, self.folder, self.key = experiment, Path(folder), key

    def __getattr__(self, name):
        return getattr(self.__dict__["experiment"], name)

    def fit(self, data, ctx):
        if ctx.generation != 0 or not isinstance(data, torch.Tensor):
            return self.experiment.fit(data, ctx)
        from ..core.parallel import thread_tag
        from ..core.storage import atomic_write_bytes, fingerprint, read_cache

        ex = self.experiment
        name = f"gen0-{self.key}-steps{ex.steps}-data{fingerprint(data, length=10)}-seed{ctx.seed}-{thread_tag()}"
        path = self.folder / f"{name}.pt"

        def load(f):
            blob = torch.load(f, map_location=ex.cfg.device, weights_only=True)
            m = ex.cfg.new_model(ctx.int_seed("fit"))
            m.load_state_dict(blob["state_dict"])
            return m.eval(), list(blob["history"])

        hit = read_cache(path, load, "cached generation-0 VAE")
        if hit is not None:
            ex.histories[0] = hit[1]
            return hit[0]
        model = ex.fit(data, ctx)
        buf = io.BytesIO()
        torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                    "history": ex.histories.get(0, [])}, buf)
        atomic_write_bytes(path, buf.getvalue())
        return model


def _experiment_key(template) -> str:
    """A fingerprint of the experiment a fit depends on: its class (a reader's subclass counts by its
    source), the code of this package's VAE and the training settings."""
    import inspect

    from ..core.storage import fingerprint

    cls = type(template)
    try:
        cls_src = inspect.getsource(cls)
    except (OSError, TypeError):  # e.g. a class defined in a notebook cell
        cls_src = f"{cls.__module__}.{cls.__qualname__}"
    return fingerprint(cls_src, vae.code_key(), template.cfg.key(), length=10)


def _run_key(template, params, generations: int) -> str:
    """A fingerprint of everything a condition's checkpoints depend on: the experiment, its
    measurement, the data and the yardsticks.  A changed setting, changed code or another
    experiment class starts afresh in a new folder instead of resuming a run it does not belong to."""
    from ..core.storage import fingerprint

    keys = ["n_train", "data_seed", "n_test_eval", "classifier_epochs", "classifier_n_train"]
    return fingerprint(_experiment_key(template), template.n_eval, template.n_grid, generations,
                       *[params[k] for k in keys], length=10)


def _instance(template, synthetic: str, classifier, test_x, steps: int):
    """A fresh copy of the loop's experiment for one condition x seed, with the chapter's yardsticks."""
    ex = copy.copy(template)
    ex.synthetic, ex.name = synthetic, f"vae_{synthetic}"
    ex.classifier, ex.test_x, ex.steps = classifier, test_x, steps
    ex.reference, ex.artifacts, ex.histories = None, {}, {}
    return ex


class _LaterSteps:
    """The budget study's experiment: generation 0 is fitted with the main run's steps (and so read from
    its cache when there is one), every later generation with ``later`` steps."""

    def __init__(self, inner, experiment, first: int, later: int):
        self.inner, self.experiment, self.first, self.later = inner, experiment, int(first), int(later)

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)

    def fit(self, data, ctx):
        self.experiment.steps = self.first if ctx.generation == 0 else self.later
        return self.inner.fit(data, ctx)


def _run_one(job: dict) -> tuple:
    """One condition x seed through the engine (runs in this process or in a worker process)."""
    from ..core.engine import run_recursion

    cond, seed, root = job["condition"], job["seed"], job["root"]
    clf = job["classifier"]
    if isinstance(clf, dict):  # a state dict sent to a worker process
        from ..models.classifier import MnistCNN

        model = MnistCNN()
        model.load_state_dict(clf)
        clf = model.eval()
    ex = _instance(job["experiment"], cond.synthetic, clf, job["test_x"], job["steps"])
    engine_ex = SharedGenerationZero(ex, root / "gen0", _experiment_key(ex)) if root else ex
    folder = f"{cond.slug}-{job['run_key']}"
    if job.get("later_steps"):  # the budget study
        engine_ex = _LaterSteps(engine_ex, ex, job["steps"], job["later_steps"])
        folder = f"budget{job['later_steps']}-{folder}"
    res = run_recursion(
        engine_ex, job["train_x"], job["generations"], regime=cond.regime, seed=seed,
        checkpoint_dir=root / folder / f"seed{seed}" if root else None,
        progress=job["progress"], columns=job["columns"])
    return res.metrics, res.bookkeeping.assign(seed=seed), ex.artifacts


def _conditions(p, loop: Loop) -> list[Condition]:
    """The loop's condition first, then the other conditions of ``p.conditions``."""
    synthetic = getattr(loop.experiment, "synthetic", "fixed")
    try:
        main = parse_condition(f"{loop.regime}/{synthetic}")
    except ValueError as e:
        raise ValueError(f"the loop's regime and its experiment's synthetic mode do not fit together: {e}") from None
    others = [parse_condition(c) for c in p["conditions"][1:]]
    return [main] + [c for c in others if c != main]


def run_study(params, data: dict, classifier: nn.Module | None = None, *, loop: Loop | None = None,
              checkpoint_root: str | Path | None = None, progress: bool = True) -> Study:
    """Every condition x seed through :func:`~collapse_utils.core.engine.run_recursion`, same seeds everywhere.

    ``loop`` (default :func:`default_loop`) is the main condition: its experiment (copied for every
    condition and seed, with the classifier and the real test images as yardsticks), its regime and
    its number of generations; the other entries of ``params["conditions"]`` run beside it with the
    same experiment in their own synthetic mode and regime.
    Checkpoints go to ``checkpoint_root/<condition>-<settings hash>/seed<k>/`` so an interrupted
    run resumes; generation 0 (identical in every condition) is fitted once per seed and cached
    (:class:`SharedGenerationZero`).
    With ``parallel_runs > 1`` (CPU only) that many runs train at once in worker processes; serial or
    parallel, every run computes with ``threads_per_run`` torch threads, so the numbers are identical
    either way (:mod:`collapse_utils.core.parallel`).  On an idle two-core machine two single-threaded
    runs train as many images per second as one two-threaded run (``benchmarks/bench_vae.py
    --parallel``); on a machine shared with other jobs they are several times faster, because an
    OpenMP thread that waits for a descheduled partner stalls the whole step.
    """
    from ..core.parallel import run_jobs

    loop = default_loop(params) if loop is None else loop
    template = loop.experiment
    conditions = _conditions(params, loop)
    seeds = [params["seed"] + k for k in range(params["seeds"])]
    # the same number of gradient steps in every generation and condition (accumulate's pool grows)
    steps = steps_per_generation({**params, "n_train": len(data["train_x"])})
    root = Path(checkpoint_root) if checkpoint_root else None
    workers = max(1, min(int(params.get("parallel_runs", 1)), len(conditions) * len(seeds)))
    if template.cfg.device != "cpu":
        workers = 1
    base = {"experiment": _instance(template, template.synthetic, None, None, steps), "root": root,
            "run_key": _run_key(template, params, loop.generations), "steps": steps,
            "generations": loop.generations, "train_x": data["train_x"], "test_x": data["test_x"],
            "classifier": classifier, "progress": progress and workers == 1}
    # condition-major order: the first condition's runs fit (and cache) every seed's generation 0
    # extra tidy columns (not "n_train": the engine's bookkeeping uses that name per generation)
    jobs = [dict(base, condition=c, seed=s, columns={"condition": c.label, "synthetic": c.synthetic,
                                                     "real_subset": params["n_train"], "epochs": params["epochs"]})
            for c in conditions for s in seeds]
    if workers > 1 and classifier is not None:  # a state dict pickles cheaply to the workers
        clf_state = {k: v.cpu() for k, v in classifier.state_dict().items()}
        for job in jobs:
            job["classifier"] = clf_state
    results = run_jobs(_run_one, jobs, workers, threads_per_run=params["threads_per_run"], progress=progress,
                       desc="conditions x seeds", label=lambda j: f"{j['condition'].label}, seed {j['seed']}")
    metrics = pd.concat([r[0] for r in results], ignore_index=True)
    book = pd.concat([r[1] for r in results], ignore_index=True)
    artifacts = {(j["condition"].label, j["seed"]): r[2] for j, r in zip(jobs, results)}
    return Study(metrics, book, artifacts, conditions, seeds, steps, generations=int(loop.generations))


def run_budget_study(params, data: dict, classifier, study: Study, *, loop: Loop | None = None,
                     checkpoint_root: str | Path | None = None, progress: bool = True) -> pd.DataFrame | None:
    """The collapse rate against the training budget: the main condition, seed ``params["seed"]``,
    ``budget_generations`` generations, with ``round(f * steps)`` gradient steps in every generation after
    generation 0 for each ``f`` of ``budget_factors``.  Generation 0 is the main run's (same seed, same
    steps; read from its cache when ``checkpoint_root`` is given), so the budgets differ only in how
    long every later generation trains.  The main run itself supplies the factor-1 row.  Returns tidy
    metrics with a ``steps`` column (None when ``budget_factors`` is empty)."""
    from ..core.parallel import run_jobs

    factors = [float(f) for f in params.get("budget_factors") or []]
    if not factors:
        return None
    loop = default_loop(params) if loop is None else loop
    gens = min(int(params["budget_generations"]), int(loop.generations))
    main = study.conditions[0]
    seed = int(params["seed"])
    steps = int(study.steps)
    root = Path(checkpoint_root) if checkpoint_root else None
    template = loop.experiment
    base = {"experiment": _instance(template, template.synthetic, None, None, steps), "root": root,
            "run_key": _run_key(template, params, gens), "steps": steps, "generations": gens,
            "train_x": data["train_x"], "test_x": data["test_x"], "classifier": classifier,
            "condition": main, "seed": seed}
    later = sorted({max(1, round(f * steps)) for f in factors} - {steps})
    workers = max(1, min(int(params.get("parallel_runs", 1)), len(later)))
    if template.cfg.device != "cpu":
        workers = 1
    jobs = [dict(base, later_steps=n, progress=progress and workers == 1,
                 columns={"condition": main.label, "synthetic": main.synthetic, "real_subset": params["n_train"],
                          "epochs": params["epochs"]}) for n in later]
    if workers > 1 and classifier is not None:
        clf_state = {k: v.cpu() for k, v in classifier.state_dict().items()}
        for job in jobs:
            job["classifier"] = clf_state
    results = run_jobs(_run_one, jobs, workers, threads_per_run=params["threads_per_run"], progress=progress,
                       desc="budget study", label=lambda j: f"{j['later_steps']} steps per generation")
    parts = [r[0].assign(steps=j["later_steps"]) for j, r in zip(jobs, results)]
    m = study.metrics
    own = m[(m.condition == main.label) & (m.seed == seed) & (m.generation <= gens)]
    parts.append(own.assign(steps=steps))
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------
def check_inputs(params: dict) -> None:
    """Before any compute: the MNIST files are present (downloaded where a network exists) and verified."""
    from ..core.data import find_dataset

    find_dataset("mnist", download=True)


@dataclass(frozen=True)
class Params(ChapterParams):
    """Chapter 03's parameters; the defaults are the ``cpu`` preset (``presets/03.yaml`` lists what
    ``smoke`` and ``paper`` change)."""

    chapter: ClassVar[str] = "03"
    seed: int = param(0, "base seed: run k uses seed + k, the same seeds in every condition", lo=0)
    seeds: int = param(2, "independent runs per condition (bands are taken over these)", lo=1, hi=100)
    generations: int = param(5, "generations after generation 0 (generation 0 trains on real MNIST)", lo=1, hi=1000)
    grid_generations: list = param([0, 1, 2, 3, 4, 5], "generations shown in the sample grids", lo=0)
    conditions: list = param(["replace/fresh"], "regime/synthetic mode of each condition; the first is the "
                             "main recursion", kind="any")
    n_train: int = param(16000, "real MNIST training images, a seeded random subset", lo=256, hi=60_000)
    data_seed: int = param(0, "which subset of the training (and test) images", lo=0)
    epochs: int = param(3, "passes over n_train images per generation", lo=1, hi=1000)
    batch_size: int = param(64, "images per gradient step", lo=1, hi=60_000)
    lr: float = param(0.003, "Adam's learning rate", lo=0.0, hi=1.0, open_lo=True)
    n_eval: int = param(4000, "images decoded from N(0, I) per generation for every measurement",
                        lo=100, hi=100_000)
    n_test_eval: int = param(500, "real test images for the negative ELBO and the real-data reference",
                             lo=100, hi=10_000)
    classifier_n_train: int = param(60000, "real training images for the digit classifier", lo=1000, hi=60_000)
    classifier_epochs: int = param(1, "epochs of the digit classifier (trained once, then cached)", lo=1, hi=100)
    budget_factors: list = param([0.25, 0.5], "budget study: steps per generation after generation 0, as "
                                 "multiples of the main run's (the main run is factor 1); [] = no study",
                                 kind="any")
    budget_generations: int = param(3, "budget study: generations after generation 0 (one seed)", lo=1,
                                    hi=1000)
    threads_per_run: int = param(1, "torch CPU threads of each run (part of the result)", lo=1, hi=256)
    parallel_runs: int = param(2, "runs trained at once in worker processes, CPU only (wall time only)",
                               lo=1, hi=256)
    device: str = param("auto", '"auto" (CUDA if present), "cpu" or "cuda"', choices=["auto", "cpu", "cuda"])

    # the constraints between parameters skip values of the wrong type: one error lists every problem
    cross_checks_always: ClassVar[bool] = True

    @classmethod
    def cross_checks(cls, c: Checker, params) -> None:
        grid, gens = params.get("grid_generations"), params.get("generations")
        if isinstance(grid, (list, tuple)) and grid and isinstance(gens, int) and all(isinstance(g, int) for g in grid):
            c.check(len(set(grid)) == len(grid), f"grid_generations must not repeat, got {list(grid)!r}")
            c.check(any(0 <= g <= gens for g in grid),
                    f"grid_generations {list(grid)!r} names no generation of this run (0 to {gens})")
        conds = params.get("conditions")
        if not isinstance(conds, (list, tuple)) or not conds:
            c.check(False, f"conditions must be a non-empty list such as ['replace/fresh', 'replace/fixed'], "
                           f"got {conds!r}")
        else:
            for spec in conds:
                try:
                    parse_condition(spec)
                except (ValueError, TypeError) as e:
                    c.check(False, f"conditions: {e}")
            c.check(len(set(conds)) == len(conds), f"conditions must not repeat, got {conds!r}")
        fac = params.get("budget_factors")
        c.check(isinstance(fac, (list, tuple)) and all(isinstance(f, (int, float)) and not isinstance(f, bool)
                                                       and 0 < f <= 100 for f in fac),
                f"budget_factors must be a list of numbers in (0, 100], e.g. [0.25, 0.5], got {fac!r}")
        bg = params.get("budget_generations")
        if isinstance(bg, int) and isinstance(gens, int):
            c.check(bg <= gens, f"budget_generations ({bg}) cannot exceed generations ({gens}): the main run "
                                "supplies the study's factor-1 row")
        if params.get("device") == "cuda":
            c.check(torch.cuda.is_available(), "device='cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")


# ---------------------------------------------------------------------------------------------
# Tables and summaries
# ---------------------------------------------------------------------------------------------
def seed_matrix(metrics: pd.DataFrame, metric: str, condition: str) -> tuple[np.ndarray, np.ndarray]:
    """(generations, values[len(generations), n_seeds]) of one metric under one condition."""
    from ..core.results import seed_matrix as _seed_matrix

    return _seed_matrix(metrics, metric, condition=condition)


def spread_table(study: Study, metric: str = "latent_spread") -> pd.DataFrame:
    """Median over seeds (and min-max) of a metric per condition and generation, with the ratio to gen 0."""
    rows = []
    for cond in study.conditions:
        gens, vals = seed_matrix(study.metrics, metric, cond.label)
        for g, v in zip(gens, vals):
            rows.append({"condition": cond.label, "generation": int(g), "median": float(np.median(v)),
                         "min": float(np.min(v)), "max": float(np.max(v)),
                         "ratio_to_gen0": float(np.median(v / vals[0]))})
    return pd.DataFrame(rows)


def spread_text(spread: pd.DataFrame) -> str:
    """One line per condition of :func:`spread_table`: each generation's median [min, max] over seeds and
    the median of the seeds' ratios to their generation 0."""
    lines = []
    for cond, tab in spread.groupby("condition", sort=False):
        cells = "  ".join(f"g{r.generation}: {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}] x{r.ratio_to_gen0:.2f}"
                          for _, r in tab.iterrows())
        lines.append(f"{cond:24s} {cells}")
    return "\n".join(lines)


def spread_note(study: Study, metric: str = "latent_spread") -> str:
    """Markdown: one bullet per condition with the median (over seeds) latent spread at every generation,
    and the last generation's median ratio to generation 0 -- the page's closing note."""
    tab = spread_table(study, metric)
    if tab.empty:
        return "No latent spread was measured."
    lines = []
    for cond, t in tab.groupby("condition", sort=False):
        vals = " → ".join(f"{v:.2f}" for v in t["median"])
        lines.append(f"- `{cond}`: {vals} (generations {int(t.generation.min())}–{int(t.generation.max())}; "
                     f"each seed's last over its generation 0, median over seeds: ×{t.ratio_to_gen0.iloc[-1]:.2f})")
    return "\n".join(lines)


def elbo_rise_note(study: Study) -> str:
    """Markdown: the rise of the real-test negative ELBO from generation 0 to the last generation under
    every condition this run has (medians over seeds), e.g. for the page's comparison of regimes."""
    parts = []
    for cond in study.conditions:
        m = _matrix(study, "test_neg_elbo", cond.label)
        if m is not None:
            parts.append(f"{_med(m[-1] - m[0]):+.1f} nats under `{cond.label}`")
    return "; ".join(parts) if parts else "not measured by this run"


def bookkeeping_table(study: Study, seed: int | None = None) -> pd.DataFrame:
    """Training images per generation (rows) and condition (columns) for one seed."""
    seed = study.seeds[0] if seed is None else seed
    book = study.bookkeeping[study.bookkeeping.seed == seed]
    tab = book.pivot_table(index="generation", columns="condition", values="n_train", aggfunc="first")
    tab = tab[[c.label for c in study.conditions]]
    tab.columns.name = "training images per generation"
    return tab


def class_fractions(study: Study, condition: str) -> pd.DataFrame:
    """Mean fraction (over seeds) of generated images the classifier assigns to each digit, per generation."""
    m = study.metrics
    sub = m[(m.condition == condition) & m.metric.str.startswith("frac_")]
    tab = sub.groupby(["generation", "metric"]).value.mean().unstack("metric")
    tab.columns = [int(c.split("_")[1]) for c in tab.columns]
    return tab[sorted(tab.columns)]


def fading_digits(study: Study, condition: str, min_share: float = MIN_SHARE) -> pd.DataFrame:
    """Per digit (mean shares over seeds): share at generation 0 and at the last generation, their ratio,
    the first generation at which the share fell below half of its generation-0 value (NaN if it never
    did), and ``faded``: present at generation 0 (share >= ``min_share``) and below half of that share
    at the last generation.

    Rows: digits present at generation 0 first, most faded (smallest ratio) first; then the digits
    generation 0 hardly makes, which cannot fade (their ratio is NaN when generation 0 makes none).
    """
    tab = class_fractions(study, condition)
    g0, last = tab.iloc[0], tab.iloc[-1]
    halved = {}
    for d in tab.columns:
        below = tab.index[(tab[d] < 0.5 * g0[d]) & (tab.index > tab.index[0])]
        halved[d] = float(below[0]) if len(below) else np.nan
    present = (g0 >= min_share).values
    ratio = (last / g0.replace(0, np.nan)).values
    out = pd.DataFrame({"digit": tab.columns, "share_gen0": g0.values, "share_last": last.values,
                        "ratio": ratio, "halved_at_generation": [halved[d] for d in tab.columns],
                        "present_gen0": present, "faded": present & (last.values < 0.5 * g0.values)})
    out["_absent"] = ~present
    out = out.sort_values(["_absent", "ratio", "halved_at_generation", "digit"], na_position="last")
    return out.drop(columns="_absent").reset_index(drop=True)


def faded_digits(study: Study, condition: str) -> list[int]:
    """The digits of :func:`fading_digits` that faded (most faded first)."""
    fd = fading_digits(study, condition)
    return [int(d) for d in fd.digit[fd.faded]]


def summary(study: Study) -> pd.DataFrame:
    """One row per condition: generation-0 and last-generation medians of the key metrics."""
    rows = []
    have = set(study.metrics.metric)
    for cond in study.conditions:
        row = {"condition": cond.label}
        for metric, short in (("latent_spread", "spread"), ("latent_mean_norm", "centre"),
                              ("class_entropy", "entropy_bits"), ("test_neg_elbo", "test_nelbo")):
            if metric not in have:
                continue
            gens, vals = seed_matrix(study.metrics, metric, cond.label)
            row[f"{short}_gen0"] = float(np.median(vals[0]))
            row[f"{short}_gen{int(gens[-1])}"] = float(np.median(vals[-1]))
        if any(m.startswith("frac_") for m in have):
            row["faded_digits"] = ", ".join(map(str, faded_digits(study, cond.label))) or "none"
        rows.append(row)
    return pd.DataFrame(rows)


def save_artifacts(study: Study, folder: str | Path) -> Path:
    """Latent means, sample grids and classifier labels of every run as one compressed .npz."""
    arrays = {}
    for (cond, seed), per_gen in study.artifacts.items():
        slug = re.sub(r"[^A-Za-z0-9.]+", "_", cond).strip("_")
        for g, art in per_gen.items():
            for k in ("latents", "grid", "labels", "real_latents"):
                if k in art:
                    arrays[f"{slug}/seed{seed}/gen{g}/{k}"] = art[k]
    path = Path(folder) / "artifacts.npz"
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    from ..core.storage import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# Figures (each returns a matplotlib Figure; the book's style comes from collapse_utils.chapters.plotting)
# ---------------------------------------------------------------------------------------------
def _int_ticks(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mosaic(grid: np.ndarray, cols: int = 4) -> np.ndarray:
    n = (len(grid) // cols) * cols
    g = grid[:n].reshape(n // cols, cols, 28, 28)
    g = np.pad(g, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=255)
    return g.transpose(0, 2, 1, 3).reshape((n // cols) * 30, cols * 30)


def plot_real_digits(x: torch.Tensor, n: int = 16):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.4, 2.4))
    ax.imshow(_mosaic(vae.to_uint8(x[:n])), cmap="gray_r", vmin=0, vmax=255)
    ax.set_axis_off()
    ax.set_title("real MNIST")
    return fig


def grid_generations(study: Study, wanted=None, seed: int | None = None) -> list[int]:
    """The generations of ``wanted`` (default: all) that this run has, in order."""
    seed = study.seeds[0] if seed is None else seed
    have = sorted(study.artifacts[(study.conditions[0].label, seed)])
    return have if wanted is None else [g for g in sorted(set(wanted)) if g in have]


def plot_sample_grids(study: Study, generations=None, seed: int | None = None):
    """Rows: conditions; columns: the generations of ``generations`` that the run has (default: all);
    each cell 16 digits decoded from N(0, I)."""
    import matplotlib.pyplot as plt

    seed = study.seeds[0] if seed is None else seed
    conds = study.conditions
    gens = grid_generations(study, generations, seed)
    fig, axes = plt.subplots(len(conds), len(gens), figsize=(1.55 * len(gens) + 0.8, 1.6 * len(conds) + 0.4),
                             squeeze=False)
    for i, cond in enumerate(conds):
        arts = study.artifacts[(cond.label, seed)]
        for j, g in enumerate(gens):
            ax = axes[i, j]
            ax.imshow(_mosaic(arts[g]["grid"]), cmap="gray_r", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if i == 0:
                ax.set_title(f"generation {g}")
            if j == 0:
                ax.set_ylabel(cond.label.replace(" / ", "\n"), fontsize="small")
    fig.tight_layout()
    return fig


def plot_latent_spread(study: Study):
    """Spread (sqrt trace Cov) and centre (norm of the mean) of the latent means.

    Lines: medians over seeds; bands: min-max over seeds (with few seeds a range, not an uncertainty)."""
    import matplotlib.pyplot as plt

    from .plotting import band, finish, regime_colors

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    cols = regime_colors([c.regime for c in study.conditions])
    real = [art[0]["real_latents"] for art in study.artifacts.values() if "real_latents" in art.get(0, {})]
    for cond, col in zip(study.conditions, cols):
        for ax, metric in zip(axes, ("latent_spread", "latent_mean_norm")):
            gens, vals = seed_matrix(study.metrics, metric, cond.label)
            band(ax, gens, vals, label=cond.label, color=col, marker="o", ms=3, quantiles=(0, 1))
    if real:
        stats = [vae.latent_stats(r) for r in real]
        axes[0].axhline(np.median([s["latent_spread"] for s in stats]), color="k", ls="--", lw=1,
                        label="real test images")
        axes[1].axhline(np.median([s["latent_mean_norm"] for s in stats]), color="k", ls="--", lw=1)
    finish(axes[0], "generation", r"spread $\sqrt{\mathrm{tr}\,\mathrm{Cov}(\mu)}$",
           "spread of latent means (generation-0 encoder)")
    finish(axes[1], "generation", r"centre $\|\mathrm{mean}(\mu)\|$", "centre of latent means", legend=False)
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylim(bottom=0)
    _int_ticks(*axes)
    fig.tight_layout()
    return fig


def plot_budget(study: Study):
    """The budget study: the latent spread per generation over the previous generation's (left) and
    over generation 0's (right), one line per number of steps per generation, one seed."""
    import matplotlib.pyplot as plt

    from .plotting import finish, palette

    t = budget_table(study)
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.0))
    for (steps, d), col in zip(t.groupby("steps"), palette(max(1, t["steps"].nunique()))):
        lab = f"{int(steps)} step{'' if int(steps) == 1 else 's'}" + (" (main run)" if int(steps) == int(study.steps) else "")
        axes[0].plot(d.generation[1:], d.ratio_to_previous[1:], marker="o", color=col, label=lab)
        axes[1].plot(d.generation, d.ratio_to_gen0, marker="o", color=col, label=lab)
    axes[0].axhline(1, color="grey", lw=1, ls="--")
    axes[1].axhline(1, color="grey", lw=1, ls="--")
    finish(axes[0], "generation", "spread over the previous generation's", "rate of collapse per generation")
    finish(axes[1], "generation", "spread over generation 0's", "spread kept", legend=False)
    _int_ticks(*axes)
    fig.tight_layout()
    return fig


def _top_dim(latents: np.ndarray) -> int:
    return int(np.argmax(latents.var(axis=0)))


def plot_latent_kde(study: Study, seed: int | None = None):
    """KDE per generation of the most-used latent coordinate (largest variance on real test images)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    seed = study.seeds[0] if seed is None else seed
    conds = study.conditions
    ncol = min(2, len(conds))
    nrow = math.ceil(len(conds) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.8 * ncol, 3.6 * nrow), squeeze=False, sharex=True)
    for ax, cond in zip(axes.flat, conds):
        arts = study.artifacts[(cond.label, seed)]
        gens = sorted(arts)
        real = arts[gens[0]].get("real_latents")
        d = _top_dim(real if real is not None else arts[gens[0]]["latents"])
        cols = sns.color_palette("viridis", len(gens))
        for g, col in zip(gens, cols):
            sns.kdeplot(x=arts[g]["latents"][:, d], ax=ax, color=col, label=f"gen {g}", lw=1.5)
        if real is not None:
            sns.kdeplot(x=real[:, d], ax=ax, color="k", ls="--", lw=1, label="real test")
        ax.set_xlabel(rf"latent mean $\mu_{{{d}}}$ (generation-0 encoder)")
        ax.set_ylabel("density")
        ax.set_title(cond.label)
    for ax in axes.flat[len(conds):]:
        ax.set_visible(False)
    axes.flat[0].legend(ncol=2, fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_latent_norm_kde(study: Study, seed: int | None = None):
    """KDE per generation of the distance of each latent mean from the real test images' centre."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    seed = study.seeds[0] if seed is None else seed
    conds = study.conditions
    fig, axes = plt.subplots(1, len(conds), figsize=(3.4 * len(conds), 3.4), squeeze=False, sharey=True)
    for ax, cond in zip(axes.flat, conds):
        arts = study.artifacts[(cond.label, seed)]
        gens = sorted(arts)
        real = arts[gens[0]].get("real_latents")
        centre = real.mean(0) if real is not None else arts[gens[0]]["latents"].mean(0)
        cols = sns.color_palette("viridis", len(gens))
        for g, col in zip(gens, cols):
            sns.kdeplot(x=np.linalg.norm(arts[g]["latents"] - centre, axis=1), ax=ax, color=col,
                        label=f"gen {g}", lw=1.5, cut=0)
        if real is not None:
            sns.kdeplot(x=np.linalg.norm(real - centre, axis=1), ax=ax, color="k", ls="--", lw=1,
                        label="real test", cut=0)
        ax.set_xlabel(r"$\|\mu - \bar\mu_{\mathrm{real}}\|$")
        ax.set_ylabel("density")
        ax.set_title(cond.label, fontsize="small")
    axes.flat[0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_class_distribution(study: Study):
    """Heatmaps: share of generated digits per class (rows) and generation (columns), mean over seeds.

    Two panels per row, one colour scale; with up to eight generations each cell prints its whole
    percent (left blank below 1 %, so the digits the models actually make stand out)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    conds = study.conditions
    ncol = min(2, len(conds))
    nrow = math.ceil(len(conds) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.4 * ncol + 1.0, 3.9 * nrow), squeeze=False,
                             layout="constrained")
    tabs = [class_fractions(study, cond.label).T * 100 for cond in conds]
    vmax = max(20.0, max(float(t.values.max()) for t in tabs))  # one colour scale for all panels
    for k, (ax, cond, tab) in enumerate(zip(axes.flat, conds, tabs)):
        annot = np.where(tab.values >= 1, np.vectorize(lambda v: f"{v:.0f}")(tab.values), "") \
            if tab.shape[1] <= 8 else False
        sns.heatmap(tab, ax=ax, cmap="mako_r", vmin=0, vmax=vmax, annot=annot, fmt="",
                    annot_kws={"fontsize": 10}, cbar=False)
        ax.set_xlabel("generation")
        ax.set_ylabel("digit (classifier label)" if k % ncol == 0 else "")
        ax.set_title(cond.label)
        ax.tick_params(axis="y", rotation=0)
    for ax in axes.flat[len(conds):]:
        ax.set_visible(False)
    fig.colorbar(axes.flat[0].collections[0], ax=axes, shrink=0.8, label="% of generated images")
    return fig


def plot_class_entropy(study: Study):
    """Entropy of the class distribution (bits) and the classifier's mean confidence; median and min-max
    over seeds."""
    import matplotlib.pyplot as plt

    from .plotting import band, finish, regime_colors

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.0))
    for cond, col in zip(study.conditions, regime_colors([c.regime for c in study.conditions])):
        for ax, metric in zip(axes, ("class_entropy", "classifier_confidence")):
            gens, vals = seed_matrix(study.metrics, metric, cond.label)
            band(ax, gens, vals, label=cond.label, color=col, marker="o", ms=3, quantiles=(0, 1))
    axes[0].axhline(np.log2(10), color="k", ls="--", lw=1, label="ten equal classes")
    finish(axes[0], "generation", "entropy of predicted classes (bits)", "how many digits are still made")
    finish(axes[1], "generation", "mean max. class probability", "how digit-like the samples look",
           legend=False)
    _int_ticks(*axes)
    fig.tight_layout()
    return fig


def plot_test_elbo(study: Study):
    """Negative ELBO per real test image under each generation's VAE (nats); median and min-max over seeds."""
    import matplotlib.pyplot as plt

    from .plotting import band, finish, regime_colors

    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for cond, col in zip(study.conditions, regime_colors([c.regime for c in study.conditions])):
        gens, vals = seed_matrix(study.metrics, "test_neg_elbo", cond.label)
        band(ax, gens, vals, label=cond.label, color=col, marker="o", ms=3, quantiles=(0, 1))
    finish(ax, "generation", "negative ELBO of real test images (nats)",
           "what each generation still knows about real digits")
    _int_ticks(ax)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Claims of the paper tested by this run, and the numbers the page's prose glues
# ---------------------------------------------------------------------------------------------
def _matrix(study: Study, metric: str, condition: str | None) -> np.ndarray | None:
    """values[len(generations), n_seeds] of a metric under a condition, or None if the run lacks it."""
    if condition is None or metric not in set(study.metrics.metric):
        return None
    return seed_matrix(study.metrics, metric, condition)[1]


def _condition(study: Study, regime: str, synthetic: str | None = None) -> str | None:
    """The label of the first condition whose regime starts with ``regime`` (and has that mode)."""
    for c in study.conditions:
        if c.regime.startswith(regime) and synthetic in (None, c.synthetic):
            return c.label
    return None


def _official(study: Study) -> str | None:
    """The official notebook's condition (replace, fresh samples every batch), else the first replace one."""
    return _condition(study, "replace", "fresh") or _condition(study, "replace")


def _by_seeds(holds, visible: bool) -> str:
    """Verdict from one boolean per seed: reproduced when every seed shows the claim, contradicted when
    none does, not visible when the seeds disagree (or the run cannot tell at all)."""
    holds = np.asarray(holds, dtype=bool)
    visible = bool(visible) and holds.size > 0
    return judge(holds.all(), visible and (holds.all() or not holds.any()))


def _seeds_gate(holds, too_small: str) -> str:
    """The gate of a "not visible" verdict of :func:`_by_seeds`: what the run lacks (``too_small``), or
    seeds that agree."""
    holds = np.asarray(holds, dtype=bool)
    if too_small or holds.size == 0:
        return too_small or "a measurement of this claim"
    return f"seeds that agree (here {int(holds.sum())} of {holds.size} show it)"


def _claim(cid, statement, paper, measured, evidence, holds, too_small: str, extra: dict,
           kind: str = "reproduction", collapse: str = "") -> Claim:
    """A claim judged seed by seed; ``too_small`` says what the run lacks to tell ('' when it can)."""
    verdict = _by_seeds(holds, not too_small)
    gate = _seeds_gate(holds, too_small) if verdict == NOT_VISIBLE else ""
    return Claim(cid, statement, paper, measured, evidence, verdict, extra=extra, gate=gate, kind=kind,
                 collapse=collapse)


def _last_generation(study: Study, params) -> int:
    """The run's last generation: the loop's (``study.generations``), else the parameters'."""
    return int(study.generations if study.generations is not None else params["generations"])


def _med(x) -> float:
    return float(np.median(x)) if x is not None and len(x) else float("nan")


def gen0_entropy(study: Study) -> float:
    """Median over seeds of the class entropy (bits) of generation 0's samples (NaN without a classifier)."""
    m = _matrix(study, "class_entropy", study.conditions[0].label if study.conditions else None)
    return _med(m[0]) if m is not None else float("nan")


def reference_curve() -> pd.DataFrame:
    """The reference VAE's learning curve (:data:`REFERENCE_CURVE`) as a table."""
    return pd.DataFrame(REFERENCE_CURVE, columns=["epoch", "classifier_confidence", "test_neg_elbo"])


def reference_epochs(neg_elbo) -> np.ndarray:
    """Where a real-test negative ELBO sits on the reference VAE's learning curve: the epoch (linear
    interpolation between measured epochs) after which the paper-trained VAE reached it.  0 when it is
    worse than the reference after its first epoch, inf when better than after its last; NaN stays NaN."""
    x = np.atleast_1d(np.asarray(neg_elbo, dtype=float))
    ep = np.array([r[0] for r in REFERENCE_CURVE], dtype=float)
    ne = np.array([r[2] for r in REFERENCE_CURVE], dtype=float)
    out = np.interp(-x, -ne, ep)  # the curve falls: interpolate on its negation, which rises
    out = np.where(x > ne[0], 0.0, np.where(x < ne[-1], np.inf, out))
    return np.where(np.isfinite(x), out, np.nan)


def epochs_text(n: float) -> str:
    """An epoch count of :func:`reference_epochs` in words."""
    last = REFERENCE_CURVE[-1][0]
    if not finite(n) and not (isinstance(n, float) and math.isinf(n)):
        return "not measured"
    if math.isinf(n):
        return f"more than {last}"
    if n <= 0:
        return f"fewer than {REFERENCE_CURVE[0][0]}"
    return f"{n:.1f}"


def curve_position(n: float) -> str:
    """Where an epoch count of :func:`reference_epochs` puts a model on the reference VAE's learning
    curve, as a phrase that reads true at either end of the curve ("worse than ... after its first
    epoch" rather than "as good as ... after fewer than 1 epoch")."""
    first, last = REFERENCE_CURVE[0], REFERENCE_CURVE[-1]
    if not finite(n) and not (isinstance(n, float) and math.isinf(n)):
        return "not placed on the paper-trained VAE's learning curve (not measured)"
    if math.isinf(n):
        return f"better than the paper-trained VAE after all {last[0]} of its epochs ({last[2]:.1f} nats)"
    if n <= 0:
        return (f"worse than the paper-trained VAE after the first of its {last[0]} epochs ({first[2]:.1f} "
                "nats), so below the start of its learning curve")
    return (f"as good as the paper-trained VAE after {n:.1f} of its {last[0]} epochs (linear between the "
            "measured epochs)")


def gen0_confidence_threshold() -> tuple[float, str]:
    """(threshold, the criterion in words) of the confidence part of :func:`gen0_claim`."""
    ref = REFERENCE_GEN0_CONFIDENCE
    rel = ref - GEN0_CONFIDENCE_TOLERANCE if finite(ref) else float("nan")
    if finite(rel) and rel < GEN0_CONFIDENCE_FLOOR:
        return rel, (f"within {GEN0_CONFIDENCE_TOLERANCE:.2f} of the reference VAE's "
                     f"{ref:.4f}, i.e. at least {rel:.4f}")
    return GEN0_CONFIDENCE_FLOOR, f"at least {GEN0_CONFIDENCE_FLOOR:.2f}"


def gen0_claim(study: Study, params) -> Claim:
    """Generation 0 is a trained model that draws recognisable digits, judged in every seed by where it
    sits on the paper-trained reference VAE's learning curve and by its samples:

    - its real-test negative ELBO is at least as good as the reference's after MIN_REFERENCE_EPOCHS
      epochs (:func:`reference_epochs`, the epoch count it matches, is glued as ``epochs``);
    - the classifier's mean top-class probability on its samples reaches :func:`gen0_confidence_threshold`;
    - its samples span several digits (class entropy at least MIN_GEN0_ENTROPY bits).

    A generation 0 that fails any of them -- a fit of a few steps, as in the smoke preset -- contradicts
    the claim; the run is too small to tell only without a classifier or with fewer than two seeds."""
    thr, words = gen0_confidence_threshold()
    first = study.conditions[0].label if study.conditions else None
    m, ent = _matrix(study, "classifier_confidence", first), _matrix(study, "class_entropy", first)
    ne = _matrix(study, "test_neg_elbo", first)
    nan = float("nan")
    ep = reference_epochs(ne[0]) if ne is not None else np.array([nan])
    n_med = float(np.median(ep)) if len(ep) else nan
    extra = {"gen0": _med(m[0]) if m is not None else nan, "min": float(np.min(m[0])) if m is not None else nan,
             "threshold": thr, "reference": REFERENCE_GEN0_CONFIDENCE, "criterion": words,
             "entropy": _med(ent[0]) if ent is not None else nan,
             "neg_elbo": _med(ne[0]) if ne is not None else nan, "epochs": n_med, "epochs_text": epochs_text(n_med),
             "position": curve_position(n_med),
             "epochs_min_text": epochs_text(float(np.min(ep))) if len(ep) else "not measured",
             "min_epochs": MIN_REFERENCE_EPOCHS, "reference_epochs": REFERENCE_CURVE[-1][0]}
    too_small = ("a classifier and the real-test negative ELBO" if m is None or ent is None or ne is None else
                 f"at least 2 seeds (here {len(study.seeds)})" if len(study.seeds) < 2 else "")
    if m is None or ent is None or ne is None:
        measured, holds = "not measured by this run (no classifier or no real test images)", np.array([], dtype=bool)
    else:
        holds = (ep >= MIN_REFERENCE_EPOCHS) & (m[0] >= thr) & (ent[0] >= MIN_GEN0_ENTROPY)
        measured = (f"generation 0's real-test negative ELBO {extra['neg_elbo']:.1f} nats (median over seeds): "
                    f"{extra['position']} (the seed lowest on that curve: {extra['epochs_min_text']} of its epochs); its samples: mean top-class probability {extra['gen0']:.3f} "
                    f"(lowest {extra['min']:.3f}), class entropy {extra['entropy']:.2f} bits; criterion: at least "
                    f"{MIN_REFERENCE_EPOCHS} epochs, confidence {words}, and at least {MIN_GEN0_ENTROPY:g} bits; "
                    f"met in {int(holds.sum())} of {len(holds)} seeds")
    paper = (f"digits (sample figure); the reference: a VAE trained once on a CPU with the paper's settings "
             f"(not a number from the paper), {REFERENCE_CURVE[-1][2]:.1f} nats and confidence "
             f"{REFERENCE_GEN0_CONFIDENCE:.4f} after {REFERENCE_CURVE[-1][0]} epochs")
    return _claim("gen0-draws-digits",
                  "The original model (generation 0) is trained far enough to draw recognisable digits, as in the "
                  "paper's sample figure", paper, measured, "fig-03-entropy", holds, too_small, extra,
                  kind="reproduction", collapse="none")


def budget_table(study: Study) -> pd.DataFrame:
    """The budget study per (steps, generation): the latent spread, its ratio to the previous
    generation's (the per-generation rate of collapse) and to generation 0's.  Empty without a study."""
    b = study.budget
    if b is None or b.empty:
        return pd.DataFrame(columns=["steps", "generation", "latent_spread", "ratio_to_previous", "ratio_to_gen0"])
    t = (b[b.metric == "latent_spread"].pivot_table(index=["steps", "generation"], values="value")
         .rename(columns={"value": "latent_spread"}).reset_index().sort_values(["steps", "generation"]))
    g = t.groupby("steps")["latent_spread"]
    t["ratio_to_previous"] = t["latent_spread"] / g.shift(1)
    t["ratio_to_gen0"] = t["latent_spread"] / g.transform("first")
    return t.reset_index(drop=True)


def budget_note(study: Study) -> str:
    """Markdown: one bullet per budget with the per-generation ratios of the latent spread."""
    t = budget_table(study)
    if t.empty:
        return "The budget study is not part of this run (`budget_factors` is empty)."
    lines = []
    main = int(study.steps)
    for steps, d in t.groupby("steps"):
        r = d["ratio_to_previous"].dropna()
        lines.append(f"- {_steps(steps)} per generation{' (the main run)' if int(steps) == main else ''}: "
                     f"ratio to the previous generation " + ", ".join(f"{x:.2f}" for x in r)
                     + f" (generations {int(d.generation.min()) + 1}–{int(d.generation.max())}); "
                     f"generation {int(d.generation.max())} over generation 0: ×{d.ratio_to_gen0.iloc[-1]:.2f}")
    return "\n".join(lines)


def _steps(n) -> str:
    return f"{int(n)} step{'' if int(n) == 1 else 's'}"


def budget_sentence(study: Study) -> str:
    """Markdown: what the budget study shows, e.g. "after 3 generations the spread kept ×0.55 of
    generation 0's with 188 steps per generation, ×0.60 with 375 and ×0.64 with 750"."""
    t = budget_table(study)
    if t.empty:
        return "this run has no budget study (`budget_factors` is empty)"
    last = t[t.generation == t.generation.max()].sort_values("steps")
    parts = [f"×{r:.2f} with {_steps(n)}" for n, r in zip(last.steps, last.ratio_to_gen0)]
    return (f"in this run's budget study (one seed), after {int(t.generation.max())} generations the spread "
            f"kept {', '.join(parts)} per generation")


def budget_claim(study: Study, params) -> Claim:
    """The collapse rate depends on the training budget: with more gradient steps per generation the
    latent spread keeps more of generation 0's (last generation's ratio to generation 0 grows with the
    steps, one seed).  Reproduced when the ratio rises strictly with the steps, contradicted when the
    smallest budget keeps at least as much as the largest, not visible when the budgets are not ordered
    either way or the run is too small (fewer than 3 generations, or a generation 0 that draws no
    digits); not run without a study."""
    t = budget_table(study)
    statement = ("The rate of collapse depends on the training budget: with more gradient steps per generation "
                 "(less functional approximation error) the latent spread shrinks more slowly")
    paper = "approximation error is one of the paper's three error sources (not measured against steps there)"
    if t.empty:
        return Claim("budget-rate", statement, paper, "not run: budget_factors is empty", "fig-03-budget", NOT_RUN,
                     extra={"ratios": "not run", "steps": "not run", "generations": 0}, kind="comparison",
                     collapse="variance")
    last = t[t.generation == t.generation.max()].sort_values("steps")
    steps, ratio = last["steps"].to_numpy(), last["ratio_to_gen0"].to_numpy()
    gens = int(t.generation.max())
    lacks = []
    if len(steps) < 2:
        lacks.append("at least two budgets")
    if gens < 3:
        lacks.append(f"at least 3 generations in the budget study (here {gens})")
    ent = gen0_entropy(study)
    if not finite(ent) or ent < MIN_GEN0_ENTROPY:
        lacks.append(f"a generation 0 that draws several digits (class entropy at least {MIN_GEN0_ENTROPY:g} bits)")
    if not finite(*ratio):
        lacks.append("finite latent spreads")
    rising = len(ratio) > 1 and bool(np.all(np.diff(ratio) > 0))
    falling = len(ratio) > 1 and ratio[0] >= ratio[-1]
    verdict = judge(rising, visible=not lacks and (rising or falling))
    gate = "; ".join(lacks) if lacks else ("budgets ordered one way or the other, which here they are not"
                                           if verdict == NOT_VISIBLE else "")
    pairs = ", ".join(f"{_steps(n)} ×{r:.2f}" for n, r in zip(steps, ratio))
    return Claim("budget-rate", statement, paper,
                 f"latent spread at generation {gens} over generation 0 (seed {study.seeds[0] if study.seeds else 0}): "
                 f"{pairs}", "fig-03-budget", verdict, gate=gate, kind="comparison", collapse="variance",
                 extra={"ratios": ", ".join(f"{r:.2f}" for r in ratio), "steps": ", ".join(str(int(n)) for n in steps),
                        "generations": gens, "low": float(ratio[0]), "high": float(ratio[-1])})


def too_small(study: Study, params) -> str:
    """What the run lacks to test the claims about later generations ('' when it can tell): two or more
    seeds, two or more generations after generation 0, and a generation 0 that makes digits at all --
    its samples, labelled by the classifier, spread over several classes (entropy at least
    MIN_GEN0_ENTROPY bits; ten equal classes give log2 10)."""
    ent = gen0_entropy(study)
    lacks = []
    if len(study.seeds) < 2:
        lacks.append(f"at least 2 seeds (here {len(study.seeds)})")
    if _last_generation(study, params) < 2:
        lacks.append(f"at least 2 generations after generation 0 (here {_last_generation(study, params)})")
    if not finite(ent):
        lacks.append("a classifier, to tell whether generation 0 draws several digits")
    elif ent < MIN_GEN0_ENTROPY:
        lacks.append(f"a generation 0 that draws several digits: a class entropy of at least "
                     f"{MIN_GEN0_ENTROPY:g} bits, here {ent:.2f}")
    return "; ".join(lacks)


def can_tell(study: Study, params) -> bool:
    """Whether the run can test the claims about later generations (:func:`too_small` lacks nothing)."""
    return not too_small(study, params)


def _replace_conditions(study: Study) -> list[str]:
    return [c.label for c in study.conditions if c.regime == "replace"]


def _replace_trend(study: Study, params, cid: str, metric: str, falls: bool, text: tuple[str, str, str],
                   unit: str, fmt: str, collapse: str = "") -> Claim:
    """A claim that ``metric`` falls (or rises) from generation 0 to the last generation under every
    replace condition, judged seed by seed.  Extras: the official condition's medians over seeds and
    the median over seeds of each seed's ratio last / generation 0 (the ratio of :func:`spread_table`)."""
    statement, paper, evidence = text
    parts, holds = [], []
    for label in _replace_conditions(study):
        m = _matrix(study, metric, label)
        if m is None:
            continue
        h = m[-1] < m[0] if falls else m[-1] > m[0]
        holds += list(h)
        parts.append(f"{label}: {np.median(m[0]):{fmt}} → {np.median(m[-1]):{fmt}}{unit}, "
                     f"{'lower' if falls else 'higher'} in {int(h.sum())} of {len(h)} seeds")
    m = _matrix(study, metric, _official(study))
    nan = float("nan")
    extra = {"gen0": _med(m[0]) if m is not None else nan, "last": _med(m[-1]) if m is not None else nan}
    with np.errstate(divide="ignore", invalid="ignore"):
        extra["ratio"] = _med(m[-1] / m[0]) if m is not None and (m[0] != 0).all() else nan
    measured = (f"medians over seeds, generation 0 → {_last_generation(study, params)}: " + "; ".join(parts)
                if parts else "not measured by this run")
    return _claim(cid, statement, paper, measured, evidence, holds, too_small(study, params), extra,
                  collapse=collapse)


def _mitigation(study: Study, params, cid: str, regime: str, statement: str, paper: str) -> Claim:
    """Keeping real data limits the rise of the real-test negative ELBO: paired by seed (generation 0 is
    the same model in every condition), the rise under ``regime`` is smaller than under replace/fixed.
    Judged only where replace/fixed itself got worse in every seed (else there is nothing to limit);
    "not run at this preset" where the run has no such condition."""
    label, base = _condition(study, regime, "fixed"), _condition(study, "replace", "fixed")
    m, b = _matrix(study, "test_neg_elbo", label), _matrix(study, "test_neg_elbo", base)
    nan = float("nan")
    if m is None or b is None:
        missing = " and no ".join(f"`{'keep_real(f)' if r == 'keep_real' else r}/fixed`"
                                  for r, lab in ((regime, label), ("replace", base)) if lab is None)
        measured = (f"not run: this run's conditions include no {missing}" if missing
                    else "not measured by this run")
        return Claim(cid, statement, paper, measured, "fig-03-elbo", NOT_RUN if missing else NOT_VISIBLE,
                     extra={"rise": nan, "rise_replace": nan, "share": nan,
                            "condition": label or "none in this run"},
                     gate="" if missing else "the real-test negative ELBO", kind="reproduction",
                     collapse="error-bounded")
    rise, rise_base = m[-1] - m[0], b[-1] - b[0]
    holds = rise < rise_base
    lacks = too_small(study, params)
    worse = rise_base > 0
    if not lacks and not worse.all():
        lacks = f"`{base}` to get worse in every seed (here in {int(worse.sum())} of {worse.size})"
    extra = {"rise": _med(rise), "rise_replace": _med(rise_base), "condition": label}
    extra["share"] = extra["rise"] / extra["rise_replace"] if extra["rise_replace"] > 0 else nan
    measured = (f"rise of the real-test negative ELBO, generation 0 → {_last_generation(study, params)}: "
                f"{extra['rise']:+.1f} nats under {label} against {extra['rise_replace']:+.1f} under {base} "
                f"(medians over seeds); smaller in {int(holds.sum())} of {len(holds)} seeds")
    return _claim(cid, statement, paper, measured, "fig-03-elbo", holds, lacks, extra, collapse="error-bounded")


def claims(study: Study, params: dict) -> list[Claim]:
    """The paper's statements about the VAE that this run tests.

    The first, :func:`gen0_claim`, checks generation 0 alone against the reference VAE; the others
    compare generation 0 with the last generation (the mitigation claims paired with replace/fixed).
    Every verdict is judged seed by seed: reproduced when every seed shows it, contradicted when none
    does, not visible at this preset when the seeds disagree or the run is too small to tell (see
    :func:`too_small`; the claim's ``gate`` says which), not run at this preset when a mitigation
    claim's condition is not part of the run.
    """
    out = [
        _replace_trend(study, params, "spread-shrinks", "latent_spread", True, (
            "Seen through the generation-0 encoder, the latent means of generated samples concentrate: "
            "their spread shrinks over generations trained on generated data",
            "spread shrinks", "fig-03-spread"), "", ".2f", collapse="variance"),
        _replace_trend(study, params, "diversity-falls", "class_entropy", True, (
            "The generated digits lose diversity: the entropy of their classes falls over generations",
            "less diverse samples", "fig-03-entropy"), " bits", ".2f", collapse="modes"),
        _replace_trend(study, params, "real-elbo-worse", "test_neg_elbo", False, (
            "Models trained on generated data explain real data worse: the negative ELBO of real test "
            "images rises over generations",
            "rises", "fig-03-elbo"), " nats", ".1f", collapse="error-rises"),
        _mitigation(study, params, "accumulate-mitigates", "accumulate",
                    "Accumulating all real and generated data limits the degradation",
                    "stable under accumulate (Gerstgrasser et al. 2024)"),
        _mitigation(study, params, "keep-real-mitigates", "keep_real",
                    "Keeping a share of real data in every generation limits the degradation",
                    "slight degradation with 10 % real data (the paper's LM setting b)"),
    ]
    out.insert(0, gen0_claim(study, params))
    out.append(budget_claim(study, params))
    official = _official(study)
    has_fracs = bool(study.metrics.metric.str.startswith("frac_").any())
    faded = faded_digits(study, official) if official and has_fracs else []
    next(c for c in out if c.id == "diversity-falls").extra.update(faded=", ".join(map(str, faded)) or "none", n_faded=len(faded))
    for c in out:
        c.chapter = "03"
    return out


def page_numbers(study: Study, params: dict) -> dict:
    """Run facts the page's prose glues (as ``c03_<key>``), beyond the claims' own numbers."""
    real = [art[0]["real_latents"] for art in study.artifacts.values() if "real_latents" in art.get(0, {})]
    spread = _matrix(study, "latent_spread", study.conditions[0].label if study.conditions else None)
    return {
        "seeds": len(study.seeds),
        "last_generation": _last_generation(study, params),
        "steps": int(study.steps or steps_per_generation(params)),
        "n_train": int(params["n_train"]),
        "lr": float(params["lr"]),
        "gen0_entropy": gen0_entropy(study),
        "gen0_spread": _med(spread[0]) if spread is not None else float("nan"),
        "real_spread": _med([vae.latent_stats(r)["latent_spread"] for r in real]) if real else float("nan"),
    }


def replace_scope(study: Study) -> str:
    """Markdown: the replace conditions this run judges the trend claims on, e.g. "under `replace /
    fresh` and `replace / fixed` (both readings), every seed"."""
    labels = _replace_conditions(study)
    if not labels:
        return "under `replace` (not run here)"
    both = " (both readings)" if len({c.synthetic for c in study.conditions if c.regime == "replace"}) == 2 else ""
    return f"under {' and '.join(f'`{lab}`' for lab in labels)}{both}, every seed"


def glue_page_numbers(study: Study, params: dict) -> dict:
    """Glue :func:`page_numbers` for the prose (``{glue:text}`c03_steps```) and return them."""
    from .claims import glue

    nums = page_numbers(study, params)
    for k, v in nums.items():
        glue(f"c03_{k}", v)
    glue("c03_spread_note", spread_note(study))
    glue("c03_elbo_rise_note", elbo_rise_note(study))
    glue("c03_conditions", ", ".join(f"`{c.label}`" for c in study.conditions))
    glue("c03_replace_scope", replace_scope(study))
    glue("c03_budget_note", budget_note(study))
    glue("c03_budget_sentence", budget_sentence(study))
    glue("c03_reference_epochs", int(REFERENCE_CURVE[-1][0]))
    glue("c03_min_reference_epochs", int(MIN_REFERENCE_EPOCHS))
    glue("c03_grid_generations", ", ".join(map(str, grid_generations(study, params.get("grid_generations")))))
    return nums
