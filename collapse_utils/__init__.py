"""collapse_utils: the one shared package behind the model-collapse book.

Chapters import it as ``import collapse_utils as cu`` and keep only narrative and
short calls; everything with logic lives here, where it is tested.
"""
from ._version import __version__  # noqa: E402,F401

import warnings as _warnings

# tqdm.auto falls back to text bars where ipywidgets is missing; the warning about it is noise
_warnings.filterwarnings("ignore", message="IProgress not found")

from .core.params import Checker, ChapterParams, ParamError, param  # noqa: E402
from .tooling.config import (  # noqa: E402
    ChapterRun, auto_run_name, load_preset, run_info, start_chapter,
)
from .tooling.show import show  # noqa: E402
from .chapters import claims  # noqa: E402,F401  (cu.claims.claims_markdown on the pages)
from .core.engine import Experiment, GenerationContext, Loop, RecursionResult, run_recursion  # noqa: E402
from .chapters.plotting import band, band_tidy, finish, set_style  # noqa: E402
from .core.regimes import Regime, parse_regime  # noqa: E402
from .core.results import load_results, repo_root, results_root, run_dir, save_results  # noqa: E402
from .core.seeding import derive_seed, make_rng, seed_everything  # noqa: E402

__all__ = [
    "Checker", "ChapterRun", "start_chapter", "ParamError", "auto_run_name", "load_preset", "run_info",
    "ChapterParams", "param", "show", "Loop",
    "Experiment", "GenerationContext", "RecursionResult", "run_recursion",
    "band", "band_tidy", "finish", "set_style", "Regime", "parse_regime",
    "load_results", "repo_root", "results_root", "run_dir", "save_results",
    "derive_seed", "make_rng", "seed_everything", "in_colab", "show_run_info",
]


def in_colab() -> bool:
    import sys

    return "google.colab" in sys.modules


def show_run_info(params: dict, chapter: str) -> None:
    """Display (as Markdown) which preset and parameter values produced this page."""
    from IPython.display import Markdown, display

    display(Markdown(run_info(params, chapter)))
