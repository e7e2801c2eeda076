"""The method on the page, and pages that cannot lie (mechanisms checked on every executed smoke page).

- every chapter shows at least three definitions of its method (``cu.show``), highlighted, and what
  it shows is, character for character, the source of the package that ran;
- the parameters shown are the values that ran: the parameters cell (``None`` = from the preset) is
  hidden and the run-info table lists every parameter with the value ``params.json`` recorded;
- no page says "at this preset at this preset"; every "not visible" verdict names its gate.
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from collapse_utils.tooling.config import CHAPTERS
from collapse_utils.tooling.show import METADATA_KEY, Source, source_of

CH = sorted(CHAPTERS)


def _resolve(dotted: str):
    """The object named ``module.Qual.name`` (the longest importable module prefix)."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _shown(nb: dict) -> list[tuple[dict, str]]:
    out = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            meta = o.get("metadata", {}).get("text/markdown", {}).get(METADATA_KEY) or o.get("metadata", {}).get(
                METADATA_KEY)
            if meta:
                out.append((meta, "".join(o["data"]["text/markdown"])))
    return out


def test_source_block_is_highlighted_python_with_package_relative_path():
    from collapse_utils.core import engine

    md, meta = Source(engine.Loop)._repr_markdown_()
    assert "```python\n@dataclass\nclass Loop" in md
    assert "from `collapse_utils/core/engine.py`" in md and "/work" not in md
    assert meta[METADATA_KEY]["name"] == "collapse_utils.core.engine.Loop"


def test_fence_survives_backticks_in_the_source():
    def f():
        return "```"  # a fence inside the code

    md, _ = Source(f)._repr_markdown_()
    assert md.count("````python") == 1


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CH)
def test_page_shows_the_method_from_the_package_that_ran(chapter, smoke_chapter):
    nb = json.loads(Path(smoke_chapter(chapter)).read_text())
    shown = _shown(nb)
    assert len(shown) >= 3, f"chapter {chapter} shows {len(shown)} definitions of its method (at least 3)"
    for meta, md in shown:
        code = source_of(_resolve(meta["name"]))
        assert f"python\n{code.rstrip()}\n" in md, f"{meta['name']}: the page shows other code than the package"
        assert meta["sha256"] == Source(_resolve(meta["name"])).sha256


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CH)
def test_page_shows_the_values_that_ran(chapter, smoke_chapter, results_tmp):
    nb = json.loads(Path(smoke_chapter(chapter)).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert "remove-cell" in cell["metadata"]["tags"], "the parameters cell (None = from the preset) is hidden"
    table = "\n".join("".join(o.get("data", {}).get("text/markdown", "")) for c in nb["cells"]
                      for o in c.get("outputs", []) if "This page was produced" in
                      "".join(o.get("data", {}).get("text/markdown", "")))
    slug = CHAPTERS[chapter].slug
    params = json.loads((results_tmp / slug / "smoke" / "params.json").read_text())
    rows = dict(re.findall(r"^\| `(\w+)` \| `(.*?)` \|", table, flags=re.M))
    for k, v in params.items():
        if k in ("preset", "run_name"):
            continue
        assert k in rows, f"{k} missing from the run-info table"
        assert json.loads(json.dumps(eval(rows[k]))) == v, f"{k}: table shows {rows[k]}, the run used {v!r}"


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CH)
def test_verdict_wording_and_gates(chapter, smoke_chapter):
    text = Path(smoke_chapter(chapter)).read_text()
    assert "at this preset at this preset" not in text
    assert "At this preset: not visible at this preset" not in text
    import pandas as pd

    out = Path(smoke_chapter(chapter)).parent / f"{CHAPTERS[chapter].slug}.claims.csv"
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    blind = df[(df["verdict"] == "not visible at this preset") & (df["gate"].str.strip() == "")]
    assert blind.empty, f"'not visible' verdicts without a stated gate: {list(blind['id'])}"
