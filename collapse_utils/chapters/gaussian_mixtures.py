"""Study module of the chapter notebooks/02_gaussian_mixtures.md (see :mod:`collapse_utils.chapters`)."""
from __future__ import annotations

from ..gmm import validate_params  # noqa: F401  (moved here by the chapter-contract refactor)
