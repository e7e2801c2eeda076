"""The browser check of the built book: hand-made pages with one fault each, read statically and in Chromium."""
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from collapse_utils.tooling import htmlcheck

CHROMIUM = htmlcheck.find_chromium()
try:
    import playwright.sync_api  # noqa: F401 - the [book] extra drives the browser
except ImportError:
    CHROMIUM = None
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium or no Playwright on this machine")


def _mathjax_dir() -> Path | None:
    try:
        d = Path(metadata.distribution("sphinx-mathjax-offline").locate_file("sphinx-mathjax-offline/static/mathjax"))
    except metadata.PackageNotFoundError:
        return None
    return d if (d / "tex-chtml.js").is_file() else None


MATHJAX = _mathjax_dir()
PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title>
<script>window.MathJax = {{options: {{processHtmlClass: "math", ignoreHtmlClass: "document"}}}}</script>
<script defer src="{up}_static/mathjax/tex-chtml.js"></script></head>
<body><div class="document">{body}</div></body></html>"""
GOOD_BODY = """<h1 id="top">Title</h1>
<p>Inline <span class="math notranslate nohighlight">\\(x^2\\)</span> and code <code>$\\alpha$</code>.</p>
<div class="math notranslate nohighlight">\\[ \\int_0^1 f(x)\\,dx \\]</div>
<pre>print("$$ stays code")</pre>
<img src="{up}_images/dot.png" alt="dot">
<p><a href="other.html#results">results</a> <a href="#top">top</a> <a href="sub/">sub</a>
<a href="https://example.org/">outside</a> <a href="mailto:a@b.c">mail</a></p>"""


def _png(path: Path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (3, 2), (200, 30, 30)).save(path)


@pytest.fixture
def site(tmp_path):
    """A tiny good book: index.html, other.html (with #results), sub/index.html, an image, local MathJax."""
    root = tmp_path / "html"
    root.mkdir()
    _png(root / "_images" / "dot.png")
    if MATHJAX is not None:
        (root / "_static").mkdir()
        (root / "_static" / "mathjax").symlink_to(MATHJAX, target_is_directory=True)
    (root / "index.html").write_text(PAGE.format(up="", body=GOOD_BODY.format(up="")))
    (root / "other.html").write_text(PAGE.format(up="", body='<h2 id="results">Results</h2><p>ok</p>'))
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_text(PAGE.format(up="../", body='<p><a href="../index.html">home</a></p>'))
    return root


def _add_page(root: Path, body: str, name: str = "bad.html"):
    (root / name).write_text(PAGE.format(up="", body=body))


MODES = ["static", pytest.param("browser", marks=needs_chromium)]


def _check(root: Path, mode: str) -> list[str]:
    if mode == "browser" and MATHJAX is None:
        pytest.skip("sphinx-mathjax-offline is not installed: no local MathJax for the test pages")
    return htmlcheck.check(root, static=(mode == "static"))


@pytest.mark.parametrize("mode", MODES)
def test_good_site_passes(site, mode):
    assert _check(site, mode) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("body, expected", [
    ("<p>Display $$x^2$$ left raw</p>", "raw TeX in the rendered text: 'Display $$x^2$$ left raw'"),
    ("<p>inline $\\hat\\sigma^2_g$ from a glued value</p>", "raw TeX in the rendered text: 'inline $\\\\hat\\\\sigma^2_g$"),
    ("<p>an escaped \\(a+b\\) outside any .math element</p>", "raw TeX in the rendered text: 'an escaped \\\\(a+b\\\\)"),
    ('<img src="_images/missing.png">', "bad.html: image '_images/missing.png'"),
    ('<img src="_images/broken.png">', "bad.html: image '_images/broken.png'"),
    ('<a href="nowhere.html">x</a>', "bad.html: broken link 'nowhere.html': target file missing"),
    ('<a href="other.html#no-such-id">x</a>', "broken link 'other.html#no-such-id': no element with id 'no-such-id'"),
    ('<a href="#gone">x</a>', "broken link '#gone': no element with id 'gone' in bad.html"),
    ('<a href="../../etc/passwd">x</a>', "broken link '../../etc/passwd': points outside the built book"),
])
def test_each_fault_is_reported(site, mode, body, expected):
    (site / "_images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _add_page(site, body)
    found = _check(site, mode)
    assert len(found) == 1 and found[0].startswith("bad.html: ") and expected in found[0], found


@needs_chromium
def test_browser_sees_what_parsing_cannot(site):
    """Maths MathJax cannot typeset, a script error and a network request are only visible in the browser."""
    if MATHJAX is None:
        pytest.skip("no local MathJax")
    _add_page(site, '<p><span class="math">\\(x^1^2\\)</span> <span class="math">\\(\\nosuchmacro x\\)</span></p>'
                    '<script>undefinedFunction()</script>'
                    '<link rel="stylesheet" href="https://cdn.example.org/x.css">'
                    '<script>new WebSocket("ws://example.org/live")</script>')
    assert htmlcheck.check(site, static=True) == []
    found = htmlcheck.check(site)
    assert "bad.html: maths error: Double exponent: use braces to clarify" in found, found
    assert "bad.html: maths error: undefined macro \\nosuchmacro" in found, found
    assert any(x.startswith("bad.html: script error: ReferenceError") for x in found), found
    assert "bad.html: network request (the book must render offline): https://cdn.example.org/x.css" in found
    assert "bad.html: network request (the book must render offline): ws://example.org/live" in found


@needs_chromium
def test_browser_reports_maths_left_untypeset_without_mathjax(site):
    (site / "_static" / "mathjax").unlink(missing_ok=True)
    found = htmlcheck.check(site)
    assert "index.html: 2 maths not typeset by MathJax" in found
    assert any("tex-chtml.js" in x and "resource failed to load" in x for x in found), found


def test_redirect_page_target_is_checked(site):
    (site / "start.html").write_text('<meta http-equiv="Refresh" content="0; url=gone/intro.html" />')
    assert htmlcheck.check(site, static=True) == [
        "start.html: broken link 'gone/intro.html': target file missing"]


@needs_chromium
def test_browser_follows_redirects_and_a_failed_one_stays_on_its_page(site):
    """A redirect that lands passes; one that fails is said once, on its own page, not on the page after it."""
    (site / "a-redirect.html").write_text('<meta http-equiv="Refresh" content="0; url=other.html#results" />')
    (site / "start.html").write_text('<meta http-equiv="Refresh" content="0; url=gone/intro.html" />')
    found = _check(site, "browser")
    assert found == ["start.html: page did not load: did not redirect to gone/intro.html"], found


def test_cli_exit_status_and_lines(site, tmp_path, capsys):
    _add_page(site, '<a href="nowhere.html">x</a><p>$$y$$</p>')
    bad = subprocess.run([sys.executable, "-m", "collapse_utils.tooling.htmlcheck", "--static", "-q", str(site)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and len(bad.stdout.splitlines()) == 2, bad.stdout + bad.stderr
    assert all(line.startswith("bad.html: ") for line in bad.stdout.splitlines())
    assert htmlcheck.main(["--static", "-q", "--ignore", "nowhere", "--ignore", "raw TeX", str(site)]) == 0
    assert "2 ignored" in capsys.readouterr().err
    (site / "bad.html").unlink()
    assert htmlcheck.main(["--static", "-q", str(site)]) == 0
    assert htmlcheck.main(["--static", "-q", str(tmp_path / "no-build")]) == 2
    assert "build the book first" in capsys.readouterr().err
    assert htmlcheck.main(["--static", "-q", "--ignore", "(", str(site)]) == 2
    assert "bad --ignore pattern" in capsys.readouterr().err


@pytest.mark.slow
@needs_chromium
def test_built_book_passes_in_chromium(book_tmp, smoke_chapter):
    """The smoke book, built like test_book builds it (reused when that test already ran), opens clean."""
    html = book_tmp / "_build" / "html"
    if not (html / "index.html").is_file():
        from collapse_utils.tooling import config
        from collapse_utils.tooling.runner import write_scorecard

        for chapter in config.available_chapters():
            smoke_chapter(chapter)
        write_scorecard(book_tmp / "book" / "_generated")
        cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
               "build", str(book_tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    facts = htmlcheck.collect(html)
    assert len(facts) >= 8 and sum(f.typeset_math for f in facts) > 50
    assert sum(len(f.images) for f in facts) > 10
    assert htmlcheck.problems(facts, html) == []
