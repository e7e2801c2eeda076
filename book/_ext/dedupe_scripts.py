"""A Sphinx hook: each page lists a script once.

sphinx-thebe adds its inline configuration script once per read of the sources, so a page could carry
it twice, and the browser then reports "Identifier 'THEBE_JS_URL' has already been declared"
(found by ``python -m collapse_utils.tooling.htmlcheck``).
"""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        # the same inline script may come once with filename None and once with "" (sphinx-thebe)
        key = (getattr(script, "filename", None) or "", str(getattr(script, "attributes", {}).get("body", "")))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    if "script_files" in context:
        context["script_files"][:] = kept


def setup(app):
    app.connect("html-page-context", _dedupe)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
