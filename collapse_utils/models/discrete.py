r"""A categorical distribution refitted by counts (the discrete model of chapter 01).

With an exact fit (the empirical frequencies) only sampling error acts.  The
chain over fitted distributions is a neutral Wright-Fisher process: every state
that draws no sample is lost for good, the tail goes first, and each run is
absorbed in a delta function, on state ``s`` with probability equal to ``s``'s
original probability (the frequencies are a martingale).
"""
from __future__ import annotations

import numpy as np

from ..core.engine import Experiment, GenerationContext

__all__ = ["zipf_probs", "fit_counts", "CategoricalExperiment", "wilson_interval", "sample_categorical", "absorption_table",
           "survival_curves"]


def zipf_probs(k: int, exponent: float) -> np.ndarray:
    """A long-tailed categorical distribution p_s proportional to 1 / s^exponent, s = 1..k."""
    if k < 2:
        raise ValueError(f"need at least 2 states, got {k}")
    if exponent <= 0:
        raise ValueError(f"exponent must be positive, got {exponent}")
    w = 1.0 / np.arange(1, k + 1) ** exponent
    return w / w.sum()


def sample_categorical(p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws per row of p (shape (n_seeds, k)) by one vectorised inverse-CDF search."""
    s, k = p.shape
    cdf = np.cumsum(p, axis=1)
    cdf[:, -1] = 1.0
    rows = np.arange(s, dtype=float)[:, None]
    u = rng.random((s, n))
    idx = np.searchsorted((cdf + rows).ravel(), (u + rows).ravel(), side="right").reshape(s, n)
    return (idx - (rows.astype(np.int64) * k)).clip(0, k - 1)


def fit_counts(data: np.ndarray, k: int) -> np.ndarray:
    """The fit: each run's empirical frequencies of the states 0..k-1 in its samples (a row of
    ``data``); a state drawn zero times gets probability 0 and can never come back.  One
    ``bincount`` for all runs: run r's state s is counted at position r k + s."""
    s, m = data.shape
    offs = (np.arange(s)[:, None] * k + data).ravel()
    return np.bincount(offs, minlength=s * k).reshape(s, k) / m


class CategoricalExperiment(Experiment):
    """Refit a categorical distribution by counts, for many seeds at once (data: (n_seeds, M) state ids)."""

    batched = True
    name = "categorical"

    def __init__(self, p0: np.ndarray, tail_cut: float | None = None):
        self.p0 = np.asarray(p0, dtype=float)
        self.k = len(self.p0)
        self.tail = self.p0 <= (tail_cut if tail_cut is not None else 0.0)
        self.extinct_at: np.ndarray | None = None   # (n_seeds, k): generation a state first had no mass
        self.absorbed_at: np.ndarray | None = None  # (n_seeds,): generation the run became a delta
        self.absorbed_state: np.ndarray | None = None

    def real(self, n_seeds: int, m: int, seed: int) -> np.ndarray:
        from ..core.seeding import make_rng

        return sample_categorical(np.tile(self.p0, (n_seeds, 1)), m, make_rng(seed, 0, "data"))

    def fit(self, data: np.ndarray, ctx: GenerationContext) -> np.ndarray:
        p = fit_counts(data, self.k)
        self._record(p, ctx.generation)
        return p

    def _record(self, p: np.ndarray, generation: int) -> None:
        """Bookkeeping: the generation each state first lost its mass and each run became a delta."""
        s = p.shape[0]
        if self.extinct_at is None:
            self.extinct_at = np.full((s, self.k), -1, dtype=np.int64)
            self.absorbed_at = np.full(s, -1, dtype=np.int64)
            self.absorbed_state = np.full(s, -1, dtype=np.int64)
        dead = (p == 0) & (self.extinct_at < 0)
        self.extinct_at[dead] = generation
        newly = ((p > 0).sum(axis=1) == 1) & (self.absorbed_at < 0)
        self.absorbed_at[newly] = generation
        self.absorbed_state[newly] = p[newly].argmax(axis=1)

    def sample(self, model: np.ndarray, n: int, ctx: GenerationContext) -> np.ndarray:
        return sample_categorical(model, n, ctx.rng("sample"))

    def should_stop(self, model, ctx) -> bool:
        return bool((self.absorbed_at >= 0).all())

    def evaluate(self, model: np.ndarray, comp, ctx: GenerationContext) -> dict:
        out = {
            "support": (model > 0).sum(axis=1),
            "tail_mass": model[:, self.tail].sum(axis=1) if self.tail.any() else np.zeros(len(model)),
            "max_prob": model.max(axis=1),
        }
        return out

    def get_state(self):
        return (self.extinct_at, self.absorbed_at, self.absorbed_state)

    def set_state(self, state) -> None:
        self.extinct_at, self.absorbed_at, self.absorbed_state = state


def wilson_interval(k, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion k/n (vectorised)."""
    from scipy import stats

    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    z = stats.norm.ppf(0.5 + level / 2)
    p = k / n
    den = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    return centre - half, centre + half


def absorption_table(ex: CategoricalExperiment, level: float = 0.95):
    """Per state: original probability, absorption count and frequency with a Wilson interval."""
    import pandas as pd

    done = ex.absorbed_state >= 0
    n = int(done.sum())
    counts = np.bincount(ex.absorbed_state[done], minlength=ex.k)
    lo, hi = wilson_interval(counts, n, level)
    return pd.DataFrame({"state": np.arange(ex.k), "p0": ex.p0, "absorbed": counts, "runs": n,
                         "frequency": counts / n, "ci_low": lo, "ci_high": hi,
                         "inside_ci": (ex.p0 >= lo) & (ex.p0 <= hi)})


def survival_curves(ex: CategoricalExperiment, generations: np.ndarray) -> np.ndarray:
    """(len(generations), k): share of runs in which each state still has mass at each generation."""
    ext = np.where(ex.extinct_at < 0, np.iinfo(np.int64).max, ex.extinct_at)
    return (ext[None, :, :] > np.asarray(generations)[:, None, None]).mean(axis=1)
