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
    assert gen == [c.slug for c in config.CHAPTERS.values()] + ["scorecard"]


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
    # the runner injects the preset (and given values) only; the notebook applies the preset itself
    assert re.search(r"preset = \\\"smoke\\\"", text)
    assert "| `seeds` | `200` | preset `smoke` |" in text


def test_plain_papermill_on_the_committed_notebook_applies_the_preset(tmp_path, monkeypatch, read_executed):
    """`papermill notebooks/02_gaussian_mixtures.ipynb out.ipynb -p preset smoke -p seeds 5` runs the smoke
    values except the one given, and the page's table says where each value came from."""
    import papermill as pm

    monkeypatch.setenv("COLLAPSE_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "02_gaussian_mixtures.ipynb"), str(out),
                        parameters={"preset": "smoke", "seeds": 5}, cwd=str(ROOT / "notebooks"),
                        kernel_name="python3", progress_bar=False)
    text, _ = read_executed(out)
    smoke = config.load_preset("smoke", "02")
    assert "| `seeds` | `5` | given (changed from the preset) |" in text
    assert f"| `generations` | `{smoke['generations']}` | preset `smoke` |" in text
    (params_file,) = (tmp_path / "results" / "02_gaussian_mixtures").glob("smoke-custom-*/params.json")
    params = json.loads(params_file.read_text())
    assert params["preset"] == "smoke" and params["seeds"] == 5
    assert {k: params[k] for k in smoke if k != "seeds"} == {k: v for k, v in smoke.items() if k != "seeds"}
    m = pd.read_csv(params_file.with_name("metrics.csv"))
    assert m.generation.max() == smoke["generations"] and m.seed.nunique() >= 5


def test_notebook_preset_resolution_without_papermill():
    """Edited by hand (Colab): a value that differs from the cpu preset counts as given."""
    cpu = config.load_preset("cpu", "01")
    ns = {**cpu, "preset": "smoke", "run_name": "", "generations": 7}
    params, sources = config.resolve_notebook_params(ns, "01")
    smoke = config.load_preset("smoke", "01")
    assert params["generations"] == 7 and sources["generations"] == "given"
    assert params["seeds"] == smoke["seeds"] and sources["seeds"] == "preset smoke"
    assert ns["seeds"] == smoke["seeds"]  # later cells see the resolved values
    with pytest.raises(config.ParamError, match="valid presets"):
        config.resolve_notebook_params({**cpu, "preset": "huge", "run_name": ""}, "01")


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


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_prose_has_no_typed_result_numbers(chapter):
    """Numbers in a chapter's prose come from its run (glued) or are the paper's own, cited."""
    from collapse_utils.claims import typed_numbers

    nb = jupytext.read(config.get_chapter(chapter).notebook_md)
    typed = [n for c in nb.cells if c.cell_type == "markdown" for n in typed_numbers(c.source)]
    assert not typed, f"typed numbers in the prose of chapter {chapter}: {typed}; glue them from the run"
