"""The claims machinery: verdicts, tables, the scorecard page, and the scan for typed numbers."""
import pandas as pd
import pytest

from collapse_utils.chapters import claims as C


def test_judge_has_three_outcomes():
    assert C.judge(True) == "reproduced"
    assert C.judge(False) == "contradicted"
    assert C.judge(True, visible=False) == C.judge(False, visible=False) == "not visible at this preset"


def test_claim_rejects_unknown_verdicts_and_duplicate_ids():
    with pytest.raises(ValueError, match="verdict"):
        C.Claim("a", "s", "p", "m", "fig-01-x", "probably")
    c = C.Claim("a", "s", "p", "m", "fig-01-x", "reproduced")
    with pytest.raises(ValueError, match="twice"):
        C.claims_frame([c, c], "01")


def test_scorecard_gathers_every_chapter(tmp_path):
    rows = [C.Claim("up", "rises", "rises", "+10%", "fig-04-a", "reproduced"),
            C.Claim("tails", "tails vanish", "vanish", "0 of 3", "tab-04-b", "contradicted")]
    df = C.claims_frame(rows, "04").assign(preset="smoke", run_name="smoke", page="04_language_models")
    df.to_csv(tmp_path / "04_language_models.claims.csv", index=False)
    page = C.scorecard_markdown(C.read_claims(tmp_path))
    assert "1 reproduced, 0 not visible at this preset, 1 contradicted" in page
    assert "{numref}`fig-04-a`" in page and "{doc}`04_language_models`" in page and "`tab-04-b`" in page
    assert C.scorecard_markdown(C.read_claims(tmp_path / "none")).count("## Chapter") == 0


@pytest.mark.parametrize("text,expected", [
    ("Perplexity rose from 118 to 304.5 here.", ["304.5"]),
    ("Setting (b) keeps 10% of the data.", ["10%"]),
    ("The paper reports 115 and 34.5 {cite}`shumailov2024`.", []),
    ("Glued: {glue:text}`c04_ppl:.1f` and $\\sigma = 0.5$ and `lr=3e-4` and `0.25`.", []),
    ("A link [v1.2](https://x.org/1.5) stays.", []),
])
def test_typed_numbers_finds_results_outside_maths_code_and_citations(text, expected):
    assert C.typed_numbers(text) == expected


def test_frame_columns():
    df = C.claims_frame([C.Claim("a", "s", "p", "m", "fig-01-x", "reproduced")], "01")
    assert list(df.columns) == C.COLUMNS and isinstance(df, pd.DataFrame)


def test_direction_is_a_one_sided_t_test_over_seeds():
    from collapse_utils.chapters.claims import direction

    assert direction([1.0, 2.0, 3.0, 2.5]) == 1
    assert direction([-1.0, -2.0, -1.5, -1.2]) == -1
    assert direction([1.0, -1.0, 0.5, -0.4]) == 0  # no significant sign
    assert direction([0.3, 0.1, 0.2], alpha=1e-6) == 0  # significant at 5 % but not at this level
    assert direction([0.3, 0.1, 0.2]) == 1
    assert direction([2.0, 2.0]) == 1 and direction([0.0, 0.0, 0.0]) == 0  # no spread: the sign decides
    assert direction([float("nan"), 1.0]) == 0  # fewer than two finite values


def test_scorecard_groups_and_counts_by_kind(tmp_path):
    rows = [C.Claim("up", "rises", "rises", "+10%", "fig-04-a", "reproduced", kind="reproduction",
                    collapse="error-rises"),
            C.Claim("exact", "formula", "exact", "z 0.3", "fig-04-b", "reproduced", kind="theory check",
                    collapse="variance"),
            C.Claim("arms", "a vs b", "-", "a < b", "fig-04-c", "contradicted", kind="comparison", collapse="tails"),
            C.Claim("more", "also rises", "rises", "+5%", "fig-04-d", "not visible at this preset",
                    kind="reproduction", collapse="error-rises", gate="more seeds")]
    df = C.claims_frame(rows, "04").assign(preset="smoke", run_name="smoke", page="04_language_models")
    df.to_csv(tmp_path / "04_language_models.claims.csv", index=False)
    read = C.read_claims(tmp_path)
    counts = C.kind_counts(read)
    assert counts.loc["reproduction", "all"] == 2 and counts.loc["reproduction", "reproduced"] == 1
    assert counts.loc["theory check", "all"] == 1 and counts.loc["comparison", "contradicted"] == 1
    page = C.scorecard_markdown(read)
    assert "2 reproductions, 1 theory checks and 1 comparisons" in page
    # one section per kind, in KINDS order, each with the definition of collapse its claims test
    heads = [C.KIND_TITLES[k] for k in C.KINDS]
    assert all(h in page for h in heads) and [page.index(h) for h in heads] == sorted(page.index(h) for h in heads)
    repro = page[page.index(heads[0]):page.index(heads[1])]
    assert "also rises" in repro and "formula" not in repro
    assert f"error-rises: {C.COLLAPSE_DEFINITIONS['error-rises']}" in repro
    # an unlabelled claim is counted and shown apart, not silently dropped
    df2 = C.claims_frame([C.Claim("x", "old", "p", "m", "fig-01-x", "reproduced")], "01").assign(
        preset="smoke", run_name="smoke", page="01_gaussian_theory")
    page2 = C.scorecard_markdown(df2)
    assert "Claims without a kind" in page2 and "not labelled" in page2


def test_claim_rejects_unknown_kinds_and_definitions():
    with pytest.raises(ValueError, match="kind"):
        C.Claim("a", "s", "p", "m", "fig-01-x", "reproduced", kind="replication")
    with pytest.raises(ValueError, match="collapse"):
        C.Claim("a", "s", "p", "m", "fig-01-x", "reproduced", collapse="entropy")


def _claim_calls():
    """(module, line, kind, collapse) of every ``Claim(...)`` call in the chapters' study modules
    (kind/collapse: the keyword's constant, "?" when computed, None when missing)."""
    import ast
    from pathlib import Path

    import collapse_utils.chapters as chapters

    out = []
    for path in sorted(Path(chapters.__file__).parent.glob("*.py")):
        if path.name in ("claims.py", "__init__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Claim":
                kw = {k.arg: (k.value.value if isinstance(k.value, ast.Constant) else "?") for k in node.keywords}
                out.append((path.name, node.lineno, kw.get("kind"), kw.get("collapse")))
    return out


@pytest.mark.parametrize("module", sorted({c[0] for c in _claim_calls()}))
def test_every_claim_of_every_chapter_has_a_kind_and_a_collapse_definition(module):
    """Issue 23: each claim says what it is (a reproduction, a theory check or a comparison) and which
    definition of collapse it tests.  Computed labels ("?") are checked by the chapters' own tests on
    doctored results (tests/test_chapter03.py, tests/test_chapter04.py)."""
    bad = [(line, kind, col) for m, line, kind, col in _claim_calls() if m == module and not (
        kind in (*C.KINDS, "?") and col in (*C.COLLAPSE_DEFINITIONS, "?"))]
    assert not bad, bad
