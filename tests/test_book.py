"""The whole book builds with -W -n from the chapters executed at the smoke preset."""
import re
import subprocess
import sys

import pytest

from collapse_utils.tooling import config


@pytest.mark.slow
def test_book_builds_clean(book_tmp, smoke_chapter):
    missing = [c.id for c in config.CHAPTERS.values() if c.id not in config.available_chapters()]
    assert not missing, f"chapters listed in _toc.yml without a notebook: {missing}"
    for chapter in config.available_chapters():
        smoke_chapter(chapter)
    from collapse_utils.tooling.runner import write_scorecard

    write_scorecard(book_tmp / "book" / "_generated")
    cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
           "build", str(book_tmp), "-W", "-n", "--keep-going"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    html = book_tmp / "_build" / "html"
    page = (html / "book" / "_generated" / "01_gaussian_theory.html").read_text()
    assert re.search(r"Fig\. 1\.9\b", page) and "produced with the" in page  # figures numbered per chapter
    score = (html / "book" / "_generated" / "scorecard.html").read_text()
    assert all(f"Chapter {int(c)}" in score for c in config.available_chapters())
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists()  # maths renders without a network
    assert "cdn.jsdelivr" not in page
    assert (html / "book" / "bibliography.html").exists()
