"""Seed-generations per second: the vectorised Gaussian recursion vs a per-seed loop like the official notebook.

    python benchmarks/bench_gaussian.py [--seeds 1000] [--generations 1000] [--m 100] [--loop-seeds 1000]

The loop is written the way the official notebook does it: one seed at a time, np.random.normal for the
samples, np.mean / np.std (MLE) for the fit.  The vectorised engine runs the same recursion for all seeds
at once, once drawing the M samples literally ("draws") and once drawing the sufficient statistics from
their exact distributions ("exact").  Rates are per seed-generation, so the loop may run on fewer seeds
(--loop-seeds) without changing what is compared.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from collapse_utils.models import gaussian as G
from collapse_utils.core.engine import run_recursion


def official_loop(n_seeds: int, generations: int, m: int, seed: int = 0) -> np.ndarray:
    np.random.seed(seed)
    out = np.empty((n_seeds, 2))
    for s in range(n_seeds):
        data = np.random.normal(0.0, 1.0, m)
        for _ in range(generations + 1):
            mu, sigma = np.mean(data), np.std(data)
            data = np.random.normal(mu, sigma, m)
        out[s] = mu, sigma
    return out


def vectorised(sampler: str, n_seeds: int, generations: int, m: int):
    ex = G.GaussianExperiment(ddof=0, sampler=sampler)
    return run_recursion(ex, ex.real(n_seeds, m, 0), generations, seed=0, record=[], progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--generations", type=int, default=1000)
    ap.add_argument("--m", type=int, default=100)
    ap.add_argument("--loop-seeds", type=int, default=1000)
    a = ap.parse_args()
    work = a.seeds * (a.generations + 1)
    t = time.perf_counter()
    official_loop(a.loop_seeds, a.generations, a.m)
    t_loop = time.perf_counter() - t
    r_loop = a.loop_seeds * (a.generations + 1) / t_loop
    print(f"M={a.m}, {a.generations} generations")
    print(f"  per-seed loop (official style), {a.loop_seeds} seeds: {t_loop:7.2f}s  {r_loop:12,.0f} seed-gen/s")
    for sampler in ("draws", "exact"):
        t = time.perf_counter()
        vectorised(sampler, a.seeds, a.generations, a.m)
        dt = time.perf_counter() - t
        print(f"  vectorised engine, sampler={sampler:5s}, {a.seeds} seeds: {dt:7.2f}s  {work / dt:12,.0f} "
              f"seed-gen/s  ratio {work / dt / r_loop:6.1f}x")


if __name__ == "__main__":
    main()
