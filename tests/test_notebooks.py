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

from collapse_utils.tooling import config

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
    from collapse_utils.tooling.page import colab_ref

    # the badge opens the notebook at the same pinned tag its install cell installs
    badge = f"https://colab.research.google.com/github/{repo}/blob/{colab_ref()}/notebooks/{ch.slug}.ipynb"
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
    """Edited by hand (Colab): a value that is not None counts as given, even when it equals the cpu value."""
    cpu = config.load_preset("cpu", "01")
    ns = {**{k: None for k in cpu}, "preset": "smoke", "run_name": "", "generations": 7,
          "sample_sizes": cpu["sample_sizes"]}
    params, sources = config.resolve_notebook_params(ns, "01")
    smoke = config.load_preset("smoke", "01")
    assert params["generations"] == 7 and sources["generations"] == "given"
    assert params["seeds"] == smoke["seeds"] and sources["seeds"] == "preset smoke"
    assert params["sample_sizes"] == cpu["sample_sizes"] and sources["sample_sizes"] == "given"
    assert ns["seeds"] == smoke["seeds"]  # later cells see the resolved values
    with pytest.raises(config.ParamError, match="valid presets"):
        config.resolve_notebook_params({**{k: None for k in cpu}, "preset": "huge", "run_name": ""}, "01")


def test_relative_data_paths_reach_the_kernel_as_absolute(monkeypatch, tmp_path):
    """The kernel runs in notebooks/: a COLLAPSE_DATA_DIR given relative to the caller's folder is
    resolved before papermill starts it, and the caller's environment is restored afterwards."""
    import papermill

    from collapse_utils.tooling import runner

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
    from collapse_utils.chapters.claims import typed_numbers

    nb = jupytext.read(config.get_chapter(chapter).notebook_md)
    typed = [n for c in nb.cells if c.cell_type == "markdown" for n in typed_numbers(c.source)]
    assert not typed, f"typed numbers in the prose of chapter {chapter}: {typed}; glue them from the run"


# --- Colab: every notebook installs one pinned reference of the package, with what its chapter needs -------
_INSTALL = re.compile(r'^\s*!pip -q install "(?P<name>collapse_utils)(?:\[(?P<extras>[a-z0-9_,-]+)\])? '
                      r'@ git\+(?P<url>https://github\.com/[\w.-]+/[\w.-]+)@(?P<ref>[\w.-]+)"\s*$', re.M)


def _pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_colab_install_line_is_pinned_to_the_one_reference(chapter):
    from collapse_utils import __version__
    from collapse_utils.tooling import page

    ch = config.get_chapter(chapter)
    cell = [c for c in jupytext.read(ch.notebook_md).cells if c.cell_type == "code"][1]
    lines = [ln for ln in cell.source.splitlines() if "pip" in ln]
    assert len(lines) == 1, f"one install line in the Colab cell, found {lines}"
    m = _INSTALL.match(lines[0])
    assert m, f"malformed install line: {lines[0]!r}"
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    assert m["url"] == url, "the Colab cell installs from another repository than _config.yml names"
    ref = m["ref"]
    assert ref not in ("main", "master", "HEAD") and (re.fullmatch(r"v\d+\.\d+\.\d+", ref)
                                                      or re.fullmatch(r"[0-9a-f]{40}", ref)), f"not pinned: {ref}"
    assert ref == page.colab_ref() == f"v{__version__}"
    project = _pyproject()["project"]
    assert project["version"] == __version__, "pyproject.toml and collapse_utils.__version__ disagree"
    extras = [e for e in (m["extras"] or "").split(",") if e]
    assert set(extras) <= set(project["optional-dependencies"]), f"unknown extras {extras}"
    assert not set(extras) & {"run", "dev", "book"}, "Colab needs neither the runner, the tests nor the book"
    assert tuple(extras) == page.CHAPTER_EXTRAS[ch.id]
    assert lines[0].strip() == "!" + page.colab_install_line(ch.id)


def test_chapters_that_use_language_models_install_the_lm_extra():
    """A study module that imports transformers needs the `lm` extra in its Colab cell."""
    import importlib
    import inspect

    from collapse_utils.tooling import page

    for cid, ch in config.available_chapters().items():
        src = inspect.getsource(importlib.import_module(ch.module))
        uses_lm = "transformers" in src or re.search(r"from \.\.models(\.lm\w*)? import .*\blm", src) is not None \
            or re.search(r"from \.\.models\.lm\w* import", src) is not None
        assert ("lm" in page.CHAPTER_EXTRAS[cid]) == uses_lm, cid


def test_core_dependencies_leave_the_runner_and_colabs_kernel_alone():
    project = _pyproject()["project"]
    core = " ".join(project["dependencies"])
    for name in ("papermill", "jupytext", "ipykernel"):
        assert name not in core, f"{name} is a core dependency (Colab would install or upgrade it)"
        assert any(d.startswith(name) for d in project["optional-dependencies"]["run"])
    # the install path of make/CI still installs everything
    makefile = (ROOT / "Makefile").read_text()
    (extras,) = re.findall(r'pip install --quiet -e "\.\[([a-z,]+)\]"', makefile)
    assert set(extras.split(",")) == {"run", "dev", "book", "lm"}
    assert "torch==2.13.0" in makefile


def test_torch_index_is_a_documented_variable_with_an_offline_fallback():
    """Linux: the CPU wheel index as an *extra* index (pip falls back to the default index and local wheels
    where it cannot be reached); empty: the default index; the README says how to get the GPU build."""
    import shutil
    import subprocess

    if not shutil.which("make"):
        pytest.skip("make is not installed")

    def line(*args):
        r = subprocess.run(["make", "-s", "print-torch-pip", *args], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    import platform

    default = line()
    if platform.system() == "Linux":
        assert default == "pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu --retries 1"
    assert line("TORCH_INDEX=") == "pip install torch==2.13.0"
    cu = "https://download.pytorch.org/whl/cu126"
    assert line(f"TORCH_INDEX={cu}") == f"pip install torch==2.13.0 --extra-index-url {cu} --retries 1"
    readme = (ROOT / "README.md").read_text()
    assert "TORCH_INDEX=" in readme and "GPU" in readme


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_ends_with_reproduce_this_page(chapter):
    nb = jupytext.read(config.get_chapter(chapter).notebook_md)
    assert nb.cells[-2].cell_type == "markdown" and nb.cells[-2].source.strip() == "## Reproduce this page"
    last = nb.cells[-1]
    assert last.cell_type == "code" and "reproduce(run)" in last.source and len(last.source.splitlines()) <= 3
    assert "remove-input" in last.metadata.get("tags", [])


def test_smoke_page_ends_with_commands_downloads_and_versions(smoke_chapter, read_executed):
    out = smoke_chapter("01")
    nb = nbformat.read(out, as_version=4)
    md = "".join(o.get("data", {}).get("text/markdown", "") for o in nb.cells[-1].outputs)
    assert "python -m collapse_utils run 01 --preset smoke" in md
    assert "papermill notebooks/01_gaussian_theory.ipynb 01_gaussian_theory.out.ipynb -p preset smoke" in md
    assert "colab.research.google.com/github/" in md
    for rel in re.findall(r"\{download\}`[^<`]*<([^>]+)>`", md):
        assert (out.parent / rel).is_file(), rel  # every download the page links exists for the book build
    assert "downloads/01_gaussian_theory.metrics.csv" in md and "downloads/01_gaussian_theory.claims.csv" in md
    assert re.search(r"\*Executed on \d{4}-\d\d-\d\d with Python [\d.]+, numpy [\d.]+, torch \S+, "
                     r"collapse_utils [\d.]+; machine: .+; wall time [\d.]+ (s|min|h)\.\*", md)
