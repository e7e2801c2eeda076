"""Independent runs (condition x seed) side by side in worker processes, or one after another.

On a small CPU machine two single-threaded runs usually get more done than one run with two
threads (a tiny model's step is too short to keep two OpenMP threads busy, and a thread that waits
for a descheduled partner stalls the whole step).  Results never depend on the number of workers:
every run derives its randomness from its own seed.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["run_jobs"]


def _in_worker(task: tuple) -> Any:
    """Run one job in a worker process with its share of the torch threads."""
    fn, job, threads = task
    import torch

    os.environ["COLLAPSE_TORCH_THREADS"] = str(threads)  # read by code that caps its own threads
    torch.set_num_threads(threads)
    return fn(job)


def run_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 1, threads: int = 2,
             progress: bool = True, desc: str = "runs", label: Callable[[Any], str] | None = None) -> list:
    """``[fn(job) for job in jobs]``, in job order, with a progress bar over the jobs.

    ``workers > 1`` runs them in that many *spawned* worker processes (not forked: a forked child of
    a process that already ran OpenMP code can hang), so ``fn`` must be a module-level function and
    each job picklable; the ``threads`` torch threads are shared out, ``threads // workers`` (at
    least one) per worker.  A failing job raises here, with its traceback, once the jobs already
    started have finished.
    """
    from tqdm.auto import tqdm

    from .engine import progress_disabled

    jobs = list(jobs)
    workers = max(1, min(int(workers), len(jobs)))
    bar = tqdm(total=len(jobs), desc=desc, disable=progress_disabled(progress))
    results = []
    try:
        if workers == 1:
            for job in jobs:
                if label is not None:
                    bar.set_postfix_str(label(job))
                results.append(fn(job))
                bar.update()
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                per = max(1, int(threads) // workers)
                futures = [pool.submit(_in_worker, (fn, job, per)) for job in jobs]
                for fut in futures:
                    results.append(fut.result())
                    bar.update()
    finally:
        bar.close()
    return results
