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
