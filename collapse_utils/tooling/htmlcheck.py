"""Open every page of a built book in headless Chromium and report what a reader would find broken.

    python -m collapse_utils.tooling.htmlcheck _build/html            # exit 1, one line per problem
    python -m collapse_utils.tooling.htmlcheck _build/html --static   # no browser: the checks Python can do alone

The system's Chromium (``$CHROMIUM``, else ``chromium`` on PATH; Playwright never downloads a browser here)
is driven by Playwright's Python API (the ``[book]`` extra; Colab never needs it).  Every http(s)/ws request
is blocked (a route aborts it) and reported: the book must render from its own files.

What the browser establishes, per page: the page loads; no script throws; no local resource (script,
stylesheet, font, image) fails to load; no request leaves the machine; MathJax typesets every ``.math``
element without a TeX error and no raw TeX delimiter (``$$``, ``\\(``, ``\\[``, ``\\begin{``, ``$..\\cmd..$``)
is left in the rendered text; every ``<img>`` is complete with ``naturalWidth > 0``. Python then checks,
from the hrefs and element ids the browser reported, that every local link's target file exists inside
the build and that every ``#fragment`` names an element of the target page.

``--static`` (and the unit tests on machines without Chromium or Playwright) gathers the same facts by parsing the HTML
files: raw TeX outside the ``.math`` elements MathJax would process, image files that exist and decode,
and the same link rules; it cannot say whether MathJax ran or scripts failed.
"""
from __future__ import annotations

import argparse
import html.parser
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

SKIP_DIRS = {"_static", "_sources", "_images", "_downloads"}
# raw TeX that MathJax should have consumed: display/inline delimiters, environments, $..\cmd..$
RAW_TEX = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$[^$\n]{0,200}?\\[A-Za-z]+[^$\n]{0,200}?\$")
# text inside these elements is code or machinery, never prose MathJax should typeset
NON_PROSE = ("script", "style", "pre", "code", "textarea", "noscript", "template")
BROWSER_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PAGE_TIMEOUT = 60.0
MAX_RAW = 5  # raw-TeX passages said per page; the rest are counted


@dataclass
class PageFacts:
    """What was found on one page, by the browser or by the static parser."""

    page: Path
    load_error: str | None = None
    texts: list[str] = field(default_factory=list)  # rendered prose text (code, scripts, typeset maths excluded)
    typeset_math: int = 0  # .math elements MathJax typeset (browser only)
    untypeset_math: int = 0  # .math elements without MathJax output (browser only)
    math_errors: list[str] = field(default_factory=list)  # TeX errors MathJax rendered
    images: list[tuple[str, bool, str]] = field(default_factory=list)  # (src, loaded, why not)
    hrefs: list[str] = field(default_factory=list)  # <a href> as written in the page
    ids: set[str] = field(default_factory=set)  # element ids and <a name> anchors
    refresh: str | None = None  # a redirect page's target, as written
    external: list[str] = field(default_factory=list)  # requests that would leave the machine
    failed: list[str] = field(default_factory=list)  # local resources that failed to load
    js_errors: list[str] = field(default_factory=list)  # uncaught exceptions


def find_pages(root: Path) -> list[Path]:
    """Every reader-facing .html page of a Sphinx build (theme templates and copied sources left out)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*.html") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]))


# ---------------------------------------------------------------- static facts (no browser)
class _StaticParser(html.parser.HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # (tag, is a .math element)
        self.texts: list[str] = []
        self.imgs: list[str] = []
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self.refresh: str | None = None  # <meta http-equiv="refresh"> target

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "a" and a.get("href") is not None:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh":
            m = re.search(r"url\s*=\s*['\"]?([^'\";]+)", a.get("content") or "", re.I)
            if m:
                self.refresh = m.group(1).strip()
                self.hrefs.append(self.refresh)
        if tag not in self.VOID:
            self.stack.append((tag, "math" in (a.get("class") or "").split()))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):  # tolerate unclosed elements
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        if not data.strip() or any(t in NON_PROSE or m for t, m in self.stack):
            return
        self.texts.append(data)


def _image_decodes(path: Path) -> str:
    """'' when the file is an image a browser can show, else why not."""
    if not path.is_file():
        return "file missing"
    if path.suffix.lower() == ".svg":
        head = path.read_bytes()[:2048].lower()
        return "" if b"<svg" in head else "not an SVG document"
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - any decoding failure is the finding
        return f"does not decode ({type(e).__name__})"
    return ""


def static_facts(page: Path) -> PageFacts:
    """The facts Python can gather from the HTML file itself."""
    page = Path(page)
    facts = PageFacts(page)
    try:
        text = page.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        facts.load_error = str(e)
        return facts
    p = _StaticParser()
    p.feed(text)
    p.close()
    facts.texts, facts.hrefs, facts.ids, facts.refresh = p.texts, p.hrefs, p.ids, p.refresh
    for src in p.imgs:
        if src.startswith("data:"):
            facts.images.append((src[:40], True, ""))
            continue
        parts = urlsplit(src)
        if parts.scheme or parts.netloc:
            facts.images.append((src, False, "not a local file"))
            continue
        why = _image_decodes(page.parent / url2pathname(unquote(parts.path))) if parts.path else "empty src"
        facts.images.append((src, not why, why))
    return facts


# ---------------------------------------------------------------- browser facts
def find_chromium() -> str | None:
    """The Chromium executable: $CHROMIUM if set, else the first browser on PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"]) or None
    for name in BROWSER_CANDIDATES:
        if shutil.which(name):
            return shutil.which(name)
    return None


class BrowserError(RuntimeError):
    pass


#: Chromium flags beside Playwright's own: no GPU, and no name resolves, so nothing can leave the machine
#: even where a request slipped past the route that blocks http(s)
FLAGS = ["--disable-gpu", "--allow-file-access-from-files", "--host-resolver-rules=MAP * ~NOTFOUND"]
EXTERNAL = re.compile(r"^(https?|wss?)://", re.I)


class Chromium:
    """A headless Chromium (the system's, never a downloaded one) driven by Playwright; every http(s)
    request is aborted by a route and noted."""

    def __init__(self, executable: str):
        try:
            from playwright.sync_api import Error, sync_playwright
        except ImportError:
            raise BrowserError("the browser check needs Playwright (pip install playwright, or the [book] extra); "
                               "--static checks without a browser") from None
        self.Error = Error
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=executable, args=FLAGS, timeout=PAGE_TIMEOUT * 1000)
        except Error as e:
            self._pw.stop()
            raise BrowserError(f"cannot start {executable}: {e.message.splitlines()[0]}") from None
        self.context = self.browser.new_context()
        self.context.set_default_timeout(PAGE_TIMEOUT * 1000)
        self.context.route(EXTERNAL, self._block)
        self.tab = self.context.new_page()  # one tab for every page: a new tab per page costs ~0.3 s more each
        self.external: list[str] = []  # what the current page asked of the network (blocked)
        self.failed: list[tuple[str, str]] = []  # (url, why) of its requests that failed
        self.js_errors: list[str] = []  # its uncaught exceptions
        self.tab.on("requestfailed", self._failed)
        self.tab.on("pageerror", lambda e: self.js_errors.append(e.stack or f"{e.name}: {e.message}"))
        self.tab.on("websocket", lambda ws: self.external.append(ws.url))

    def _block(self, route):
        self.external.append(route.request.url)
        route.abort("blockedbyclient")

    def _failed(self, request):
        # a page's own navigation is said as a load or redirect failure (its event can come in late, on
        # the next page); subresources and frames are what fails to load
        # a request the browser cancelled ("net::ERR_ABORTED": a MathJax font still loading when the check moves
        # to the next page, whose record it then lands in; seen in CI under load) is not a missing file, which
        # a file:// book reports as net::ERR_FILE_NOT_FOUND
        if request.failure == "net::ERR_ABORTED":
            return
        if not (request.is_navigation_request() and request.frame.parent_frame is None):
            self.failed.append((request.url, request.failure or "?"))

    def forget(self):
        """Start the record of a new page."""
        for record in (self.external, self.failed, self.js_errors):
            record.clear()

    def close(self):
        for step in (self.context.close, self.browser.close, self._pw.stop):
            try:
                step()
            except Exception:  # noqa: BLE001 - closing a browser that already went away
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# run in the page after its load event: wait for MathJax and images, then report what the reader sees
_COLLECT_JS = r"""
async ([limitMs, skipTags]) => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const t0 = Date.now();
  const wantsMath = !!document.querySelector('script[src*="mathjax" i]');
  if (wantsMath) {
    // the script is deferred, so by the load event MathJax.startup exists unless the script failed
    while (!(window.MathJax && MathJax.startup && MathJax.startup.promise) && Date.now() - t0 < 2000) await sleep(50);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) { try { await MathJax.startup.promise; } catch (e) {} }
  }
  const imgs = Array.from(document.images);
  imgs.forEach(img => { img.loading = 'eager'; });
  await Promise.all(imgs.map(img => img.complete ? null : new Promise(r => {
    img.addEventListener('load', r); img.addEventListener('error', r); setTimeout(r, limitMs); })));
  const skip = new Set(skipTags);
  const texts = [];
  const walker = document.createTreeWalker(document.body || document.documentElement, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.data.trim()) continue;
    let e = n.parentElement, keep = true;
    for (; e; e = e.parentElement) { const t = e.tagName.toLowerCase(); if (skip.has(t) || t === 'mjx-container') { keep = false; break; } }
    if (keep) texts.push(n.data);
  }
  const maths = Array.from(document.querySelectorAll('.math'));
  return {
    texts,
    mathjax: !!(window.MathJax && MathJax.version),
    typeset: maths.filter(m => m.querySelector('mjx-container')).length,
    untypeset: maths.filter(m => !m.querySelector('mjx-container') && m.tagName.toLowerCase() !== 'mjx-container').length,
    mathErrors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.getAttribute('data-mjx-error') || e.textContent)
      // MathJax's noundefined extension shows an unknown macro as red text instead of an error
      .concat(Array.from(document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]'))
              .filter(e => e.textContent.startsWith('\\')).map(e => 'undefined macro ' + e.textContent)),
    images: imgs.map(img => [img.getAttribute('src') || '', img.src, img.complete && img.naturalWidth > 0]),
    hrefs: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id)
          .concat(Array.from(document.querySelectorAll('a[name]')).map(a => a.getAttribute('name'))),
  };
}
"""


def _follow_redirect(browser: Chromium, page: Path, facts: PageFacts) -> PageFacts:
    """Open a redirect page in a tab of its own (closed after: a failed redirect settles late) and wait
    until the browser lands on its target."""
    want, _, _ = _target(page.parent, page, facts.refresh)
    tab = browser.context.new_page()
    try:
        tab.goto(page.as_uri())
        tab.wait_for_url(lambda url: bool(want) and url.split("#")[0] == want.as_uri(), timeout=10_000)
    except browser.Error:
        facts.load_error = f"did not redirect to {facts.refresh}"
    finally:
        tab.close()
    return facts


def browser_facts(browser: Chromium, page: Path) -> PageFacts:
    """Open one page in the browser and collect what the reader would meet."""
    page = Path(page).resolve()
    facts = PageFacts(page)
    redirect = static_facts(page)
    if redirect.refresh and not redirect.load_error:  # a redirect page: the browser must land on its target
        return _follow_redirect(browser, page, redirect)
    tab = browser.tab
    browser.forget()
    try:
        tab.goto(page.as_uri(), wait_until="load")
    except browser.Error as e:
        facts.load_error = e.message.splitlines()[0].removeprefix("Page.goto: ")
        return facts
    try:
        v = tab.evaluate(_COLLECT_JS, [int(PAGE_TIMEOUT * 1000 / 2), list(NON_PROSE)])
    except browser.Error as e:
        facts.load_error = f"checker script failed: {e.message.splitlines()[0]}"
        return facts
    facts.texts = v["texts"]
    facts.typeset_math, facts.untypeset_math = v["typeset"], v["untypeset"]
    facts.math_errors = v["mathErrors"]
    facts.images = [(src, ok, "" if ok else "not loaded by the browser (naturalWidth 0)"
                     + (", remote image (the check runs offline)" if urlsplit(src).scheme in ("http", "https") else ""))
                    for src, _, ok in v["images"]]
    failed_images = {url for _, url, ok in v["images"] if not ok}
    facts.hrefs, facts.ids = v["hrefs"], set(v["ids"])
    facts.external, facts.js_errors = list(browser.external), list(browser.js_errors)
    facts.failed = [f"{url} ({why})" for url, why in browser.failed  # images are said once, above
                    if urlsplit(url).scheme == "file" and url not in failed_images]
    if facts.untypeset_math and not v["mathjax"]:
        facts.math_errors.append("MathJax did not load, so nothing was typeset")
    return facts


# ---------------------------------------------------------------- the rules
def _snippet(text: str, m: re.Match) -> str:
    s = text[max(0, m.start() - 30): m.end() + 30]
    return " ".join(s.split())


def _target(root: Path, page: Path, href: str) -> tuple[Path | None, str, str]:
    """(target file or None when not local, fragment, problem with the path itself)."""
    parts = urlsplit(href)
    if parts.scheme not in ("", "file") or parts.netloc:
        return None, "", ""
    frag = unquote(parts.fragment)
    if not parts.path:
        return page, frag, ""
    path = Path(url2pathname(unquote(parts.path)))
    target = (path if parts.scheme == "file" else page.parent / path).resolve()
    if target.is_dir():
        target = target / "index.html"
    if not target.is_relative_to(root):
        return target, frag, "points outside the built book"
    if not target.exists():
        return target, frag, "target file missing"
    return target, frag, ""


def problems(facts: list[PageFacts], root: Path) -> list[str]:
    """One line per problem found in the pages' facts."""
    root = Path(root).resolve()
    ids = {f.page.resolve(): f.ids for f in facts}
    out: list[str] = []
    for f in facts:
        where = f.page.resolve().relative_to(root).as_posix() if f.page.resolve().is_relative_to(root) else str(f.page)
        if f.load_error:
            out.append(f"{where}: page did not load: {f.load_error}")
            continue
        raw = [_snippet(t, m) for t in f.texts if (m := RAW_TEX.search(t))]
        for snippet in raw[:MAX_RAW]:
            out.append(f"{where}: raw TeX in the rendered text: {snippet!r}")
        if len(raw) > MAX_RAW:
            out.append(f"{where}: ... and {len(raw) - MAX_RAW} more text passages with raw TeX")
        if f.untypeset_math:
            out.append(f"{where}: {f.untypeset_math} maths not typeset by MathJax")
        for e in f.math_errors:
            out.append(f"{where}: maths error: {e}")
        for src, ok, why in f.images:
            if not ok:
                out.append(f"{where}: image {src!r}: {why}")
        image_urls = {src for src, ok, _ in f.images if not ok}
        for url in f.external:
            if url in image_urls:
                continue  # already said as a failed image
            out.append(f"{where}: network request (the book must render offline): {url}")
        for url in f.failed:
            out.append(f"{where}: resource failed to load: {url}")
        for e in f.js_errors:
            out.append(f"{where}: script error: {e.splitlines()[0] if e else e}")
        for href in dict.fromkeys(f.hrefs):
            target, frag, why = _target(root, f.page.resolve(), href)
            if target is None:
                continue
            if why:
                out.append(f"{where}: broken link {href!r}: {why}")
                continue
            if frag and target.suffix == ".html":
                known = ids.get(target)
                if known is None:
                    known = static_facts(target).ids
                    ids[target] = known
                if frag not in known:
                    out.append(f"{where}: broken link {href!r}: no element with id {frag!r} in "
                               f"{target.relative_to(root).as_posix()}")
    return out


def collect(root: Path, static: bool = False, chromium: str | None = None, progress=None) -> list[PageFacts]:
    """The facts of every page under root, from Chromium (default) or from the HTML files (static)."""
    root = Path(root).resolve()
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"{root} has no index.html: build the book first (make book)")
    pages = find_pages(root)
    if static:
        return [static_facts(p) for p in pages]
    exe = chromium or find_chromium()
    if not exe:
        raise FileNotFoundError("no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/it); "
                                "--static checks without a browser")
    facts = []
    with Chromium(exe) as browser:
        for i, p in enumerate(pages, 1):
            if progress:
                progress(f"[{i}/{len(pages)}] {p.relative_to(root).as_posix()}")
            facts.append(browser_facts(browser, p))
    return facts


def check(root: Path, static: bool = False, chromium: str | None = None, progress=None) -> list[str]:
    """Check every page under root; returns one line per problem."""
    return problems(collect(root, static, chromium, progress), root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m collapse_utils.tooling.htmlcheck", description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="the built HTML folder, e.g. _build/html")
    ap.add_argument("--static", action="store_true", help="no browser: parse the HTML files only")
    ap.add_argument("--chromium", help="the Chromium executable (default: $CHROMIUM, else chromium on PATH)")
    ap.add_argument("--ignore", action="append", default=[], metavar="REGEX",
                    help="drop problem lines matching REGEX (repeatable), for a known upstream fault")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    a = ap.parse_args(argv)
    say = None if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        ignore = [re.compile(r) for r in a.ignore]
    except re.error as e:
        print(f"htmlcheck: bad --ignore pattern: {e}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        facts = collect(a.root, static=a.static, chromium=a.chromium, progress=say)
        found = problems(facts, a.root)
    except (FileNotFoundError, BrowserError) as e:
        print(f"htmlcheck: {e}", file=sys.stderr)
        return 2
    dropped = [x for x in found if any(r.search(x) for r in ignore)]
    found = [x for x in found if x not in dropped]
    for line in found:
        print(line)
    how = "parsed" if a.static else "opened in Chromium"
    maths = "" if a.static else f"{sum(f.typeset_math for f in facts)} maths typeset, "
    print(f"htmlcheck: {len(facts)} pages {how} in {time.monotonic() - t0:.1f}s ({maths}"
          f"{sum(len(f.images) for f in facts)} images, {sum(len(set(f.hrefs)) for f in facts)} links), "
          f"{len(found)} problems"
          + (f" ({len(dropped)} ignored)" if dropped else ""), file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
