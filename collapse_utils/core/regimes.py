r"""Data regimes: how generation ``i+1``'s training set is assembled.

The paper writes the next data distribution as
:math:`p_{i+1} = \alpha\,p_\theta + \beta\,p_i + \gamma\,p_0`.  The regimes below
are the four settings the book uses:

``replace``              :math:`\alpha = 1`: only the newest model's samples (the paper's theory).
``keep_real(fraction)``  a fresh random ``fraction`` of the original samples plus synthetic
                         samples, same total size (:math:`\gamma =` fraction).
``accumulate``           all real data and every generation's synthetic data so far
                         (Gerstgrasser et al. 2024); the training set grows.
``accumulate_subsample`` a fixed budget drawn without replacement from that growing pool
                         (Kazdan et al. 2024).

Data are numpy arrays or torch tensors with samples along ``axis`` 0, or, for
experiments vectorised over seeds (``batched=True``), along axis 1 of an array of
shape ``(n_seeds, n_samples, ...)``; then every seed draws its own random subset.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Regime", "Composition", "parse_regime", "REGIME_NAMES"]

REGIME_NAMES = ("replace", "keep_real", "accumulate", "accumulate_subsample")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _cat(chunks: list, batched: bool):
    axis = 1 if batched else 0
    if hasattr(chunks[0], "concat_samples"):  # custom data representations (e.g. sufficient statistics)
        return type(chunks[0]).concat_samples(chunks)
    if _is_torch(chunks[0]):
        import torch

        return torch.cat(list(chunks), dim=axis)
    return np.concatenate(chunks, axis=axis)


def _n(x: Any, batched: bool) -> int:
    return int(x.shape[1] if batched else x.shape[0])


def _n_seeds(x: Any) -> int:
    return int(x.shape[0])


def _take(x: Any, idx: np.ndarray, batched: bool):
    """x[idx] along the sample axis; idx is (k,) or, batched, (n_seeds, k)."""
    if not hasattr(x, "__getitem__") or not hasattr(x, "shape") or hasattr(x, "concat_samples"):
        raise TypeError(f"{type(x).__name__} data cannot be subsampled; use the replace or accumulate regime")
    if batched:
        rows = np.arange(idx.shape[0])[:, None]
        if _is_torch(x):
            import torch

            return x[torch.as_tensor(rows), torch.as_tensor(idx)]
        return x[rows, idx]
    if _is_torch(x):
        import torch

        return x[torch.as_tensor(idx)]
    return x[idx]


def _choice(rng: np.random.Generator, n: int, k: int, n_seeds: int | None) -> np.ndarray:
    """k distinct indices out of n (per seed when n_seeds is given)."""
    if n_seeds is None:
        return rng.permutation(n)[:k] if k < n else rng.permutation(n)
    # per-seed subsets without replacement: argsort of uniform keys is a random permutation
    keys = rng.random((n_seeds, n))
    return np.argpartition(keys, k - 1, axis=1)[:, :k] if 0 < k < n else np.argsort(keys, axis=1)[:, :k]


@dataclass
class Composition:
    """The training set of one generation and where it came from."""

    data: Any
    n_real: int
    n_synthetic: int
    pool: Any = None  # the accumulate regimes: all real + synthetic data so far (real first)
    pool_real: int = 0  # how many samples at the front of the pool are real

    @property
    def n_total(self) -> int:
        return self.n_real + self.n_synthetic

    @property
    def real_fraction(self) -> float:
        return self.n_real / self.n_total if self.n_total else float("nan")


@dataclass(frozen=True)
class Regime:
    """One of the data regimes; build it with :func:`parse_regime` or directly."""

    name: str = "replace"
    fraction: float = 0.0  # keep_real only

    def __post_init__(self):
        if self.name not in REGIME_NAMES:
            raise ValueError(f"unknown regime {self.name!r}; valid regimes: {', '.join(REGIME_NAMES)}")
        if self.name == "keep_real":
            if not (0.0 < float(self.fraction) < 1.0):
                raise ValueError(f"keep_real fraction must lie strictly between 0 and 1, got {self.fraction}")
        elif self.fraction:
            raise ValueError(f"regime {self.name!r} takes no fraction (got {self.fraction})")

    def __str__(self) -> str:
        return f"keep_real({self.fraction:g})" if self.name == "keep_real" else self.name

    @property
    def label(self) -> str:
        return str(self)

    # -- sizes ---------------------------------------------------------------
    def n_real_kept(self, n_target: int) -> int:
        return int(round(self.fraction * n_target)) if self.name == "keep_real" else 0

    def n_synthetic(self, n_target: int) -> int:
        """How many samples the model must generate for a training set of n_target."""
        return n_target - self.n_real_kept(n_target)

    def kept_real_indices(self, n_real: int, n_target: int, rng: np.random.Generator,
                          n_seeds: int | None = None) -> np.ndarray:
        """keep_real: which original samples the next training set keeps, drawn with ``rng`` exactly as
        :meth:`compose` draws them (an experiment that wants to know them in advance -- e.g. to continue
        the *other* original samples -- calls this with the generator compose will get)."""
        k = self.n_real_kept(n_target)
        if k > n_real:
            raise ValueError(f"keep_real needs {k} real samples but only {n_real} exist")
        return _choice(rng, n_real, k, n_seeds)

    # -- composition ---------------------------------------------------------
    def start(self, real: Any, batched: bool = False) -> Composition:
        """Generation 0: the real data."""
        n = _n(real, batched)
        pool = real if self.name.startswith("accumulate") else None
        return Composition(real, n, 0, pool, n if pool is not None else 0)

    def compose(
        self,
        real: Any,
        previous: Composition,
        synthetic: Any,
        n_target: int,
        rng: np.random.Generator,
        batched: bool = False,
    ) -> Composition:
        """Assemble the next generation's training set.

        ``synthetic`` holds ``self.n_synthetic(n_target)`` fresh model samples.
        """
        n_syn = _n(synthetic, batched)
        seeds = _n_seeds(synthetic) if batched else None
        if self.name == "replace":
            return Composition(synthetic, 0, n_syn)
        if self.name == "keep_real":
            k = self.n_real_kept(n_target)
            idx = self.kept_real_indices(_n(real, batched), n_target, rng, seeds)
            return Composition(_cat([_take(real, idx, batched), synthetic], batched), k, n_syn)
        pool = _cat([previous.pool, synthetic], batched)
        n_pool, n_real_pool = _n(pool, batched), previous.pool_real
        if self.name == "accumulate":
            return Composition(pool, n_real_pool, n_pool - n_real_pool, pool, n_real_pool)
        # accumulate_subsample: a budget of n_target drawn without replacement from the whole pool
        k = min(n_target, n_pool)
        idx = _choice(rng, n_pool, k, seeds)
        # with per-seed draws the real share differs between seeds; report the mean count
        n_real = int(round(float((idx < n_real_pool).sum(axis=-1).mean())))
        return Composition(_take(pool, idx, batched), n_real, k - n_real, pool, n_real_pool)


_REGIME_RE = re.compile(r"^\s*([a-z_]+)\s*(?:\(\s*([0-9.eE+-]+)\s*\))?\s*$")


def parse_regime(spec: str | Regime) -> Regime:
    """Parse ``"replace"``, ``"keep_real(0.1)"``, ``"accumulate"`` or ``"accumulate_subsample"``."""
    if isinstance(spec, Regime):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"regime must be a string such as 'keep_real(0.1)', got {type(spec).__name__}")
    m = _REGIME_RE.match(spec)
    if not m or m.group(1) not in REGIME_NAMES:
        raise ValueError(
            f"unknown regime {spec!r}; valid regimes: replace, keep_real(<fraction>), accumulate, "
            "accumulate_subsample"
        )
    name, arg = m.group(1), m.group(2)
    if name == "keep_real":
        if arg is None:
            raise ValueError("keep_real needs a fraction, e.g. 'keep_real(0.1)'")
        return Regime(name, float(arg))
    if arg is not None:
        raise ValueError(f"regime {name!r} takes no argument (got {spec!r})")
    return Regime(name)
