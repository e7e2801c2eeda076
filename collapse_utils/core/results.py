"""Results I/O: results/<chapter>/<run-name>/{metrics.csv, params.json, ...}.

The tidy table has one row per experiment x regime x seed x generation x metric,
plus one column for each varied parameter, so runs can be analysed without the
notebook that produced them.  Files are written atomically.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .engine import TIDY_COLUMNS
from .storage import atomic_write_bytes

__all__ = ["repo_root", "results_root", "run_dir", "save_results", "load_results", "save_table", "seed_matrix"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.=+-]+$")


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The book's root (the folder holding _config.yml and collapse_utils/), else the cwd."""
    here = Path(start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "_config.yml").exists() and (p / "collapse_utils").is_dir():
            return p
    return here


def results_root() -> Path:
    """COLLAPSE_RESULTS_DIR, else results/ in the book's checkout (else in the current folder)."""
    env = os.environ.get("COLLAPSE_RESULTS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    book = repo_root(Path(__file__).parent)
    return (book if (book / "_config.yml").exists() else repo_root()) / "results"


def run_dir(chapter: str, run_name: str, create: bool = True) -> Path:
    for label, value in (("chapter", chapter), ("run name", run_name)):
        if not value or not _NAME_RE.match(str(value)):
            raise ValueError(f"{label} {value!r} may contain only letters, digits and _ . = + -")
    d = results_root() / str(chapter) / str(run_name)
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def _jsonable(x: Any) -> Any:
    from collections.abc import Mapping

    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def save_table(df: pd.DataFrame, path: Path) -> Path:
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.7g")
    atomic_write_bytes(Path(path), buf.getvalue().encode())
    return Path(path)


def save_results(
    chapter: str,
    run_name: str,
    metrics: pd.DataFrame | list[pd.DataFrame],
    params: dict,
    tables: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """Write metrics.csv (+ params.json and any extra named tables); return the run folder."""
    if isinstance(metrics, (list, tuple)):
        metrics = pd.concat(list(metrics), ignore_index=True)
    missing = [c for c in TIDY_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(f"metrics table lacks the tidy columns {missing}; it has {list(metrics.columns)}")
    ordered = TIDY_COLUMNS[:-2] + [c for c in metrics.columns if c not in TIDY_COLUMNS] + TIDY_COLUMNS[-2:]
    d = run_dir(chapter, run_name)
    save_table(metrics[ordered], d / "metrics.csv")
    for name, table in (tables or {}).items():
        save_table(table, d / f"{name}.csv")
    atomic_write_bytes(d / "params.json", json.dumps(_jsonable(params), indent=2, sort_keys=True).encode())
    return d


def load_results(chapter: str, run_name: str) -> tuple[pd.DataFrame, dict]:
    d = run_dir(chapter, run_name, create=False)
    if not (d / "metrics.csv").exists():
        raise FileNotFoundError(f"no results in {d}; run the chapter first (python -m collapse_utils run {chapter})")
    return pd.read_csv(d / "metrics.csv"), json.loads((d / "params.json").read_text())


def seed_matrix(df: pd.DataFrame, metric: str, **where):
    """(generations, values[n_generations, n_seeds]) of one metric of a tidy table, after filtering.

    ``where`` filters on columns, e.g. ``seed_matrix(df, "sigma2", M=100, estimator="mle")``.
    """
    sub = df[df["metric"] == metric]
    for k, v in where.items():
        sub = sub[sub[k] == v]
    if sub.empty:
        raise KeyError(f"no rows for metric={metric!r} with {where}")
    wide = sub.pivot_table(index="generation", columns="seed", values="value", aggfunc="first")
    return wide.index.to_numpy(), wide.to_numpy()
