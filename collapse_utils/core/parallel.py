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

Beyond one machine the same jobs go to a Dask cluster (``$COLLAPSE_EXECUTOR``, see :func:`executor` and
README.md, "Beyond one machine"): each job is one task computed with the same ``threads_per_run`` inside
:func:`run_threads`, so a cluster changes the wall time and nothing else.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["run_jobs", "run_threads", "thread_tag", "current_threads", "executor", "run_resources", "EXECUTOR_ENV"]


def current_threads() -> int | None:
    """Torch's CPU thread count in this process (None when torch is not imported)."""
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


# ---------------------------------------------------------------------------------------------------------
# The engine that runs the jobs: this process's pool (default) or a Dask cluster
# ---------------------------------------------------------------------------------------------------------
#: the environment variable that picks the engine (see :func:`executor`)
EXECUTOR_ENV = "COLLAPSE_EXECUTOR"
#: how often Dask runs a job again after it raised (a worker that died is handled by the scheduler itself:
#: its jobs go to another worker, up to ``distributed.scheduler.allowed-failures`` deaths per job)
RETRIES_ENV = "COLLAPSE_RETRIES"
_CLIENTS: dict[tuple, Any] = {}
_PROCESS_LOCK = threading.Lock()


def executor() -> str:
    """The engine :func:`run_jobs` dispatches runs through, from ``$COLLAPSE_EXECUTOR``:

    - ``local`` (default, also when unset or empty): this process, or ``workers`` spawned processes;
    - ``dask-local`` or ``dask-local:N``: a Dask ``LocalCluster`` of N worker processes (default: the
      ``workers`` the chapter asks for), one run at a time per worker, started once per process;
    - ``tcp://host:port`` (any Dask scheduler address) or ``scheduler-file:/shared/path.json``: an
      existing Dask cluster (a Slurm allocation, dask-jobqueue, a cloud cluster).
    """
    value = os.environ.get(EXECUTOR_ENV, "").strip()
    return value or "local"


def _is_dask(spec: str) -> bool:
    return spec != "local"


def _dask_client(spec: str, workers: int, threads_per_run: int):
    """A Dask client for ``spec`` (kept for the life of this process, so a notebook's later calls reuse it)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise RuntimeError(f"{EXECUTOR_ENV}={spec!r} needs Dask's `distributed` package: "
                           "pip install 'collapse_utils[cluster]' (or unset the variable for the local pool)") from None
    if spec.startswith("dask-local"):
        n = spec.partition(":")[2].strip()
        if n and not n.isdigit():
            raise ValueError(f"{EXECUTOR_ENV}={spec!r}: write dask-local or dask-local:N with N workers")
        n_workers = max(1, int(n) if n else workers)
        key = ("dask-local", n_workers, threads_per_run)
        if key not in _CLIENTS:
            import logging

            # every worker a separate process with one task slot and the run's threads as its CPU resource
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   resources={"CPU": threads_per_run}, dashboard_address=":0",
                                   silence_logs=logging.ERROR)
            _CLIENTS[key] = (Client(cluster), cluster)
        return _CLIENTS[key][0]
    key = ("address", spec)
    if key not in _CLIENTS:
        if spec.startswith("scheduler-file:"):
            client = Client(scheduler_file=spec.partition(":")[2])
        else:
            client = Client(spec)
        _CLIENTS[key] = (client, None)
    return _CLIENTS[key][0]


@atexit.register
def _close_clients() -> None:
    for client, cluster in list(_CLIENTS.values()):
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
    _CLIENTS.clear()


def _declared_resources(client) -> set[str]:
    """The resource names any worker of the cluster declares (``dask worker --resources "CPU=4,GPU=1"``)."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # older distributed: every worker is listed
        info = client.scheduler_info()
    names: set[str] = set()
    for w in info.get("workers", {}).values():
        names.update((w.get("resources") or {}).keys())
    return names


def run_resources(client, threads_per_run: int, gpu: bool) -> dict[str, float]:
    """What one run asks of a Dask worker: ``CPU = threads_per_run`` where the workers declare CPU slots,
    ``GPU = 1`` when the runs compute on CUDA (then some worker must declare a GPU)."""
    declared = _declared_resources(client)
    res: dict[str, float] = {}
    if "CPU" in declared:
        res["CPU"] = threads_per_run
    if gpu:
        if "GPU" not in declared:
            raise RuntimeError("the runs compute on CUDA but no worker of the Dask cluster declares a GPU; start "
                               "the workers with `dask worker ... --resources \"CPU=<threads per run>,GPU=1\"`")
        res["GPU"] = 1
    return res


def _dask_run_one(task: tuple) -> Any:
    """One job on a Dask worker: one run at a time per worker process (torch's thread count is a
    process-wide setting), computed with the run's own threads exactly as in the local pool."""
    with _PROCESS_LOCK:
        return _run_one(task)


def _cuda_runs() -> bool:
    """Whether runs started from this process compute on CUDA (torch imported and a device visible)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


def _share_large_values(client, jobs: list) -> list:
    """Jobs whose large values (arrays, tensors: ``nbytes`` over 64 kB) are the same object in every job --
    the training data, the test images -- with those values sent to the cluster once (``scatter``) instead
    of once per job; each worker gets them back as the same values."""
    if len(jobs) < 2 or not all(isinstance(j, dict) for j in jobs):
        return jobs
    shared = {k: v for k, v in jobs[0].items()
              if int(getattr(v, "nbytes", 0) or 0) > 2**16 and all(j.get(k) is v for j in jobs[1:])}
    if not shared:
        return jobs
    futures = {k: client.scatter(v, hash=False, broadcast=False) for k, v in shared.items()}
    return [{**j, **futures} for j in jobs]


def _run_dask(spec: str, fn, jobs: list, workers: int, threads: int, gpu: bool | None, bar, label) -> list:
    from distributed import as_completed

    client = _dask_client(spec, workers, threads)
    if not spec.startswith("dask-local"):
        client.wait_for_workers(1, timeout=float(os.environ.get("COLLAPSE_WAIT_WORKERS", "600")))
    resources = run_resources(client, threads, _cuda_runs() if gpu is None else gpu)
    retries = int(os.environ.get(RETRIES_ENV, "2"))
    sent = _share_large_values(client, jobs)
    futures = [client.submit(_dask_run_one, (fn, job, threads), pure=False, retries=retries,
                             resources=resources or None,
                             key=f"run-{i}-{label(orig) if label else ''}-{uuid.uuid4().hex[:8]}".replace(" ", "_"))
               for i, (job, orig) in enumerate(zip(sent, jobs))]
    try:
        for fut in as_completed(futures):
            if fut.status == "error":  # a job failed after its retries: stop the others, raise its error
                fut.result()
            bar.update()
        return [f.result() for f in futures]  # in job order
    finally:
        client.cancel([f for f in futures if not f.done()])
        for f in futures:
            f.release()


def run_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 1, threads_per_run: int = 1,
             progress: bool = True, desc: str = "runs", label: Callable[[Any], str] | None = None,
             gpu: bool | None = None) -> list:
    """``[fn(job) for job in jobs]``, in job order, each job computed with ``threads_per_run`` threads.

    The engine is :func:`executor` (``$COLLAPSE_EXECUTOR``).  Locally, ``workers > 1`` runs the jobs in
    that many *spawned* worker processes (not forked: a forked child of a process that already ran
    OpenMP code can hang), so ``fn`` must be a module-level function and each job picklable.  On a Dask
    cluster every job is one task that asks for ``threads_per_run`` CPU slots (and one GPU when the runs
    compute on CUDA: ``gpu``, default: torch sees a CUDA device here) and is retried ``$COLLAPSE_RETRIES``
    times (default 2) when it raises; a job whose worker dies is rescheduled by Dask.  Jobs that
    checkpoint into a folder all workers share resume from their last generation when run again.
    Serial, parallel or on a cluster, every job gets the same ``threads_per_run``, so the results are
    identical either way; only the wall time changes.  A failing job raises here, with its traceback.
    """
    from tqdm.auto import tqdm

    from .progress import progress_disabled

    jobs = list(jobs)
    spec = executor()
    workers = max(1, min(int(workers), len(jobs)))
    bar = tqdm(total=len(jobs), desc=desc, disable=progress_disabled(progress))
    results = []
    try:
        if jobs and _is_dask(spec):
            results = _run_dask(spec, fn, jobs, workers, int(threads_per_run), gpu, bar, label)
        elif workers == 1:
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
