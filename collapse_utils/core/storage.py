"""Files a run leaves behind: atomic writes, disk caches that survive corruption, writable folders.

One rule for every cache and checkpoint of the book: a file is either complete or absent (atomic
writes), and a file that is nevertheless unreadable -- truncated by a full disk, overwritten by
hand -- is *named* in a warning, removed and recomputed, never a stack trace from inside numpy or
torch.  And nothing read back from a results or cache folder can run code: state (checkpoints,
calibrations) is an ``.npz`` archive read with ``allow_pickle=False`` plus a JSON manifest
(:func:`dump_state` / :func:`load_state`), tensors are read with ``torch.load(..., weights_only=True)``,
models with transformers' ``from_pretrained`` (safetensors), bookkeeping is JSON; the book never
loads a pickle.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = ["fingerprint", "atomic_write_bytes", "cached_tensor", "read_cache", "discard", "ensure_writable", "StorageError",
           "state_record", "dump_state", "load_state"]

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



# ---------------------------------------------------------------------------------------------
# State files: what a checkpoint or cache holds, in a format that cannot run code when read
# ---------------------------------------------------------------------------------------------
STATE_FORMAT = "collapse_utils.state"
STATE_FORMAT_VERSION = 1
_MANIFEST = "__manifest__"
_RECORDS: dict[str, type] = {}
_PLAIN = (type(None), bool, int, float, str)
_STATE_TYPES = ("numpy arrays and scalars, torch tensors, None, bool, int, float, str, lists, tuples and dicts "
                "of them, and dataclasses declared with state_record")


def state_record(cls: type[T]) -> type[T]:
    """Declare a dataclass whose instances may be stored in a state file (:func:`dump_state`): its
    fields are stored by name and, when read back, passed to the class (never any code from the file).
    Only classes declared here can be rebuilt; a file naming any other class is refused."""
    import dataclasses

    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        raise TypeError(f"state_record declares dataclasses, not {cls!r}")
    if any(not f.init for f in dataclasses.fields(cls)):
        raise TypeError(f"{cls.__qualname__} has fields outside __init__; it cannot be rebuilt from its fields")
    _RECORDS[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach") and hasattr(x, "dtype")


def dump_state(obj) -> bytes:
    """``obj`` as the bytes of a state file: an ``.npz`` archive (numpy's format, read back with
    ``allow_pickle=False``) holding every array and tensor, plus a JSON manifest of the structure.

    ``obj`` may hold numpy arrays and scalars, torch tensors, ``None``/bool/int/float/str, lists,
    tuples and dicts of these, and dataclasses declared with :func:`state_record`; anything else is a
    TypeError that says where it sits.  An object stored twice is stored once and read back shared.
    """
    import dataclasses
    import io
    import json

    import numpy as np

    arrays: dict[str, np.ndarray] = {}
    seen: dict[int, dict] = {}

    def array(x, where: str) -> str:
        if x.dtype.hasobject:
            raise TypeError(f"cannot store an object array at {where}: a state file holds {_STATE_TYPES}")
        key = f"a{len(arrays)}"
        arrays[key] = x
        return key

    def enc(x, where: str):
        if type(x) in _PLAIN:
            return x
        if id(x) in seen:
            return seen[id(x)]
        if isinstance(x, np.ndarray):
            out = seen[id(x)] = {"array": array(x, where)}
        elif isinstance(x, np.generic):
            out = {"scalar": array(np.asarray(x), where)}
        elif _is_tensor(x):
            import torch

            if x.layout != torch.strided or x.is_quantized:
                raise TypeError(f"cannot store a {x.layout} tensor at {where}: only dense tensors")
            t = x.detach().cpu()
            dtype = str(t.dtype).removeprefix("torch.")
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
            try:
                a = t.numpy()
            except TypeError as exc:
                raise TypeError(f"cannot store a {dtype} tensor at {where}: {exc}") from None
            out = seen[id(x)] = {"tensor": array(a, where), "dtype": dtype, "device": str(x.device),
                                 "grad": bool(x.requires_grad)}
        elif type(x) is list:
            out = [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]
        elif type(x) is tuple:
            out = {"tuple": [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        elif type(x) in (dict, OrderedDict):
            out = {"dict": [[enc(k, f"{where} key"), enc(v, f"{where}[{k!r}]")] for k, v in x.items()]}
        elif dataclasses.is_dataclass(x) and _RECORDS.get(f"{type(x).__module__}.{type(x).__qualname__}") is type(x):
            out = {"record": f"{type(x).__module__}.{type(x).__qualname__}",
                   "fields": {f.name: enc(getattr(x, f.name), f"{where}.{f.name}") for f in dataclasses.fields(x)}}
        else:
            raise TypeError(f"cannot store a {type(x).__module__}.{type(x).__qualname__} at {where}: a state file "
                            f"holds {_STATE_TYPES}")
        return out

    manifest = {"format": STATE_FORMAT, "version": STATE_FORMAT_VERSION, "root": enc(obj, "state")}
    text = json.dumps(manifest, allow_nan=True, separators=(",", ":")).encode()
    arrays[_MANIFEST] = np.frombuffer(text, dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_state(source: bytes | str | os.PathLike):
    """Read a state file written by :func:`dump_state` (bytes or a path).  Nothing in the file is
    executed: arrays are read with ``allow_pickle=False``, the structure is JSON, and only classes
    declared with :func:`state_record` are rebuilt.  A file that is not such a state file -- damaged,
    truncated, a pickle, an archive with object arrays, a manifest of the wrong shape -- raises
    ValueError."""
    import io
    import json
    import zipfile

    import numpy as np

    raw = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    if not raw.startswith(b"PK\x03\x04"):
        kind = ("an empty file" if not raw else "a Python pickle, which is never loaded" if raw[:1] == b"\x80"
                else "not an .npz archive")
        raise ValueError(f"not a state file ({kind})")
    try:
        npz = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not a state file ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError("not a state file (a single array, not an archive)")
    shared: dict[tuple[str, str], object] = {}  # an array or tensor stored once is read back as one object

    def arr(key) -> np.ndarray:
        if not isinstance(key, str) or key == _MANIFEST or key not in npz.files:
            raise ValueError(f"malformed state file: no array {key!r}")
        try:
            return npz[key]
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"malformed state file: array {key!r} is unreadable ({exc})") from None

    def once(tag: str, x: dict, make):
        key = (tag, x[tag] if isinstance(x[tag], str) else repr(x[tag]))
        if key not in shared:
            shared[key] = make(x)
        return shared[key]

    def tagged(x: dict, tag: str, *extra: str) -> bool:
        if tag not in x:
            return False
        if set(x) != {tag, *extra}:
            raise ValueError(f"malformed state file: a {tag!r} entry with keys {sorted(x)}")
        return True

    def dec(x):
        if type(x) in _PLAIN:
            return x
        if type(x) is list:
            return [dec(v) for v in x]
        if type(x) is not dict:
            raise ValueError(f"malformed state file: unexpected {type(x).__name__}")
        if tagged(x, "array"):
            return once("array", x, lambda y: arr(y["array"]))
        if tagged(x, "scalar"):
            a = arr(x["scalar"])
            if a.ndim != 0:
                raise ValueError(f"malformed state file: a scalar of shape {a.shape}")
            return a[()]
        if tagged(x, "tensor", "dtype", "device", "grad"):
            return once("tensor", x, tensor)
        if tagged(x, "tuple"):
            if type(x["tuple"]) is not list:
                raise ValueError("malformed state file: a tuple that is not a list")
            return tuple(dec(v) for v in x["tuple"])
        if tagged(x, "dict"):
            items = x["dict"]
            if type(items) is not list or any(type(kv) is not list or len(kv) != 2 for kv in items):
                raise ValueError("malformed state file: a dict that is not a list of pairs")
            out = {}
            for k, v in items:
                key = dec(k)
                try:
                    out[key] = dec(v)
                except TypeError:
                    raise ValueError(f"malformed state file: an unhashable dict key {type(key).__name__}") from None
            return out
        if tagged(x, "record", "fields"):
            return record(x)
        raise ValueError(f"malformed state file: an entry with keys {sorted(x)}")

    def tensor(x: dict):
        import torch

        dtypes = {str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.dtype)}
        dtype = dtypes.get(x["dtype"]) if isinstance(x["dtype"], str) else None
        if (dtype is None or not isinstance(x["device"], str) or type(x["grad"]) is not bool
                or not re.fullmatch(r"cpu|(cuda|mps|xpu)(:\d+)?", x["device"])):
            raise ValueError(f"malformed state file: a tensor of dtype {x['dtype']!r} on {x['device']!r}")
        a = arr(x["tensor"])
        t = torch.from_numpy(a if a.flags.writeable and a.dtype.isnative else np.array(a, copy=True))
        if dtype == torch.bfloat16 and t.dtype == torch.int16:
            t = t.view(torch.bfloat16)
        if t.dtype != dtype:
            raise ValueError(f"malformed state file: a {dtype} tensor stored as {a.dtype}")
        t = t.to(x["device"]) if x["device"] != "cpu" else t
        return t.requires_grad_(True) if x["grad"] else t

    def record(x: dict):
        import dataclasses

        cls = _RECORDS.get(x["record"]) if isinstance(x["record"], str) else None
        if cls is None:
            raise ValueError(f"malformed state file: {x['record']!r} is not a declared state record "
                             "(or its module is not imported)")
        names = {f.name for f in dataclasses.fields(cls)}
        if type(x["fields"]) is not dict or set(x["fields"]) != names:
            raise ValueError(f"malformed state file: the fields of {x['record']} differ from {sorted(names)}")
        return cls(**{k: dec(v) for k, v in x["fields"].items()})

    with npz:
        try:
            if _MANIFEST not in npz.files:
                raise ValueError("not a state file of this book (no manifest)")
            try:
                text = npz[_MANIFEST]
            except ValueError as exc:
                raise ValueError(f"malformed state file: the manifest is unreadable ({exc})") from None
            if text.dtype != np.uint8 or text.ndim != 1:
                raise ValueError("not a state file of this book (no manifest)")
            manifest = json.loads(text.tobytes())
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"malformed state file: the manifest is unreadable ({exc})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed state file: the manifest is not JSON ({exc})") from None
        if (type(manifest) is not dict or set(manifest) != {"format", "version", "root"}
                or manifest["format"] != STATE_FORMAT):
            raise ValueError("not a state file of this book (no manifest)")
        if manifest["version"] != STATE_FORMAT_VERSION:
            raise ValueError(f"a state file of format version {manifest['version']!r}, this code reads "
                             f"{STATE_FORMAT_VERSION}")
        return dec(manifest["root"])
