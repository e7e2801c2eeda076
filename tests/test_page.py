"""The reader's page: "Reproduce this page" (commands that rerun exactly this run), downloads, the version
footer, the execution-statistics page, and one colour per data regime."""
from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import sys
import time
from pathlib import Path

import matplotlib.colors as mcolors
import pytest
import yaml

from collapse_utils.tooling import config, page, runner
from collapse_utils.chapters import plotting

PARAMS = {"preset": "smoke", "run_name": "", "seed": 0, "seeds": 5, "generations": 20,
          "sample_sizes": [100, 1000], "sampler": "draws", "tol": 0.5, "flag": True, "label": "12"}
SOURCES = {"seed": "preset smoke", "seeds": "given", "generations": "preset smoke", "sample_sizes": "given",
           "sampler": "given", "tol": "given", "flag": "given", "label": "given"}
GIVEN = {k: PARAMS[k] for k, v in SOURCES.items() if v == "given"}


def test_cli_command_parses_back_to_this_runs_values():
    cmd = page.cli_command("02", PARAMS, SOURCES)
    argv = shlex.split(cmd)
    assert argv[:7] == ["python", "-m", "collapse_utils", "run", "02", "--preset", "smoke"]
    items = [argv[i + 1] for i, a in enumerate(argv) if a == "-p"]
    assert dict(runner._overrides(items)) == GIVEN  # the runner reads back exactly the given values
    assert "generations" not in cmd  # values from the preset are not repeated


def test_cli_command_carries_a_run_name_and_nothing_else_when_nothing_was_given():
    assert page.cli_command("01", {"preset": "cpu", "run_name": "", "seeds": 3}, {"seeds": "preset cpu"}) == \
        "python -m collapse_utils run 01 --preset cpu"
    cmd = page.cli_command("01", {"preset": "cpu", "run_name": "mine", "seeds": 3}, {})
    assert cmd.endswith("-p run_name=mine")


def test_papermill_command_parses_back_to_this_runs_values():
    from papermill.cli import _resolve_type

    argv = shlex.split(page.papermill_command("02_gaussian_mixtures", PARAMS, SOURCES))
    assert argv[:3] == ["papermill", "notebooks/02_gaussian_mixtures.ipynb", "02_gaussian_mixtures.out.ipynb"]
    got = {}
    i = 3
    while i < len(argv):
        if argv[i] == "-p":
            got[argv[i + 1]] = _resolve_type(argv[i + 2])
            i += 3
        elif argv[i] == "-y":
            got.update(yaml.safe_load(argv[i + 1]))
            i += 2
        else:
            pytest.fail(f"unexpected argument {argv[i]!r}")
    assert got == {"preset": "smoke", **GIVEN}
    assert type(got["label"]) is str and type(got["tol"]) is float  # text that looks like a number stays text


def test_reproduce_markdown_has_commands_colab_downloads_and_footer():
    text = page.reproduce_markdown("02", "02_gaussian_mixtures", PARAMS, SOURCES, wall_seconds=125.0,
                                   run_dir="/r/02/smoke", downloads={"metrics.csv": "downloads/a.metrics.csv"},
                                   notebook_link=True, today=dt.date(2030, 1, 2))
    assert page.cli_command("02", PARAMS, SOURCES) in text
    assert page.papermill_command("02_gaussian_mixtures", PARAMS, SOURCES) in text
    assert page.colab_link("02_gaussian_mixtures") in text and f"/blob/{page.colab_ref()}/" in text
    assert "{download}`the executed notebook <02_gaussian_mixtures.ipynb>`" in text
    assert "{download}`metrics.csv <downloads/a.metrics.csv>`" in text
    footer = text.splitlines()[-1]
    import numpy

    for piece in (f"Python {sys.version.split()[0]}", f"numpy {numpy.__version__}", "torch ",
                  f"collapse_utils {page.versions()['collapse_utils']}", "2030-01-02", "CPU", "wall time 2.1 min"):
        assert piece in footer, piece
    # run outside the book (Colab, plain papermill): no download roles, the results folder instead
    plain = page.reproduce_markdown("02", "02_gaussian_mixtures", PARAMS, SOURCES, run_dir="/r/02/smoke")
    assert "{download}" not in plain and "/r/02/smoke" in plain and "wall time" not in plain


def test_versions_name_transformers_only_when_the_chapter_imported_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "transformers", raising=False)
    assert "transformers" not in page.versions()
    fake = type(sys)("transformers")
    fake.__version__ = "9.9.9"
    monkeypatch.setitem(sys.modules, "transformers", fake)
    assert page.versions()["transformers"] == "9.9.9"


def _fake_run(tmp_path, monkeypatch):
    d = tmp_path / "results" / "01_gaussian_theory" / "smoke"
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text("metric,value\nx,1\n")
    (d / "claims.csv").write_text("id,verdict\na,reproduced\n")
    run = config.ChapterRun(config.CHAPTERS["01"], {"preset": "smoke", "run_name": "", "seeds": 7},
                            "smoke", sources={"seeds": "given"}, started=time.time() - 3)
    monkeypatch.setattr(config.ChapterRun, "dir", property(lambda self: d))  # this run's results folder
    return run, d


def test_reproduce_copies_the_downloads_when_run_for_the_book(tmp_path, monkeypatch):
    run, d = _fake_run(tmp_path, monkeypatch)
    out = tmp_path / "generated"
    monkeypatch.setenv("COLLAPSE_CLAIMS_DIR", str(out))
    text = page.reproduce(run, show=False)
    for name in ("metrics.csv", "claims.csv"):
        copy = out / "downloads" / f"01_gaussian_theory.{name}"
        assert copy.read_text() == (d / name).read_text()
        assert f"{{download}}`{name} <downloads/01_gaussian_theory.{name}>`" in text
    assert "-p seeds=7" in text and "{download}`the executed notebook <01_gaussian_theory.ipynb>`" in text
    assert re.search(r"wall time [34]\.\d s\.\*$", text.splitlines()[-1])
    monkeypatch.delenv("COLLAPSE_CLAIMS_DIR")
    assert "{download}" not in page.reproduce(run, show=False)


def _executed(folder: Path, slug: str, preset: str, duration: float, start: str, **given):
    nb = {"cells": [], "metadata": {"papermill": {"parameters": {"preset": preset, **given}, "duration": duration,
                                                  "start_time": start}}, "nbformat": 4, "nbformat_minor": 5}
    (folder / f"{slug}.ipynb").write_text(json.dumps(nb))


def test_execution_page_lists_every_executed_chapter(tmp_path):
    _executed(tmp_path, "01_gaussian_theory", "smoke", 12.5, "2030-01-02T10:00:00", seeds=5)
    _executed(tmp_path, "03_vae_mnist", "cpu", 600.0, "2030-01-03T11:00:00")
    rows = page.execution_rows(tmp_path)
    assert [(r["chapter"], r["preset"], r["date"], r["seconds"], r["given"]) for r in rows] == [
        ("01", "smoke", "2030-01-02", 12.5, ["seeds"]), ("03", "cpu", "2030-01-03", 600.0, [])]
    table = (runner.write_execution_table(tmp_path)).read_text()
    assert table == (tmp_path / page.EXECUTION_TABLE).read_text()
    lines = table.strip().splitlines()
    assert lines[2].startswith("| {doc}`01 ") and "</book/_generated/01_gaussian_theory>" in lines[2]
    assert "`smoke`" in lines[2] and "`seeds`" in lines[2] and "12.5 s" in lines[2]
    assert "`cpu`" in lines[3] and "10.0 min" in lines[3] and "none" in lines[3]
    assert lines[-1].startswith("| all chapters") and "10.2 min" in lines[-1]


def test_scorecard_writes_the_execution_table_too(tmp_path):
    _executed(tmp_path, "02_gaussian_mixtures", "paper", 7200.0, "2030-05-06T00:00:00")
    runner.write_scorecard(tmp_path)
    assert "2.00 h" in (tmp_path / page.EXECUTION_TABLE).read_text()


def test_execution_page_refuses_a_damaged_notebook(tmp_path):
    (tmp_path / "01_gaussian_theory.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match="01_gaussian_theory.ipynb is not a readable notebook"):
        page.execution_rows(tmp_path)


def test_execution_page_is_in_the_toc_and_includes_the_generated_table():
    root = Path(__file__).resolve().parents[1]
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    assert "book/execution" in [c["file"] for part in toc["parts"] for c in part["chapters"]]
    src = (root / "book" / "execution.md").read_text()
    assert re.search(r"```\{include\} _generated/" + re.escape(page.EXECUTION_TABLE), src)


def test_one_colour_per_regime_across_the_book():
    rc = plotting.regime_color
    assert rc("keep_real(0.1)") == rc("keep_real(0.5)") == rc("keep_real(0.1)/fixed")
    names = ["replace", "keep_real(0.1)", "accumulate", "accumulate_subsample"]
    assert len({rc(n) for n in names}) == 4
    cols = plotting.regime_colors(["replace/fresh", "replace/fixed", "keep_real(0.1)/fixed", "accumulate/fixed"])
    assert cols[0] == rc("replace") and cols[2] == rc("keep_real(0.1)") and cols[3] == rc("accumulate")
    assert cols[1] != cols[0]  # a repeated regime: same hue, another shade
    h0, h1 = (mcolors.rgb_to_hsv(c)[0] for c in cols[:2])
    assert abs(h0 - h1) < 0.02
    # the same regime gets the same colour whatever else a figure shows
    assert plotting.regime_colors(["accumulate", "replace"]) == [rc("accumulate"), rc("replace")]
    with pytest.raises(ValueError, match="unknown regime"):
        rc("mystery")


def test_chapters_colour_regimes_with_the_books_mapping():
    """The regime figures of chapters 1-4 take their colours from plotting.regime_colors (chapter 04's
    comparisons of prompts and penalties are all one regime, and use the plain palette)."""
    import inspect

    from collapse_utils.chapters import gaussian_mixtures, gaussian_theory, language_models, vae_mnist

    for fn in (gaussian_theory.plot_accumulate, gaussian_mixtures.plot_regimes, vae_mnist.plot_latent_spread,
               vae_mnist.plot_class_entropy, vae_mnist.plot_test_elbo, language_models.plot_test_perplexity):
        src = inspect.getsource(fn)
        assert "regime_colors(" in src and "palette(" not in src, fn.__qualname__


def test_gmm_panels_are_readable_at_page_width():
    """At most four panels a row, each at least 2.5 inches wide, for the paper's seven panel generations."""
    import matplotlib.pyplot as plt

    from collapse_utils.chapters import gaussian_mixtures as ch

    p = config.load_preset("smoke", "02")
    p.update(preset="smoke", run_name="", seeds=2, generations=6, n_samples=200, eval_samples=200,
             panel_generations=[0, 1, 2, 3, 4, 5, 6], regime_seeds=2, regime_generations=2, bench_seeds=1,
             bench_sklearn_seeds=1, bench_generations=1)
    ch.Params.check(p)
    result = ch.run(p, progress=False)
    fig = ch.plot_panels(result.studies, p["panel_generations"], n_points=200)
    try:
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert len(visible) == 2 * 8  # real data + seven generations, for both settings
        width = fig.get_size_inches()[0]
        cols = {round(ax.get_position().x0, 3) for ax in visible}
        assert len(cols) <= 4
        assert all(ax.get_position().width * width >= 2.0 for ax in visible)
        titles = [ax.get_title() for ax in visible]
        assert "two Gaussians: generation 6" in titles and "blob: real data" in titles
    finally:
        plt.close(fig)


def test_repository_url_without_a_checkout_is_the_one_of_config(tmp_path):
    """Installed by pip (Colab) the package has no _config.yml beside it; its fallback is the book's URL."""
    root = Path(__file__).resolve().parents[1]
    url = yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    assert page.REPOSITORY_URL == url == page.repository_url()
    assert page.repository_url(tmp_path) == url  # a folder without _config.yml
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/someone/fork/\n")
    assert page.repository_url(tmp_path) == "https://github.com/someone/fork"
    assert page.colab_install_line("04", tmp_path) == (
        f'pip -q install "collapse_utils[lm] @ git+https://github.com/someone/fork@{page.colab_ref()}"')

