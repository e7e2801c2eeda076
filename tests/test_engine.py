import numpy as np
import pandas as pd
import pytest

from collapse_utils.core.engine import Checkpoints, Experiment, run_recursion


class Scalar(Experiment):
    """A tiny non-batched experiment: fit = sample mean, sample = normal draws around it."""

    name = "scalar"

    def __init__(self, crash_at=None):
        self.crash_at = crash_at
        self.fits = []

    def fit(self, data, ctx):
        if ctx.generation == self.crash_at:
            raise KeyboardInterrupt("simulated interruption")
        self.fits.append(ctx.generation)
        return float(np.mean(data))

    def sample(self, model, n, ctx):
        return model + ctx.rng("sample").standard_normal(n)

    def evaluate(self, model, comp, ctx):
        return {"mean": model, "n": comp.n_total}


def real(n=50):
    return np.random.default_rng(123).standard_normal(n)


@pytest.mark.parametrize("regime", ["replace", "keep_real(0.1)", "accumulate", "accumulate_subsample"])
def test_deterministic_under_seed(regime):
    a = run_recursion(Scalar(), real(), 8, regime, seed=3, progress=False).metrics
    b = run_recursion(Scalar(), real(), 8, regime, seed=3, progress=False).metrics
    c = run_recursion(Scalar(), real(), 8, regime, seed=4, progress=False).metrics
    pd.testing.assert_frame_equal(a, b)
    assert not a.value.equals(c.value)


def test_tidy_table_and_bookkeeping():
    res = run_recursion(Scalar(), real(40), 5, "keep_real(0.25)", seed=0, progress=False, columns={"M": 40})
    m = res.metrics
    assert list(m.columns[:6]) == ["experiment", "regime", "seed", "generation", "metric", "value"]
    assert set(m.metric) == {"mean", "n"} and (m.M == 40).all() and (m.regime == "keep_real(0.25)").all()
    assert sorted(m.generation.unique()) == list(range(6))
    bk = res.bookkeeping.set_index("generation")
    assert bk.loc[0, "real_fraction"] == 1.0 and (bk.loc[1:, "n_real"] == 10).all()
    assert (bk.n_train == 40).all()


def test_sizes_schedule_and_record_subset():
    res = run_recursion(Scalar(), real(10), 6, seed=0, sizes=lambda g: 10 * (g + 1), record=[3], progress=False)
    assert sorted(res.metrics.generation.unique()) == [0, 3, 6]
    assert res.bookkeeping.n_train.tolist() == [10 * (g + 1) for g in range(7)]


def test_resume_after_interruption_loses_nothing(tmp_path):
    full = run_recursion(Scalar(), real(), 10, "keep_real(0.2)", seed=1, progress=False).metrics
    with pytest.raises(KeyboardInterrupt):
        run_recursion(Scalar(crash_at=6), real(), 10, "keep_real(0.2)", seed=1, checkpoint_dir=tmp_path,
                      progress=False)
    assert [p.name for p in Checkpoints(tmp_path).files()] == ["state-00006.pkl", "state-00005.pkl"]
    again = Scalar()
    res = run_recursion(again, real(), 10, "keep_real(0.2)", seed=1, checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from == 6 and again.fits == list(range(6, 11))  # finished generations not redone
    pd.testing.assert_frame_equal(res.metrics, full)
    # a finished run resumes to the same table without fitting anything
    third = Scalar()
    res3 = run_recursion(third, real(), 10, "keep_real(0.2)", seed=1, checkpoint_dir=tmp_path, progress=False)
    assert third.fits == [] and res3.metrics.equals(full)
    journal = Checkpoints(tmp_path).journal()
    assert journal[0] == "started at generation 0" and "generation 6 started" in journal
    assert "resumed from state-00006.pkl at generation 6" in journal and journal[-1].startswith("resumed")


def test_resume_can_extend_a_finished_run(tmp_path):
    full = run_recursion(Scalar(), real(), 8, seed=2, progress=False).metrics
    run_recursion(Scalar(), real(), 5, seed=2, checkpoint_dir=tmp_path, progress=False)
    ext = run_recursion(Scalar(), real(), 8, seed=2, checkpoint_dir=tmp_path, progress=False).metrics
    pd.testing.assert_frame_equal(ext, full)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    run_recursion(Scalar(), real(), 2, seed=1, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="different run"):
        run_recursion(Scalar(), real(), 2, seed=2, checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign pickle"])
def test_damaged_checkpoint_is_named_and_only_its_generation_recomputed(tmp_path, damage):
    """The newest checkpoint truncated or overwritten: a warning names the file, the run falls back to
    the checkpoint before it, recomputes that one generation, and ends with the uninterrupted numbers."""
    import pickle

    full = run_recursion(Scalar(), real(), 10, seed=4, progress=False).metrics
    with pytest.raises(KeyboardInterrupt):
        run_recursion(Scalar(crash_at=6), real(), 10, seed=4, checkpoint_dir=tmp_path, progress=False)
    newest = tmp_path / "state-00006.pkl"
    blob = newest.read_bytes()
    newest.write_bytes({"truncated": blob[: len(blob) // 2], "garbage": b"\x00garbage" * 100, "empty": b"",
                        "foreign pickle": pickle.dumps([1, 2, 3])}[damage])
    again = Scalar()
    with pytest.warns(RuntimeWarning, match="state-00006.pkl is unreadable"):
        res = run_recursion(again, real(), 10, seed=4, checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from == 5 and again.fits == list(range(5, 11))  # one generation recomputed
    pd.testing.assert_frame_equal(res.metrics, full)


def test_all_checkpoints_damaged_restarts_the_run_with_a_warning(tmp_path):
    full = run_recursion(Scalar(), real(), 4, seed=5, progress=False).metrics
    run_recursion(Scalar(), real(), 4, seed=5, checkpoint_dir=tmp_path, progress=False)
    for p in Checkpoints(tmp_path).files():
        p.write_bytes(b"not a pickle")
    again = Scalar()
    with pytest.warns(RuntimeWarning, match="unreadable"):
        res = run_recursion(again, real(), 4, seed=5, checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from is None and again.fits == list(range(5))
    pd.testing.assert_frame_equal(res.metrics, full)


def test_checkpoint_written_by_other_code_is_recomputed_not_resumed(tmp_path, monkeypatch):
    """Same run, changed code: the old results are out of date, so the run starts again (with a
    warning) and replaces the checkpoint, instead of resuming or refusing."""
    from collapse_utils.core import engine

    first = run_recursion(Scalar(), real(), 4, seed=3, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(engine, "_code_version", lambda cls: "edited")
    again = Scalar()
    with pytest.warns(UserWarning, match="another version of the code"):
        res = run_recursion(again, real(), 4, seed=3, checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from is None and again.fits == list(range(5))
    pd.testing.assert_frame_equal(res.metrics, first.metrics)
    # other code and another run in the same folder (a chapter that changed its seeds): recomputed too
    monkeypatch.setattr(engine, "_code_version", lambda cls: "edited again")
    with pytest.warns(UserWarning, match="another version of the code"):
        other = run_recursion(Scalar(), real(), 4, seed=9, checkpoint_dir=tmp_path, progress=False)
    assert other.resumed_from is None
    monkeypatch.setattr(engine, "_code_version", lambda cls: "edited")
    with pytest.warns(UserWarning, match="another version of the code"):
        run_recursion(Scalar(), real(), 4, seed=3, checkpoint_dir=tmp_path, progress=False)
    # the replaced checkpoint now belongs to the new code: the next call resumes without fitting
    third = Scalar()
    assert run_recursion(third, real(), 4, seed=3, checkpoint_dir=tmp_path, progress=False).resumed_from == 5
    assert third.fits == []


@pytest.mark.parametrize("kwargs,match", [
    ({"generations": -1}, "generations"),
    ({"generations": 2.5}, "generations"),
    ({"regime": "keep_real(2)"}, "fraction"),
    ({"regime": "bogus"}, "valid regimes"),
    ({"sizes": 0}, "size"),
    ({"regime": "keep_real(0.5)", "sizes": 500}, "real samples"),
    ({"checkpoint_every": 0}, "checkpoint_every"),
])
def test_bad_arguments_fail_before_any_fit(kwargs, match):
    ex = Scalar()
    args = {"generations": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        run_recursion(ex, real(), progress=False, **args)
    assert ex.fits == []


def test_batched_metric_shape_is_checked():
    class Bad(Experiment):
        batched = True

        def fit(self, data, ctx):
            return data.mean(axis=1)

        def sample(self, model, n, ctx):
            return np.zeros((len(model), n))

        def evaluate(self, model, comp, ctx):
            return {"x": model[:2]}

    with pytest.raises(ValueError, match="2 values for 5 seed"):
        run_recursion(Bad(), np.zeros((5, 10)), 1, progress=False)


def test_should_stop_ends_the_run_early():
    class Stops(Scalar):
        def should_stop(self, model, ctx):
            return ctx.generation == 4

    res = run_recursion(Stops(), real(), 50, seed=0, record=[], progress=False)
    assert res.bookkeeping.generation.max() == 4 and res.metrics.generation.max() == 4


def test_cached_tensor_computes_once_and_recomputes_a_damaged_or_misshapen_file(tmp_path):
    import torch

    from collapse_utils.core.storage import cached_tensor

    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6).reshape(2, 3)

    f = tmp_path / "c.pt"
    first = cached_tensor(f, (2, 3), compute, "test entry")
    again = cached_tensor(f, (2, 3), compute, "test entry")
    assert torch.equal(first, again) and len(calls) == 1  # the second call read the file
    f.write_bytes(b"\x00garbage")
    with pytest.warns(RuntimeWarning, match="test entry .*c.pt is unreadable"):
        assert torch.equal(cached_tensor(f, (2, 3), compute, "test entry"), first)
    assert len(calls) == 2
    with pytest.warns(RuntimeWarning, match=r"expected a tensor of shape \(3, 2\)"):
        cached_tensor(f, (3, 2), lambda: torch.zeros(3, 2), "test entry")  # a file of another shape
    assert torch.load(f, weights_only=True).shape == (3, 2)
