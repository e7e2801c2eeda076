"""The paper's convolutional VAE on MNIST and its recursion experiment (algorithms only; chapter 03's
page -- run plan, tables, figures, claims -- is :mod:`collapse_utils.chapters.vae_mnist`).

Model (the official notebook's, 647,081 parameters)::

    encoder  Conv(1->64, k4 s2 p1)-ReLU-Conv(64->128, k4 s2 p1)-ReLU-flatten(6272)
             -> Linear(6272->20) = mu,  Linear(6272->20) = log variance
    decoder  Linear(20->6272)-reshape(128, 7, 7)-ConvT(128->64, k4 s2 p1)-ReLU
             -ConvT(64->1, k4 s2 p1)-sigmoid

trained with the negative ELBO ``BCE(sum) + KL`` (beta = 1), Adam (lr 1e-3, weight decay
1e-5), batch 256.  Decoded samples are the decoder's sigmoid outputs, i.e. the Bernoulli
means in [0, 1] (grey-level images), exactly as the official notebook feeds them to the
next generation; nothing is binarised.

Generation 0 trains on real MNIST; every later generation is a fresh VAE trained on data
from the previous one, through :func:`collapse_utils.core.engine.run_recursion`.  Two readings of
"data from the previous one":

``fresh``  (the official code) new latents ``z ~ N(0, I)`` are decoded by the previous decoder
           for every batch, so the synthetic data are effectively unlimited.  ``sample()``
           returns a lazy :class:`FreshSynthetic` that the next fit consumes; only the
           ``replace`` regime can pass such an object through.
``fixed``  a finite synthetic data set of the training set's size is decoded once and used
           for every epoch; this is the engine's ordinary replace regime, and the only form
           ``keep_real(0.1)`` and ``accumulate`` can mix with real data.

Every generation gets the same number of gradient steps, ``epochs * ceil(n_train / batch)``;
under ``accumulate`` those steps range over a pool that grows by ``n_train`` per generation.

Measurement (the official notebook's, plus a classifier): each generation decodes ``n_eval``
latents from the prior; the *generation-0* encoder maps the images to latent means, whose
centre (norm of the mean vector) and spread (square root of the covariance trace) are recorded,
and whose densities give the KDE figures.  A small CNN trained once on real MNIST
(:mod:`collapse_utils.models.classifier`) labels the same images, giving the class distribution and
its entropy; the negative ELBO of the real test images measures what the model still knows
about real data.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.storage import state_record

__all__ = [
    "DIGITS",
    "VAE",
    "Decoder",
    "Encoder",
    "FreshSynthetic",
    "TrainConfig",
    "VAEExperiment",
    "code_key",
    "decode_prior",
    "encode_means",
    "latent_stats",
    "n_parameters",
    "neg_elbo",
    "resolve_device",
    "to_uint8",
    "train_vae",
    "vae_loss",
]

DIGITS = list(range(10))
IMAGE_SHAPE = (1, 28, 28)


# ---------------------------------------------------------------------------------------------
# The model (architecture exactly as in the official notebook)
# ---------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    def __init__(self, latent_dims: int = 20, capacity: int = 64):
        super().__init__()
        c = capacity
        self.conv1 = nn.Conv2d(1, c, kernel_size=4, stride=2, padding=1)  # 64 x 14 x 14
        self.conv2 = nn.Conv2d(c, 2 * c, kernel_size=4, stride=2, padding=1)  # 128 x 7 x 7
        self.fc_mu = nn.Linear(2 * c * 7 * 7, latent_dims)
        self.fc_logvar = nn.Linear(2 * c * 7 * 7, latent_dims)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x)).flatten(1)
        return self.fc_mu(x), self.fc_logvar(x)


class Decoder(nn.Module):
    def __init__(self, latent_dims: int = 20, capacity: int = 64):
        super().__init__()
        c = capacity
        self.capacity = c
        self.fc = nn.Linear(latent_dims, 2 * c * 7 * 7)
        self.conv2 = nn.ConvTranspose2d(2 * c, c, kernel_size=4, stride=2, padding=1)
        self.conv1 = nn.ConvTranspose2d(c, 1, kernel_size=4, stride=2, padding=1)

    def logits(self, z):
        x = self.fc(z).view(z.shape[0], 2 * self.capacity, 7, 7)
        return self.conv1(F.relu(self.conv2(x)))

    def forward(self, z):
        return torch.sigmoid(self.logits(z))


class VAE(nn.Module):
    """The official conv VAE. ``forward`` returns (reconstruction, mu, logvar); in eval mode z = mu."""

    def __init__(self, latent_dims: int = 20, capacity: int = 64):
        super().__init__()
        self.latent_dims = latent_dims
        self.capacity = capacity
        self.encoder = Encoder(latent_dims, capacity)
        self.decoder = Decoder(latent_dims, capacity)

    def forward(self, x, generator: torch.Generator | None = None):
        mu, logvar = self.encoder(x)
        if self.training:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decoder(z), mu, logvar


def vae_loss(recon, x, mu, logvar, beta: float = 1.0):
    """Negative ELBO summed over the batch: BCE(sum) + beta * KL(q(z|x) || N(0, I)), in nats."""
    bce = F.binary_cross_entropy(recon.reshape(len(x), -1), x.reshape(len(x), -1), reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + beta * kl


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Everything a VAE fit depends on (the paper's values are the defaults)."""

    latent_dims: int = 20
    capacity: int = 64
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    beta: float = 1.0
    device: str = "cpu"

    def key(self) -> str:
        """A short hash of the settings that change a fit's result (not the device)."""
        d = asdict(self)
        d.pop("device")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def new_model(self, seed: int) -> VAE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VAE(self.latent_dims, self.capacity)
        return model.to(self.device)


def _device_generator(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed) % (2**63))


def _batch_sizes(n: int, batch: int) -> list[int]:
    return [min(batch, n - i) for i in range(0, n, batch)]


@state_record  # engine data: stored in checkpoints as a state dict of tensors and plain values
@dataclass
class FreshSynthetic:
    """Unlimited synthetic data: the previous generation's decoder, decoded anew for every batch.

    This is what the official notebook does.  It quacks like a data set of ``n`` images
    (``shape``/``len``) so that the engine's ``replace`` regime can pass it to the next fit,
    which calls :meth:`batches`; ``n`` sets the epoch length (the real training set's size).
    """

    decoder_state: dict
    latent_dims: int
    capacity: int
    n: int
    seed: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *IMAGE_SHAPE)

    def __len__(self) -> int:
        return self.n

    def decoder(self, device: str = "cpu") -> Decoder:
        dec = Decoder(self.latent_dims, self.capacity)
        dec.load_state_dict(self.decoder_state)
        return dec.to(device).eval().requires_grad_(False)

    def batches(self, batch_size: int, steps: int, device: str = "cpu"):
        """Yield ``steps`` freshly decoded batches, epoch by epoch (the last batch of an epoch is partial)."""
        dec = self.decoder(device)
        gen = _device_generator(device, self.seed)
        sizes = _batch_sizes(self.n, batch_size)
        done = 0
        while done < steps:
            for b in sizes:
                if done == steps:
                    break
                with torch.no_grad():  # (never yield inside no_grad: it would leak into the consumer)
                    z = torch.randn((b, self.latent_dims), generator=gen, device=device)
                    xb = dec(z)
                yield xb
                done += 1

    def materialise(self, n: int | None = None, device: str = "cpu") -> torch.Tensor:
        """A fixed set of ``n`` (default ``self.n``) decoded images, e.g. for inspection."""
        return decode_prior(self.decoder(device), n or self.n, self.seed, self.latent_dims, device)


def _fixed_batches(x: torch.Tensor, batch_size: int, steps: int, gen: torch.Generator, device: str):
    """``steps`` batches of shuffled passes over x: one gather per pass, then contiguous slices."""
    n = len(x)
    x = x.to(device)  # once; a no-op on the CPU
    done = 0
    while done < steps:
        xs = x[torch.randperm(n, generator=gen).to(device)]
        for i in range(0, n, batch_size):
            if done == steps:
                break
            yield xs[i:i + batch_size]
            done += 1


def train_vae(data, cfg: TrainConfig, seed: int, steps: int | None = None, progress: bool = False,
              model: VAE | None = None, on_epoch=None) -> tuple[VAE, list[float]]:
    """Fit a fresh VAE (or continue ``model``) on ``data``; returns (model in eval mode, loss history).

    ``data``: real or decoded images (n, 1, 28, 28) in [0, 1], or a :class:`FreshSynthetic` that
    decodes new ones for every batch.  ``steps``: gradient steps (default ``cfg.epochs`` passes).
    Deterministic under ``seed``.  The history holds the mean negative ELBO per image of every
    epoch (:class:`_FitLog`, which also calls ``on_epoch(epoch, model)`` and draws the progress bar).
    """
    model = cfg.new_model(seed) if model is None else model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches, noise, log = _fit_streams(data, cfg, seed, steps, progress, on_epoch)
    model.train()
    for xb in batches:
        recon, mu, logvar = model(xb, noise)  # z = mu + sigma * eps, eps drawn from `noise`
        loss = vae_loss(recon, xb, mu, logvar, cfg.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.step(loss, len(xb), model)
    return model.eval(), log.close()


def _fit_streams(data, cfg: TrainConfig, seed: int, steps: int | None, progress: bool, on_epoch):
    """The random streams and bookkeeping of one fit: (batches, the reparameterisation noise, log).

    Batches are shuffled passes over a tensor, or freshly decoded images for a :class:`FreshSynthetic`;
    both streams derive from ``seed``, so a fit is deterministic."""
    dev = cfg.device
    per_epoch = math.ceil(len(data) / cfg.batch_size)
    steps = cfg.epochs * per_epoch if steps is None else int(steps)
    ss = np.random.SeedSequence([int(seed) % (2**63), 3]).generate_state(2)
    noise = _device_generator(dev, int(ss[0]))
    if isinstance(data, FreshSynthetic):
        batches = data.batches(cfg.batch_size, steps, dev)
    else:
        shuffle = torch.Generator().manual_seed(int(ss[1]))
        batches = _fixed_batches(data, cfg.batch_size, steps, shuffle, dev)
    return batches, noise, _FitLog(per_epoch, steps, dev, progress, on_epoch)


class _FitLog:
    """A fit's loss history: the mean negative ELBO per image of each block of ``per_epoch`` steps.

    Losses stay on the device until a block ends, so the training loop never waits on them per batch.
    ``on_epoch(epoch, model)`` runs after every block (epochs numbered from 1), e.g. to measure a
    learning curve; the model is put back into training mode afterwards."""

    def __init__(self, per_epoch: int, steps: int, device: str, progress: bool, on_epoch=None):
        from tqdm.auto import tqdm

        from ..core.progress import progress_disabled

        self.per_epoch, self.steps, self.device, self.on_epoch = per_epoch, steps, device, on_epoch
        self.history: list[float] = []
        self.running, self.seen, self.done = torch.zeros((), device=device), 0, 0
        self.bar = tqdm(total=steps, desc="VAE fit", leave=False, disable=progress_disabled(progress))

    def step(self, loss: torch.Tensor, n: int, model: nn.Module) -> None:
        self.done += 1
        self.running += loss.detach()
        self.seen += n
        if self.done % self.per_epoch == 0 or self.done == self.steps:
            self.history.append(float(self.running) / self.seen)
            self.running, self.seen = torch.zeros((), device=self.device), 0
            if self.on_epoch is not None:
                with torch.no_grad():
                    self.on_epoch(len(self.history), model)
                model.train()
        self.bar.update()

    def close(self) -> list[float]:
        self.bar.close()
        return self.history


@torch.no_grad()
def decode_prior(decoder: nn.Module, n: int, seed: int, latent_dims: int = 20, device: str = "cpu",
                 batch: int = 2048) -> torch.Tensor:
    """``n`` images decoded from z ~ N(0, I): the Bernoulli means (sigmoid outputs), on the CPU."""
    decoder.eval()
    gen = _device_generator(device, seed)
    out = []
    for b in _batch_sizes(n, batch):
        z = torch.randn((b, latent_dims), generator=gen, device=device)
        out.append(decoder(z).cpu())
    return torch.cat(out) if out else torch.empty((0, *IMAGE_SHAPE))


@torch.no_grad()
def encode_means(encoder: nn.Module, x: torch.Tensor, device: str = "cpu", batch: int = 2048) -> torch.Tensor:
    """Latent means mu(x) of images x under ``encoder``, on the CPU."""
    encoder.eval()
    return torch.cat([encoder(x[i:i + batch].to(device))[0].cpu() for i in range(0, len(x), batch)])


@torch.no_grad()
def neg_elbo(model: VAE, x: torch.Tensor, seed: int, beta: float = 1.0, device: str = "cpu",
             batch: int = 2048) -> float:
    """Single-sample estimate of the negative ELBO per image (nats) of images x; fixed noise."""
    gen = _device_generator(device, seed)
    model.train()  # sample z, as in training; there are no dropout/batch-norm layers
    total = 0.0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(device)
        recon, mu, logvar = model(xb, gen)
        total += float(vae_loss(recon, xb, mu, logvar, beta))
    model.eval()
    return total / len(x)


# ---------------------------------------------------------------------------------------------
# The experiment for the recursion engine
# ---------------------------------------------------------------------------------------------
def latent_stats(mu: np.ndarray) -> dict[str, float]:
    """Centre and spread of latent means (n, d): norm of the mean, sqrt(trace Cov), mean per-dim std."""
    mu = np.asarray(mu, dtype=np.float64)
    var = mu.var(axis=0, ddof=1)
    return {
        "latent_mean_norm": float(np.linalg.norm(mu.mean(axis=0))),
        "latent_spread": float(np.sqrt(var.sum())),
        "latent_std_mean": float(np.sqrt(var).mean()),
    }


class VAEExperiment:
    """fit / sample / evaluate for :func:`collapse_utils.core.engine.run_recursion` (one seed per run).

    ``classifier`` and ``test_x`` are the yardsticks of :meth:`evaluate` (class shares, real-test
    negative ELBO); ``steps`` fixes the gradient steps of every fit (default ``cfg.epochs`` passes).
    """

    batched = False

    def __init__(self, cfg: TrainConfig, synthetic: str = "fresh", classifier: nn.Module | None = None,
                 test_x: torch.Tensor | None = None, n_eval: int = 2000, n_grid: int = 16,
                 steps: int | None = None, name: str | None = None):
        if synthetic not in ("fresh", "fixed"):
            raise ValueError(f"synthetic must be 'fresh' or 'fixed', got {synthetic!r}")
        self.cfg = cfg
        self.synthetic = synthetic
        self.classifier = classifier
        self.test_x = test_x
        self.n_eval = int(n_eval)
        self.n_grid = int(n_grid)
        self.steps = steps
        self.name = name or f"vae_{synthetic}"
        self.reference: Encoder | None = None  # generation 0's encoder, the fixed yardstick
        self.artifacts: dict[int, dict] = {}
        self.histories: dict[int, list[float]] = {}

    # -- engine protocol ---------------------------------------------------------------------
    def fit(self, data, ctx) -> VAE:
        """A fresh VAE trained on this generation's data (real images at generation 0)."""
        model, self.histories[ctx.generation] = train_vae(data, self.cfg, ctx.int_seed("fit"), steps=self.steps)
        return model

    def sample(self, model: VAE, n: int, ctx):
        """The next generation's training data: ``n`` images decoded from z ~ N(0, I), either decoded
        anew for every batch (``fresh``, the official code) or decoded once (``fixed``)."""
        seed = ctx.int_seed("sample")
        if self.synthetic == "fresh":
            state = {k: v.detach().cpu().clone() for k, v in model.decoder.state_dict().items()}
            return FreshSynthetic(state, self.cfg.latent_dims, self.cfg.capacity, int(n), seed)
        return decode_prior(model.decoder, int(n), seed, self.cfg.latent_dims, self.cfg.device)

    def evaluate(self, model: VAE, comp, ctx) -> dict:
        dev = self.cfg.device
        if ctx.generation == 0 or self.reference is None:
            self.reference = copy.deepcopy(model.encoder).eval()
        x = decode_prior(model.decoder, self.n_eval, ctx.int_seed("eval"), self.cfg.latent_dims, dev)
        mu = encode_means(self.reference, x, dev).numpy()
        out = latent_stats(mu)
        art = {"latents": mu.astype(np.float32), "grid": to_uint8(x[: self.n_grid]),
               "history": self.histories.get(ctx.generation, [])}
        if self.test_x is not None:
            out["test_neg_elbo"] = neg_elbo(model, self.test_x, ctx.int_seed("eval") + 1, self.cfg.beta, dev)
            if ctx.generation == 0:
                art["real_latents"] = encode_means(self.reference, self.test_x, dev).numpy().astype(np.float32)
        if self.classifier is not None:
            from .classifier import class_entropy, predict_proba

            proba = predict_proba(self.classifier, x)
            labels = proba.argmax(1).numpy()
            frac = np.bincount(labels, minlength=10) / len(labels)
            out["class_entropy"] = float(class_entropy(frac))
            out["classifier_confidence"] = float(proba.max(1).values.mean())
            out.update({f"frac_{k}": float(frac[k]) for k in DIGITS})
            art["labels"] = labels.astype(np.int8)
        self.artifacts[ctx.generation] = art
        return out

    def get_state(self):
        ref = None if self.reference is None else {k: v.cpu() for k, v in self.reference.state_dict().items()}
        return {"reference": ref, "artifacts": self.artifacts, "histories": self.histories}

    def set_state(self, state) -> None:
        if not state:
            return
        if state.get("reference") is not None:
            enc = Encoder(self.cfg.latent_dims, self.cfg.capacity)
            enc.load_state_dict(state["reference"])
            self.reference = enc.to(self.cfg.device).eval()
        self.artifacts = dict(state.get("artifacts", {}))
        self.histories = dict(state.get("histories", {}))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [0, 1] (n, 1, 28, 28) as uint8 grey levels (n, 28, 28), e.g. for sample grids."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()


def resolve_device(device: str) -> str:
    """``"auto"``: CUDA where torch sees a device, else the CPU; other names pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def code_key() -> str:
    """A hash of this module's source: cached models and checkpoints written by other code are not reused."""
    import sys

    from ..core.engine import source_hash

    return source_hash(sys.modules[__name__], length=10)
