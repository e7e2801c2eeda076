"""Dataset registry: names, files, sha256, and where to find them.

Lookup order for a dataset's folder (DESIGN.md):

1. an explicit ``path`` argument,
2. the ``COLLAPSE_DATA_DIR`` environment variable (a folder holding ``<dataset>/`` folders),
3. the local cache ``data/cache/`` in the repository (or ``~/.cache/collapse_utils``),
4. when ``download=True`` and a network is reachable, the canonical source, downloaded
   into the cache and verified.

Every file is checked against its sha256 before use; a missing or corrupt file
raises :class:`DataError` naming the file, the expected checksum and how to fix it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DataError", "Dataset", "REGISTRY", "find_dataset", "dataset_file", "sha256sum", "cache_dir"]


class DataError(RuntimeError):
    """Missing or corrupt data; the message says what is expected and how to provide it."""


@dataclass(frozen=True)
class Dataset:
    name: str
    files: dict[str, str]  # relative file name -> sha256
    description: str
    mirrors: tuple[str, ...] = ()  # base URLs; file names are appended
    how_to_get: str = ""
    extra: dict = field(default_factory=dict)


REGISTRY: dict[str, Dataset] = {}


def register(ds: Dataset) -> Dataset:
    REGISTRY[ds.name] = ds
    return ds


register(Dataset(
    "mnist",
    {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "MNIST handwritten digits, original IDX files (gzip)",
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    how_to_get="download the four IDX .gz files of MNIST into a folder named 'mnist'",
))
register(Dataset(
    "wikitext-2",
    {
        "wiki.train.tokens": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
        "wiki.valid.tokens": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
        "wiki.test.tokens": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
    },
    "WikiText-2 (wikitext-2-v1, tokenized with <unk>), train/valid/test",
    how_to_get="extract wikitext-2-v1.zip (Merity et al. 2016) into a folder named 'wikitext-2'",
))
register(Dataset(
    "wikitext-2-raw",
    {
        "wiki.train.raw": "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57",
        "wiki.valid.raw": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
        "wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    },
    "WikiText-2 raw (wikitext-2-raw-v1); with a network the paper preset loads it through "
    "Hugging Face datasets instead",
    how_to_get="extract wikitext-2-raw-v1.zip into a folder named 'wikitext-2-raw', or let the paper "
    "preset load 'wikitext'/'wikitext-2-raw-v1' with Hugging Face datasets",
))
register(Dataset(
    "gpt2-bpe",
    {
        "vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    },
    "GPT-2 byte-level BPE vocabulary and merges (the vocabulary OPT's tokenizer uses)",
    how_to_get="copy OpenAI's GPT-2 encoder.json/vocab.bpe as vocab.json/merges.txt into 'gpt2-bpe'",
))


def cache_dir() -> Path:
    from .results import repo_root

    root = repo_root(Path(__file__).parent)
    if (root / "collapse_utils").is_dir() and os.access(root, os.W_OK):
        return root / "data" / "cache"
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


def _download(ds: Dataset, fname: str, dest: Path) -> bool:
    for base in ds.mirrors:
        url = base + fname
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
                shutil.copyfileobj(resp, out)
            if sha256sum(Path(tmp)) != ds.files[fname]:
                os.unlink(tmp)
                continue
            os.replace(tmp, dest)
            return True
        except OSError:
            if "tmp" in locals() and os.path.exists(tmp):
                os.unlink(tmp)
            continue
    return False


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
    if download and ds.mirrors:
        dest = cache_dir() / name / fname
        if _download(ds, fname, dest):
            return dest
    where = ", ".join(str(t) for t in tried)
    env = os.environ.get("COLLAPSE_DATA_DIR")
    bad_env = (f"COLLAPSE_DATA_DIR={env} is not a folder (point it at the folder that holds the dataset "
               f"folders: {', '.join(sorted(REGISTRY))}, or unset it); ") if env and not Path(env).is_dir() else ""
    raise DataError(
        f"{bad_env}{fname} of dataset {name!r} not found (looked in: {where}); expected sha256 {ds.files[fname]}. "
        f"To provide it: {ds.how_to_get}, then point COLLAPSE_DATA_DIR at the folder that holds "
        f"'{name}/' (or place it under {cache_dir()})"
        + ("; downloading was not requested or failed." if ds.mirrors else ".")
    )


def find_dataset(name: str, path: str | os.PathLike | None = None, download: bool = False,
                 files: list[str] | None = None) -> Path:
    """The folder holding a dataset, with the requested (default: all) files verified."""
    ds = REGISTRY.get(name)
    if ds is None:
        raise DataError(f"unknown dataset {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    paths = [dataset_file(name, f, path, download) for f in (files or list(ds.files))]
    return paths[0].parent
