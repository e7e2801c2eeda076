"""Study module of the chapter notebooks/03_vae_mnist.md (see :mod:`collapse_utils.chapters`)."""
from __future__ import annotations

from ..vae import check_inputs, validate_params  # noqa: F401  (moved here by the chapter-contract refactor)
