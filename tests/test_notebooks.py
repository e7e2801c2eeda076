"""Chapter sources: paired, output-free notebooks for Colab; chapters execute under papermill."""
import json
import os
import re
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest
import yaml

from collapse_utils import config

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(config.available_chapters())


def _sources(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_committed_notebook_is_paired_and_stripped(chapter):
    ch = config.get_chapter(chapter)
    ipynb = ch.notebook_md.with_suffix(".ipynb")
    assert ipynb.exists(), f"run `make sync` to create {ipynb.name}"
    nb = nbformat.read(ipynb, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert _sources(nb) == _sources(jupytext.read(ch.notebook_md)), "out of sync: run `make sync`"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_structure(chapter):
    ch = config.get_chapter(chapter)
    nb = jupytext.read(ch.notebook_md)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the parameters cell comes first"
    assert "google.colab" in code[1].source and "remove-cell" in code[1].metadata.get("tags", [])
    assert f'start_chapter(globals(), "{ch.id}")' in "".join(c.source for c in code[2:4])
    # the Colab badge points at this chapter's committed notebook in the configured repository
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    repo = url.split("github.com/")[1]
    badge = f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{ch.slug}.ipynb"
    assert badge in ch.notebook_md.read_text()
    # every figure cell carries a caption
    for c in code:
        fig = c.metadata.get("mystnb", {}).get("figure")
        if fig is not None:
            assert len(fig.get("caption", "").strip()) > 40 and fig.get("name", "").startswith(f"fig-{ch.id}-")


def test_toc_lists_every_chapter_in_order():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    gen = [f.split("/")[-1] for f in files if f.startswith("book/_generated/")]
    assert gen == [c.slug for c in config.CHAPTERS.values()]


def test_chapter_01_smoke_run(smoke_chapter, read_executed, results_tmp):
    out = smoke_chapter("01")
    nb = nbformat.read(out, as_version=4)
    text, images = read_executed(out)
    assert "produced with the `smoke` preset" in text
    assert images >= 9
    run = results_tmp / "01_gaussian_theory" / "smoke"
    m = pd.read_csv(run / "metrics.csv")
    assert {"experiment", "regime", "seed", "generation", "metric", "value", "M", "estimator"} <= set(m.columns)
    assert set(m.study) >= {"main", "schedules", "accumulate", "draws_check", "discrete"}
    assert json.loads((run / "params.json").read_text())["preset"] == "smoke"
    # parameters were injected after the parameters cell, not into the source
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert re.search(r"seeds = 200", text)


def test_relative_data_paths_reach_the_kernel_as_absolute(monkeypatch, tmp_path):
    """The kernel runs in notebooks/: a COLLAPSE_DATA_DIR given relative to the caller's folder is
    resolved before papermill starts it, and the caller's environment is restored afterwards."""
    import papermill

    from collapse_utils import runner

    seen = {}

    def fake_execute(src, out, **kw):
        seen["data"] = os.environ["COLLAPSE_DATA_DIR"]
        seen["cwd"] = kw["cwd"]
        Path(out).write_text(Path(src).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setattr(runner, "_tidy_executed", lambda out: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLLAPSE_DATA_DIR", "some/relative/data")
    runner.execute_chapter("01", "smoke", output_dir=tmp_path / "out", progress=False)
    assert seen["data"] == str(tmp_path / "some/relative/data") and Path(seen["data"]).is_absolute()
    assert seen["cwd"] != str(tmp_path)
    assert os.environ["COLLAPSE_DATA_DIR"] == "some/relative/data"
