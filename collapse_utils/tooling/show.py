"""The method on the page: display the source of the package's definitions in a chapter.

``cu.show(gmm.e_step, gmm.m_step)`` displays each definition's source, syntax-highlighted, with the
package file and line it comes from.  It is the code that runs -- read from the installed package
with :func:`inspect.getsource`, not a copy -- in the rendered book (the Markdown output becomes a
highlighted code block) and in Jupyter or Colab alike.  Each display carries, in its output
metadata, the definition's dotted name and the SHA-256 of the text shown, so the tests can check
that every executed page shows exactly the source of the package that produced it.
"""
from __future__ import annotations

import hashlib
import inspect
import re
import textwrap
from pathlib import Path

__all__ = ["Source", "show", "source_of", "METADATA_KEY"]

#: the output-metadata key of a displayed definition
METADATA_KEY = "collapse_utils_source"


def _dotted(obj) -> str:
    obj = inspect.unwrap(obj)
    return f"{obj.__module__}.{obj.__qualname__}"


def source_of(obj) -> str:
    """The dedented source text of a function, class or method of the package."""
    return textwrap.dedent(inspect.getsource(inspect.unwrap(obj)))


class Source:
    """One displayed definition (Markdown with a fenced code block; plain text elsewhere)."""

    def __init__(self, obj):
        self.obj = inspect.unwrap(obj)
        self.name = _dotted(self.obj)
        self.code = source_of(self.obj)
        file = Path(inspect.getsourcefile(self.obj) or "?")
        parts = file.parts
        # the path inside the package (never the build machine's absolute path)
        self.file = "/".join(parts[len(parts) - 1 - parts[::-1].index("collapse_utils"):]) \
            if "collapse_utils" in parts else file.name
        self.line = inspect.getsourcelines(self.obj)[1]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.code.encode()).hexdigest()

    def metadata(self) -> dict:
        return {METADATA_KEY: {"name": self.name, "file": self.file, "line": self.line, "sha256": self.sha256}}

    def _repr_markdown_(self):
        longest = max((len(m) for m in re.findall(r"`+", self.code)), default=0)
        fence = "`" * max(3, longest + 1)
        head = f"`{self.obj.__qualname__}` from `{self.file}`, line {self.line}:"
        md = f"{head}\n\n{fence}python\n{self.code.rstrip()}\n{fence}\n"
        return md, self.metadata()

    def __repr__(self) -> str:
        return f"# {self.name} ({self.file}, line {self.line})\n{self.code}"


def show(*objs) -> None:
    """Display the source of each definition, in order (see the module docstring)."""
    from IPython.display import display

    for obj in objs:
        display(Source(obj))
