"""Study module of the chapter notebooks/01_gaussian_theory.md (see :mod:`collapse_utils.chapters`)."""
from __future__ import annotations

from ..gaussian import validate_params  # noqa: F401  (moved here by the chapter-contract refactor)
