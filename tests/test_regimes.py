import numpy as np
import pytest
import torch

from collapse_utils.core.regimes import Regime, parse_regime


def _real(n=100, seeds=None):
    # real samples are positive, synthetic ones negative: provenance is visible in the data
    return np.arange(1, n + 1, dtype=float) if seeds is None else np.tile(np.arange(1, n + 1, dtype=float), (seeds, 1))


def _syn(n, seeds=None, gen=1):
    return -np.full(n if seeds is None else (seeds, n), float(gen))


@pytest.mark.parametrize("spec,expected", [
    ("replace", Regime("replace")), ("keep_real(0.1)", Regime("keep_real", 0.1)),
    (" accumulate ", Regime("accumulate")), ("accumulate_subsample", Regime("accumulate_subsample")),
])
def test_parse(spec, expected):
    assert parse_regime(spec) == expected
    assert parse_regime(str(expected)) == expected


@pytest.mark.parametrize("bad", ["keep", "keep_real", "keep_real(0)", "keep_real(1.5)", "replace(0.1)", "", "accumulate(2)"])
def test_parse_errors_are_clear(bad):
    with pytest.raises(ValueError, match="regime|fraction|argument"):
        parse_regime(bad)


def test_replace_uses_only_synthetic():
    r = parse_regime("replace")
    real = _real()
    comp = r.compose(real, r.start(real), _syn(100), 100, np.random.default_rng(0))
    assert comp.n_real == 0 and comp.n_synthetic == 100 and (comp.data < 0).all()
    assert r.n_synthetic(100) == 100


@pytest.mark.parametrize("batched", [False, True])
def test_keep_real_bookkeeping(batched):
    r = parse_regime("keep_real(0.1)")
    seeds = 4 if batched else None
    real = _real(100, seeds)
    assert r.n_synthetic(100) == 90
    comp = r.compose(real, r.start(real, batched), _syn(90, seeds), 100, np.random.default_rng(0), batched)
    assert comp.n_total == 100 and comp.n_real == 10 and comp.real_fraction == pytest.approx(0.1)
    data = comp.data if batched else comp.data[None]
    for row in data:
        kept = row[row > 0]
        assert len(kept) == 10 and len(set(kept)) == 10  # distinct real samples
        assert (row < 0).sum() == 90
    if batched:  # every seed draws its own subset
        assert len({tuple(sorted(row[row > 0])) for row in data}) > 1


def test_keep_real_draws_fresh_subset_each_generation():
    r = parse_regime("keep_real(0.2)")
    real = _real()
    a = r.compose(real, r.start(real), _syn(80), 100, np.random.default_rng(1))
    b = r.compose(real, a, _syn(80), 100, np.random.default_rng(2))
    assert set(a.data[a.data > 0]) != set(b.data[b.data > 0])


@pytest.mark.parametrize("batched", [False, True])
def test_accumulate_grows_and_keeps_everything(batched):
    r = parse_regime("accumulate")
    seeds = 3 if batched else None
    real = _real(50, seeds)
    comp = r.start(real, batched)
    for g in range(1, 4):
        comp = r.compose(real, comp, _syn(50, seeds, g), 50, np.random.default_rng(g), batched)
        row = comp.data[0] if batched else comp.data
        assert comp.n_total == 50 * (g + 1) and comp.n_real == 50
        assert comp.real_fraction == pytest.approx(1 / (g + 1))
        assert (row > 0).sum() == 50 and all((row == -k).sum() == 50 for k in range(1, g + 1))


def test_accumulate_subsample_fixed_budget_from_pool():
    r = parse_regime("accumulate_subsample")
    real = _real(100)
    comp = r.start(real)
    for g in range(1, 6):
        comp = r.compose(real, comp, _syn(100, None, g), 100, np.random.default_rng(g))
        assert comp.n_total == 100 and comp.n_real == (comp.data > 0).sum()
        assert comp.pool.shape[0] == 100 * (g + 1)
    # over many draws the real share approaches 1/(g+1) = 1/6
    shares = [r.compose(real, comp, _syn(100, None, 9), 100, np.random.default_rng(s)).real_fraction
              for s in range(200)]
    assert np.mean(shares) == pytest.approx(100 / 700, abs=0.01)


def test_torch_tensors_are_supported():
    r = parse_regime("keep_real(0.25)")
    real = torch.arange(1, 41).reshape(20, 2)
    comp = r.compose(real, r.start(real), -torch.ones(15, 2, dtype=torch.long), 20, np.random.default_rng(0))
    assert isinstance(comp.data, torch.Tensor) and comp.data.shape == (20, 2) and (comp.data > 0).sum() == 10


def test_keep_real_needs_enough_real_data():
    r = parse_regime("keep_real(0.5)")
    real = _real(10)
    with pytest.raises(ValueError, match="real samples"):
        r.compose(real, r.start(real), _syn(50), 100, np.random.default_rng(0))
