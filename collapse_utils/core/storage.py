"""Files a run leaves behind: atomic writes, disk caches that survive corruption, writable folders.

One rule for every cache and checkpoint of the book: a file is either complete or absent (atomic
writes), and a file that is nevertheless unreadable -- truncated by a full disk, overwritten by
hand -- is *named* in a warning, removed and recomputed, never a stack trace from inside pickle or
torch.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = ["fingerprint", "atomic_write_bytes", "cached_tensor", "read_cache", "discard", "ensure_writable", "StorageError"]

T = TypeVar("T")

_UMASK = os.umask(0)
os.umask(_UMASK)


class StorageError(OSError):
    """A folder the run must write to cannot be written; the message says which and how to fix it."""


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new version, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def discard(path: str | os.PathLike) -> None:
    """Remove a file or folder if present."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def read_cache(path: str | os.PathLike, loader: Callable[[Path], T], what: str = "cache entry",
               remove: str | os.PathLike | None = None) -> T | None:
    """``loader(path)``, or None when ``path`` does not exist or cannot be read.

    An unreadable entry is reported in a warning that names it, then removed (``remove``, default the
    file itself; pass a cache entry's folder to drop all of it) so that the caller recomputes it.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        return loader(path)
    except Exception as exc:  # noqa: BLE001 - any failure to read a cache means: recompute it
        target = Path(remove) if remove is not None else path
        warnings.warn(f"{what} {path} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); "
                      f"removing {target} and recomputing it", RuntimeWarning, stacklevel=2)
        discard(target)
        return None


def cached_tensor(path: str | os.PathLike, shape: tuple[int, ...], compute: Callable[[], "torch.Tensor"],
                  what: str = "cache entry"):
    """A tensor of ``shape`` read from ``path`` (torch format), else ``compute()``d and written there
    atomically; an unreadable or wrongly shaped file is reported, removed and recomputed (:func:`read_cache`)."""
    import io

    import torch

    shape = tuple(shape)

    def load(f: Path):
        out = torch.load(f, weights_only=True)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
            raise ValueError(f"expected a tensor of shape {shape}")
        return out

    hit = read_cache(path, load, what)
    if hit is not None:
        return hit
    out = compute()
    buf = io.BytesIO()
    torch.save(out, buf)
    atomic_write_bytes(path, buf.getvalue())
    return out


def ensure_writable(folder: str | os.PathLike, what: str = "results folder", fix: str = "") -> Path:
    """Create ``folder`` if needed and prove it can be written, or raise one clear StorageError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(f"the {what} {folder} cannot be written ({exc.strerror or exc}); "
                           f"{fix or 'make it writable or choose another folder'}") from None
    return folder


def fingerprint(*parts, length: int = 16) -> str:
    """The one fingerprint of the book's disk stores: a SHA-256 over ``parts``, cut to ``length`` hex digits.

    A module counts by its source text (results stored under it are not reused by other code), a
    tensor or array by its shape, dtype and bytes, anything else by its JSON (sorted keys, ``str``
    for what JSON cannot hold).  Cache keys and checkpoint tags are all made here.
    """
    import hashlib
    import inspect
    import json
    import types

    h = hashlib.sha256()
    for x in parts:
        if isinstance(x, types.ModuleType):
            try:
                h.update(inspect.getsource(x).encode())
            except (OSError, TypeError):
                h.update(x.__name__.encode())
        elif hasattr(x, "detach") and hasattr(x, "shape"):  # a torch tensor
            t = x.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.numpy().tobytes())
        elif hasattr(x, "tobytes") and hasattr(x, "shape"):  # a numpy array
            h.update(f"{tuple(x.shape)}{x.dtype}".encode())
            h.update(x.tobytes())
        else:
            h.update(json.dumps(x, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:length]

