"""A small MNIST classifier, trained once on real data, that labels generated digits.

It is not part of the paper: chapter 03 uses it to ask *which* digits a recursively trained
VAE stops producing.  The network is deliberately small so that one epoch on the 60,000
real training images takes seconds on two CPU cores and reaches about 98-99 % test accuracy:

``Conv(1->16, 5, pad 2)-ReLU-MaxPool(2) -> Conv(16->32, 5, pad 2)-ReLU-MaxPool(2)
-> Linear(1568->64)-ReLU -> Linear(64->10)``

Training is deterministic under its seed, so the weights are a function of the
configuration; :func:`load_or_train` caches them (with their test accuracy) in the data
cache and trains only when no cached copy exists.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ClassifierConfig",
    "MnistCNN",
    "class_entropy",
    "evaluate_accuracy",
    "load_or_train",
    "predict_proba",
    "train_classifier",
]

ARCH_VERSION = 1  # bump when the architecture or training recipe changes (invalidates caches)


class MnistCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@dataclass(frozen=True)
class ClassifierConfig:
    epochs: int = 1
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    n_train: int | None = None  # None: all 60,000 training images

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "arch": ARCH_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train_classifier(x: torch.Tensor, y: torch.Tensor, cfg: ClassifierConfig = ClassifierConfig(),
                     progress: bool = False) -> MnistCNN:
    """Adam with a cosine-decayed learning rate over ``cfg.epochs`` shuffled passes; deterministic."""
    from tqdm.auto import tqdm

    from ..core.progress import progress_disabled

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = MnistCNN()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n = len(x)
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    bar = tqdm(total=steps, desc="classifier", leave=False, disable=progress_disabled(progress))
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        xs, ys = x[perm], y[perm]
        for i in range(0, n, cfg.batch_size):
            loss = F.cross_entropy(model(xs[i:i + cfg.batch_size]), ys[i:i + cfg.batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch: int = 2000) -> torch.Tensor:
    """Class probabilities (n, 10) for images (n, 1, 28, 28) in [0, 1]."""
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([F.softmax(model(x[i:i + batch].to(dev)), 1).cpu() for i in range(0, len(x), batch)])


def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict_proba(model, x).argmax(1) == y).float().mean())


def class_entropy(fractions: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in bits of class fractions (log2(10) = 3.32 bits for ten equal classes)."""
    f = np.asarray(fractions, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(f > 0, -f * np.log2(np.where(f > 0, f, 1.0)), 0.0)
    return terms.sum(axis=axis)


def _default_cache() -> Path:
    from ..core.data import cache_dir

    return cache_dir() / "models"


def load_or_train(cfg: ClassifierConfig = ClassifierConfig(), cache: str | os.PathLike | None | bool = None,
                  data_path=None, progress: bool = True, download: bool = False) -> tuple[MnistCNN, float]:
    """(classifier, test accuracy on the 10,000 real test images); trained once, then cached.

    ``cache``: a folder (default: the data cache's ``models/``), or False to always train.
    A cached file records the configuration it was trained with and is ignored if that differs.
    """
    from .mnist import mnist_tensor

    folder = None if cache is False else Path(cache) if cache not in (None, True) else _default_cache()
    from ..core.parallel import thread_tag
    from ..core.storage import read_cache

    # the thread count is part of the key: weights trained with other threads differ in the last bits
    fname = folder / f"mnist_cnn-{cfg.key()}-{thread_tag()}.pt" if folder else None

    def load(path):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("config") != json.dumps(asdict(cfg), sort_keys=True):
            raise ValueError("trained with another configuration")
        model = MnistCNN()
        model.load_state_dict(blob["state_dict"])
        return model.eval(), float(blob["test_accuracy"])

    hit = read_cache(fname, load, "cached classifier") if fname is not None else None
    if hit is not None:
        return hit
    x, y = mnist_tensor("train", cfg.n_train, seed=cfg.seed, path=data_path, download=download)
    model = train_classifier(x, y, cfg, progress=progress)
    xt, yt = mnist_tensor("test", path=data_path, download=download)
    acc = evaluate_accuracy(model, xt, yt)
    if fname is not None:
        from ..core.storage import atomic_write_bytes

        buf = io.BytesIO()
        torch.save({"state_dict": model.state_dict(), "test_accuracy": acc,
                    "config": json.dumps(asdict(cfg), sort_keys=True)}, buf)
        atomic_write_bytes(fname, buf.getvalue())
    return model, acc
