"""MNIST from the original IDX gzip files, with numpy and gzip only (no torchvision).

The four files are registered in :mod:`collapse_utils.core.data` with their sha256, so the
usual lookup order applies: an explicit ``path``, ``COLLAPSE_DATA_DIR/mnist``, the local
cache, and (``download=True``, where a network exists) a standard mirror downloaded into
the cache and verified.  Every problem -- a missing file, a wrong checksum, a file that is
not a valid IDX file -- is one :class:`~collapse_utils.core.data.DataError` that names the file,
the expected sha256 and how to provide the data.

IDX format (LeCun et al.): a big-endian header ``0x00 0x00 <dtype> <ndim>`` followed by
``ndim`` big-endian uint32 dimensions and the row-major payload.  MNIST uses dtype 0x08
(unsigned byte): images are ``0x00000803`` (N x 28 x 28), labels ``0x00000801`` (N).
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..core.data import REGISTRY, DataError, dataset_file

__all__ = ["FILES", "N_IMAGES", "load_mnist", "mnist_tensor", "read_idx", "subset_indices"]

#: (images file, labels file) per split
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
N_IMAGES = {"train": 60_000, "test": 10_000}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _fail(path: Path, problem: str) -> DataError:
    ds = REGISTRY["mnist"]
    expected = ds.files.get(Path(path).name)
    exp = f"; expected sha256 {expected}" if expected else ""
    return DataError(
        f"{path} is not a valid MNIST IDX file ({problem}){exp}. To provide the data: {ds.how_to_get} "
        f"(sources: {', '.join(ds.mirrors)}), then point COLLAPSE_DATA_DIR at the folder that holds 'mnist/', "
        f"or call with download=True where a network exists."
    )


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None,
             expected_shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """Read one (optionally gzip-compressed) IDX file into a numpy array, checking its header.

    ``expected_shape`` may use ``None`` for a dimension that can take any value.
    Raises :class:`DataError` for a truncated, mis-typed or wrongly shaped file.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise _fail(path, "the file does not exist") from None
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise _fail(path, f"it cannot be decompressed: {exc}") from None
    if len(raw) < 4:
        raise _fail(path, f"it holds only {len(raw)} bytes, too few for an IDX header")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _DTYPES or ndim == 0:
        raise _fail(path, f"bad magic number 0x{int.from_bytes(raw[:4], 'big'):08X}")
    if expected_ndim is not None and ndim != expected_ndim:
        raise _fail(path, f"it has {ndim} dimensions, expected {expected_ndim} "
                          f"(magic 0x{0x800 + expected_ndim:08X})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _fail(path, "the header is truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if expected_shape is not None and (len(expected_shape) != ndim or any(
            e is not None and e != d for e, d in zip(expected_shape, dims))):
        raise _fail(path, f"shape {dims}, expected {tuple(expected_shape)}")
    dtype = np.dtype(_DTYPES[code])
    n_bytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != n_bytes:
        raise _fail(path, f"payload of {len(raw) - header} bytes, expected {n_bytes} for shape {dims}")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def load_mnist(split: str = "train", path: str | os.PathLike | None = None,
               download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of the ``"train"`` or ``"test"`` split.

    ``path``: a folder holding the four ``*.gz`` files (otherwise ``COLLAPSE_DATA_DIR/mnist``
    or the cache); ``download=True`` fetches missing files from a mirror (needs a network).
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    img_name, lab_name = FILES[split]
    n = N_IMAGES[split]
    img_path = dataset_file("mnist", img_name, path, download)  # verifies sha256
    lab_path = dataset_file("mnist", lab_name, path, download)
    images = read_idx(img_path, 3, (n, 28, 28))
    labels = read_idx(lab_path, 1, (n,))
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise _fail(img_path, "pixels and labels must be unsigned bytes")
    if labels.max() > 9:
        raise _fail(lab_path, f"label {int(labels.max())} outside 0..9")
    return images, labels


def subset_indices(labels: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """A seeded random subset of ``n`` indices (all, in file order, if ``n`` is None or too large)."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 20240731]))
    return np.sort(rng.choice(len(labels), size=n, replace=False))


def mnist_tensor(split: str = "train", n: int | None = None, seed: int = 0, path=None, download: bool = False):
    """MNIST as the VAE sees it (``ToTensor``): float32 tensor (N, 1, 28, 28) in [0, 1], plus int64 labels.

    ``n`` takes a seeded random subset (the same for every run with the same ``seed``).
    """
    import torch

    images, labels = load_mnist(split, path, download)
    idx = subset_indices(labels, n, seed)
    x = torch.from_numpy(images[idx]).float().div_(255.0).unsqueeze(1).contiguous()
    y = torch.from_numpy(labels[idx].astype(np.int64))
    return x, y
