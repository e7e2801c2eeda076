"""Training throughput of the book's VAE loop against a loop written like the official notebook.

Both train the same conv VAE (647,081 parameters) on the same real MNIST images with batch
256, Adam(lr 1e-3, weight decay 1e-5) and the same number of torch threads.

* official-style: ``DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True)``, the
  reparameterisation from the global RNG, ``optimizer.zero_grad()`` and ``loss.item()`` every
  batch (what the notebook does to report the epoch loss);
* ours (:func:`collapse_utils.vae.train_vae`): one shuffled copy of the data tensor per epoch
  sliced into batches, losses accumulated on the device and read once per epoch, gradients
  set to None, explicit generators.

The two loops alternate in rounds and each round's images per second is recorded; the ratios
of the medians and of the best rounds are printed (the best round is the least disturbed by
other processes).  On a shared machine the absolute numbers are pessimistic.

    COLLAPSE_DATA_DIR=/path/to/data python benchmarks/bench_vae.py [--images 2048] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from collapse_utils import vae
from collapse_utils.mnist import mnist_tensor


def official_style_epoch(model, optimizer, loader) -> float:
    """One epoch the way the official notebook writes it."""
    model.train()
    train_loss_avg, num_batches = 0.0, 0
    for image_batch, _ in loader:
        image_batch = image_batch.to("cpu")
        mu, logvar = model.encoder(image_batch)
        std = logvar.mul(0.5).exp_()
        eps = torch.empty_like(std).normal_()
        latent = eps.mul(std).add_(mu)
        recon = model.decoder(latent)
        recon_loss = F.binary_cross_entropy(recon.view(-1, 784), image_batch.view(-1, 784), reduction="sum")
        kldivergence = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = recon_loss + kldivergence
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        train_loss_avg += loss.item()
        num_batches += 1
    return train_loss_avg / num_batches


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2048, help="real training images per epoch")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (one epoch each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    x, y = mnist_tensor("train", a.images, seed=0)
    cfg = vae.TrainConfig(epochs=1, batch_size=a.batch)

    torch.manual_seed(0)
    ref_model = vae.VAE()
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-3, weight_decay=1e-5)
    loader = DataLoader(TensorDataset(x, y), batch_size=a.batch, shuffle=True)
    our_model = cfg.new_model(0)

    # warm-up (allocator, oneDNN primitive caches) on a few batches each
    official_style_epoch(ref_model, ref_opt, DataLoader(TensorDataset(x[:512], y[:512]), batch_size=a.batch))
    vae.train_vae(x[:512], cfg, seed=1, model=our_model)

    rates = {"official-style": [], "ours": []}
    for r in range(a.rounds):
        t = time.perf_counter()
        official_style_epoch(ref_model, ref_opt, loader)
        rates["official-style"].append(len(x) / (time.perf_counter() - t))
        t = time.perf_counter()
        vae.train_vae(x, cfg, seed=100 + r, model=our_model)
        rates["ours"].append(len(x) / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    print(f"VAE training, {len(x)} MNIST images/epoch, batch {a.batch}, {a.threads} threads, "
          f"{a.rounds} alternating rounds")
    for k, v in rates.items():
        print(f"  {k:15s} median {med[k]:8.1f}  best {best[k]:8.1f} images/s   "
              f"rounds: {', '.join(f'{r:.0f}' for r in v)}")
    print(f"ratio ours / official-style = {med['ours'] / med['official-style']:.2f} (medians), "
          f"{best['ours'] / best['official-style']:.2f} (best rounds; less sensitive to other load)")


if __name__ == "__main__":
    main()
