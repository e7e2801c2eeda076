"""Study module of the chapter notebooks/04_language_models.md (see :mod:`collapse_utils.chapters`)."""
from __future__ import annotations

from ..lm import check_inputs, validate_params  # noqa: F401  (moved here by the chapter-contract refactor)
