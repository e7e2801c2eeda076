"""Batched GMM recursion vs the official notebook's loop (sklearn GaussianMixture, one seed at a time).

Both run the official setting: a 2-D standard-normal blob, N = 1000 samples per generation,
GaussianMixture(n_components=2, covariance_type="full", tol=1e-5, max_iter=2000), replace regime,
from the same real data per seed.  Printed from one run:

* seed-generations per second of each, and their ratio (wall clock and process CPU time);
* whether the squared L2 distance to generation 0 has the same distribution across seeds in
  both: two-sample Kolmogorov-Smirnov and Mann-Whitney U tests at a few generations (the seeds
  are independent chains; large p-values = no detectable difference), and the mean number of EM
  iterations per fit.

    .venv/bin/python benchmarks/bench_gmm.py [--seeds 64] [--generations 100] [--sk-seeds 32]

BLAS/OpenMP pools and torch are limited to ``--threads`` (default 1) for both sides: with more
threads sklearn's KMeans spends most of its time synchronising on a small shared machine.
"""
from __future__ import annotations

import argparse
import os


def main(argv=None):
    from collapse_utils.models import gmm
    from collapse_utils.chapters.gaussian_mixtures import speed_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=64, help="seeds in the batched run")
    ap.add_argument("--sk-seeds", type=int, default=32, help="seeds refitted one at a time with sklearn")
    ap.add_argument("--generations", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000, help="samples per generation")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)

    G = a.generations
    load0 = os.getloadavg()[0]
    cmp = gmm.speed_comparison(a.seeds, a.sk_seeds, G, a.n, a.threads,
                               checkpoints=[g for g in (10, 25, 50, 100, 200, 500, 1000, 2000) if g <= G])
    print(f"official setting: blob, N={a.n}, K=2 full, tol=1e-5, max_iter=2000; {G} generations; "
          f"threads={a.threads}")
    print(speed_table(cmp).to_string(index=False))
    print(f"\nspeed-up in seed-generations per second: {cmp['speedup_wall']:.1f}x (wall clock), "
          f"{cmp['speedup_cpu']:.1f}x (process CPU time)")
    print(f"load average (1 min) {load0:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores "
          "(above the core count the machine is shared: trust the CPU-time ratio over the wall-clock one)")
    agree = gmm.distance_agreement(cmp)
    print("\nsquared L2 distance to generation 0 across seeds, batched vs sklearn (two-sample tests):")
    print(agree.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    worst = min(agree["KS p"].min(), agree["Mann-Whitney p"].min())
    print(f"smallest p-value {worst:.3f} over {2 * len(agree)} tests: "
          + ("no detectable difference" if worst > 0.05 / (2 * len(agree)) else
             "a difference at the Bonferroni-corrected 5 % level"))


if __name__ == "__main__":
    main()
