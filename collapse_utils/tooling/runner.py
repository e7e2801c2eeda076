"""Execute chapters with papermill and build the book.

``python -m collapse_utils run 01 --preset smoke -p generations=10``
``python -m collapse_utils book --preset cpu`` (``--force`` re-executes every chapter)
``python -m collapse_utils list``
``python -m collapse_utils plan 04 --preset paper`` (the runs of a preset and their estimated cost)

The reviewed source of a chapter is ``notebooks/NN_name.md`` (jupytext MyST).  It
is converted in memory and executed by papermill into ``book/_generated/`` (never
in place), with the preset's values injected after the ``parameters`` cell.

The book is incremental: every executed notebook carries its build key (``build_key``), and ``book``
does not execute a chapter again whose notebook in ``book/_generated/`` has the key it would get now.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .config import COMMON_PARAMS, PRESETS, ParamError, available_chapters, get_chapter, load_preset
from ..core.results import repo_root

__all__ = ["resolve_params", "execute_chapter", "build_book", "main", "notebook_defaults", "write_scorecard",
           "build_key", "stored_build_key"]


def _read_md(chapter):
    import jupytext

    path = chapter.notebook_md
    if not path.exists():
        raise ParamError(f"chapter source {path} is missing")
    return jupytext.read(path)


def notebook_defaults(nb) -> dict:
    """The values assigned in the cell tagged ``parameters``."""
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ParamError(f"a chapter needs exactly one cell tagged 'parameters', found {len(cells)}")
    ns: dict = {}
    exec(compile(cells[0].source, "<parameters>", "exec"), {}, ns)  # literal assignments only
    return {k: v for k, v in ns.items() if not k.startswith("_")}


def _parse_value(raw: str):
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _compatible(default, value) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) == isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def _overrides(overrides: list[str] | dict | None) -> list[tuple[str, object]]:
    """``["name=value", ...]`` (values parsed as YAML) or a dict, as (name, value) pairs."""
    if isinstance(overrides, dict):
        return list(overrides.items())
    items = []
    for item in overrides or []:
        if "=" not in item:
            raise ParamError(f"parameter override {item!r} must look like name=value")
        k, v = item.split("=", 1)
        items.append((k.strip(), _parse_value(v)))
    return items


def resolve_params(chapter_key: str, preset: str, overrides: list[str] | dict | None = None) -> tuple:
    """(chapter, params): defaults <- preset <- overrides, validated; raises ParamError."""
    chapter = get_chapter(chapter_key)
    if preset not in PRESETS:
        raise ParamError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    nb = _read_md(chapter)
    # the declaration holds the defaults (the cpu preset); the cell must name exactly its parameters
    defaults = {"preset": "cpu", "run_name": "", **load_preset("cpu", chapter.id)}
    cell = notebook_defaults(nb)
    if set(cell) != set(defaults):
        raise ParamError(f"the parameters cell of {chapter.slug} names {sorted(set(cell) ^ set(defaults))} "
                         "differently from the chapter's Params declaration")
    valid = sorted(defaults)
    params = dict(defaults)
    preset_values = load_preset(preset, chapter.id)
    stray = sorted(set(preset_values) - set(defaults))
    if stray:
        raise ParamError(f"preset {preset!r} sets {stray}, which chapter {chapter.id} does not have")
    params.update(preset_values)
    params["preset"] = preset
    for k, v in _overrides(overrides):
        if k not in defaults:
            raise ParamError(f"unknown parameter {k!r} for chapter {chapter.id}; valid parameters: "
                             f"{', '.join(n for n in valid if n not in COMMON_PARAMS)}, run_name")
        if not _compatible(defaults[k], v):
            raise ParamError(f"parameter {k}={v!r} has the wrong type; expected "
                             f"{type(defaults[k]).__name__} like the default {defaults[k]!r}")
        params[k] = v
    chapter.validate(params)
    chapter.preflight(params)
    return chapter, params


# -- the incremental book: what an executed notebook depends on ------------------------------------------
#: what the build key covers, in the words the progress output uses
KEY_PARTS = {"notebook": "notebook source", "parameters": "parameters", "preset": "preset",
             "package": "package source", "data": "data checksums", "environment": "locked environment"}
_META = "collapse_utils"  # the executed notebook's metadata entry holding its build key


def _package_digest(pkg: Path | None = None) -> str:
    """The package hashed as a whole: every file under ``collapse_utils/`` (its path and text, ``__pycache__``
    aside), so any change to the package counts as a change for every chapter."""
    from ..core.storage import fingerprint

    pkg = pkg or Path(__file__).resolve().parents[1]
    files = sorted(f for f in pkg.rglob("*") if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc")
    return fingerprint([(f.relative_to(pkg).as_posix(), f.read_bytes().decode("utf-8", "replace")) for f in files])


def _data_digest() -> str:
    """The sha256 of every registered dataset file (``data/registry.yaml``): files that load are verified
    against these, so equal checksums mean equal data."""
    from ..core.data import load_registry
    from ..core.storage import fingerprint

    return fingerprint({name: dict(ds.files) for name, ds in load_registry().items()})


def _environment_digest() -> str:
    """The locked versions (``requirements.lock``), torch's version and the Python version."""
    from importlib import metadata

    from ..core.storage import fingerprint

    lock = repo_root(Path(__file__).parent) / "requirements.lock"
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = None
    return fingerprint(lock.read_text() if lock.exists() else None, torch, sys.version_info[:2])


def _notebook_source(chapter) -> str:
    """The reviewed source the chapter executes from (``notebooks/NN_name.md``)."""
    return chapter.notebook_md.read_text()


def build_key(chapter, params: dict, preset: str, package: str | None = None) -> dict:
    """What the executed notebook of ``chapter`` at ``params`` depends on: {"key": digest, "parts": {part:
    digest}} over the notebook source, the parameters, the preset, the package source (hashed as a whole),
    the data checksums and the locked environment.  ``package``: the package digest, when already known."""
    from ..core.storage import fingerprint

    parts = {"notebook": fingerprint(_notebook_source(chapter)),
             "parameters": fingerprint(dict(params)),
             "preset": preset,
             "package": package or _package_digest(),
             "data": _data_digest(),
             "environment": _environment_digest()}
    return {"key": fingerprint(parts), "parts": parts}


def stored_build_key(notebook: str | Path) -> dict | None:
    """The build key an executed notebook was written with (None: none, or no readable notebook)."""
    import json

    try:
        meta = json.loads(Path(notebook).read_text()).get("metadata", {}).get(_META, {})
    except (OSError, ValueError, AttributeError):
        return None
    return meta.get("build_key") if isinstance(meta, dict) else None


def _up_to_date(chapter, key: dict, out_dir: Path) -> tuple[bool, list[str]]:
    """(is the executed notebook in ``out_dir`` up to date, the parts of the key that changed)."""
    stored = stored_build_key(out_dir / f"{chapter.slug}.ipynb")
    if not stored or not isinstance(stored.get("parts"), dict):
        return False, []
    changed = [KEY_PARTS[k] for k in KEY_PARTS if stored["parts"].get(k) != key["parts"][k]]
    outputs_present = all((out_dir / f).exists() for f in stored.get("outputs", []))
    return stored.get("key") == key["key"] and not changed and outputs_present, changed


def execute_chapter(chapter_key: str, preset: str = "cpu", overrides=None, output_dir: str | Path | None = None,
                    progress: bool = False, log_output: bool = False, cell_progress: bool = False) -> Path:
    """Run one chapter through papermill; return the executed notebook's path.

    Everything that can be refused is refused before the kernel starts (parameters, data, models,
    folders).  The notebook executes into a hidden ``.<slug>.partial.ipynb`` file that replaces
    ``<slug>.ipynb`` only once every cell has run, so an interrupted or failed execution never
    leaves a half-written page where the book build would render it; a failed one is kept as
    ``.<slug>.failed.ipynb`` for inspection.  ``progress`` shows papermill's cell bar and the
    chapter's own bars; ``cell_progress`` only the cell bar (the rendered page stays clean).
    """
    import jupytext
    import papermill as pm

    from ..core.storage import StorageError, discard, ensure_writable

    root = repo_root(Path(__file__).parent)
    out_dir = Path(output_dir) if output_dir else root / "book" / "_generated"
    try:
        ensure_writable(out_dir, "folder for executed notebooks", "pass a writable --output-dir")
    except StorageError as exc:
        raise ParamError(str(exc)) from None
    chapter, params = resolve_params(chapter_key, preset, overrides)  # everything refused before the kernel starts
    key = build_key(chapter, params, preset)
    out = out_dir / f"{chapter.slug}.ipynb"
    partial = out_dir / f".{chapter.slug}.partial.ipynb"
    failed = out_dir / f".{chapter.slug}.failed.ipynb"
    discard(partial)  # left by an execution that was killed
    discard(failed)
    nb = _read_md(chapter)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    env_backup = dict(os.environ)
    os.environ.setdefault("COLLAPSE_RESULTS_DIR", str(root / "results"))
    if not progress:
        os.environ["TQDM_DISABLE"] = "1"  # tqdm reads TQDM_* overrides; keeps rendered pages clean
    os.environ.setdefault("PYTHONPATH", str(root))
    os.environ["COLLAPSE_CLAIMS_DIR"] = str(out_dir.resolve())  # <slug>.claims.csv for the scorecard page
    # the kernel runs in notebooks/: paths given relative to where this command was started must not break
    for var in ("COLLAPSE_DATA_DIR", "COLLAPSE_RESULTS_DIR"):
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).resolve())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / f"{chapter.slug}.ipynb"
            jupytext.write(nb, src)
            t0 = time.time()
            try:
                # only the preset and the given values are injected: the notebook applies the preset
                # itself (as it does in Colab or under plain papermill) and its table says which is which
                given = {"preset": preset, **dict(_overrides(overrides))}
                # explicit disable=False: the TQDM_DISABLE meant for the kernel must not hide the cell bar
                bar = {"disable": False, "desc": f"chapter {chapter.id}", "unit": "cell"} \
                    if (progress or cell_progress) else False
                pm.execute_notebook(str(src), str(partial), parameters=given, kernel_name="python3",
                                    cwd=str(root / "notebooks"), progress_bar=bar, log_output=log_output)
                _tidy_executed(partial)
                _record_build_key(partial, key, out_dir, chapter.slug)
                os.replace(partial, out)
            except BaseException as exc:
                if partial.exists() and isinstance(exc, Exception):  # a cell raised: keep it to inspect
                    os.replace(partial, failed)
                    print(f"chapter {chapter.id} failed; its executed cells are in {failed}", file=sys.stderr)
                discard(partial)  # interrupted (Ctrl-C): nothing half-written stays behind
                raise
            print(f"chapter {chapter.id} ({preset}) executed in {time.time() - t0:.1f}s -> {out}")
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    return out


def _tidy_executed(path: Path) -> None:
    """The rendered page shows the values in its run-info table; hide papermill's injected duplicate cell."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, path)


def _record_build_key(path: Path, key: dict, out_dir: Path, slug: str) -> None:
    """Write the build key into the executed notebook's metadata, with the files beside it that the
    execution wrote (its claims and downloads), so that a later ``book`` knows whether it is up to date."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    outputs = sorted(f.relative_to(out_dir).as_posix() for pattern in (f"{slug}.*", f"downloads/{slug}*")
                     for f in out_dir.glob(pattern) if f.is_file() and f.suffix != ".ipynb")
    nb.metadata[_META] = {"build_key": {**key, "outputs": outputs}}
    nbformat.write(nb, path)


UP_TO_DATE = "up to date"


def _execute_with_progress(chapters: list, preset: str, generated: Path, params: list | None = None,
                           force: bool = False) -> list[tuple[str, str, float, str]]:
    """Execute chapters one by one: "chapter k of n", a cell bar, the time left estimated from the
    previous run's timings (``book/_generated/timings.json``), and a closing table of times.

    A chapter whose executed notebook is up to date (its build key, see ``build_key``, is the one it would
    get now, and the files it wrote beside it are there) is not executed again unless ``force``; the
    progress line and the table say so.  ``params``: each chapter's resolved parameters (default: resolved
    here).  Returns the table's rows: (chapter id, slug, seconds, "executed" or "up to date")."""
    import json

    from ..core.storage import atomic_write_bytes

    generated.mkdir(parents=True, exist_ok=True)
    timings_file = generated / "timings.json"
    try:
        timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    except (OSError, ValueError):
        timings = {}
    before = dict(timings.get(preset, {}))
    params = params if params is not None else [resolve_params(c.id, preset)[1] for c in chapters]
    package = _package_digest()
    plan = []  # (chapter, up to date, changed parts)
    for ch, p in zip(chapters, params):
        fresh, changed = _up_to_date(ch, build_key(ch, p, preset, package), generated)
        plan.append((ch, fresh and not force, changed))
    rows = []
    t_book = time.time()
    for i, (ch, skip, changed) in enumerate(plan, 1):
        head = f"[{i}/{len(chapters)}] chapter {ch.id}: {ch.title} ({preset} preset)"
        if skip:
            print(f"{head}: {UP_TO_DATE}, not executed (same {', '.join(KEY_PARTS.values())})", flush=True)
            rows.append((ch.id, ch.slug, 0.0, UP_TO_DATE))
            continue
        left = [before.get(c.id) for c, s, _ in plan[i - 1:] if not s]
        if all(t is not None for t in left):
            head += f"; the previous run took {before[ch.id]:.0f} s, about {sum(left) / 60:.1f} min left"
        if force:
            head += "; --force: executed whether or not it is up to date"
        elif changed:
            head += f"; changed since its last execution: {', '.join(changed)}"
        print(head, flush=True)
        t0 = time.time()
        execute_chapter(ch.id, preset, output_dir=generated, cell_progress=True)
        rows.append((ch.id, ch.slug, time.time() - t0, "executed"))
        timings.setdefault(preset, {})[ch.id] = round(rows[-1][2], 1)
        atomic_write_bytes(timings_file, json.dumps(timings, indent=1, sort_keys=True).encode())
    width = max(len(r[1]) for r in rows)
    print(f"\n{'chapter'.ljust(width)}  preset  seconds  status", flush=True)
    for _, slug, seconds, status in rows:
        shown = f"{seconds:7.1f}" if status == "executed" else f"{'-':>7}"
        print(f"{slug.ljust(width)}  {preset:<6}  {shown}  {status}")
    n_run = sum(r[3] == "executed" for r in rows)
    print(f"{'all chapters'.ljust(width)}  {preset:<6}  {time.time() - t_book:7.1f}  "
          f"{n_run} executed, {len(rows) - n_run} {UP_TO_DATE}\n", flush=True)
    return rows


def write_scorecard(generated: str | Path) -> Path:
    """``scorecard.md`` beside the executed chapters, from the claims each of them wrote."""
    from ..chapters.claims import read_claims, scorecard_markdown
    from ..core.storage import atomic_write_bytes

    path = Path(generated) / "scorecard.md"
    atomic_write_bytes(path, scorecard_markdown(read_claims(generated)).encode())
    write_execution_table(generated)
    return path


def write_execution_table(generated: str | Path) -> Path:
    """The table of the execution-statistics page (book/execution.md includes it), from the executed
    notebooks' papermill metadata: every chapter's preset, date and wall time."""
    from .page import write_execution_page

    return write_execution_page(generated)


def build_book(preset: str = "cpu", chapters=None, execute: bool = True, strict: bool = True,
               root: str | Path | None = None, force: bool = False) -> Path:
    """Execute the chapters (all are checked before the first one starts), then build the HTML book.

    ``root``: the book's folder (``_config.yml``, ``_toc.yml``, ``book/``); default this checkout.
    Chapters whose executed notebooks are up to date are not executed again unless ``force``; the
    scorecard and the execution-statistics page are always written anew.
    """
    root = Path(root).resolve() if root else repo_root(Path(__file__).parent)
    if not (root / "_config.yml").exists():
        raise ParamError(f"{root} is not a book folder (no _config.yml)")
    keys = list(chapters or available_chapters())
    generated = root / "book" / "_generated"
    if execute:
        resolved = [resolve_params(key, preset) for key in keys]  # all checked before any compute
        _execute_with_progress([c for c, _ in resolved], preset, generated, [p for _, p in resolved], force=force)
    missing = [c.slug for c in available_chapters().values() if not (generated / f"{c.slug}.ipynb").exists()]
    if missing:
        raise ParamError(f"executed notebooks missing for {missing}; run them first")
    write_scorecard(generated)
    cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
           "build", str(root)]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    print("$", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=root)
    html = root / "_build" / "html" / "index.html"
    print(f"book built: {html}")
    return html


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m collapse_utils", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute one chapter with papermill into book/_generated/")
    r.add_argument("chapter")
    r.add_argument("--preset", default="cpu")
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    r.add_argument("--output-dir", default=None)
    r.add_argument("--progress", action="store_true", help="show papermill's and tqdm's progress bars")
    b = sub.add_parser("book", help="execute every chapter and build the HTML book into _build/html")
    b.add_argument("--preset", default="cpu")
    b.add_argument("--chapters", nargs="*", default=None)
    b.add_argument("--no-execute", action="store_true", help="only build from existing executed notebooks")
    b.add_argument("--root", default=None, help="the book's folder (default: this checkout)")
    b.add_argument("--force", action="store_true",
                   help="execute every chapter, also those whose executed notebook is up to date")
    sub.add_parser("list", help="list chapters, presets and parameters")
    pl = sub.add_parser("plan", help="list the runs a preset makes and estimate their cost (CPU and GPU)")
    pl.add_argument("chapter", nargs="?", default="all", help="a chapter, or all (default)")
    pl.add_argument("--preset", default=None, help="one preset (default: every preset)")
    pl.add_argument("--gpu", default="H100", help="the GPU of the FLOP-based estimate (H100, A100)")
    pl.add_argument("--measure", action="store_true", help="measure the per-unit costs on this machine first")
    pl.add_argument("--table", action="store_true", help="one Markdown row per chapter (the README's table)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "run":
            execute_chapter(a.chapter, a.preset, a.param, a.output_dir, progress=a.progress)
        elif a.cmd == "book":
            build_book(a.preset, a.chapters, execute=not a.no_execute, root=a.root, force=a.force)
        elif a.cmd == "plan":
            from .plan import main as plan_main

            return plan_main(a.chapter, a.preset, gpu=a.gpu, do_measure=a.measure, table=a.table)
        else:
            for c in available_chapters().values():
                print(f"{c.id}  {c.slug}: {c.title}")
                print(f"    parameters: {', '.join(sorted(load_preset('cpu', c.id)))}")
            print(f"presets: {', '.join(PRESETS)}")
    except ParamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"error: {' '.join(map(str, e.cmd))} failed with exit status {e.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished generations are checkpointed under the results folder; the same command "
              "resumes from them", file=sys.stderr)
        return 130
    except Exception as e:  # a cell of a chapter raised: papermill's error names the cell and the exception
        if type(e).__name__ != "PapermillExecutionError":
            raise
        print(f"error: a cell of the chapter raised {e.ename}: {e.evalue}", file=sys.stderr)
        return 1
    return 0
