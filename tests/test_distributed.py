"""Runs on a Dask cluster give the same numbers as the local pool (collapse_utils.core.parallel).

A real chapter-level study (chapter 03's VAE runs, at a tiny size) goes through ``run_jobs`` once with the
local pool (two spawned processes) and once through a Dask ``LocalCluster`` of two single-threaded worker
processes; the metrics must be equal to the last bit.  Then a worker process is killed in the middle of a
run (after two generations were checkpointed): Dask runs the job again on a live worker, the run resumes
from its checkpoint, and the numbers are still the same.
"""
from __future__ import annotations

import os

import pandas as pd
import pytest

pytest.importorskip("distributed")

from collapse_utils.chapters import vae_mnist as ch  # noqa: E402
from collapse_utils.core import parallel  # noqa: E402
from collapse_utils.core.engine import Loop  # noqa: E402
from collapse_utils.models import vae  # noqa: E402
from collapse_utils.tooling.config import load_preset  # noqa: E402

DASK = "dask-local:2"


def tiny_params(**kw):
    p = load_preset("smoke", "03")
    p.update(preset="smoke", run_name="", seeds=1, generations=3, n_train=128, epochs=1, batch_size=64,
             n_eval=64, n_test_eval=64, device="cpu", conditions=["replace/fresh", "replace/fixed"],
             parallel_runs=2, threads_per_run=1)
    p.update(kw)
    return p


@pytest.fixture(scope="module")
def reference(mnist_ok, tmp_path_factory):
    """The tiny study through the local pool: two spawned worker processes, one thread per run."""
    mp = pytest.MonkeyPatch()
    mp.setenv(parallel.EXECUTOR_ENV, "local")
    try:
        p = tiny_params()
        data = ch.load_data(p)
        study = ch.run_study(p, data, None, checkpoint_root=tmp_path_factory.mktemp("pool"), progress=False)
    finally:
        mp.undo()
    return p, data, study


class KillingVAE(vae.VAEExperiment):
    """The chapter's VAE experiment, except that the first fit of generation 2 anywhere (marked by a file)
    kills the worker process it runs in, as a preempted node or an out-of-memory kill would."""

    marker: str = ""
    log: str = ""

    def fit(self, data, ctx):
        with open(self.log, "a") as f:
            f.write(f"{self.synthetic} {ctx.generation} {os.getpid()}\n")
        if ctx.generation == 2:
            try:
                with open(self.marker, "x") as f:  # only the first process to get here
                    f.write(str(os.getpid()))
            except FileExistsError:
                pass
            else:
                os._exit(1)  # no cleanup, no exception: the process is gone
        return super().fit(data, ctx)


def test_executor_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(parallel.EXECUTOR_ENV, raising=False)
    assert parallel.executor() == "local"
    monkeypatch.setenv(parallel.EXECUTOR_ENV, "  ")
    assert parallel.executor() == "local"
    monkeypatch.setenv(parallel.EXECUTOR_ENV, "tcp://10.0.0.1:8786")
    assert parallel.executor() == "tcp://10.0.0.1:8786"
    monkeypatch.setenv(parallel.EXECUTOR_ENV, "dask-local:two")
    with pytest.raises(ValueError, match="dask-local:N"):
        parallel.run_jobs(abs, [1], progress=False)


@pytest.mark.slow  # starts a Dask cluster of two worker processes
def test_a_chapter_study_is_identical_on_dask_and_in_the_local_pool(reference, monkeypatch, tmp_path):
    p, data, pool = reference
    monkeypatch.setenv(parallel.EXECUTOR_ENV, DASK)
    dask = ch.run_study(p, data, None, checkpoint_root=tmp_path, progress=False)
    pd.testing.assert_frame_equal(pool.metrics, dask.metrics, check_exact=True)
    pd.testing.assert_frame_equal(pool.bookkeeping, dask.bookkeeping, check_exact=True)
    # the runs really went to two other processes, each computing with one thread
    client = parallel._dask_client(DASK, 2, 1)
    assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
    assert all(n == 1 for n in client.run(parallel.current_threads).values() if n is not None)
    # the two conditions part after generation 0: equality above is not a comparison of constants
    w = dask.wide().set_index(["condition", "generation"])["latent_spread"]
    assert w[("replace / fresh", 0)] == w[("replace / fixed", 0)]
    assert w[("replace / fresh", 3)] != w[("replace / fixed", 3)]


@pytest.mark.slow  # starts a Dask cluster of two worker processes
def test_each_run_asks_for_its_threads_and_a_gpu_only_where_declared(mnist_ok, monkeypatch):
    client = parallel._dask_client(DASK, 2, 1)
    assert parallel.run_resources(client, 1, gpu=False) == {"CPU": 1}
    with pytest.raises(RuntimeError, match="GPU"):
        parallel.run_resources(client, 1, gpu=True)


@pytest.mark.slow  # starts a Dask cluster of two worker processes
def test_a_worker_killed_mid_run_resumes_from_its_checkpoint_with_the_same_numbers(reference, monkeypatch, tmp_path):
    p, data, pool = reference
    monkeypatch.setenv(parallel.EXECUTOR_ENV, DASK)
    ex = KillingVAE(ch.train_config(p), synthetic="fresh", n_eval=p["n_eval"])
    ex.marker, ex.log = str(tmp_path / "killed"), str(tmp_path / "fits.log")
    loop = Loop(experiment=ex, regime="replace", generations=p["generations"])
    study = ch.run_study(p, data, None, loop=loop, checkpoint_root=tmp_path / "ck", progress=False)
    assert (tmp_path / "killed").exists(), "no worker was killed"
    pd.testing.assert_frame_equal(pool.metrics, study.metrics, check_exact=True)
    # the killed run started again from its checkpoint: generations 1 and 2 of the killed condition were
    # fitted once before the kill, and after it the run went on at generation 2, not at 0 or 1
    fits = [line.split() for line in (tmp_path / "fits.log").read_text().splitlines()]
    killer = int((tmp_path / "killed").read_text())
    killed = next(s for s, g, pid in fits if int(pid) == killer and g == "2")
    gens = [int(g) for s, g, _ in fits if s == killed]
    assert gens == [0, 1, 2, 2, 3] or gens == [1, 2, 2, 3], gens
