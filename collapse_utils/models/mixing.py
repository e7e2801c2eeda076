r"""How much real data is enough? A Gaussian mixture refitted on mixed real and synthetic data
(chapter 05, section 2).

The setting of chapter 02 (a 2-D mixture fitted by EM to samples of the previous fit) with the knobs
of Bertrand et al. (ICLR 2024) and Alemohammad et al. (ICLR 2024):

* a share of real data in every generation's training set -- drawn afresh from a **fixed** real set
  (the engine's ``keep_real(share)`` regime) or **fresh** from the true distribution every generation
  (the ``replace`` regime with :class:`MixtureLoop` mixing the fresh draws into its samples);
* **sampling bias**: the model samples at reduced temperature :math:`\tau` (every component's
  covariance times :math:`\tau^2`) or truncated to its own most likely points (``truncation`` =
  fraction of draws kept, highest model density first) -- quality bought with diversity.

Metrics: the closed-form squared L2 distance to the truth (:func:`collapse_utils.models.gmm.l2_distance_sq`),
component spreads, and k-NN precision and recall (Kynkäänniemi et al. 2019) of the samples the model
hands on against fresh samples of the truth (:func:`knn_precision_recall`).

This module knows nothing about pages.  It uses :mod:`collapse_utils.models.gmm` through its public API.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..core.engine import Experiment, GenerationContext
from .gmm import GMM, fit_gmm, l2_distance_sq
from ..core.seeding import make_rng

__all__ = ["SamplingBias", "parse_bias", "MixtureLoop", "knn_precision_recall", "knn_radii", "REAL_SOURCES"]

REAL_SOURCES = ("fixed", "fresh")
_BIAS_RE = re.compile(r"^\s*(none|temperature|truncation)\s*(?:\(\s*([0-9.eE+-]+)\s*\))?\s*$")


@dataclass(frozen=True)
class SamplingBias:
    """How the model samples: ``none``, ``temperature(tau)`` (0 < tau <= 1) or ``truncation(keep)``
    (0 < keep <= 1: the most likely ``keep`` of its draws)."""

    kind: str = "none"
    value: float = 1.0

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}({self.value:g})"

    def sample(self, model: GMM, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` biased samples per seed, (S, n, d)."""
        if self.kind == "temperature":
            model = GMM(model.weights, model.means, model.covariances * self.value**2, model.covariance_type)
        if self.kind != "truncation" or self.value >= 1.0:
            return model.sample(n, rng)[0]
        m = int(np.ceil(n / self.value))
        x = model.sample(m, rng)[0]
        lp = model.log_prob(x)
        top = np.argpartition(-lp, n - 1, axis=1)[:, :n]  # the n most likely draws of each seed
        return np.take_along_axis(x, top[..., None], axis=1)


def parse_bias(spec: str | SamplingBias) -> SamplingBias:
    """``"none"``, ``"temperature(0.8)"`` or ``"truncation(0.8)"``."""
    if isinstance(spec, SamplingBias):
        return spec
    m = _BIAS_RE.match(str(spec))
    if not m:
        raise ValueError(f"unknown sampling bias {spec!r}; use none, temperature(<tau>) or truncation(<keep>)")
    kind, arg = m.group(1), m.group(2)
    if kind == "none":
        if arg is not None:
            raise ValueError("sampling bias 'none' takes no value")
        return SamplingBias()
    if arg is None:
        raise ValueError(f"{kind} needs a value, e.g. '{kind}(0.8)'")
    v = float(arg)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{kind} value must lie in (0, 1], got {v}")
    return SamplingBias(kind, v)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of a (S, n, d) and b (S, m, d) -> (S, n, m) in
    float32 (plenty to rank neighbours), coordinate by coordinate (faster than a matrix product for
    the few dimensions here)."""
    out = None
    for j in range(a.shape[2]):
        aj = np.ascontiguousarray(a[..., j], dtype=np.float32)
        bj = np.ascontiguousarray(b[..., j], dtype=np.float32)
        diff = np.subtract(aj[:, :, None], bj[:, None, :])
        np.multiply(diff, diff, out=diff)
        out = diff if out is None else np.add(out, diff, out=out)
    return out


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from every point of x (S, n, d) to its k-th nearest other point -> (S, n)."""
    if x.shape[1] <= k:
        raise ValueError(f"k={k} needs more than {k} points per set")
    return np.partition(_sq_dists(x, x), k, axis=-1)[..., k]  # index 0 is the point itself


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 5,
                         real_radii: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), per seed.

    Each set's manifold is the union of balls around its points with radius the distance to the
    ``k``-th nearest other point of the same set.  Precision: the share of ``fake`` points inside the
    real manifold (quality); recall: the share of ``real`` points inside the fake manifold (diversity).
    ``real`` and ``fake`` are (S, n, d) and (S, m, d); ``real_radii`` (from :func:`knn_radii`) may be
    passed when the same real set is used again."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    r_real = knn_radii(real, k) if real_radii is None else real_radii
    r_fake = knn_radii(fake, k)
    D = _sq_dists(fake, real)  # (S, m, n)
    precision = (D <= r_real[:, None, :]).any(-1).mean(-1)
    recall = (D <= r_fake[:, :, None]).any(1).mean(-1)
    return precision, recall


class MixtureLoop(Experiment):
    """The chapter-02 recursion with sampling bias and, optionally, fresh real data.

    ``fresh_share`` > 0 makes every generation's training set ``fresh_share`` new draws from
    ``truth`` (run it under the ``replace`` regime); a fixed real set is the engine's ``keep_real``.
    Metrics at each recorded generation: ``l2_truth``, ``spread_min``/``spread_max``,
    ``weight_min`` and, when ``eval_samples`` > 0, ``precision``/``recall`` of ``eval_samples``
    draws of the (biased) sampler against as many fresh draws of the truth.
    """

    batched = True

    def __init__(self, truth: GMM, n_components: int = 2, bias: str | SamplingBias = "none",
                 fresh_share: float = 0.0, eval_samples: int = 300, k: int = 5, tol: float = 1e-5,
                 max_iter: int = 2000, reg_covar: float = 1e-6, name: str = "mixture"):
        if truth.n_seeds != 1:
            raise ValueError("truth must be a single mixture")
        if not 0.0 <= fresh_share < 1.0:
            raise ValueError(f"fresh_share must lie in [0, 1), got {fresh_share}")
        self.truth, self.n_components = truth, int(n_components)
        self.bias = parse_bias(bias)
        self.fresh_share, self.eval_samples, self.k = float(fresh_share), int(eval_samples), int(k)
        self.tol, self.max_iter, self.reg_covar = float(tol), int(max_iter), float(reg_covar)
        self.name = name

    def fit(self, data, ctx: GenerationContext) -> GMM:
        return fit_gmm(data, self.n_components, "full", self.tol, self.max_iter, self.reg_covar,
                       rng=ctx.rng("fit"))

    def n_fresh(self, n: int) -> int:
        return int(round(self.fresh_share * n))

    def sample(self, model: GMM, n: int, ctx: GenerationContext) -> np.ndarray:
        k = self.n_fresh(n)
        x = self.bias.sample(model, n - k, ctx.rng("sample"))
        if k == 0:
            return x
        fresh = self._truths(model.n_seeds).sample(k, ctx.rng("data"))[0]
        return np.concatenate([fresh, x], axis=1)

    def _truths(self, S: int) -> GMM:
        """The truth once per seed (each row then draws its own component counts)."""
        t = self.truth
        return GMM(np.repeat(t.weights, S, 0), np.repeat(t.means, S, 0), np.repeat(t.covariances, S, 0))

    def evaluate(self, model: GMM, comp, ctx: GenerationContext) -> dict:
        spreads = np.sort(model.spreads(), axis=1)
        out = {"l2_truth": l2_distance_sq(self.truth, model), "spread_min": spreads[:, 0],
               "spread_max": spreads[:, -1], "weight_min": model.weights.min(1)}
        if self.eval_samples > 0:
            real, radii = self._reference(model.n_seeds, ctx)
            fake = self.bias.sample(model, self.eval_samples, ctx.rng("eval"))
            out["precision"], out["recall"] = knn_precision_recall(real, fake, self.k, radii)
        return out

    def _reference(self, S: int, ctx: GenerationContext):
        """One set of true samples per seed (and its k-NN radii), the same at every generation."""
        key = (S, ctx.seed)
        if getattr(self, "_ref_key", None) != key:
            real = self._truths(S).sample(self.eval_samples, make_rng(ctx.seed, 0, "eval"))[0]
            self._ref, self._ref_key = (real, knn_radii(real, self.k)), key
        return self._ref
