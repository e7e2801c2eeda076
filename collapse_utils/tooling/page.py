"""The reader's page: how to reproduce a chapter, what produced it, and the book's execution statistics.

Every chapter ends with one short cell, ``reproduce(run)``, that shows

- the command line, the papermill command and the Colab link that rerun this page with this run's
  preset and every value given explicitly;
- links to download the executed notebook and the chapter's ``metrics.csv`` and ``claims.csv`` (when
  the chapter executes for the book: the runner sets ``COLLAPSE_CLAIMS_DIR`` to the folder of the
  executed notebooks, and the files are copied into its ``downloads/`` folder);
- a version footer: Python, numpy, torch, transformers (when the chapter imported it),
  collapse_utils, the date, the machine and the chapter's wall time.

The Colab install line of every notebook pins one reference of the package, :func:`colab_ref`
(the tag ``v<__version__>``); :func:`colab_install_line` writes it and the tests check every notebook's
line against it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

__all__ = [
    "CHAPTER_EXTRAS", "REPOSITORY_URL", "colab_ref", "repository_url", "colab_install_line", "colab_link", "cli_command",
    "papermill_command", "versions", "reproduce_markdown", "reproduce", "execution_rows",
    "execution_markdown", "write_execution_page", "EXECUTION_TABLE",
]

#: the extras of pyproject.toml each chapter's Colab cell installs (everything else a chapter needs is core)
CHAPTER_EXTRAS: dict[str, tuple[str, ...]] = {"01": (), "02": (), "03": (), "04": ("lm",), "05": (), "06": ("lm",), "07": ()}
#: the book's repository (``repository.url`` of _config.yml), for a package installed without its checkout
REPOSITORY_URL = "https://github.com/model-collapse-book/model-collapse-book"
#: the generated table that book/execution.md includes
EXECUTION_TABLE = "execution_table.md"


def colab_ref() -> str:
    """The git reference every Colab cell installs: the tag of this package's version (``v0.1.0``).

    The version lives in one place, ``collapse_utils.__version__`` (pyproject.toml repeats it; a test
    checks they agree).  Publishing a version means tagging the commit ``v<version>``."""
    from .._version import __version__

    return f"v{__version__}"


def repository_url(root: str | Path | None = None) -> str:
    """``repository.url`` of the book's ``_config.yml`` (no trailing slash); where the package is
    installed without its book (pip in Colab), :data:`REPOSITORY_URL`, which a test keeps equal to it."""
    import yaml

    from ..core.results import repo_root

    root = Path(root) if root else repo_root(Path(__file__).parent)
    if not (root / "_config.yml").exists():
        return REPOSITORY_URL
    cfg = yaml.safe_load((root / "_config.yml").read_text())
    return str(cfg["repository"]["url"]).rstrip("/")


def colab_install_line(chapter: str, root: str | Path | None = None) -> str:
    """The pip command of chapter ``chapter``'s Colab cell: the pinned package with the extras it needs.

    Only ``collapse_utils`` and its core dependencies (and the chapter's extras) are installed: no
    papermill, jupytext or ipykernel, which would disturb Colab's own kernel."""
    extras = CHAPTER_EXTRAS[str(chapter).zfill(2)]
    name = "collapse_utils" + (f"[{','.join(extras)}]" if extras else "")
    return f'pip -q install "{name} @ git+{repository_url(root)}@{colab_ref()}"'


def colab_link(slug: str, root: str | Path | None = None) -> str:
    """The Colab address of a committed notebook at the pinned reference."""
    repo = repository_url(root).split("github.com/", 1)[1]
    return f"https://colab.research.google.com/github/{repo}/blob/{colab_ref()}/notebooks/{slug}.ipynb"


def _cli_value(v) -> str:
    """A value as ``-p name=value`` parses it back (YAML): plain where that round-trips, JSON otherwise."""
    import yaml

    if isinstance(v, str):
        try:
            if yaml.safe_load(v) == v and v.strip() == v and v:
                return v
        except yaml.YAMLError:
            pass
    return json.dumps(v)


def _given(params: dict, sources: dict | None) -> dict:
    """The values given explicitly (not from the preset), in the notebook's order, plus a run name."""
    given = {k: v for k, v in params.items() if (sources or {}).get(k) == "given"}
    if params.get("run_name"):
        given["run_name"] = params["run_name"]
    return given


def cli_command(chapter_id: str, params: dict, sources: dict | None = None) -> str:
    """``python -m collapse_utils run NN --preset P -p name=value ...`` for this run."""
    parts = ["python", "-m", "collapse_utils", "run", chapter_id, "--preset", str(params.get("preset", "cpu"))]
    for k, v in _given(params, sources).items():
        parts += ["-p", f"{k}={_cli_value(v)}"]
    return shlex.join(parts)


def papermill_command(slug: str, params: dict, sources: dict | None = None) -> str:
    """``papermill notebooks/<slug>.ipynb <slug>.out.ipynb -p preset P ...``: numbers and plain text
    with ``-p``, lists and text that papermill would read as a number with ``-y`` (YAML)."""
    parts = ["papermill", f"notebooks/{slug}.ipynb", f"{slug}.out.ipynb", "-p", "preset",
             str(params.get("preset", "cpu"))]
    for k, v in _given(params, sources).items():
        if isinstance(v, bool):
            parts += ["-p", k, str(v)]
        elif isinstance(v, (int, float)):
            parts += ["-p", k, repr(v)]
        elif isinstance(v, str) and v and not _looks_typed(v):
            parts += ["-p", k, v]
        else:
            parts += ["-y", json.dumps({k: v})]
    return shlex.join(parts)


def _looks_typed(s: str) -> bool:
    """Whether papermill's ``-p`` would turn this text into something else (bool, None, number)."""
    if s in ("True", "False", "None"):
        return True
    try:
        float(s)
    except ValueError:
        return False
    return True


def versions() -> dict[str, str]:
    """Versions of what produced the page: Python, numpy, torch, transformers (when the chapter imported
    it), collapse_utils."""
    from .._version import __version__

    from importlib import metadata

    out = {"Python": platform.python_version()}
    for mod in ("numpy", "torch", "transformers"):
        if mod in sys.modules:
            out[mod] = str(getattr(sys.modules[mod], "__version__", "?"))
        elif mod != "transformers":  # read without importing (torch takes seconds to import)
            try:
                out[mod] = metadata.version(mod)
            except metadata.PackageNotFoundError:
                out[mod] = "not installed"
    out["collapse_utils"] = __version__
    return out


def _machine() -> str:
    system = f"{platform.system()} {platform.machine()}".strip()
    cpu = platform.processor() or ""
    text = f"{system}, {os.cpu_count()} CPU{'s' if (os.cpu_count() or 0) != 1 else ''}"
    if cpu and cpu != platform.machine():
        text += f" ({cpu})"
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 -- a broken CUDA setup must not stop the page's footer
        pass
    return text


def _copy_downloads(slug: str, run_dir: Path, out_dir: Path) -> dict[str, str]:
    """Copy metrics.csv and claims.csv of the run into ``<out_dir>/downloads/``; {label: path relative
    to the executed notebook}."""
    dl = out_dir / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    links = {}
    for name in ("metrics.csv", "claims.csv"):
        src = run_dir / name
        if src.exists():
            dest = dl / f"{slug}.{name}"
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
            links[name] = f"downloads/{dest.name}"
    return links


def reproduce_markdown(chapter_id: str, slug: str, params: dict, sources: dict | None = None,
                       wall_seconds: float | None = None, run_dir: str | Path | None = None,
                       downloads: dict[str, str] | None = None, notebook_link: bool = False,
                       today: _dt.date | None = None) -> str:
    """The closing block of a chapter as MyST Markdown (see the module's docstring)."""
    lines = [
        "Rerun this page with the same values from a checkout of the repository (after `make install`):",
        "",
        "```bash",
        cli_command(chapter_id, params, sources),
        "```",
        "",
        "or with plain papermill on the committed notebook:",
        "",
        "```bash",
        papermill_command(slug, params, sources),
        "```",
        "",
        f"or open [the notebook in Colab]({colab_link(slug)}) (package version {colab_ref()}), set "
        f"`preset = \"{params.get('preset', 'cpu')}\"` and the values above in its parameters cell and run all cells.",
        "",
    ]
    files = []
    if notebook_link:
        files.append(f"{{download}}`the executed notebook <{slug}.ipynb>`")
    for name, rel in (downloads or {}).items():
        files.append(f"{{download}}`{name} <{rel}>`")
    if files:
        lines += ["Download " + ", ".join(files) + ".", ""]
    elif run_dir is not None:
        lines += [f"This run's `metrics.csv` and `claims.csv` are in `{run_dir}`.", ""]
    v = versions()
    soft = ", ".join(f"{k} {val}" for k, val in v.items())
    when = (today or _dt.date.today()).isoformat()
    wall = f"; wall time {_duration(wall_seconds)}" if wall_seconds is not None else ""
    lines.append(f"*Executed on {when} with {soft}; machine: {_machine()}{wall}.*")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def reproduce(run, show: bool = True) -> str:
    """The closing cell of every chapter: display (and return) :func:`reproduce_markdown` for ``run``
    (a :class:`collapse_utils.tooling.config.ChapterRun`)."""
    ch = run.chapter
    out_dir = os.environ.get("COLLAPSE_CLAIMS_DIR")  # set by the runner: the folder of executed notebooks
    downloads = _copy_downloads(ch.slug, run.dir, Path(out_dir)) if out_dir else None
    started = getattr(run, "started", None)
    wall = time.time() - started if started is not None else None
    text = reproduce_markdown(ch.id, ch.slug, run.params, getattr(run, "sources", None), wall, run.dir,
                              downloads, notebook_link=bool(out_dir))
    if show:
        try:
            from IPython.display import Markdown, display

            display(Markdown(text))
        except ImportError:  # pragma: no cover
            print(text)
    return text


# ---------------------------------------------------------------------------------------------------
# The execution-statistics page
# ---------------------------------------------------------------------------------------------------
def execution_rows(generated: str | Path) -> list[dict]:
    """One row per executed chapter in ``generated``: chapter, preset, date, wall time (seconds), from
    the notebook's papermill metadata."""
    from .config import available_chapters

    rows = []
    for ch in available_chapters().values():
        path = Path(generated) / f"{ch.slug}.ipynb"
        if not path.exists():
            continue
        try:
            meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable notebook: {exc}") from None
        start = meta.get("start_time") or ""
        rows.append({
            "chapter": ch.id, "slug": ch.slug, "title": ch.title,
            "preset": (meta.get("parameters") or {}).get("preset", "?"),
            "given": sorted(k for k in (meta.get("parameters") or {}) if k != "preset"),
            "date": start[:10] or "?", "seconds": meta.get("duration"),
        })
    return rows


def execution_markdown(rows: list[dict]) -> str:
    """The table of the execution-statistics page."""
    if not rows:
        return "No chapter has been executed yet."
    out = ["| chapter | preset | values given | executed on | wall time |", "| --- | --- | --- | --- | --- |"]
    total = 0.0
    for r in rows:
        sec = r["seconds"]
        total += sec or 0.0
        given = ", ".join(f"`{k}`" for k in r["given"]) or "none"
        out.append(f"| {{doc}}`{r['chapter']} {r['title']} </book/_generated/{r['slug']}>` | `{r['preset']}` | {given} | "
                   f"{r['date']} | {_duration(sec) if sec is not None else '?'} |")
    out.append(f"| all chapters | | | | {_duration(total)} |")
    return "\n".join(out)


def write_execution_page(generated: str | Path) -> Path:
    """``<generated>/execution_table.md`` (included by book/execution.md) from the executed notebooks."""
    from ..core.storage import atomic_write_bytes

    generated = Path(generated)
    path = generated / EXECUTION_TABLE
    atomic_write_bytes(path, (execution_markdown(execution_rows(generated)) + "\n").encode())
    return path
