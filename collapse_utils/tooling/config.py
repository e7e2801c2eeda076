"""Chapters, presets and parameters.

Every chapter notebook starts with a cell tagged ``parameters`` whose values are
the ``cpu`` preset.  The presets live in ``collapse_utils/chapters/presets/<name>.yaml``,
keyed by chapter id, and must name exactly the notebook's parameters (a test
checks this).  ``run_info`` prints which preset and values produced a page.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import platform
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from ..core.params import COMMON_PARAMS, PRESETS, WALL_TIME_PARAMS, Checker, ChapterParams, ParamError, resolve

__all__ = [
    "PRESETS", "CHAPTERS", "ParamError", "Chapter", "get_chapter", "load_preset", "preset_names",
    "run_info", "auto_run_name", "Checker", "start_chapter", "ChapterRun",
]

PRESET_DIR = Path(__file__).parents[1] / "chapters" / "presets"


@dataclass(frozen=True)
class Chapter:
    id: str
    slug: str
    title: str
    module: str  # the chapter's study module: Params (the typed declaration), optional check_inputs(params)

    @property
    def notebook_md(self) -> Path:
        from ..core.results import repo_root

        return repo_root(Path(__file__).parent) / "notebooks" / f"{self.slug}.md"

    @property
    def params_class(self) -> type[ChapterParams]:
        """The chapter's typed parameter declaration (``Params`` in its study module)."""
        return importlib.import_module(self.module).Params

    def validate(self, params: dict) -> None:
        self.params_class.check(params)

    def preflight(self, params: dict) -> None:
        """Everything that can fail before compute, after the values themselves: the data the
        chapter reads (present and verified), models named on a hub, a writable results folder.
        Raises ParamError with one clear message."""
        from ..core.data import DataError
        from ..core.results import results_root
        from ..core.storage import StorageError, ensure_writable

        mod = importlib.import_module(self.module)
        try:
            if hasattr(mod, "check_inputs"):
                mod.check_inputs(params)
            ensure_writable(results_root() / self.slug, "results folder",
                            "point COLLAPSE_RESULTS_DIR at a writable folder (or make this one writable)")
        except (DataError, StorageError) as exc:
            raise ParamError(str(exc)) from None


CHAPTERS: dict[str, Chapter] = {
    c.id: c
    for c in (
        Chapter("01", "01_gaussian_theory", "Gaussians and discrete distributions: the theory",
                "collapse_utils.chapters.gaussian_theory"),
        Chapter("02", "02_gaussian_mixtures", "Gaussian mixtures collapse", "collapse_utils.chapters.gaussian_mixtures"),
        Chapter("03", "03_vae_mnist", "A VAE on MNIST forgets", "collapse_utils.chapters.vae_mnist"),
        Chapter("04", "04_language_models", "Language models collapse", "collapse_utils.chapters.language_models"),
        Chapter("05", "05_escaping_collapse", "Escaping collapse", "collapse_utils.chapters.escaping_collapse"),
        Chapter("06", "06_provenance", "Provenance: telling generated text apart", "collapse_utils.chapters.provenance"),
        Chapter("07", "07_theory_since_2024", "The theory since the paper", "collapse_utils.chapters.theory_since_2024"),
    )
}


def available_chapters() -> dict[str, Chapter]:
    return {k: c for k, c in CHAPTERS.items() if c.notebook_md.exists()}


def get_chapter(key: str) -> Chapter:
    """Resolve '1', '01' or '01_gaussian_theory' to a chapter."""
    avail = available_chapters()
    k = str(key).strip()
    for c in avail.values():
        if k in (c.id, c.slug) or (k.isdigit() and int(k) == int(c.id)):
            return c
    choices = ", ".join(f"{c.id} ({c.slug})" for c in avail.values()) or "none"
    raise ParamError(f"unknown chapter {key!r}; valid chapters: {choices}")


def preset_names() -> tuple[str, ...]:
    return PRESETS


@lru_cache(maxsize=None)
def _preset_file(chapter_id: str) -> dict:
    path = PRESET_DIR / f"{chapter_id}.yaml"
    if not path.exists():
        raise ParamError(f"no preset file {path} for chapter {chapter_id}")
    return yaml.safe_load(path.read_text()) or {}


def load_preset(name: str, chapter: str) -> dict:
    """The parameter values of one chapter under one preset (a fresh dict).

    Presets live in ``collapse_utils/chapters/presets/<chapter id>.yaml`` with one section per preset.
    """
    if name not in PRESETS:
        raise ParamError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    ch = CHAPTERS[str(chapter).zfill(2)] if str(chapter).zfill(2) in CHAPTERS else get_chapter(chapter)
    # the declaration's defaults (the cpu preset) <- the preset's overrides
    values, _ = resolve(ch.params_class, name, _preset_file(ch.id).get(name) or {}, {})
    return {k: v for k, v in values.items() if k not in COMMON_PARAMS}


def resolve_notebook_params(namespace: dict, chapter: str) -> tuple[dict, dict]:
    """(params, sources): the notebook's parameters with its ``preset`` applied.

    In the parameters cell every value is ``None`` ("take the preset's value"); a value that is not
    ``None`` -- injected by papermill (``-p name value``) or typed into the cell (e.g. in Colab) -- is
    *given*.  :func:`collapse_utils.core.params.resolve` decides the values (declared defaults <-
    preset <- given), the one place where that happens.  ``sources`` says where each value came from.
    The resolved values are written back into ``namespace`` so that later cells see them.
    """
    ch = CHAPTERS[str(chapter).zfill(2)]
    cls = ch.params_class
    preset = namespace.get("preset", "cpu")
    if preset not in PRESETS:
        raise ParamError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    missing = [k for k in [*COMMON_PARAMS, *cls.specs()] if k not in namespace]
    if missing:
        raise ParamError(f"the parameters cell does not define {missing}")
    given = {k: namespace.get(k) for k in [*COMMON_PARAMS, *cls.specs()]}
    params, sources = resolve(cls, preset, _preset_file(ch.id).get(preset) or {}, given)
    namespace.update({k: params[k] for k in cls.specs()})
    return params, sources


def auto_run_name(params: dict, chapter: str) -> str:
    """``params['run_name']`` if set, else the preset name (+ a hash of any overrides)."""
    if params.get("run_name"):
        return str(params["run_name"])
    preset = params.get("preset", "cpu")
    try:
        base = load_preset(preset, chapter)
    except ParamError:
        base = {}
    diff = {k: v for k, v in params.items()
            if k not in COMMON_PARAMS and k not in WALL_TIME_PARAMS and base.get(k) != v}
    if not diff:
        return str(preset)
    h = hashlib.sha1(json.dumps(diff, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{preset}-custom-{h}"


def run_info(params: dict, chapter: str, sources: dict | None = None) -> str:
    """A Markdown block naming the preset, every parameter value (and where it came from), and the software."""
    preset = params.get("preset", "?")
    try:
        base = load_preset(preset, chapter)
    except ParamError:
        base = {}
    rows = []
    for k, v in params.items():
        if k in COMMON_PARAMS:
            continue
        changed = base.get(k) != v
        if changed or (sources or {}).get(k) == "given":
            origin = "given" + (" (changed from the preset)" if changed else "")
        else:
            origin = f"preset `{preset}`"
        if k in WALL_TIME_PARAMS:
            origin += "; wall time only"
        elif k == "threads_per_run":
            origin += "; part of the result (reproducibility contract)"
        rows.append(f"| `{k}` | `{v!r}` | {origin} |")
    import sys

    versions = []
    for mod in ("numpy", "torch", "sklearn", "transformers"):
        if mod in sys.modules or mod == "numpy":  # report what the chapter uses; importing costs seconds
            versions.append(f"{mod} {importlib.import_module(mod).__version__}")
    from .._version import __version__

    return "\n".join([
        f"**This page was produced with the `{preset}` preset** "
        f"(run name `{auto_run_name(params, chapter)}`) on {_dt.date.today().isoformat()}, "
        f"Python {platform.python_version()}, collapse_utils {__version__}, {', '.join(versions)}.",
        "",
        "| parameter | value | from |",
        "| --- | --- | --- |",
        *rows,
    ])


@dataclass
class ChapterRun:
    """What a chapter notebook needs after its parameters cell: validated params and a results folder."""

    chapter: Chapter
    params: ChapterParams | dict
    run_name: str
    #: where each value came from ("given" or "preset <name>"), for the page's "Reproduce this page"
    sources: dict = field(default_factory=dict)
    #: when the chapter started (time.time()), for the wall time in the page's footer
    started: float = field(default_factory=time.time)

    @property
    def dir(self) -> Path:
        from ..core.results import run_dir

        return run_dir(self.chapter.slug, self.run_name)

    def save(self, metrics, tables=None, claims=None) -> Path:
        """Write results/<chapter>/<run-name>/metrics.csv (+ params.json, extra tables, claims.csv)."""
        from ..core.results import save_results

        d = save_results(self.chapter.slug, self.run_name, metrics, self.params, tables)
        if claims is not None:
            self.save_claims(claims)
        return d

    def save_claims(self, claims):
        """Write claims.csv beside metrics.csv (and, during a book build, ``<slug>.claims.csv`` where
        the scorecard page is made from), glue every verdict and number for the prose, and return
        the claims as a table."""
        import os

        from ..chapters.claims import claims_frame, glue_claims
        from ..core.results import save_table

        if not claims:
            raise ValueError(f"chapter {self.chapter.id} declared no claims")
        df = claims_frame(list(claims), self.chapter.id)
        save_table(df, self.dir / "claims.csv")
        book = os.environ.get("COLLAPSE_CLAIMS_DIR")
        if book:
            save_table(df.assign(preset=self.params.get("preset"), run_name=self.run_name, page=self.chapter.slug),
                       Path(book) / f"{self.chapter.slug}.claims.csv")
        glue_claims(f"c{self.chapter.id}", list(claims))
        return df


def start_chapter(namespace: dict, chapter: str, show: bool = True) -> ChapterRun:
    """Collect the notebook's parameters and apply its ``preset`` to every value not given explicitly
    (:func:`resolve_notebook_params`), validate them and check data and folders (one clear error
    before any compute), print which values produced the page and where each came from, apply the
    book's plot style."""
    ch = CHAPTERS[str(chapter).zfill(2)]
    params, sources = resolve_notebook_params(namespace, ch.id)
    ch.validate(params)
    params = ch.params_class.from_values(params)  # attribute access: p.seeds
    ch.preflight(params)
    if show:
        try:
            from IPython.display import Markdown, display

            display(Markdown(run_info(params, ch.id, sources)))
        except ImportError:  # pragma: no cover
            print(run_info(params, ch.id, sources))
    from ..chapters.plotting import set_style

    set_style()
    return ChapterRun(ch, params, auto_run_name(params, ch.id), sources=dict(sources))
