"""Chapter 03: the paper's convolutional VAE on MNIST, trained recursively on its own samples.

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
from the previous one, through :func:`collapse_utils.engine.run_recursion`.  Two readings of
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
(:mod:`collapse_utils.classifier`) labels the same images, giving the class distribution and
its entropy; the negative ELBO of the real test images measures what the model still knows
about real data.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DIGITS",
    "VAE",
    "Condition",
    "Decoder",
    "Encoder",
    "FreshSynthetic",
    "Study",
    "TrainConfig",
    "VAEExperiment",
    "bookkeeping_table",
    "class_fractions",
    "decode_prior",
    "encode_means",
    "fading_digits",
    "findings",
    "latent_stats",
    "load_classifier",
    "load_data",
    "n_parameters",
    "neg_elbo",
    "parse_condition",
    "plot_class_distribution",
    "plot_class_entropy",
    "plot_latent_kde",
    "plot_latent_norm_kde",
    "plot_latent_spread",
    "plot_real_digits",
    "plot_sample_grids",
    "plot_test_elbo",
    "resolve_device",
    "run_study",
    "save_artifacts",
    "seed_matrix",
    "setup_torch",
    "spread_table",
    "summary",
    "train_config",
    "train_vae",
    "vae_loss",
    "validate_params",
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
              model: VAE | None = None) -> tuple[VAE, list[float]]:
    """Fit a fresh VAE (or continue ``model``) on ``data``; returns (model in eval mode, loss history).

    ``data``: a float tensor (n, 1, 28, 28) in [0, 1] or a :class:`FreshSynthetic`.
    ``steps``: gradient steps (default: ``cfg.epochs`` passes over ``data``).
    The history holds the mean negative ELBO per image of each block of ``ceil(n / batch)`` steps
    (one epoch); losses stay on the device until a block ends, so the loop never waits on them
    per batch.  Deterministic under ``seed``.
    """
    from tqdm.auto import tqdm

    from .engine import progress_disabled

    dev = cfg.device
    n = len(data)
    per_epoch = math.ceil(n / cfg.batch_size)
    steps = cfg.epochs * per_epoch if steps is None else int(steps)
    model = cfg.new_model(seed) if model is None else model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ss = np.random.SeedSequence([int(seed) % (2**63), 3]).generate_state(2)
    noise = _device_generator(dev, int(ss[0]))
    if isinstance(data, FreshSynthetic):
        batches = data.batches(cfg.batch_size, steps, dev)
    else:
        shuffle = torch.Generator().manual_seed(int(ss[1]))
        batches = _fixed_batches(data, cfg.batch_size, steps, shuffle, dev)
    model.train()
    history, running, seen = [], torch.zeros((), device=dev), 0
    bar = tqdm(total=steps, desc="VAE fit", leave=False, disable=progress_disabled(progress))
    for step, xb in enumerate(batches, 1):
        recon, mu, logvar = model(xb, noise)
        loss = vae_loss(recon, xb, mu, logvar, cfg.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.detach()
        seen += len(xb)
        if step % per_epoch == 0 or step == steps:
            history.append(float(running) / seen)
            running, seen = torch.zeros((), device=dev), 0
        bar.update()
    bar.close()
    return model.eval(), history


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
    """fit / sample / evaluate for :func:`collapse_utils.engine.run_recursion` (one seed per run)."""

    batched = False

    def __init__(self, cfg: TrainConfig, synthetic: str = "fresh", classifier: nn.Module | None = None,
                 test_x: torch.Tensor | None = None, n_eval: int = 2000, n_grid: int = 16,
                 gen0_cache: str | Path | None = None, steps: int | None = None, name: str | None = None):
        if synthetic not in ("fresh", "fixed"):
            raise ValueError(f"synthetic must be 'fresh' or 'fixed', got {synthetic!r}")
        self.cfg = cfg
        self.synthetic = synthetic
        self.classifier = classifier
        self.test_x = test_x
        self.n_eval = int(n_eval)
        self.n_grid = int(n_grid)
        self.gen0_cache = Path(gen0_cache) if gen0_cache else None
        self.steps = steps
        self.name = name or f"vae_{synthetic}"
        self.reference: Encoder | None = None  # generation 0's encoder, the fixed yardstick
        self.artifacts: dict[int, dict] = {}
        self.histories: dict[int, list[float]] = {}

    # -- engine protocol ---------------------------------------------------------------------
    def fit(self, data, ctx) -> VAE:
        seed = ctx.int_seed("fit")
        cached = self._gen0_path(data, ctx) if ctx.generation == 0 else None
        if cached is not None:
            from .storage import read_cache

            def load(path):
                blob = torch.load(path, map_location=self.cfg.device, weights_only=True)
                m = self.cfg.new_model(seed)
                m.load_state_dict(blob["state_dict"])
                return m, list(blob["history"])

            hit = read_cache(cached, load, "cached generation-0 VAE")
            if hit is not None:
                self.histories[0] = hit[1]
                return hit[0].eval()
        model, hist = train_vae(data, self.cfg, seed, steps=self.steps)
        self.histories[ctx.generation] = hist
        if cached is not None:
            from .storage import atomic_write_bytes

            buf = io.BytesIO()
            torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "history": hist}, buf)
            atomic_write_bytes(cached, buf.getvalue())
        return model

    def sample(self, model: VAE, n: int, ctx):
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
        art = {"latents": mu.astype(np.float32), "grid": _to_uint8(x[: self.n_grid]),
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

    # -- helpers -------------------------------------------------------------------------------
    def _gen0_path(self, data, ctx) -> Path | None:
        """Generation 0 is the same fit in every condition (same seed, same real data): cache it."""
        if self.gen0_cache is None or not isinstance(data, torch.Tensor):
            return None
        h = hashlib.sha256(data.numpy().tobytes()).hexdigest()[:10]
        steps = self.steps or self.cfg.epochs * math.ceil(len(data) / self.cfg.batch_size)
        from .parallel import thread_tag

        return self.gen0_cache / (f"gen0-{self.cfg.key()}-{_code_key()}-steps{steps}-data{h}-seed{ctx.seed}"
                                  f"-{thread_tag()}.pt")


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()


# ---------------------------------------------------------------------------------------------
# Conditions (regime x synthetic-data mode) and the study over seeds
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    regime: str
    synthetic: str

    @property
    def label(self) -> str:
        return f"{self.regime} / {self.synthetic}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "_", f"{self.regime}-{self.synthetic}").strip("_")


def parse_condition(spec: str) -> Condition:
    """``"replace/fresh"``, ``"replace/fixed"``, ``"keep_real(0.1)/fixed"``, ``"accumulate/fixed"``..."""
    from .regimes import parse_regime

    if not isinstance(spec, str) or spec.count("/") != 1:
        raise ValueError(f"a condition looks like '<regime>/<fresh|fixed>', e.g. 'replace/fresh', got {spec!r}")
    reg, mode = (s.strip() for s in spec.split("/"))
    regime = parse_regime(reg)
    if mode not in ("fresh", "fixed"):
        raise ValueError(f"condition {spec!r}: the synthetic-data mode must be 'fresh' or 'fixed', got {mode!r}")
    if mode == "fresh" and regime.name != "replace":
        raise ValueError(f"condition {spec!r}: fresh samples (a new decoder batch every step) exist only under "
                         f"'replace'; mixing with real or earlier data needs a materialised set, use "
                         f"'{regime}/fixed'")
    return Condition(str(regime), mode)


@dataclass
class Study:
    """All runs of the chapter: tidy metrics, bookkeeping and per-generation artifacts."""

    metrics: pd.DataFrame
    bookkeeping: pd.DataFrame
    artifacts: dict[tuple[str, int], dict[int, dict]] = field(default_factory=dict)
    conditions: list[Condition] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def wide(self) -> pd.DataFrame:
        idx = ["condition", "regime", "synthetic", "seed", "generation"]
        return self.metrics.pivot_table(index=idx, columns="metric", values="value").reset_index()


def setup_torch(threads: int = 1) -> None:
    """Set torch's CPU threads for computing in this process (the notebook's own cells).

    Everything the chapter computes -- the classifier, every run -- goes through
    :func:`collapse_utils.parallel.run_threads` with ``threads_per_run`` threads instead, so the
    numbers never depend on this setting or on ``parallel_runs``."""
    torch.set_num_threads(int(threads))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def train_config(params: dict) -> TrainConfig:
    return TrainConfig(latent_dims=params.get("latent_dims", 20), capacity=params.get("capacity", 64),
                       epochs=params["epochs"], batch_size=params["batch_size"], lr=params.get("lr", 1e-3),
                       weight_decay=params.get("weight_decay", 1e-5), device=resolve_device(params["device"]))


def load_data(params: dict, path=None, download: bool = True) -> dict:
    """The real training subset (``n_train`` images, seeded) and ``n_test_eval`` real test images.

    Files are looked up as in :mod:`collapse_utils.data`; missing ones are downloaded from a mirror
    and verified where a network exists (e.g. on Colab), otherwise a DataError says how to provide them.
    """
    from .mnist import mnist_tensor

    x, y = mnist_tensor("train", params["n_train"], seed=params["data_seed"], path=path, download=download)
    xt, yt = mnist_tensor("test", params["n_test_eval"], seed=params["data_seed"], path=path, download=download)
    return {"train_x": x, "train_y": y, "test_x": xt, "test_y": yt}


def load_classifier(params: dict, progress: bool = True):
    """The MNIST classifier of the chapter (trained once on real data, then cached) and its test accuracy."""
    from .classifier import ClassifierConfig, load_or_train

    from .parallel import run_threads

    cfg = ClassifierConfig(epochs=params["classifier_epochs"], n_train=params["classifier_n_train"])
    with run_threads(params["threads_per_run"]):
        return load_or_train(cfg, progress=progress, download=True)


def _code_key() -> str:
    """A hash of this module's source: cached generation-0 models written by other code are not reused."""
    import sys

    from .engine import source_hash

    return source_hash(sys.modules[__name__], length=10)


def _run_key(params: dict, cfg: TrainConfig) -> str:
    """A hash of everything a condition's checkpoints depend on: a changed setting or changed code
    starts afresh in a new folder instead of resuming a run it does not belong to."""
    keys = ["n_train", "data_seed", "n_eval", "n_test_eval", "generations", "classifier_epochs",
            "classifier_n_train"]
    blob = json.dumps([cfg.key(), _code_key(), *[params.get(k) for k in keys]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _run_one(job: dict) -> tuple:
    """One condition x seed through the engine (runs in this process or in a worker process)."""
    from .engine import run_recursion

    cfg, cond, seed, root = job["cfg"], job["condition"], job["seed"], job["root"]
    clf = job["classifier"]
    if isinstance(clf, dict):  # a state dict sent to a worker process
        from .classifier import MnistCNN

        model = MnistCNN()
        model.load_state_dict(clf)
        clf = model.eval()
    ex = VAEExperiment(cfg, cond.synthetic, clf, job["test_x"], n_eval=job["n_eval"],
                       gen0_cache=root / "gen0" if root else None, steps=job["steps"],
                       name=f"vae_{cond.synthetic}")
    res = run_recursion(
        ex, job["train_x"], job["generations"], regime=cond.regime, seed=seed,
        checkpoint_dir=root / f"{cond.slug}-{job['run_key']}" / f"seed{seed}" if root else None,
        progress=job["progress"], columns=job["columns"])
    return res.metrics, res.bookkeeping.assign(seed=seed), ex.artifacts


def run_study(params: dict, data: dict, classifier: nn.Module | None = None,
              checkpoint_root: str | Path | None = None, progress: bool = True) -> Study:
    """Every condition x seed through :func:`~collapse_utils.engine.run_recursion`, same seeds everywhere.

    Checkpoints go to ``checkpoint_root/<condition>-<settings hash>/seed<k>/`` so an interrupted
    run resumes; generation 0 (identical in every condition) is fitted once per seed and cached.
    With ``parallel_runs > 1`` (CPU only) that many runs train at once in worker processes; serial or
    parallel, every run computes with ``threads_per_run`` torch threads, so the numbers are identical
    either way (:mod:`collapse_utils.parallel`).  On an idle two-core machine two single-threaded
    runs train as many images per second as one two-threaded run (``benchmarks/bench_vae.py
    --parallel``); on a machine shared with other jobs they are several times faster, because an
    OpenMP thread that waits for a descheduled partner stalls the whole step.
    """
    from .parallel import run_jobs

    cfg = train_config(params)
    conditions = [parse_condition(c) for c in params["conditions"]]
    seeds = [params["seed"] + k for k in range(params["seeds"])]
    # the same number of gradient steps in every generation and condition (accumulate's pool grows)
    steps = cfg.epochs * math.ceil(len(data["train_x"]) / cfg.batch_size)
    root = Path(checkpoint_root) if checkpoint_root else None
    workers = max(1, min(int(params.get("parallel_runs", 1)), len(conditions) * len(seeds)))
    if cfg.device != "cpu":
        workers = 1
    base = {"cfg": cfg, "root": root, "run_key": _run_key(params, cfg), "steps": steps,
            "generations": params["generations"], "n_eval": params["n_eval"],
            "train_x": data["train_x"], "test_x": data["test_x"], "classifier": classifier,
            "progress": progress and workers == 1}
    # condition-major order: the first condition's runs fit (and cache) every seed's generation 0
    # extra tidy columns (not "n_train": the engine's bookkeeping uses that name per generation)
    jobs = [dict(base, condition=c, seed=s, columns={"condition": c.label, "synthetic": c.synthetic,
                                                     "real_subset": params["n_train"], "epochs": params["epochs"]})
            for c in conditions for s in seeds]
    if workers > 1 and classifier is not None:  # a state dict pickles cheaply to the workers
        clf_state = {k: v.cpu() for k, v in classifier.state_dict().items()}
        for job in jobs:
            job["classifier"] = clf_state
    results = run_jobs(_run_one, jobs, workers, threads_per_run=params["threads_per_run"], progress=progress, desc="conditions x seeds",
                       label=lambda j: f"{j['condition'].label}, seed {j['seed']}")
    metrics = pd.concat([r[0] for r in results], ignore_index=True)
    book = pd.concat([r[1] for r in results], ignore_index=True)
    artifacts = {(j["condition"].label, j["seed"]): r[2] for j, r in zip(jobs, results)}
    return Study(metrics, book, artifacts, conditions, seeds)


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------
def check_inputs(params: dict) -> None:
    """Before any compute: the MNIST files are present (downloaded where a network exists) and verified."""
    from .data import find_dataset

    find_dataset("mnist", download=True)


def validate_params(params: dict) -> None:
    from .config import Checker

    c = Checker(params, "03")
    c.int("seed", 0).int("seeds", 1, 100).int("generations", 1, 1000)
    c.int("n_train", 256, 60_000).int("epochs", 1, 1000).int("batch_size", 1, 60_000)
    c.int("n_eval", 100, 100_000).int("n_test_eval", 100, 10_000).int("data_seed", 0)
    c.int("classifier_epochs", 1, 100).int("classifier_n_train", 1000, 60_000)
    c.int("threads_per_run", 1, 256).int("parallel_runs", 1, 256)
    c.choice("device", ["auto", "cpu", "cuda"])
    conds = params.get("conditions")
    if not isinstance(conds, (list, tuple)) or not conds:
        c.check(False, f"conditions must be a non-empty list such as ['replace/fresh', 'replace/fixed'], "
                       f"got {conds!r}")
    else:
        for spec in conds:
            try:
                parse_condition(spec)
            except (ValueError, TypeError) as e:
                c.check(False, f"conditions: {e}")
        c.check(len(set(conds)) == len(conds), f"conditions must not repeat, got {conds!r}")
    if params.get("device") == "cuda":
        c.check(torch.cuda.is_available(), "device='cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    c.done()




# ---------------------------------------------------------------------------------------------
# Tables and summaries
# ---------------------------------------------------------------------------------------------
def seed_matrix(metrics: pd.DataFrame, metric: str, condition: str) -> tuple[np.ndarray, np.ndarray]:
    """(generations, values[len(generations), n_seeds]) of one metric under one condition."""
    from .results import seed_matrix as _seed_matrix

    return _seed_matrix(metrics, metric, condition=condition)


def spread_table(study: Study, metric: str = "latent_spread") -> pd.DataFrame:
    """Median over seeds (and min-max) of a metric per condition and generation, with the ratio to gen 0."""
    rows = []
    for cond in study.conditions:
        gens, vals = seed_matrix(study.metrics, metric, cond.label)
        for g, v in zip(gens, vals):
            rows.append({"condition": cond.label, "generation": int(g), "median": float(np.median(v)),
                         "min": float(np.min(v)), "max": float(np.max(v)),
                         "ratio_to_gen0": float(np.median(v / vals[0]))})
    return pd.DataFrame(rows)


def bookkeeping_table(study: Study, seed: int | None = None) -> pd.DataFrame:
    """Training images per generation (rows) and condition (columns) for one seed."""
    seed = study.seeds[0] if seed is None else seed
    book = study.bookkeeping[study.bookkeeping.seed == seed]
    tab = book.pivot_table(index="generation", columns="condition", values="n_train", aggfunc="first")
    tab = tab[[c.label for c in study.conditions]]
    tab.columns.name = "training images per generation"
    return tab


def class_fractions(study: Study, condition: str) -> pd.DataFrame:
    """Mean fraction (over seeds) of generated images the classifier assigns to each digit, per generation."""
    m = study.metrics
    sub = m[(m.condition == condition) & m.metric.str.startswith("frac_")]
    tab = sub.groupby(["generation", "metric"]).value.mean().unstack("metric")
    tab.columns = [int(c.split("_")[1]) for c in tab.columns]
    return tab[sorted(tab.columns)]


def fading_digits(study: Study, condition: str) -> pd.DataFrame:
    """Per digit: share at generation 0 and at the last generation, their ratio, and the first generation
    at which the share fell below half of its generation-0 value (NaN if it never did); sorted, most
    faded first."""
    tab = class_fractions(study, condition)
    g0, last = tab.iloc[0], tab.iloc[-1]
    halved = {}
    for d in tab.columns:
        below = tab.index[(tab[d] < 0.5 * g0[d]) & (tab.index > tab.index[0])]
        halved[d] = float(below[0]) if len(below) else np.nan
    out = pd.DataFrame({"digit": tab.columns, "share_gen0": g0.values, "share_last": last.values,
                        "ratio": (last / g0.replace(0, np.nan)).values,
                        "halved_at_generation": [halved[d] for d in tab.columns]})
    return out.sort_values(["ratio", "halved_at_generation"]).reset_index(drop=True)


def summary(study: Study) -> pd.DataFrame:
    """One row per condition: generation-0 and last-generation medians of the key metrics."""
    rows = []
    for cond in study.conditions:
        row = {"condition": cond.label}
        for metric, short in (("latent_spread", "spread"), ("latent_mean_norm", "centre"),
                              ("class_entropy", "entropy_bits"), ("test_neg_elbo", "test_nelbo")):
            if metric not in set(study.metrics.metric):
                continue
            gens, vals = seed_matrix(study.metrics, metric, cond.label)
            row[f"{short}_gen0"] = float(np.median(vals[0]))
            row[f"{short}_gen{int(gens[-1])}"] = float(np.median(vals[-1]))
        if "class_entropy" in set(study.metrics.metric):
            fd = fading_digits(study, cond.label)
            row["most_faded_digits"] = ", ".join(str(int(d)) for d in fd.digit[:3])
        rows.append(row)
    return pd.DataFrame(rows)


def save_artifacts(study: Study, folder: str | Path) -> Path:
    """Latent means, sample grids and classifier labels of every run as one compressed .npz."""
    arrays = {}
    for (cond, seed), per_gen in study.artifacts.items():
        slug = re.sub(r"[^A-Za-z0-9.]+", "_", cond).strip("_")
        for g, art in per_gen.items():
            for k in ("latents", "grid", "labels", "real_latents"):
                if k in art:
                    arrays[f"{slug}/seed{seed}/gen{g}/{k}"] = art[k]
    path = Path(folder) / "artifacts.npz"
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    from .storage import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# Figures (each returns a matplotlib Figure; the book's style comes from collapse_utils.plotting)
# ---------------------------------------------------------------------------------------------
def _int_ticks(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mosaic(grid: np.ndarray, cols: int = 4) -> np.ndarray:
    n = (len(grid) // cols) * cols
    g = grid[:n].reshape(n // cols, cols, 28, 28)
    g = np.pad(g, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=255)
    return g.transpose(0, 2, 1, 3).reshape((n // cols) * 30, cols * 30)


def plot_real_digits(x: torch.Tensor, n: int = 16):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.4, 2.4))
    ax.imshow(_mosaic(_to_uint8(x[:n])), cmap="gray_r", vmin=0, vmax=255)
    ax.set_axis_off()
    ax.set_title("real MNIST")
    return fig


def plot_sample_grids(study: Study, seed: int | None = None):
    """Rows: conditions; columns: generations; each cell 16 digits decoded from N(0, I)."""
    import matplotlib.pyplot as plt

    seed = study.seeds[0] if seed is None else seed
    conds = study.conditions
    gens = sorted(study.artifacts[(conds[0].label, seed)])
    fig, axes = plt.subplots(len(conds), len(gens), figsize=(1.55 * len(gens) + 0.8, 1.6 * len(conds) + 0.4),
                             squeeze=False)
    for i, cond in enumerate(conds):
        arts = study.artifacts[(cond.label, seed)]
        for j, g in enumerate(gens):
            ax = axes[i, j]
            ax.imshow(_mosaic(arts[g]["grid"]), cmap="gray_r", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if i == 0:
                ax.set_title(f"generation {g}")
            if j == 0:
                ax.set_ylabel(cond.label.replace(" / ", "\n"), fontsize="small")
    fig.tight_layout()
    return fig


def plot_latent_spread(study: Study):
    """Spread (sqrt trace Cov) and centre (norm of the mean) of the latent means, bands over seeds."""
    import matplotlib.pyplot as plt

    from .plotting import band, finish, palette

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    cols = palette(len(study.conditions))
    real = [art[0]["real_latents"] for art in study.artifacts.values() if "real_latents" in art.get(0, {})]
    for cond, col in zip(study.conditions, cols):
        for ax, metric in zip(axes, ("latent_spread", "latent_mean_norm")):
            gens, vals = seed_matrix(study.metrics, metric, cond.label)
            band(ax, gens, vals, label=cond.label, color=col, marker="o", ms=3)
    if real:
        stats = [latent_stats(r) for r in real]
        axes[0].axhline(np.median([s["latent_spread"] for s in stats]), color="k", ls="--", lw=1,
                        label="real test images")
        axes[1].axhline(np.median([s["latent_mean_norm"] for s in stats]), color="k", ls="--", lw=1)
    finish(axes[0], "generation", r"spread $\sqrt{\mathrm{tr}\,\mathrm{Cov}(\mu)}$",
           "spread of latent means (generation-0 encoder)")
    finish(axes[1], "generation", r"centre $\|\mathrm{mean}(\mu)\|$", "centre of latent means", legend=False)
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylim(bottom=0)
    _int_ticks(*axes)
    fig.tight_layout()
    return fig


def _top_dim(latents: np.ndarray) -> int:
    return int(np.argmax(latents.var(axis=0)))


def plot_latent_kde(study: Study, seed: int | None = None):
    """KDE per generation of the most-used latent coordinate (largest variance on real test images)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    seed = study.seeds[0] if seed is None else seed
    conds = study.conditions
    ncol = min(2, len(conds))
    nrow = math.ceil(len(conds) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.8 * ncol, 3.6 * nrow), squeeze=False, sharex=True)
    for ax, cond in zip(axes.flat, conds):
        arts = study.artifacts[(cond.label, seed)]
        gens = sorted(arts)
        real = arts[gens[0]].get("real_latents")
        d = _top_dim(real if real is not None else arts[gens[0]]["latents"])
        cols = sns.color_palette("viridis", len(gens))
        for g, col in zip(gens, cols):
            sns.kdeplot(x=arts[g]["latents"][:, d], ax=ax, color=col, label=f"gen {g}", lw=1.5)
        if real is not None:
            sns.kdeplot(x=real[:, d], ax=ax, color="k", ls="--", lw=1, label="real test")
        ax.set_xlabel(rf"latent mean $\mu_{{{d}}}$ (generation-0 encoder)")
        ax.set_ylabel("density")
        ax.set_title(cond.label)
    for ax in axes.flat[len(conds):]:
        ax.set_visible(False)
    axes.flat[0].legend(ncol=2, fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_latent_norm_kde(study: Study, seed: int | None = None):
    """KDE per generation of the distance of each latent mean from the real test images' centre."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    seed = study.seeds[0] if seed is None else seed
    conds = study.conditions
    fig, axes = plt.subplots(1, len(conds), figsize=(3.4 * len(conds), 3.4), squeeze=False, sharey=True)
    for ax, cond in zip(axes.flat, conds):
        arts = study.artifacts[(cond.label, seed)]
        gens = sorted(arts)
        real = arts[gens[0]].get("real_latents")
        centre = real.mean(0) if real is not None else arts[gens[0]]["latents"].mean(0)
        cols = sns.color_palette("viridis", len(gens))
        for g, col in zip(gens, cols):
            sns.kdeplot(x=np.linalg.norm(arts[g]["latents"] - centre, axis=1), ax=ax, color=col,
                        label=f"gen {g}", lw=1.5, cut=0)
        if real is not None:
            sns.kdeplot(x=np.linalg.norm(real - centre, axis=1), ax=ax, color="k", ls="--", lw=1,
                        label="real test", cut=0)
        ax.set_xlabel(r"$\|\mu - \bar\mu_{\mathrm{real}}\|$")
        ax.set_ylabel("density")
        ax.set_title(cond.label, fontsize="small")
    axes.flat[0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_class_distribution(study: Study):
    """Heatmaps: share of generated digits per class (rows) and generation (columns), mean over seeds."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    conds = study.conditions
    fig, axes = plt.subplots(1, len(conds), figsize=(2.6 * len(conds) + 1.2, 4.0), squeeze=False, sharey=True)
    tabs = [class_fractions(study, cond.label).T * 100 for cond in conds]
    vmax = max(20.0, max(float(t.values.max()) for t in tabs))  # one colour scale for all panels
    for k, (ax, cond, tab) in enumerate(zip(axes.flat, conds, tabs)):
        sns.heatmap(tab, ax=ax, cmap="mako_r", vmin=0, vmax=vmax, annot=tab.shape[1] <= 8, fmt=".0f",
                    annot_kws={"fontsize": 6}, cbar=k == len(conds) - 1,
                    cbar_kws={"label": "% of generated images"})
        ax.set_xlabel("generation")
        ax.set_ylabel("digit (classifier label)" if k == 0 else "")
        ax.set_title(cond.label, fontsize="small")
        ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    return fig


def plot_class_entropy(study: Study):
    """Entropy of the class distribution (bits) and the classifier's mean confidence, bands over seeds."""
    import matplotlib.pyplot as plt

    from .plotting import band, finish, palette

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.0))
    for cond, col in zip(study.conditions, palette(len(study.conditions))):
        for ax, metric in zip(axes, ("class_entropy", "classifier_confidence")):
            gens, vals = seed_matrix(study.metrics, metric, cond.label)
            band(ax, gens, vals, label=cond.label, color=col, marker="o", ms=3)
    axes[0].axhline(np.log2(10), color="k", ls="--", lw=1, label="ten equal classes")
    finish(axes[0], "generation", "entropy of predicted classes (bits)", "how many digits are still made")
    finish(axes[1], "generation", "mean max. class probability", "how digit-like the samples look",
           legend=False)
    _int_ticks(*axes)
    fig.tight_layout()
    return fig


def plot_test_elbo(study: Study):
    """Negative ELBO per real test image under each generation's VAE (nats), bands over seeds."""
    import matplotlib.pyplot as plt

    from .plotting import band, finish, palette

    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for cond, col in zip(study.conditions, palette(len(study.conditions))):
        gens, vals = seed_matrix(study.metrics, "test_neg_elbo", cond.label)
        band(ax, gens, vals, label=cond.label, color=col, marker="o", ms=3)
    finish(ax, "generation", "negative ELBO of real test images (nats)",
           "what each generation still knows about real digits")
    _int_ticks(ax)
    fig.tight_layout()
    return fig


def findings(study: Study) -> str:
    """The chapter's closing observations as Markdown, every number computed from this run."""
    lines = []
    metrics = set(study.metrics.metric)
    n_seeds = len(study.seeds)
    for cond in study.conditions:
        gens, sp = seed_matrix(study.metrics, "latent_spread", cond.label)
        ratio = sp[-1] / sp[0]
        shrank = int((ratio < 1).sum())
        parts = [(f"**{cond.label}**: latent spread {np.median(sp[0]):.2f} at generation 0 and "
                  f"{np.median(sp[-1]):.2f} at generation {int(gens[-1])} (median ratio {np.median(ratio):.2f}, "
                  f"smaller in {shrank} of {n_seeds} seeds)")]
        if "class_entropy" in metrics:
            _, ent = seed_matrix(study.metrics, "class_entropy", cond.label)
            fd = fading_digits(study, cond.label)
            parts.append(f"class entropy {np.median(ent[0]):.2f} → {np.median(ent[-1]):.2f} bits, most faded "
                         f"digits {', '.join(str(int(d)) for d in fd.digit[:3])}")
        if "test_neg_elbo" in metrics:
            _, ne = seed_matrix(study.metrics, "test_neg_elbo", cond.label)
            parts.append(f"negative ELBO of real test images {np.median(ne[0]):.1f} → {np.median(ne[-1]):.1f} nats")
        lines.append("- " + "; ".join(parts) + ".")
    return "\n".join(lines)
