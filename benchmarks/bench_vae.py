"""Training throughput of the book's VAE loop against a loop written like the official notebook.

Part 1 (the comparison the chapter reports): both loops train the same conv VAE (647,081
parameters) on the same real MNIST images with batch 256, Adam(lr 1e-3, weight decay 1e-5)
and the same number of torch threads.

* official-style: ``DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True)``, the
  reparameterisation from the global RNG, ``optimizer.zero_grad()`` and ``loss.item()`` every
  batch (what the notebook does to report the epoch loss);
* ours (:func:`collapse_utils.vae.train_vae`): one shuffled copy of the data tensor per pass
  sliced into batches, losses accumulated as a tensor and read once per epoch, gradients set
  to None, explicit generators.

The two loops alternate in rounds; each round's images per second is recorded and the ratios
of the medians and of the best rounds are printed (the best round is the least disturbed by
other processes).  On a CPU the loop's overheads are small next to the convolutions, so a
ratio near 1 is the expected outcome: the point is that seeding and bookkeeping cost nothing.

Part 2 (``--parallel``, how the chapter's cpu preset uses two cores): at the preset's batch of
64, one run with two threads against two single-threaded runs in two processes (aggregate
images per second).

    COLLAPSE_DATA_DIR=/path/to/data python benchmarks/bench_vae.py [--images 2048] [--rounds 5] [--parallel]

Timings on a machine shared with other jobs are pessimistic and noisy; compare the ratios.
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


def compare_loops(x, y, batch: int, threads: int, rounds: int) -> None:
    torch.set_num_threads(threads)
    cfg = vae.TrainConfig(epochs=1, batch_size=batch)
    torch.manual_seed(0)
    ref_model = vae.VAE()
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-3, weight_decay=1e-5)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
    our_model = cfg.new_model(0)
    # warm-up (allocator, oneDNN primitive caches) on a few batches each
    official_style_epoch(ref_model, ref_opt, DataLoader(TensorDataset(x[:512], y[:512]), batch_size=batch))
    vae.train_vae(x[:512], cfg, seed=1, model=our_model)

    rates = {"official-style": [], "ours": []}
    for r in range(rounds):
        t = time.perf_counter()
        official_style_epoch(ref_model, ref_opt, loader)
        rates["official-style"].append(len(x) / (time.perf_counter() - t))
        t = time.perf_counter()
        vae.train_vae(x, cfg, seed=100 + r, model=our_model)
        rates["ours"].append(len(x) / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    print(f"VAE training loop, {len(x)} MNIST images/epoch, batch {batch}, {threads} threads, "
          f"{rounds} alternating rounds")
    for k, v in rates.items():
        print(f"  {k:15s} median {med[k]:8.1f}  best {best[k]:8.1f} images/s   "
              f"rounds: {', '.join(f'{r:.0f}' for r in v)}")
    print(f"ratio ours / official-style = {med['ours'] / med['official-style']:.2f} (medians), "
          f"{best['ours'] / best['official-style']:.2f} (best rounds)")


def _timed_fit(args) -> float:
    x, batch, threads = args
    torch.set_num_threads(threads)
    cfg = vae.TrainConfig(epochs=1, batch_size=batch)
    vae.train_vae(x[:256], cfg, seed=0)  # warm-up
    t = time.perf_counter()
    vae.train_vae(x, cfg, seed=1)
    return time.perf_counter() - t


def compare_parallel(x, batch: int, threads: int) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    one = _timed_fit((x, batch, threads))
    with ProcessPoolExecutor(threads, mp_context=mp.get_context("spawn")) as pool:
        times = list(pool.map(_timed_fit, [(x, batch, 1)] * threads))
    r_one, r_par = len(x) / one, threads * len(x) / max(times)
    print(f"cpu preset layout, batch {batch}, {len(x)} images per run:")
    print(f"  one run with {threads} threads          {r_one:8.1f} images/s")
    print(f"  {threads} single-threaded runs at once   {r_par:8.1f} images/s in all")
    print(f"ratio parallel runs / one multi-threaded run = {r_par / r_one:.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2048, help="real training images per epoch")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (one epoch each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--parallel", action="store_true", help="also time the cpu preset's parallel runs")
    a = ap.parse_args(argv)
    x, y = mnist_tensor("train", a.images, seed=0)
    compare_loops(x, y, a.batch, a.threads, a.rounds)
    if a.parallel:
        compare_parallel(x, 64, a.threads)


if __name__ == "__main__":
    main()
