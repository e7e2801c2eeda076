"""Threads per run, and independent runs (condition x seed) side by side or one after another.

The reproducibility contract of the book (README.md, "Reproducibility") rests on one rule enforced
here: **the number of CPU threads a run computes with is a property of the run**, never of how
many runs share the machine.  Torch's CPU kernels (oneDNN convolutions, OpenMP/MKL reductions)
split their sums by thread, so the last bits of a result depend on the thread count, and training
amplifies them.  With the same per-run thread count a run is bit-for-bit the same whether it goes
alone in this process or in a worker beside others; ``parallel_runs`` changes only the wall time.

On a small CPU machine two single-threaded runs side by side usually get more done than one run
with two threads (a tiny model's step is too short to keep two OpenMP threads busy, and a thread
that waits for a descheduled partner stalls the whole step).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["run_jobs", "run_threads", "thread_tag", "current_threads"]


def current_threads() -> int | None:
    """Torch's CPU thread count in this process (None when torch is not imported)."""
    import sys

    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def thread_tag() -> str:
    """A short tag of the thread count results are computed with, for cache keys and checkpoints:
    a result computed with other threads may differ in its last bits, so it is never reused."""
    n = current_threads()
    return f"threads{n}" if n is not None else "threads-na"


@contextlib.contextmanager
def run_threads(threads: int) -> Iterator[None]:
    """Compute with exactly ``threads`` CPU threads inside the block (torch and the BLAS pools), then restore."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads per run must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


def _run_one(task: tuple) -> Any:
    """One job with the run's own thread count (in this process or in a worker: the same call)."""
    fn, job, threads = task
    with run_threads(threads):
        return fn(job)


def run_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 1, threads_per_run: int = 1,
             progress: bool = True, desc: str = "runs", label: Callable[[Any], str] | None = None) -> list:
    """``[fn(job) for job in jobs]``, in job order, each job computed with ``threads_per_run`` threads.

    ``workers > 1`` runs the jobs in that many *spawned* worker processes (not forked: a forked child
    of a process that already ran OpenMP code can hang), so ``fn`` must be a module-level function
    and each job picklable.  Serial or parallel, every job gets the same ``threads_per_run``, so the
    results are identical either way; only the wall time changes.  A failing job raises here, with
    its traceback, once the jobs already started have finished.
    """
    from tqdm.auto import tqdm

    from .progress import progress_disabled

    jobs = list(jobs)
    workers = max(1, min(int(workers), len(jobs)))
    bar = tqdm(total=len(jobs), desc=desc, disable=progress_disabled(progress))
    results = []
    try:
        if workers == 1:
            for job in jobs:
                if label is not None:
                    bar.set_postfix_str(label(job))
                results.append(_run_one((fn, job, int(threads_per_run))))
                bar.update()
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(_run_one, (fn, job, int(threads_per_run))) for job in jobs]
                for fut in futures:
                    results.append(fut.result())
                    bar.update()
    finally:
        bar.close()
    return results
