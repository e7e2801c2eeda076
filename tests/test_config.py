import subprocess
import sys

import pytest

from collapse_utils.tooling import config
from collapse_utils.tooling.config import ParamError
from collapse_utils.tooling.runner import _read_md, notebook_defaults, resolve_params

CHAPTERS = sorted(config.available_chapters())


def test_chapter_lookup_accepts_id_number_and_slug():
    assert config.get_chapter("1").id == "01"
    assert config.get_chapter("01_gaussian_theory").id == "01"
    with pytest.raises(ParamError, match="valid chapters: 01"):
        config.get_chapter("99")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_presets_name_exactly_the_notebook_parameters(chapter):
    ch = config.get_chapter(chapter)
    defaults = notebook_defaults(_read_md(ch))
    own = set(defaults) - set(config.COMMON_PARAMS)
    assert set(config.COMMON_PARAMS) <= set(defaults)
    for preset in config.PRESETS:
        assert set(config.load_preset(preset, chapter)) == own, preset
        ch.validate({**defaults, **config.load_preset(preset, chapter), "preset": preset})
    if ch.params_class is not None:  # typed: the cell holds None ("the preset's value") for every parameter
        assert list(own) == [] or {defaults[k] for k in own} == {None}
        assert own == set(ch.params_class.specs())
    else:  # the parameters cell holds the cpu preset, so an unparameterised run is the cpu preset
        assert {k: defaults[k] for k in own} == config.load_preset("cpu", chapter)
    assert defaults["preset"] == "cpu"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_papermill_parses_every_parameter(chapter):
    """papermill's own parser (used for -p and `papermill --help-notebook`) must see every parameter."""
    from papermill.translators import PythonTranslator

    nb = _read_md(config.get_chapter(chapter))
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    parsed = {p.name for p in PythonTranslator.inspect(cell)}
    assert parsed == set(notebook_defaults(nb))


def test_resolve_params_layers_preset_and_overrides():
    ch, p = resolve_params("01", "smoke", ["seeds=50", "sample_sizes=[100, 200]"])
    assert ch.id == "01" and p["preset"] == "smoke" and p["seeds"] == 50 and p["sample_sizes"] == [100, 200]
    assert p["generations"] == config.load_preset("smoke", "01")["generations"]
    assert config.auto_run_name(p, "01").startswith("smoke-custom-")
    assert config.auto_run_name({**config.load_preset("smoke", "01"), "preset": "smoke", "run_name": ""}, "01") == "smoke"


@pytest.mark.parametrize("args,match", [
    (("01", "huge", []), "valid presets: smoke, cpu, pretrained, paper"),
    (("42", "cpu", []), "valid chapters"),
    (("01", "cpu", ["nope=1"]), "unknown parameter 'nope'.*valid parameters: .*seeds"),
    (("01", "cpu", ["seeds"]), "name=value"),
    (("01", "cpu", ["seeds=many"]), "wrong type"),
    (("01", "cpu", ["seeds=1", "sampler=magic"]), "(?s)seeds must lie.*sampler must be one of"),
    (("01", "cpu", ["sample_sizes=[1, 100]"]), "sample_sizes"),
])
def test_bad_input_gives_one_clear_error(args, match):
    with pytest.raises(ParamError, match=match):
        resolve_params(*args)


def test_cli_reports_errors_without_traceback():
    r = subprocess.run([sys.executable, "-m", "collapse_utils", "run", "01", "--preset", "smoke", "-p", "bogus=1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "error: unknown parameter 'bogus'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "collapse_utils", "list"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "01_gaussian_theory" in r.stdout


def test_checker_collects_all_problems():
    c = config.Checker({"a": 0, "b": "x", "preset": "cpu"}, "01").int("a", 1).float("b").int("missing")
    with pytest.raises(ParamError) as e:
        c.done()
    msg = str(e.value)
    assert "a must lie in [1, inf], got 0" in msg and "b must be a number" in msg and "missing parameter" in msg


def test_book_shows_chapter_k_of_n_time_left_and_a_closing_table(tmp_path, monkeypatch, capsys):
    """`python -m collapse_utils book` says which chapter of how many runs, estimates the time left from
    the previous run's timings, and ends with a table of chapters, preset and seconds."""
    import shutil
    from pathlib import Path

    from collapse_utils.tooling import runner

    root = Path(__file__).resolve().parents[1]
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(root / name, tmp_path / name)
    calls = []

    def fake_execute(key, preset, output_dir=None, cell_progress=False, **kw):
        assert cell_progress  # the book shows papermill's cell bar
        calls.append(key)
        ch = config.get_chapter(key)
        (Path(output_dir) / f"{ch.slug}.ipynb").write_text("{}")

    monkeypatch.setattr(runner, "execute_chapter", fake_execute)
    monkeypatch.setattr(runner.subprocess, "run", lambda *a, **k: None)
    keys = sorted(config.available_chapters())
    runner.build_book("smoke", keys, root=tmp_path)
    first = capsys.readouterr().out
    assert f"[1/{len(keys)}] chapter 01" in first and f"[{len(keys)}/{len(keys)}] chapter" in first
    assert "min left" not in first  # no previous timings yet
    assert "chapter" in first and "seconds" in first and "all chapters" in first
    import re

    assert all(re.search(rf"{config.get_chapter(k).slug} +smoke +\d+\.\d", first) for k in keys)
    runner.build_book("smoke", keys, root=tmp_path)
    second = capsys.readouterr().out
    assert "the previous run took" in second and "min left" in second
    assert calls == keys * 2
