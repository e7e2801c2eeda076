"""Shared fixtures: offline data, results in a temporary folder, chapters executed once per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("COLLAPSE_OFFLINE", "1")  # tests never download (make test fetches data first)
if "COLLAPSE_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["COLLAPSE_DATA_DIR"] = str(ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def book_tmp(tmp_path_factory) -> Path:
    """A scratch copy of the book's sources; executed chapters land in its book/_generated/."""
    d = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, d / name)
    shutil.copytree(ROOT / "book", d / "book", ignore=shutil.ignore_patterns("_generated"))
    (d / "book" / "_generated").mkdir()
    return d


@pytest.fixture(scope="session", autouse=True)
def results_tmp(tmp_path_factory):
    """Never write into the repository's results/ during tests."""
    d = tmp_path_factory.mktemp("results")
    old = os.environ.get("COLLAPSE_RESULTS_DIR")
    os.environ["COLLAPSE_RESULTS_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("COLLAPSE_RESULTS_DIR", None)
    else:
        os.environ["COLLAPSE_RESULTS_DIR"] = old


_EXECUTED: dict[str, Path] = {}


@pytest.fixture(scope="session")
def smoke_chapter(book_tmp):
    """smoke_chapter("02") executes chapter 02 at the smoke preset once per session; returns the notebook path."""
    from collapse_utils.tooling.runner import execute_chapter

    def run(chapter: str) -> Path:
        if chapter not in _EXECUTED:
            _EXECUTED[chapter] = execute_chapter(chapter, "smoke", output_dir=book_tmp / "book" / "_generated")
        return _EXECUTED[chapter]

    return run


@pytest.fixture(scope="session")
def read_executed():
    """read_executed(path) -> (notebook JSON text, number of PNG figures), asserting no cell raised an error."""
    import json

    def read(path: Path) -> tuple[str, int]:
        nb = json.loads(Path(path).read_text())
        outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
        errors = [o for o in outputs if o.get("output_type") == "error"]
        assert not errors, errors[0].get("evalue")
        return json.dumps(nb), sum("image/png" in o.get("data", {}) for o in outputs)

    return read
