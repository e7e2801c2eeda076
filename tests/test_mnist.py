"""The MNIST loader: real files, checksums, IDX header checks, missing and corrupted files."""
from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest

from collapse_utils.core import data as cu_data
from collapse_utils.core.data import REGISTRY, DataError
from collapse_utils.models.mnist import FILES, load_mnist, mnist_tensor, read_idx, subset_indices

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_dir():
    try:
        return cu_data.find_dataset("mnist")
    except DataError as e:
        pytest.skip(f"MNIST not available: {e}")


def test_loads_real_mnist_with_known_label_counts(mnist_dir):
    x, y = load_mnist("train", path=mnist_dir)
    assert x.shape == (60_000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60_000,) and y.dtype == np.uint8
    assert np.bincount(y).tolist() == TRAIN_COUNTS
    assert 0 == x.min() and x.max() == 255
    xt, yt = load_mnist("test", path=mnist_dir)
    assert xt.shape == (10_000, 28, 28)
    assert np.bincount(yt).tolist() == TEST_COUNTS


def test_tensor_view_and_seeded_subset(mnist_dir):
    x, y = mnist_tensor("test", 500, seed=3, path=mnist_dir)
    assert tuple(x.shape) == (500, 1, 28, 28) and str(x.dtype) == "torch.float32"
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    x2, y2 = mnist_tensor("test", 500, seed=3, path=mnist_dir)
    assert (x == x2).all() and (y == y2).all()
    idx = subset_indices(np.zeros(1000), 100, seed=3)
    assert len(np.unique(idx)) == 100 and (np.diff(idx) > 0).all()
    assert not np.array_equal(idx, subset_indices(np.zeros(1000), 100, seed=4))


def _copy(src_dir, dst_dir):
    dst = dst_dir / "mnist"
    dst.mkdir()
    for f in REGISTRY["mnist"].files:
        shutil.copy(src_dir / f, dst / f)
    return dst


def test_corrupted_file_gives_one_clear_error(mnist_dir, tmp_path):
    folder = _copy(mnist_dir, tmp_path)
    bad = folder / FILES["test"][1]  # t10k-labels
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        load_mnist("test", path=folder)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "corrupt" in msg
    assert REGISTRY["mnist"].files["t10k-labels-idx1-ubyte.gz"] in msg  # the expected sha256
    assert "mnist" in msg and "IDX" in msg  # how to provide it
    # the training split in the same folder is intact and still loads
    assert load_mnist("train", path=folder)[1].shape == (60_000,)


def test_missing_file_names_file_checksum_and_fix(mnist_dir, tmp_path, monkeypatch):
    folder = _copy(mnist_dir, tmp_path)
    (folder / FILES["train"][0]).unlink()
    monkeypatch.setenv("COLLAPSE_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(cu_data, "cache_dir", lambda: tmp_path / "empty-cache")
    with pytest.raises(DataError) as err:
        load_mnist("train", path=folder)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "not found" in msg
    assert REGISTRY["mnist"].files["train-images-idx3-ubyte.gz"] in msg
    assert "COLLAPSE_DATA_DIR" in msg


def _write_idx(path, magic_dims, payload: bytes, dims):
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">HBB", 0, magic_dims[0], magic_dims[1]))
        fh.write(struct.pack(f">{len(dims)}I", *dims))
        fh.write(payload)


def test_idx_header_checks(tmp_path):
    ok = tmp_path / "ok-idx3-ubyte.gz"
    _write_idx(ok, (0x08, 3), bytes(range(24)), (2, 3, 4))
    arr = read_idx(ok, 3, (None, 3, 4))
    assert arr.shape == (2, 3, 4) and arr[1, 2, 3] == 23
    cases = {
        "magic": ((0x07, 3), bytes(24), (2, 3, 4), 3, None),  # unknown dtype code
        "dimensions": ((0x08, 1), bytes(24), (24,), 3, None),  # labels where images are expected
        "shape": ((0x08, 3), bytes(24), (2, 3, 4), 3, (2, 28, 28)),
        "payload": ((0x08, 3), bytes(23), (2, 3, 4), 3, None),  # truncated
    }
    for word, (magic, payload, dims, ndim, shape) in cases.items():
        p = tmp_path / f"{word}.gz"
        _write_idx(p, magic, payload, dims)
        with pytest.raises(DataError, match=word):
            read_idx(p, ndim, shape)
    notgz = tmp_path / "plain.gz"
    notgz.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="decompressed"):
        read_idx(notgz)
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "absent.gz")


def test_bad_split_name():
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")
