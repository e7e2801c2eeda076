"""Claims: the paper's statements each chapter tests, with a verdict computed from the run.

Every chapter's study module has a ``claims(...) -> list[Claim]`` function.  A claim is one row of
``results/<chapter>/<run-name>/claims.csv`` and of the book's scorecard page: what the paper says,
what this run measured, where the evidence is (a figure or table label), and a verdict:

``reproduced``                  the run shows what the paper states, by the claim's own criterion;
``not visible at this preset``  the run is too small to tell (too few generations, seeds, samples):
                                the claim's ``gate`` says what size it needs, and the page prints it;
``contradicted``                the run is large enough to tell, and it shows something else;
``not run at this preset``      the experiment behind the claim is not part of this preset.

Pages never state a run-dependent result in typed prose: numbers are glued from the run
(:func:`glue`, ``{glue:text}`key:.2f```) and sentences whose truth depends on the run are written
from a claim's verdict (``{glue:md}`key```).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["KINDS", "COLLAPSE_DEFINITIONS", "VERDICTS", "REPRODUCED", "NOT_VISIBLE", "CONTRADICTED", "NOT_RUN", "verdict_text", "Claim", "judge", "finite", "direction", "typed_numbers", "claims_frame", "claims_markdown", "glue", "glue_all", "glue_claims",
           "read_claims", "scorecard_markdown", "kind_counts", "KIND_TITLES"]

REPRODUCED, NOT_VISIBLE, CONTRADICTED, NOT_RUN = VERDICTS = (
    "reproduced", "not visible at this preset", "contradicted", "not run at this preset")
COLUMNS = ["chapter", "id", "statement", "paper", "measured", "evidence", "verdict", "gate", "kind", "collapse"]
#: what a claim is: a paper's finding reproduced, an exact formula checked, or two arms of this book compared
KINDS = ("reproduction", "theory check", "comparison")
#: which definition of "model collapse" a claim tests (Schaeffer et al. 2025 list several)
COLLAPSE_DEFINITIONS = {
    "tails": "the tails of the distribution disappear",
    "variance": "the fitted spread shrinks towards zero",
    "error-rises": "the error against the real data rises over generations",
    "error-unbounded": "the error grows without bound",
    "error-bounded": "the error stays bounded (collapse avoided)",
    "modes": "the generated samples lose diversity: classes, modes or rare tokens disappear",
    "none": "no collapse definition (a property of the method)",
}
#: headings of the scorecard's sections, one per kind
KIND_TITLES = {"reproduction": "Reproductions of the paper's findings",
               "theory check": "Checks of exact formulas (theory)",
               "comparison": "Comparisons between arms of this book"}


@dataclass
class Claim:
    """One statement of the paper, tested by this run."""

    id: str                 # short, unique within the chapter, e.g. "variance-collapse"
    statement: str          # the paper's statement, in words
    paper: str              # the paper's value or direction, e.g. "0.9 -> 0.01" or "rises"
    measured: str           # what this run measured, formatted
    evidence: str           # a figure/table label of the chapter, e.g. "fig-02-spread"
    verdict: str            # one of VERDICTS
    chapter: str = ""
    extra: dict = field(default_factory=dict, repr=False)  # numbers a page may glue
    #: what the run must have for the claim to be testable (e.g. "at least 8 seeds and 50 generations");
    #: printed beside a "not visible at this preset" verdict, so the page says why it cannot tell
    gate: str = ""
    #: one of KINDS ("" until a chapter labels its claims)
    kind: str = ""
    #: a key of COLLAPSE_DEFINITIONS: the definition of collapse the claim tests
    collapse: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.kind and self.kind not in KINDS:
            raise ValueError(f"claim kind must be one of {KINDS}, got {self.kind!r}")
        if self.collapse and self.collapse not in COLLAPSE_DEFINITIONS:
            raise ValueError(f"collapse definition must be one of {sorted(COLLAPSE_DEFINITIONS)}, got {self.collapse!r}")
        if not self.id or any(c.isspace() for c in self.id):
            raise ValueError(f"claim id must be a non-empty word, got {self.id!r}")


def verdict_text(verdict: str, gate: str = "") -> str:
    """A verdict as a page prints it: "not visible at this preset" carries its gate."""
    if verdict == NOT_VISIBLE and gate:
        return f"{verdict} (needs {gate})"
    return verdict


def judge(holds: bool, visible: bool = True) -> str:
    """The verdict of a claim: ``visible`` says whether this run can tell at all (enough
    generations / seeds / samples, finite numbers), ``holds`` whether it shows the paper's statement."""
    if not visible:
        return NOT_VISIBLE
    return REPRODUCED if bool(holds) else CONTRADICTED


def finite(*xs: float) -> bool:
    return all(x is not None and math.isfinite(float(x)) for x in xs)


def direction(x, alpha: float = 0.05) -> int:
    """+1 (-1) when per-seed values are significantly above (below) 0 by a one-sided t-test at level
    ``alpha``, else 0.  Non-finite values are dropped; values without spread (e.g. every seed's tail
    mass is 0) decide by their sign; fewer than two values give 0."""
    import numpy as np
    from scipy import stats

    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return 0
    if np.ptp(x) == 0:
        return int(np.sign(x[0]))
    if stats.ttest_1samp(x, 0.0, alternative="greater").pvalue < alpha:
        return 1
    if stats.ttest_1samp(x, 0.0, alternative="less").pvalue < alpha:
        return -1
    return 0


def claims_frame(claims: list[Claim], chapter: str | None = None) -> pd.DataFrame:
    rows = []
    ids = set()
    for c in claims:
        if c.id in ids:
            raise ValueError(f"claim id {c.id!r} appears twice")
        ids.add(c.id)
        row = {k: v for k, v in asdict(c).items() if k != "extra"}
        row["chapter"] = chapter or c.chapter
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _esc(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_markdown(claims: list[Claim] | pd.DataFrame, link: bool = True, labels: bool = False) -> str:
    """A Markdown table of claims (paper vs this run, verdict), evidence as a {numref} link;
    ``labels`` adds the definition of collapse each claim tests (the scorecard's view)."""
    df = claims if isinstance(claims, pd.DataFrame) else claims_frame(claims)
    head = ["claim", "paper", "this run", "verdict", "evidence"]
    if labels:
        head = [*head[:1], "collapse tested", *head[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for _, r in df.iterrows():
        ev = r["evidence"]
        ev = f"{{numref}}`{ev}`" if link and str(ev).startswith("fig-") else f"`{ev}`" if ev else ""
        verdict = verdict_text(r["verdict"], r.get("gate", "") or "")
        cells = [_esc(r["statement"]), _esc(r["paper"]), _esc(r["measured"]), f"**{_esc(verdict)}**", ev]
        if labels:
            key = r.get("collapse", "") or ""
            cells = [cells[0], _esc(f"{key}: {COLLAPSE_DEFINITIONS[key]}" if key in COLLAPSE_DEFINITIONS
                                          else "not labelled"), *cells[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def glue(name: str, value: Any) -> Any:
    """Glue a run's value for the page's prose: numbers for ``{glue:text}`name:.2f```, text (Markdown)
    for ``{glue:md}`name```.  Outside a notebook kernel it does nothing.  Returns the value."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return value
    if get_ipython() is None:
        return value
    from IPython.display import Markdown

    try:
        from myst_nb import glue as _glue
    except ImportError:  # Colab without the book extra: the prose that glue feeds is the rendered book's
        return value

    _glue(name, Markdown(value) if isinstance(value, str) else value, display=False)
    return value


def glue_all(numbers: dict) -> dict:
    """Glue every ``name: value`` of a chapter's page numbers for its prose; returns them."""
    for k, v in numbers.items():
        glue(k, v)
    return numbers


def glue_claims(prefix: str, claims: list[Claim]) -> None:
    """Glue every claim's verdict (``<prefix>_<id>_verdict``) and measured value (``..._measured``),
    and every number in its ``extra`` (``<prefix>_<id>_<key>``)."""
    for c in claims:
        key = f"{prefix}_{c.id.replace('-', '_')}"
        glue(f"{key}_verdict", verdict_text(c.verdict, c.gate))
        glue(f"{key}_measured", c.measured)
        for k, v in c.extra.items():
            glue(f"{key}_{k}", v)


def read_claims(folder: str | Path) -> pd.DataFrame:
    """Every ``*.claims.csv`` in a folder (what the chapters of one book build wrote), in chapter order."""
    files = sorted(Path(folder).glob("*.claims.csv"))
    if not files:
        return pd.DataFrame(columns=[*COLUMNS, "preset", "run_name", "page"])
    df = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False) for f in files], ignore_index=True)
    for col in COLUMNS:  # a file written before a column existed (e.g. kind, collapse) reads as unlabelled
        df[col] = df[col].fillna("") if col in df else ""
    return df


def kind_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Claims per kind (rows: KINDS, then "unlabelled" if any) and verdict (columns, then "all")."""
    kinds = df["kind"].fillna("").replace("", "unlabelled") if len(df) else pd.Series(dtype=str)
    rows = [*KINDS, *(["unlabelled"] if (kinds == "unlabelled").any() else [])]
    tab = pd.crosstab(kinds, df["verdict"]) if len(df) else pd.DataFrame()
    tab = tab.reindex(index=rows, columns=list(VERDICTS), fill_value=0).fillna(0).astype(int)
    tab["all"] = tab.sum(axis=1)
    return tab


def scorecard_markdown(df: pd.DataFrame) -> str:
    """The scorecard page: every claim of every chapter, paper vs this build, grouped by kind
    (reproduction of the paper / check of an exact formula / comparison between arms of this book),
    with the definition of collapse each tests and the verdict counts per kind."""
    counts = df["verdict"].value_counts() if len(df) else pd.Series(dtype=int)
    by_kind = kind_counts(df)
    n = {k: int(by_kind.loc[k, "all"]) if k in by_kind.index else 0 for k in KINDS}
    out = [
        "# Scorecard: the paper's claims in this build",
        "",
        "Every chapter tests statements of Shumailov et al. {cite}`shumailov2024` on its own run and writes a "
        "verdict computed from that run: **reproduced**, **not visible at this preset** (the run is too small to "
        "tell; the verdict names the size it needs), **contradicted**, or **not run at this preset**. This page gathers them at build time; nothing on it is typed by hand.",
        "",
        "Claims are of three kinds, counted apart: a **reproduction** tests a finding the paper (or the later "
        "literature) reports; a **theory check** tests an exact formula, and can fail only on a bug or a run too "
        "small to resolve it; a **comparison** sets two arms of this book against each other. "
        f"This build has {n['reproduction']} reproductions, {n['theory check']} theory checks and "
        f"{n['comparison']} comparisons.",
        "",
        "Verdicts in this build: " + ", ".join(f"{int(counts.get(v, 0))} {v}" for v in VERDICTS) + ".",
        "",
        "| kind | " + " | ".join(VERDICTS) + " | all |",
        "|" + " --- |" * (len(VERDICTS) + 2),
        *[f"| {k} | " + " | ".join(str(int(r[v])) for v in VERDICTS) + f" | {int(r['all'])} |"
          for k, r in by_kind.iterrows()],
        "",
        "Model collapse has several definitions (Schaeffer et al. 2025); each claim names the one it tests: "
        + "; ".join(f"`{k}`: {v}" for k, v in COLLAPSE_DEFINITIONS.items()) + ".",
        "",
    ]
    if not len(df):
        return "\n".join(out)
    kinds = df["kind"].fillna("").replace("", "unlabelled")
    for kind in [*KINDS, "unlabelled"]:
        d = df[kinds == kind]
        if not len(d):
            continue
        out += [f"## {KIND_TITLES.get(kind, 'Claims without a kind')}", ""]
        for (chapter, page, preset), dc in d.groupby(["chapter", "page", "preset"], sort=True):
            out += [f"### Chapter {int(chapter)}", "",
                    f"{{doc}}`{page}`, preset `{preset}` (run `{dc['run_name'].iloc[0]}`).", "",
                    claims_markdown(dc, labels=True), ""]
    return "\n".join(out)


_SKIP = [
    r"\$\$.*?\$\$",                      # display maths
    r"\$[^$\n]+\$",                      # inline maths
    r"```.*?```",                        # fenced blocks
    r"\{[a-z:\-]+\}`[^`]*`",             # roles: {glue:text}`...`, {cite}`...`, {numref}`...`
    r"`[^`]*`",                          # code spans
    r"\]\([^)]*\)",                      # link targets
    r"<!--.*?-->",                       # comments
]
_NUMBER = r"(?<![\w.])(\d+\.\d+|\d+(?:\.\d+)?\s?%)"


def typed_numbers(markdown: str) -> list[str]:
    """Result-like numbers (decimals, percentages) typed into prose, outside maths, code and roles.

    A sentence that cites its source (``{cite}``) may quote the paper's own numbers and is skipped.
    Every other such number in a chapter's prose would go stale at another preset: glue it.
    """
    import re

    found = []
    for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z(*_])|\n\s*\n", markdown):
        if "{cite}" in sentence or "{cite:" in sentence:
            continue
        text = sentence
        for pat in _SKIP:
            text = re.sub(pat, " ", text, flags=re.S)
        found += [m.strip() for m in re.findall(_NUMBER, text)]
    return found
