"""The Colab path end to end: a kernel holding only what Colab provides runs a chapter's own install line,
then the committed notebook, at the smoke preset.

For each chapter the test

1. makes a fresh virtual environment that sees only a Colab-like base (:data:`COLAB_BASE`, installed once per
   session into a base environment that every chapter's environment reads through a ``.pth`` file, as Colab's
   preinstalled packages sit under whatever a notebook installs);
2. copies the working tree (tracked and untracked, not ignored, files) into a temporary git repository,
   commits it there and tags the commit ``v<collapse_utils.__version__>``: the tag the install lines pin;
3. takes the committed ``notebooks/<chapter>.ipynb`` and changes one thing in it, the repository address of
   its Colab cell's install line, from GitHub to that local repository (``git+file://...``); package name,
   extras and tag stay as written;
4. executes that notebook with papermill (from the book's own environment, which is not the kernel's) in a
   kernel of the new environment, with ``-p preset smoke``, ``google.colab`` importable and imported at
   kernel start (as Colab's kernel does), so the Colab cell takes its branch and ``!pip`` runs the line
   with the environment's own pip;
5. serves the datasets from a local HTTP server (``COLLAPSE_DATA_MIRROR``, the first download source of
   :func:`collapse_utils.core.data.download_sources`), with no ``COLLAPSE_DATA_DIR`` in the kernel, so
   every file arrives through the registry's download path and its sha256 check;
6. checks what the kernel imported and what the line installed: the package from the tag, into the
   environment, no module or distribution of the book's tooling (extras ``run``, ``book``, ``dev``), the
   datasets fetched from the server, and the run's results written under the notebook's working folder.

What this cannot test here: the public tag and GitHub itself (the install goes to a local clone), Colab's
exact package versions (the base is pinned, see :data:`COLAB_BASE`), and WikiText-2 through Hugging Face
``datasets`` (the registry's first source for it; the hub cannot be reached here, so chapters 04 and 06
take WikiText-2 from the local server, tried before the registry's sources).

Chapters: ``COLLAPSE_COLAB_CHAPTERS`` (``all`` or a comma list); default :data:`CI_CHAPTERS`, the ones
``make test`` (and CI) runs.  ``make test-colab`` runs all of them.
"""
from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from collapse_utils.tooling.config import CHAPTERS

ROOT = Path(__file__).resolve().parents[1]

#: The Colab-like base: what a Colab runtime has preinstalled that a chapter's kernel relies on (Colab's
#: preinstalled packages: Python 3 with pip, ipykernel, numpy, pandas, matplotlib and torch; see
#: "pip list" in a Colab notebook).  The versions are not Colab's, which move: the scientific ones are
#: those of requirements.lock, torch the one the book's install pins (from the Makefile's TORCH_INDEX).
#: Everything else the kernel sees comes from the notebook's install line.
COLAB_BASE = ("ipykernel", "numpy", "pandas", "matplotlib")
TORCH = "torch==2.13.0"
#: and pip: the Makefile's PIP_VERSION (Colab's pip is recent; the one ensurepip brings with Python 3.11,
#: 23.2, refuses ``name @ git+file:///...`` requirements)
#: the chapters `make test` (and CI) runs: no WikiText-2 (whose Colab source, the Hugging Face hub, cannot
#: be reached here) and a short smoke run; `make test-colab` runs every chapter
CI_CHAPTERS = ("01", "03")
ALL_CHAPTERS = tuple(sorted(CHAPTERS))  # every chapter of the registry (tooling/config.py)
#: datasets each chapter must download (through the local server); the others download nothing
DATASETS = {"03": ("mnist",), "04": ("wikitext-2", "smollm2-135m"), "06": ("wikitext-2", "smollm2-135m")}
#: the book's tooling (extras run, book and dev): neither installed by a Colab line nor imported in its kernel
TOOLING_MODULES = ("papermill", "jupytext", "jupyter_book", "myst_nb", "sphinx", "playwright", "pytest",
                   "nbclient", "ruff", "importlinter")
TOOLING_DISTS = ("papermill", "jupytext", "jupyter-book", "myst-nb", "sphinx", "playwright", "pytest",
                 "ruff", "import-linter")



def _selected() -> tuple[str, ...]:
    env = os.environ.get("COLLAPSE_COLAB_CHAPTERS", "").strip()
    if not env:
        return CI_CHAPTERS
    return ALL_CHAPTERS if env == "all" else tuple(c.strip().zfill(2) for c in env.split(",") if c.strip())


def _run(cmd, timeout=900, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{(r.stdout + r.stderr)[-5000:]}")
    return r


def _purelib(venv: Path) -> Path:
    return Path(_run([venv / "bin" / "python", "-c",
                      "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())


def _locked(name: str) -> str:
    m = re.search(rf"^{re.escape(name)}==([^\s\\]+)", (ROOT / "requirements.lock").read_text(), re.M | re.I)
    assert m, f"{name} is not in requirements.lock"
    return f"{name}=={m.group(1)}"


def _torch_pip() -> list[str]:
    """The torch install the book uses (`make print-torch-pip`): torch==2.13.0 from TORCH_INDEX."""
    try:
        line = subprocess.run(["make", "-s", "-C", str(ROOT), "print-torch-pip"], capture_output=True,
                              text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        line = ""
    return line.split()[2:] if line.startswith("pip install torch==") else [TORCH]


def _pip_version() -> str:
    m = re.search(r"^PIP_VERSION\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    return f"pip=={m.group(1)}" if m else "pip"


def _venv(path: Path, *args: str) -> None:
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", *args, path])


@pytest.fixture(scope="session")
def colab_base(tmp_path_factory) -> Path:
    """site-packages of the Colab-like base (:data:`COLAB_BASE` and torch), built once per session."""
    if sys.platform != "linux":
        pytest.skip("the Colab path is tested on Linux, like Colab's runtime")
    base = tmp_path_factory.mktemp("colab") / "base"
    t0 = time.perf_counter()
    _venv(base)
    _run([base / "bin" / "python", "-m", "pip", "install", "-q", _pip_version()])
    _run([base / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile", *_torch_pip(),
          *(_locked(n) for n in COLAB_BASE)], timeout=1800)
    print(f"Colab-like base installed in {time.perf_counter() - t0:.0f} s")
    return _purelib(base)


@pytest.fixture(scope="session")
def tagged_repo(tmp_path_factory) -> Path:
    """A temporary git repository holding the working tree, one commit tagged v<version> (nothing is
    committed or tagged in the checkout itself)."""
    from collapse_utils import __version__

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the book")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    repo = tmp_path_factory.mktemp("colab") / "repo"
    for rel in filter(None, listed):
        src = ROOT / rel
        if not (src.exists() or src.is_symlink()):  # deleted in the working tree
            continue
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, repo / rel, follow_symlinks=False)  # registry.yaml stays a link
    git = ["git", "-C", repo, "-c", "user.name=colab-test", "-c", "user.email=colab-test@localhost",
           "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "init.defaultBranch=main"]
    _run([*git, "init", "-q"])
    _run([*git, "add", "-A"])
    _run([*git, "commit", "-q", "-m", "the working tree, for tests/test_colab.py"])
    _run([*git, "tag", f"v{__version__}"])
    return repo


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_request(self, code="-", size="-"):
        self.server.served.append((self.path, int(code) if str(code).isdigit() else code))

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="session")
def data_server(tmp_path_factory):
    """The datasets folder (COLLAPSE_DATA_DIR, as the test suite finds it) served over HTTP on 127.0.0.1;
    ``served`` lists (path, status) of every request."""
    import functools

    from collapse_utils.core.data import REGISTRY, DataError, find_dataset

    data_dir = os.environ.get("COLLAPSE_DATA_DIR")
    if not data_dir or not Path(data_dir).is_dir():
        pytest.skip("needs the offline datasets (COLLAPSE_DATA_DIR) to serve")
    # every registered dataset found here (COLLAPSE_DATA_DIR or the cache: the pretrained model is fetched into
    # the cache), one folder each, as a COLLAPSE_DATA_DIR folder is laid out
    folder = tmp_path_factory.mktemp("served")
    for name in REGISTRY:
        try:
            (folder / name).symlink_to(find_dataset(name).resolve(), target_is_directory=True)
        except DataError:
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Handler, directory=str(folder)))
    server.served = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


_INSTALL = re.compile(r'^(?P<head>\s*!pip -q install "collapse_utils(?:\[[a-z0-9_,-]+\])? @ git\+)'
                      r'(?P<url>https://github\.com/[\w.-]+/[\w.-]+)(?P<tail>@[\w.-]+"\s*)$', re.M)

#: appended to the notebook copy: what the kernel imported and where collapse_utils came from
_PROBE = """\
import importlib.metadata, json, os, sys
import collapse_utils
print("COLAB-PROBE " + json.dumps({
    "file": collapse_utils.__file__,
    "colab": "google.colab" in sys.modules,
    "modules": sorted({m.split(".")[0] for m in sys.modules}),
    "direct_url": importlib.metadata.distribution("collapse_utils").read_text("direct_url.json"),
    "data_dir": os.environ.get("COLLAPSE_DATA_DIR"),
}))
"""


def _colab_notebook(slug: str, repo: Path, dest: Path) -> str:
    """The committed notebook with its install line pointed at ``repo``; returns the line as run."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / f"{slug}.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "google.colab" in c.source]
    assert len(cells) == 1, f"{slug}: one Colab cell expected, found {len(cells)}"
    m = _INSTALL.search(cells[0].source)
    assert m, f"{slug}: no install line of the expected form in the Colab cell:\n{cells[0].source}"
    from collapse_utils.tooling.page import repository_url

    assert m["url"] == repository_url(ROOT)
    line = m["head"] + repo.as_uri() + m["tail"]
    cells[0].source = cells[0].source[:m.start()] + line + cells[0].source[m.end():]
    nb.cells.append(nbformat.v4.new_code_cell(_PROBE))
    nbformat.write(nb, dest)
    return line.strip()


def _kernel_env(venv: Path, tmp: Path, mirror: str) -> dict:
    """The environment papermill starts the kernel with: Colab's (no book checkout, no COLLAPSE_* but the
    mirror), the kernel environment's bin first on PATH (``!pip`` is its pip), a fresh home and cache."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("COLLAPSE_", "JUPYTER", "IPYTHON")) or k in ("VIRTUAL_ENV", "PYTHONPATH",
                                                                                "PYTHONHOME", "MPLBACKEND"))}
    outer_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != outer_bin]
    home = tmp / "home"
    startup = tmp / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    # Colab's kernel imports google.colab when it starts; the notebooks test `"google.colab" in sys.modules`
    (startup / "00-colab.py").write_text("import google.colab  # noqa: F401  (as Colab's kernel does)\n")
    home.mkdir()
    env.update({
        "PATH": os.pathsep.join([str(venv / "bin"), *path]),
        "HOME": str(home),
        "IPYTHONDIR": str(tmp / "ipython"),
        "JUPYTER_PATH": str(venv / "share" / "jupyter"),
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip"),
        "COLLAPSE_DATA_MIRROR": mirror,
        # the hub is out of reach here: fail at once, not after retries (chapters 04 and 06 never reach it:
        # the mirror comes first)
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    })
    return env


@pytest.mark.colab
def test_data_mirror_is_the_first_download_source(data_server, tmp_path, monkeypatch):
    """COLLAPSE_DATA_MIRROR puts ``<base>/<dataset>/<file>`` before the registry's sources; a file comes
    from it through the download path (pooch, the sha256 check) into the cache."""
    from collapse_utils.core import data

    ds = data.REGISTRY["mnist"]
    monkeypatch.delenv("COLLAPSE_DATA_MIRROR", raising=False)
    assert data.download_sources(ds) == tuple(ds.sources)
    host, port = data_server.server_address[:2]
    monkeypatch.setenv("COLLAPSE_DATA_MIRROR", f"http://{host}:{port}/")
    assert data.download_sources(ds)[0] == {"url": f"http://{host}:{port}/mnist/{{file}}"}
    assert data.download_sources(ds)[1:] == tuple(ds.sources)
    for var in ("COLLAPSE_DATA_DIR", "COLLAPSE_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLLAPSE_CACHE_DIR", str(tmp_path))
    before = len(data_server.served)
    got = data.dataset_file("mnist", "t10k-labels-idx1-ubyte.gz", download=True)
    assert got == tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    assert data.sha256sum(got) == ds.files["t10k-labels-idx1-ubyte.gz"]
    assert data_server.served[before:] == [("/mnist/t10k-labels-idx1-ubyte.gz", 200)]


@pytest.mark.slow
@pytest.mark.colab
@pytest.mark.parametrize("chapter", ALL_CHAPTERS)
def test_colab_line_installs_what_the_notebook_needs(chapter, tmp_path, request):
    """Chapter ``chapter`` in a Colab-like kernel: its own install line (pointed at a local tag), then the
    committed notebook at the smoke preset, its data from the registry's download path."""
    if chapter not in _selected():
        pytest.skip(f"chapter {chapter} is not selected (selected: {', '.join(_selected())}); "
                    "`make test-colab` (COLLAPSE_COLAB_CHAPTERS=all) runs every chapter")
    from collapse_utils import __version__
    from collapse_utils.tooling.config import get_chapter

    base = request.getfixturevalue("colab_base")
    repo = request.getfixturevalue("tagged_repo")
    server = request.getfixturevalue("data_server")
    slug = get_chapter(chapter).slug
    t0 = time.perf_counter()

    # a fresh environment over the Colab-like base, with a kernel of its own and google.colab importable
    venv = tmp_path / "venv"
    _venv(venv, "--without-pip")
    site = _purelib(venv)
    (site / "_colab_base.pth").write_text(f"{base}\n")
    # `pip` is the base's pip run by this environment's python, so it installs here (as Colab's pip does)
    (venv / "bin" / "pip").write_text('#!/bin/sh\nexec "$(dirname "$0")/python" -m pip "$@"\n')
    (venv / "bin" / "pip").chmod(0o755)
    (site / "google" / "colab").mkdir(parents=True)  # `google` stays a namespace package
    (site / "google" / "colab" / "__init__.py").write_text('"""Stands in for Colab\'s google.colab."""\n')
    _run([venv / "bin" / "python", "-m", "ipykernel", "install", "--prefix", venv, "--name", "colab"])
    t_env = time.perf_counter()

    nb_in, nb_out, work = tmp_path / f"{slug}.ipynb", tmp_path / f"{slug}.out.ipynb", tmp_path / "work"
    work.mkdir()
    line = _colab_notebook(slug, repo, nb_in)
    host, port = server.server_address[:2]
    served_before = len(server.served)
    env = _kernel_env(venv, tmp_path, f"http://{host}:{port}")
    r = subprocess.run([sys.executable, "-m", "papermill", nb_in, nb_out, "-k", "colab", "-p", "preset", "smoke",
                        "--cwd", work, "--no-progress-bar"], capture_output=True, text=True, env=env, timeout=3000,
                       cwd=work)
    t_run = time.perf_counter()
    print(f"chapter {chapter}: environment {t_env - t0:.0f} s, install line + notebook {t_run - t_env:.0f} s")
    import nbformat

    if r.returncode:
        colab = ""
        if nb_out.exists():  # what the Colab cell printed (pip's messages)
            cell = next(c for c in nbformat.read(nb_out, as_version=4).cells if "google.colab" in c.source)
            colab = "".join(o.get("text", "") + "".join(o.get("traceback", [])) for o in cell.get("outputs", []))
        pytest.fail(f"chapter {chapter} failed in the Colab-like kernel (install line: {line}):\n"
                    f"{(r.stdout + r.stderr)[-6000:]}\nthe Colab cell's output:\n{colab[-4000:]}")

    out = nbformat.read(nb_out, as_version=4)
    code = [c for c in out.cells if c.cell_type == "code"]
    took = [c.metadata.get("papermill", {}).get("duration") or 0.0 for c in code]
    install = sum(t for c, t in zip(code, took) if "google.colab" in c.source)
    print(f"chapter {chapter}: the install line {install:.0f} s, the other cells {sum(took) - install:.0f} s")
    text = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.get("outputs", []))
    probe = json.loads(text.split("COLAB-PROBE ", 1)[1].splitlines()[0])
    # the Colab branch ran: the package came from the tag of the local repository, into this environment
    assert probe["colab"]
    assert Path(probe["file"]).resolve().is_relative_to(site.resolve()), probe["file"]
    direct = json.loads(probe["direct_url"])
    assert direct["url"] == repo.as_uri() and direct["vcs_info"]["requested_revision"] == f"v{__version__}"
    # no module of the book's tooling imported, none of its distributions installed by the line
    assert not set(TOOLING_MODULES) & set(probe["modules"]), set(TOOLING_MODULES) & set(probe["modules"])
    installed = _run([venv / "bin" / "python", "-c", "import importlib.metadata as m, json; "
                      "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))"]).stdout
    assert not set(TOOLING_DISTS) & set(json.loads(installed))
    # the data: nothing from a local folder, every file of the chapter's datasets through the server
    assert probe["data_dir"] is None
    served = server.served[served_before:]
    from collapse_utils.core.data import REGISTRY

    wanted = {f"/{name}/{f}" for name in DATASETS.get(chapter, ()) for f in REGISTRY[name].files}
    assert {p for p, code in served if code == 200} == wanted, served
    # the run: the smoke preset, results under the notebook's working folder (no checkout in Colab)
    params = json.loads((work / "results" / slug / "smoke" / "params.json").read_text())
    assert params.get("preset", params.get("params", {}).get("preset")) == "smoke", params
    for name in ("metrics.csv", "claims.csv"):
        assert (work / "results" / slug / "smoke" / name).is_file(), name
