"""Chapter 02's EM E-step: the batched numpy form against a compiled per-sample loop (numba, if installed).

    .venv/bin/python benchmarks/bench_estep.py [--seeds 64] [--n 1000] [--repeats 200]

The E-step of ``gmm._em_k2d2_full`` (two components, two dimensions, full covariances) does, per seed
and EM iteration, over the N samples: u = du . phi(x) (a matrix-vector product), q = 1 + exp(u), log q,
r = 1 / q, and the next component sums phi . r (a second product).  This times the chapter's own
function for them (``gmm._k2_estep_rows``, blocks of 16 seeds) on the blob data of the official setting,
and prints microseconds per seed-iteration.  With numba installed (``pip install numba``; not a dependency of
the book) it also times the same arithmetic as a compiled loop over the samples, one seed at a time.

Why it matters: the E-step is the floor of the batched EM.  Its time per seed-iteration times the mean
number of EM iterations per fit (``benchmarks/bench_gmm.py`` prints it) is a lower bound on the time per
seed-generation, whatever the rest of the code does.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from collapse_utils.models import gmm
from collapse_utils.core.seeding import make_rng


def numpy_estep(PhiT: np.ndarray, du: np.ndarray):
    """The chapter's batched E-step (``gmm._k2_estep_rows``): (sum of log q per seed, component-1 sums (S, 6))."""
    S, _, N = PhiT.shape
    U, R, T = np.empty((S, N)), np.empty((S, N)), np.empty((S, 6, 1))
    gmm._k2_estep_rows(PhiT, du[:, None, :], S, U, U[:, None, :], R, R[:, :, None], T)
    return np.add.reduce(U, axis=1), T[..., 0]


def compiled_estep():
    """The same arithmetic as a numba-compiled loop over the samples of one seed, or None without numba."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(fastmath=False)
    def estep(phi, du):
        N = phi.shape[1]
        T = np.zeros(6)
        acc = 0.0
        for n in range(N):
            u = 0.0
            for k in range(6):
                u += du[k] * phi[k, n]
            q = 1.0 + math.exp(u)
            acc += math.log(q)
            r = 1.0 / q
            for k in range(6):
                T[k] += phi[k, n] * r
        return acc, T

    return estep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--n", type=int, default=1000, help="samples per seed")
    ap.add_argument("--repeats", type=int, default=200)
    a = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    X = np.concatenate([gmm.truth("blob").sample(a.n, make_rng(s, 0, "data"))[0] for s in range(a.seeds)])
    PhiT = gmm._design_T(X)
    # fixed E-step coefficients of moderate size (the time does not depend on their values)
    du = np.tile(np.array([0.1, 0.3, -0.2, 0.05, 0.01, -0.02]), (a.seeds, 1))
    with threadpool_limits(1):
        ll, T = numpy_estep(PhiT, du)
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            numpy_estep(PhiT, du)
        t_np = (time.perf_counter() - t0) / (a.repeats * a.seeds)
    print(f"E-step, N = {a.n}, {a.seeds} seeds, 1 thread: batched numpy {t_np * 1e6:.2f} us per seed-iteration")
    est = compiled_estep()
    if est is None:
        print("numba is not installed: the compiled loop is skipped (pip install numba to compare)")
        return 0
    acc, T0 = est(PhiT[0], du[0])
    if not (math.isclose(acc, ll[0], rel_tol=1e-9) and np.allclose(T0, T[0], rtol=1e-9)):
        print("the compiled loop disagrees with the batched E-step")
        return 1
    t0 = time.perf_counter()
    for _ in range(a.repeats):
        for s in range(a.seeds):
            est(PhiT[s], du[s])
    t_nb = (time.perf_counter() - t0) / (a.repeats * a.seeds)
    print(f"compiled per-sample loop (numba, no fastmath) {t_nb * 1e6:.2f} us per seed-iteration: "
          f"{t_np / t_nb:.2f}x the batched numpy speed (same sums to 1e-9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
