"""Progress bars: one helper for every long loop of the book."""
from __future__ import annotations

import os

__all__ = ["progress_disabled", "progress_bar"]


def progress_disabled(progress: bool = True) -> bool:
    """True when progress bars are off: asked for, or TQDM_DISABLE set (the runner sets it for rendered pages)."""
    return (not progress) or os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes")


def progress_bar(iterable=None, *, progress: bool = True, **kwargs):
    """A tqdm bar (notebook widget or text) that honours :func:`progress_disabled`."""
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=progress_disabled(progress) or kwargs.pop("disable", False), **kwargs)
