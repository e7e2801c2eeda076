"""The recursion engine: fit, sample, measure, repeat.

Every experiment in the book is the same loop.  Generation 0 is a model fitted
to the real data; generation ``g + 1`` is a fresh model fitted to the training
set that the :class:`~collapse_utils.core.regimes.Regime` assembles from the
generation-``g`` model's samples (and, depending on the regime, real or earlier
data).  An experiment supplies three methods:

``fit(data, ctx) -> model``
``sample(model, n, ctx) -> data``          ``n`` new samples
``evaluate(model, composition, ctx) -> {metric: value}``

where ``value`` is a float, or for experiments vectorised over seeds
(``batched = True``; data shaped ``(n_seeds, n_samples, ...)``) an array with one
value per seed.  The engine owns the generation loop, seeding (every random draw
comes from ``ctx.rng(stream)``, which depends only on the seed, the generation and
the stream), the data regime, a progress bar, per-generation checkpoints
written atomically, resumption after an interruption, and the tidy results table.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .progress import progress_disabled
from .regimes import Composition, Regime, parse_regime
from .seeding import derive_seed, make_rng
from .storage import atomic_write_bytes, dump_state, fingerprint, load_state, read_cache, state_record

__all__ = ["Loop", "Experiment", "GenerationContext", "RecursionResult", "run_recursion", "atomic_write_bytes",
           "progress_disabled", "source_hash", "Checkpoints", "record_generations"]


CHECKPOINT_VERSION = 4  # 4: an .npz state file (numpy arrays + JSON manifest), no pickle
KEEP_CHECKPOINTS = 2  # the newest two: a damaged newest one costs one generation, not the run
TIDY_COLUMNS = ["experiment", "regime", "seed", "generation", "metric", "value"]


class Experiment:
    """Base class (duck typing is enough; this documents the protocol)."""

    name: str = "experiment"
    batched: bool = False

    def fit(self, data: Any, ctx: GenerationContext) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self, model: Any, n: int, ctx: GenerationContext) -> Any:  # pragma: no cover
        raise NotImplementedError

    def evaluate(self, model: Any, comp: Composition, ctx: GenerationContext) -> dict:  # pragma: no cover
        return {}

    # optional: return True once further generations cannot change anything (the run then ends early)
    def should_stop(self, model: Any, ctx: GenerationContext) -> bool:
        return False

    # optional: state that must survive a resume (e.g. a generation-0 reference model), made of what a
    # state file holds (storage.dump_state): numpy arrays and scalars, torch tensors, plain values,
    # lists, tuples and dicts of them, and dataclasses declared with storage.state_record
    def get_state(self) -> Any:
        return None

    def set_state(self, state: Any) -> None:
        pass


@dataclass
class GenerationContext:
    """What one generation's fit/sample/evaluate calls know about the run."""

    seed: int
    generation: int
    seeds: tuple[int, ...] | None = None  # batched experiments: the seed of every row
    artifact_dir: Path | None = None

    def rng(self, stream: str = "sample") -> np.random.Generator:
        return make_rng(self.seed, self.generation, stream)

    def int_seed(self, stream: str = "fit") -> int:
        return derive_seed(self.seed, self.generation, stream)

    def next_regime_rng(self) -> np.random.Generator:
        """The generator the regime composes the *next* generation's training set with (its draw of kept
        real samples can be known in advance with ``Regime.kept_real_indices``)."""
        return _regime_rng(self.seed, self.generation + 1)


def _regime_rng(seed: int, generation: int) -> np.random.Generator:
    return make_rng(seed, generation, "regime")


@dataclass
class RecursionResult:
    """Tidy metrics (one row per seed x generation x metric) and the data bookkeeping."""

    metrics: pd.DataFrame
    bookkeeping: pd.DataFrame
    models: dict[int, Any] = field(default_factory=dict)
    resumed_from: int | None = None

    def wide(self) -> pd.DataFrame:
        """Metrics as columns, one row per (seed, generation)."""
        idx = [c for c in self.metrics.columns if c not in ("metric", "value")]
        return self.metrics.pivot_table(index=idx, columns="metric", values="value").reset_index()


@dataclass
class Loop:
    """The pieces of a chapter's main recursion, assembled on its page and handed to its ``run``.

    ``experiment`` fits, samples and measures (see :class:`Experiment`); ``regime`` composes each
    generation's training set (``"replace"``, ``"keep_real(0.1)"``, ``"accumulate"``, a
    :class:`~collapse_utils.core.regimes.Regime`); ``generations`` counts the rounds after generation 0.
    Swap any of them in the notebook and rerun: seeds, workers, checkpoints and caches stay behind
    the chapter's one ``run(p, loop, ...)`` call.
    """

    experiment: Any
    regime: str | Regime = "replace"
    generations: int = 1

    def __post_init__(self):
        self.regime = parse_regime(self.regime)
        if int(self.generations) != self.generations or self.generations < 0:
            raise ValueError(f"generations must be a non-negative integer, got {self.generations!r}")
        for method in ("fit", "sample"):
            if not callable(getattr(self.experiment, method, None)):
                raise TypeError(f"the loop's experiment has no {method}() method: {self.experiment!r}")


def source_hash(*modules, length: int = 16) -> str:
    """A hash of the source code of modules (:func:`~collapse_utils.core.storage.fingerprint`)."""
    return fingerprint(*modules, length=length)


def _code_version(cls: type) -> str:
    """A hash of the package module defining the experiment, and the torch thread count it computes
    with: a checkpoint written by other code, or with other threads, is not resumed (its numbers
    could differ in the last bits from what this run computes)."""
    from .parallel import thread_tag

    for klass in cls.__mro__:
        if klass.__module__.startswith("collapse_utils.") and klass.__module__ in sys.modules:
            return f"{source_hash(sys.modules[klass.__module__])}-{thread_tag()}"
    return f"{cls.__qualname__}-{thread_tag()}"


_CKPT_RE = re.compile(r"^state-(\d{5})\.npz$")
_PICKLE_RE = re.compile(r"^state(-\d{5})?\.pkl$")  # written by older code (format 3 and older), or planted
state_record(Composition)  # a checkpoint holds the next generation's training set

# what a checkpoint holds: key -> the type(s) its value must have
_CHECKPOINT_KEYS = {"complete": bool, "version": int, "fingerprint": str, "code": str, "next_generation": int,
                    "composition": Composition, "records": list, "books": list, "models": dict,
                    "experiment_state": object}


def _load_state(path: Path) -> dict:
    """A checkpoint file, read without running any code from it (:func:`~collapse_utils.core.storage.load_state`),
    and checked to have the shape this engine writes."""
    state = load_state(path)
    if not isinstance(state, dict) or set(state) != set(_CHECKPOINT_KEYS):
        raise ValueError("not a checkpoint of this engine")
    for key, kind in _CHECKPOINT_KEYS.items():
        if not isinstance(state[key], kind) or (kind is int and isinstance(state[key], bool)):
            raise ValueError(f"not a checkpoint of this engine ({key} is a {type(state[key]).__name__})")
    for r in state["records"]:
        if not (isinstance(r, tuple) and len(r) == 3 and type(r[0]) is int and isinstance(r[1], str)
                and isinstance(r[2], np.ndarray)):
            raise ValueError("not a checkpoint of this engine (a metrics record is not (generation, metric, values))")
    if not all(isinstance(b, dict) and type(b.get("generation")) is int for b in state["books"]):
        raise ValueError("not a checkpoint of this engine (a bookkeeping row without its generation)")
    if not all(type(g) is int for g in state["models"]):
        raise ValueError("not a checkpoint of this engine (kept models not keyed by generation)")
    return state


def _refuse_pickle(path: Path):
    raise ValueError("a Python pickle (written by older code, or planted): loading it could run code, so it is "
                     "never read")


class Checkpoints:
    """A run's checkpoints: ``state-<next generation>.npz`` files (the newest two are kept) and a
    plain-text ``journal.log`` saying what each execution did (started, resumed, finished).

    A checkpoint is a state file (:func:`~collapse_utils.core.storage.dump_state`): the arrays in an
    ``.npz`` archive read with ``allow_pickle=False``, the rest in a JSON manifest, so reading a
    results folder someone else wrote never runs code.  Pickles (``state-*.pkl``, written by older
    code) are never loaded: they are named in a warning, removed, and the run recomputed."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def files(self) -> list[Path]:
        """Checkpoint files, newest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _CKPT_RE.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def log(self, message: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        with open(self.folder / "journal.log", "a") as fh:
            fh.write(f"{stamp} {message}\n")

    def journal(self) -> list[str]:
        path = self.folder / "journal.log"
        return [line.split(" ", 1)[1] for line in path.read_text().splitlines()] if path.exists() else []

    def load_newest(self) -> dict | None:
        """The newest readable checkpoint; an unreadable one is named in a warning, removed, and the
        one before it is used (that generation is recomputed).  A pickle is never read: it is
        reported and removed like a damaged file."""
        if self.folder.is_dir():
            for path in sorted(p for p in self.folder.iterdir() if _PICKLE_RE.match(p.name)):
                read_cache(path, _refuse_pickle, "checkpoint")
                self.log(f"pickled checkpoint {path.name} removed (never loaded)")
        for path in self.files():  # truncated, overwritten or foreign: named, removed, the previous one used
            state = read_cache(path, _load_state, "checkpoint")
            if state is None:
                self.log(f"unreadable checkpoint {path.name} removed")
                continue
            state["_file"] = path.name
            return state
        return None

    def save(self, state: dict) -> None:
        path = self.folder / f"state-{state['next_generation']:05d}.npz"
        atomic_write_bytes(path, dump_state(state))
        for old in self.files()[KEEP_CHECKPOINTS:]:
            old.unlink(missing_ok=True)

    def clear(self) -> None:
        for path in self.files():
            path.unlink(missing_ok=True)


def record_generations(generations: int, every: int | None = None, extra: Iterable[int] = (),
                       points: int = 40) -> np.ndarray:
    """Generations worth evaluating (``run_recursion``'s ``record``): 0..10, about ``points`` log-spaced
    ones up to the last (plenty for log-x plots, few table rows), every ``every``-th and ``extra``."""
    g = np.concatenate([np.arange(min(11, generations + 1)),
                        np.round(np.logspace(0, np.log10(max(generations, 1)), points)).astype(int),
                        np.arange(0, generations + 1, every) if every else np.zeros(0, dtype=int),
                        np.asarray(list(extra), dtype=int), [generations]])
    return np.unique(g[(g >= 0) & (g <= generations)])


def _sizes_fn(sizes: int | Sequence[int] | Callable[[int], int] | None, n_real: int) -> Callable[[int], int]:
    if sizes is None:
        return lambda g: n_real
    if callable(sizes):
        return lambda g: int(sizes(g))
    if isinstance(sizes, (int, np.integer)):
        return lambda g: int(sizes)
    seq = [int(s) for s in sizes]
    return lambda g: seq[min(g, len(seq) - 1)]


def _as_seed_values(value: Any, n_seeds: int, metric: str) -> np.ndarray:
    arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=float).reshape(-1)
    if arr.size == 1 and n_seeds > 1:
        arr = np.repeat(arr, n_seeds)
    if arr.size != n_seeds:
        raise ValueError(f"metric {metric!r} returned {arr.size} values for {n_seeds} seed(s)")
    return arr


def run_recursion(
    experiment: Experiment,
    real: Any,
    generations: int,
    regime: str | Regime = "replace",
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    sizes: int | Sequence[int] | Callable[[int], int] | None = None,
    record: Iterable[int] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = True,
    keep_models: bool | Iterable[int] = False,
    progress: bool = True,
    columns: dict[str, Any] | None = None,
) -> RecursionResult:
    """Run ``generations`` rounds of fit -> sample -> compose after generation 0.

    Parameters
    ----------
    experiment: object with ``fit``, ``sample``, ``evaluate`` (see the module docstring).
    real: the real data (generation 0's training set); shape ``(n_seeds, n, ...)`` if batched.
    generations: the last generation index; ``generations + 1`` models are fitted.
    regime: ``"replace"``, ``"keep_real(0.1)"``, ``"accumulate"`` or ``"accumulate_subsample"``.
    seed: the run's seed; every random draw derives from it.
    seeds: batched experiments only: the seed label of each row of ``real`` (default ``seed, seed+1, ...``).
    sizes: training-set size per generation ``g >= 1`` (int, sequence or function of g);
        default: the size of the real data.  ``accumulate`` adds this many samples per generation.
    record: generations at which ``evaluate`` runs (default: all); 0 and the last always are.
    checkpoint_dir: where the run checkpoints (``state-<next generation>.npz``, the newest two kept)
        after each ``checkpoint_every`` generations and at the end, and keeps ``journal.log``; the
        newest readable checkpoint of the same run is resumed (an unreadable one is named in a
        warning, removed, and the one before it used), one written by another version of the
        experiment's code or with another torch thread count is recomputed (with a warning), and one
        written by this code for a different run (experiment, regime, seed, data size) is refused.
    keep_models: keep fitted models in memory (True for all, or an iterable of generations).
    columns: constant extra columns for the tidy table (the varied parameters).
    """
    regime = parse_regime(regime)
    if int(generations) != generations or generations < 0:
        raise ValueError(f"generations must be a non-negative integer, got {generations!r}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    generations = int(generations)
    batched = bool(getattr(experiment, "batched", False))
    n_real = int(real.shape[1] if batched else len(real))
    if n_real < 1:
        raise ValueError("the real data set is empty")
    if batched:
        seeds = tuple(range(seed, seed + real.shape[0])) if seeds is None else tuple(int(s) for s in seeds)
        if len(seeds) != real.shape[0]:
            raise ValueError(f"{len(seeds)} seed labels for {real.shape[0]} rows of real data")
    else:
        seeds = (int(seed),)
    size_of = _sizes_fn(sizes, n_real)
    for g in range(1, generations + 1):
        n = size_of(g)
        if n < 1:
            raise ValueError(f"training-set size must be >= 1, got {n} at generation {g}")
        if regime.name == "keep_real" and regime.n_real_kept(n) > n_real:
            raise ValueError(f"keep_real needs {regime.n_real_kept(n)} real samples at generation {g}, "
                             f"but the real data has {n_real}")
    rec = set(range(generations + 1)) if record is None else {int(g) for g in record if 0 <= g <= generations}
    rec |= {0, generations}
    if keep_models is True:
        keep = set(range(generations + 1))
    elif keep_models is False:
        keep = set()
    else:
        keep = {int(g) for g in keep_models}
    name = getattr(experiment, "name", type(experiment).__name__)
    extra = dict(columns or {})

    ckpts = Checkpoints(checkpoint_dir) if checkpoint_dir is not None else None
    code = _code_version(type(experiment))
    # which run a checkpoint belongs to; the version of the code that wrote it is stored beside it
    fingerprint = hashlib.sha256(
        repr((name, str(regime), int(seed), seeds, batched, n_real, sorted(extra.items()))).encode()
    ).hexdigest()[:16]

    records: list[tuple[int, str, np.ndarray]] = []
    books: list[dict] = []
    models: dict[int, Any] = {}
    start = 0
    comp = regime.start(real, batched)
    resumed_from = None
    state = ckpts.load_newest() if ckpts is not None and resume else None
    if state is not None:
        # written by other code (or threads): out of date whatever run it was -- a chapter rerun after an
        # update may even have changed which run lives in this folder; only the same code's checkpoint
        # of another run is a mistake worth refusing
        stale = state.get("version") != CHECKPOINT_VERSION or state.get("code") != code
        if not stale and state.get("fingerprint") != fingerprint:
            raise RuntimeError(
                f"checkpoint {ckpts.folder / state['_file']} belongs to a different run (experiment, regime, seed "
                "or data differ); delete that folder to start afresh, pass another checkpoint_dir, or resume=False"
            )
        if stale:  # this run, written by older code or with other threads: out of date, so recomputed
            warnings.warn(f"checkpoint {ckpts.folder / state['_file']} was written by another version of the code "
                          "or with another thread count; recomputing this run from generation 0 (the checkpoint "
                          "is replaced)", stacklevel=2)
            ckpts.log(f"stale checkpoint {state['_file']} (other code or threads): recomputing from generation 0")
            ckpts.clear()
            state = None
    if state is not None:
        start = state["next_generation"]
        comp, records, books, models = state["composition"], state["records"], state["books"], state["models"]
        if state.get("complete") and start <= generations:
            # a finished run is being extended: its last model was never sampled from, so refit that
            # generation (deterministically the same model) and continue from there
            start -= 1
            records = [r for r in records if r[0] < start]
            books = [b for b in books if b["generation"] < start]
        elif start > generations + 1:  # asked for fewer generations than were run: report those
            records = [r for r in records if r[0] <= generations]
            books = [b for b in books if b["generation"] <= generations]
            start = generations + 1
        experiment.set_state(state["experiment_state"]) if hasattr(experiment, "set_state") else None
        resumed_from = start
        ckpts.log(f"resumed from {state['_file']} at generation {start}")
    elif ckpts is not None:
        ckpts.log("started at generation 0")

    def save(next_generation: int, complete: bool = False) -> None:
        if ckpts is None:
            return
        ckpts.save({
            "complete": complete,
            "version": CHECKPOINT_VERSION,
            "fingerprint": fingerprint,
            "code": code,
            "next_generation": next_generation,
            "composition": comp,
            "records": records,
            "books": books,
            "models": models,
            "experiment_state": experiment.get_state() if hasattr(experiment, "get_state") else None,
        })

    bar = tqdm(range(start, generations + 1), desc=f"{name} [{regime}]", disable=progress_disabled(progress),
               initial=start, total=generations + 1, leave=False)
    for g in bar:
        if ckpts is not None:
            ckpts.log(f"generation {g} started")
        ctx = GenerationContext(seed=int(seed), generation=g, seeds=seeds if batched else None,
                                artifact_dir=Path(checkpoint_dir) / f"gen_{g:04d}" if checkpoint_dir else None)
        model = experiment.fit(comp.data, ctx)
        stop = g < generations and bool(getattr(experiment, "should_stop", lambda m, c: False)(model, ctx))
        books.append({"generation": g, "n_train": comp.n_total, "n_real": comp.n_real,
                      "n_synthetic": comp.n_synthetic, "real_fraction": comp.real_fraction})
        if g in rec or stop:
            for metric, value in (experiment.evaluate(model, comp, ctx) or {}).items():
                records.append((g, metric, _as_seed_values(value, len(seeds), metric)))
        if g in keep:
            models[g] = model
        if stop:  # the experiment says nothing can change any more (e.g. every run absorbed)
            save(generations + 1, complete=False)
            break
        if g < generations:
            n_next = size_of(g + 1)
            synthetic = experiment.sample(model, regime.n_synthetic(n_next), ctx)
            comp = regime.compose(real, comp, synthetic, n_next, _regime_rng(seed, g + 1), batched)
            if (g + 1 - start) % checkpoint_every == 0:
                save(g + 1)
        else:
            save(g + 1, complete=True)
            if ckpts is not None:
                ckpts.log(f"finished: generations 0-{generations}")
    bar.close()

    seed_arr = np.asarray(seeds)
    frames = [
        pd.DataFrame({"seed": seed_arr, "generation": g, "metric": m, "value": v}) for g, m, v in records
    ]
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TIDY_COLUMNS[2:])
    metrics.insert(0, "regime", str(regime))
    metrics.insert(0, "experiment", name)
    for k, v in extra.items():
        metrics[k] = v
    book = pd.DataFrame(books)
    book.insert(0, "regime", str(regime))
    book.insert(0, "experiment", name)
    for k, v in extra.items():
        book[k] = v
    return RecursionResult(metrics=metrics, bookkeeping=book, models=models, resumed_from=resumed_from)
