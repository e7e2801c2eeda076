"""Seeding: one integer seed reproduces every random draw.

Generators are derived from ``(seed, generation, stream)`` through numpy's
``SeedSequence`` instead of being threaded through a run, so generation ``g``
of a resumed run draws exactly what an uninterrupted run would have drawn.
"""
from __future__ import annotations

import os
import random

import numpy as np

__all__ = ["seed_everything", "make_rng", "derive_seed"]

#: named random streams, so that e.g. the regime's choice of real samples never
#: shifts the model's own sampling when a regime changes
STREAMS = {"fit": 0, "sample": 1, "regime": 2, "data": 3, "eval": 4}


def _key(seed: int, generation: int, stream: str | int) -> list[int]:
    if isinstance(stream, str):
        if stream not in STREAMS:
            raise ValueError(f"unknown random stream {stream!r}; choose one of {sorted(STREAMS)}")
        stream = STREAMS[stream]
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return [int(seed), int(generation), int(stream)]


def make_rng(seed: int, generation: int = 0, stream: str | int = "data") -> np.random.Generator:
    """A numpy Generator determined by (seed, generation, stream) alone."""
    return np.random.default_rng(np.random.SeedSequence(_key(seed, generation, stream)))


def derive_seed(seed: int, generation: int = 0, stream: str | int = "fit") -> int:
    """A 63-bit integer seed for libraries that want an int (torch, sklearn)."""
    ss = np.random.SeedSequence(_key(seed, generation, stream))
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], dtype=np.uint64))


def seed_everything(seed: int, deterministic_torch: bool = True) -> None:
    """Seed python, numpy's legacy global state and torch (if installed)."""
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return
    torch.manual_seed(seed)
    if deterministic_torch:
        torch.use_deterministic_algorithms(True, warn_only=True)
