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
    assert [p.name for p in Checkpoints(tmp_path).files()] == ["state-00006.npz", "state-00005.npz"]
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
    assert "resumed from state-00006.npz at generation 6" in journal and journal[-1].startswith("resumed")


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
    newest = tmp_path / "state-00006.npz"
    blob = newest.read_bytes()
    newest.write_bytes({"truncated": blob[: len(blob) // 2], "garbage": b"\x00garbage" * 100, "empty": b"",
                        "foreign pickle": pickle.dumps([1, 2, 3])}[damage])
    again = Scalar()
    with pytest.warns(RuntimeWarning, match="state-00006.npz is unreadable"):
        res = run_recursion(again, real(), 10, seed=4, checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from == 5 and again.fits == list(range(5, 11))  # one generation recomputed
    pd.testing.assert_frame_equal(res.metrics, full)


def test_all_checkpoints_damaged_restarts_the_run_with_a_warning(tmp_path):
    full = run_recursion(Scalar(), real(), 4, seed=5, progress=False).metrics
    run_recursion(Scalar(), real(), 4, seed=5, checkpoint_dir=tmp_path, progress=False)
    for p in Checkpoints(tmp_path).files():
        p.write_bytes(b"not a state file")
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


# -- hostile files: a results folder never runs code -------------------------------------------------
class _Plant:
    """A pickle payload: unpickling it calls open(marker, "w"), creating the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _npz(members: dict) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **members)
    return buf.getvalue()


def _members(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _with_manifest(path, edit) -> bytes:
    """The checkpoint at ``path`` with its JSON manifest edited by ``edit(manifest)``."""
    import json

    members = _members(path)
    manifest = json.loads(members["__manifest__"].tobytes())
    edit(manifest)
    members["__manifest__"] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    return _npz(members)


def _bad_header_npy() -> bytes:
    """A .npy member whose header is not a literal (numpy parses headers with ast.literal_eval)."""
    header = b"{'descr': __import__('os').system('touch marker'), 'fortran_order': False, 'shape': (3,), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 24


def _hostile(kind: str, newest, marker) -> bytes:
    import io
    import pickle
    import zipfile

    if kind == "pickle":
        return pickle.dumps(_Plant(marker))
    if kind == "pickled object array":  # a real .npz whose member only numpy's pickle path could read
        members = _members(newest)
        members["a0"] = np.array([_Plant(marker)], dtype=object)
        return _npz(members)
    if kind == "bad npy header":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z, zipfile.ZipFile(newest) as old:
            for name in old.namelist():
                z.writestr(name, _bad_header_npy() if name == "__manifest__.npy" else old.read(name))
        return buf.getvalue()
    if kind == "json wrong types":
        def edit(m):
            for pair in m["root"]["dict"]:
                if pair[0] == "next_generation":
                    pair[1] = "six"
        return _with_manifest(newest, edit)
    if kind == "json unknown class":
        def edit(m):
            for pair in m["root"]["dict"]:
                if pair[0] == "composition":
                    pair[1]["record"] = "os.system"
        return _with_manifest(newest, edit)
    if kind == "json not a tagged entry":
        def edit(m):
            m["root"] = {"__reduce__": ["os.system", ["touch marker"]]}
        return _with_manifest(newest, edit)
    raise AssertionError(kind)


def test_the_pickle_payload_is_live(tmp_path):
    """The hostile tests below could fail: loading their payload with pickle does create the marker."""
    import pickle

    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_Plant(marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "pickled object array", "bad npy header", "json wrong types",
                                  "json unknown class", "json not a tagged entry"])
def test_hostile_checkpoint_is_refused_like_a_damaged_one_and_runs_nothing(tmp_path, kind, monkeypatch):
    """A crafted state-00006.npz -- a pickle, an archive with a pickled member, a .npy header that is
    code, a manifest of the wrong types or naming an undeclared class -- gets the damaged-file treatment:
    named in a warning, removed, its generation recomputed, the uninterrupted numbers; no code runs."""
    monkeypatch.chdir(tmp_path)  # where the header's 'touch marker' would land
    marker = tmp_path / "marker"
    ckpt = tmp_path / "ckpt"
    full = run_recursion(Scalar(), real(), 10, seed=4, progress=False).metrics
    with pytest.raises(KeyboardInterrupt):
        run_recursion(Scalar(crash_at=6), real(), 10, seed=4, checkpoint_dir=ckpt, progress=False)
    newest = ckpt / "state-00006.npz"
    newest.write_bytes(_hostile(kind, newest, marker))
    again = Scalar()
    with pytest.warns(RuntimeWarning, match="checkpoint .*state-00006.npz is unreadable") as rec:
        res = run_recursion(again, real(), 10, seed=4, checkpoint_dir=ckpt, progress=False)
    assert "removing" in str(rec[0].message) and "recomputing" in str(rec[0].message)
    assert res.resumed_from == 5 and again.fits == list(range(5, 11))
    pd.testing.assert_frame_equal(res.metrics, full)
    assert not marker.exists() and "unreadable checkpoint state-00006.npz removed" in Checkpoints(ckpt).journal()


@pytest.mark.parametrize("name", ["state-00009.pkl", "state.pkl"])
def test_pickled_checkpoint_of_older_code_is_never_loaded(tmp_path, name):
    """A pickle where older code wrote its checkpoints (state-NNNNN.pkl, state.pkl) is named, removed and
    never loaded -- even when it claims a later generation than the readable checkpoints."""
    import pickle

    marker = tmp_path / "marker"
    ckpt = tmp_path / "ckpt"
    full = run_recursion(Scalar(), real(), 10, seed=4, progress=False).metrics
    with pytest.raises(KeyboardInterrupt):
        run_recursion(Scalar(crash_at=6), real(), 10, seed=4, checkpoint_dir=ckpt, progress=False)
    (ckpt / name).write_bytes(pickle.dumps(_Plant(marker)))
    again = Scalar()
    with pytest.warns(RuntimeWarning, match=f"checkpoint .*{name} is unreadable .*Python pickle"):
        res = run_recursion(again, real(), 10, seed=4, checkpoint_dir=ckpt, progress=False)
    assert res.resumed_from == 6 and again.fits == list(range(6, 11))  # the good checkpoints are used
    pd.testing.assert_frame_equal(res.metrics, full)
    assert not marker.exists() and not (ckpt / name).exists()


def test_state_files_round_trip_what_experiments_store():
    """Arrays keep dtype, order and values; numpy scalars stay numpy scalars; tuples, int keys, tensors (bf16
    too), None, nan and -0.0 survive; an array stored twice is read back as one object."""
    import math

    import torch

    from collapse_utils.core.regimes import Composition
    from collapse_utils.core.storage import dump_state, load_state

    x = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    obj = {"x": x, "again": x, 3: (np.int64(7), np.float32(0.5), None, True, "s", [1.5, -0.0, math.nan]),
           "t": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "i": torch.tensor([1, 2], dtype=torch.int64),
           "comp": Composition(np.zeros((2, 3), dtype=np.int8), 1, 2), "u": np.array(["a", "bc"])}
    back = load_state(dump_state(obj))
    assert list(back) == list(obj) and back["again"] is back["x"] and back["x"].flags.f_contiguous
    assert back["x"].tobytes() == x.tobytes() and back["u"].tolist() == ["a", "bc"]
    s = back[3]
    assert type(s) is tuple and type(s[0]) is np.int64 and type(s[1]) is np.float32 and s[2:5] == (None, True, "s")
    assert s[5][0] == 1.5 and math.copysign(1, s[5][1]) == -1 and math.isnan(s[5][2])
    assert back["t"].dtype == torch.bfloat16 and torch.equal(back["t"], obj["t"]) and torch.equal(back["i"], obj["i"])
    assert isinstance(back["comp"], Composition) and back["comp"].data.dtype == np.int8 and back["comp"].n_synthetic == 2


@pytest.mark.parametrize("value,where", [(object(), r"state\['bad'\]"), (np.array([1, None]), "object array"),
                                         ({1, 2}, "builtins.set")])
def test_state_files_refuse_what_they_cannot_hold_with_a_clear_message(value, where):
    from collapse_utils.core.storage import dump_state

    with pytest.raises(TypeError, match=where):
        dump_state({"ok": 1, "bad": value})


def test_gmm_and_gaussian_states_resume_exactly(tmp_path):
    """The engine's data and state of two book experiments through a checkpoint: the Gaussian's sufficient
    statistics (accumulate regime: the pool) and the GMM's reference fit and kept models."""
    from collapse_utils.models import gaussian, gmm

    ex = gaussian.GaussianExperiment(ddof=1, sampler="exact")
    kw = dict(regime="accumulate", seed=2, progress=False)
    full = run_recursion(ex, ex.real(6, 10, 2), 8, **kw).metrics
    run_recursion(ex, ex.real(6, 10, 2), 4, checkpoint_dir=tmp_path / "g", **kw)
    res = run_recursion(ex, ex.real(6, 10, 2), 8, checkpoint_dir=tmp_path / "g", **kw)
    assert res.resumed_from == 4
    pd.testing.assert_frame_equal(res.metrics, full)

    truth = gmm.truth("blob")
    real_ = gmm.real_data(truth, [0, 1], 200)
    make = lambda: gmm.GMMExperiment(truth, 2, eval_samples=200, name="t_blob")  # noqa: E731
    kw = dict(seed=0, seeds=[0, 1], keep_models=[0, 2], progress=False)
    full = run_recursion(make(), real_, 4, **kw)
    run_recursion(make(), real_, 2, checkpoint_dir=tmp_path / "m", **kw)
    again = make()
    res = run_recursion(again, real_, 4, checkpoint_dir=tmp_path / "m", **kw)
    assert res.resumed_from == 2 and isinstance(again.reference, gmm.GMM)
    pd.testing.assert_frame_equal(res.metrics, full.metrics)
    assert set(res.models) == {0, 2} and res.models[0].weights.tobytes() == full.models[0].weights.tobytes()


def test_vae_and_discrete_states_survive_a_state_file():
    """Chapter 03's engine data (FreshSynthetic: a decoder's state dict) and experiment state (the reference
    encoder, artifacts, loss histories), and the categorical chain's bookkeeping, read back as they were."""
    import torch

    from collapse_utils.core.storage import dump_state, load_state
    from collapse_utils.models import discrete, vae

    torch.manual_seed(0)
    dec = vae.Decoder(4, 8)
    fresh = vae.FreshSynthetic(dec.state_dict(), 4, 8, n=6, seed=3)
    back = load_state(dump_state({"data": fresh}))["data"]
    assert isinstance(back, vae.FreshSynthetic) and (back.n, back.seed) == (6, 3)
    assert torch.equal(back.materialise(5), fresh.materialise(5))

    cfg = vae.TrainConfig(latent_dims=4, capacity=8)
    ex = vae.VAEExperiment(cfg, "fresh")
    ex.reference = vae.Encoder(4, 8)
    ex.artifacts = {0: {"latents": np.ones((3, 4), np.float32), "grid": np.zeros((2, 28, 28), np.uint8),
                        "history": [540.5, 300.25]}}
    ex.histories = {0: [540.5, 300.25]}
    again = vae.VAEExperiment(cfg, "fresh")
    again.set_state(load_state(dump_state(ex.get_state())))
    assert all(torch.equal(a, b) for a, b in zip(ex.reference.state_dict().values(),
                                                 again.reference.state_dict().values()))
    assert again.artifacts[0]["grid"].dtype == np.uint8 and again.histories == {0: [540.5, 300.25]}

    cat = discrete.CategoricalExperiment(discrete.zipf_probs(5, 1.0), tail_cut=0.1)
    cat.set_state((np.array([[3, -1]]), np.array([-1]), np.array([-1])))
    other = discrete.CategoricalExperiment(discrete.zipf_probs(5, 1.0), tail_cut=0.1)
    other.set_state(load_state(dump_state(cat.get_state())))
    assert other.extinct_at.tolist() == [[3, -1]] and other.absorbed_at.dtype == cat.absorbed_at.dtype
