"""Training throughput of the book's VAE loop against a loop written like the official notebook.

Part 1 (the comparison the chapter reports): both loops train the same conv VAE (647,081
parameters) on the same real MNIST images with batch 256, Adam(lr 1e-3, weight decay 1e-5)
and the same number of torch threads.

* official-style: ``DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True)``, the
  reparameterisation from the global RNG, ``optimizer.zero_grad()`` and ``loss.item()`` every
  batch (what the notebook does to report the epoch loss);
* ours (:func:`collapse_utils.models.vae.train_vae`): one shuffled copy of the data tensor per pass
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

Part 3 (``--paper-reference``, the yardstick of chapter 03's ``gen0-draws-digits`` claim): trains
generation 0 the way the paper does -- all 60,000 images, 30 epochs, batch 256, seed 0 -- and prints
the chapter's classifier's mean top-class probability on images decoded from N(0, I) after every
``--every`` epochs.  The last line is the value recorded as ``REFERENCE_GEN0_CONFIDENCE`` in
``collapse_utils/chapters/vae_mnist.py`` (an hour or more on one CPU thread; minutes on a GPU):

    COLLAPSE_DATA_DIR=/path/to/data python benchmarks/bench_vae.py --paper-reference [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from collapse_utils.models import vae
from collapse_utils.models.mnist import mnist_tensor


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


def paper_reference(threads: int, every: int, n_samples: int, epochs: int = 30, n_train: int | None = None,
                    batch: int = 256, seed: int = 0) -> float:
    """Generation 0 with the paper's training budget; the classifier confidence of its prior samples."""
    from collapse_utils.chapters import vae_mnist as ch
    from collapse_utils.models.classifier import class_entropy, predict_proba
    from collapse_utils.core.parallel import run_threads
    import numpy as np

    with run_threads(threads):
        clf, acc = ch.load_classifier({"classifier_epochs": 1, "classifier_n_train": 60_000,
                                       "threads_per_run": threads}, progress=False)
        x, _ = mnist_tensor("train", n_train, seed=0)
        xt, _ = mnist_tensor("test", 10_000, seed=0)
        cfg = vae.TrainConfig(epochs=epochs, batch_size=batch, device=vae.resolve_device("auto"))
        print(f"classifier test accuracy {acc:.4f}; VAE on {len(x)} images, {epochs} epochs, batch {batch}, "
              f"{threads} threads, device {cfg.device}", flush=True)
        t0 = time.perf_counter()
        last = {}

        def measure(epoch, model):
            if epoch % every and epoch != epochs:
                return
            s = vae.decode_prior(model.decoder, n_samples, 12345, device=cfg.device)
            p = predict_proba(clf, s)
            frac = np.bincount(p.argmax(1).numpy(), minlength=10) / len(p)
            last["conf"] = float(p.max(1).values.mean())
            ne = vae.neg_elbo(model, xt, 1, device=cfg.device)
            print(f"epoch {epoch:3d}  classifier_confidence {last['conf']:.4f}  class_entropy "
                  f"{float(class_entropy(frac)):.3f} bits  test_neg_elbo {ne:.2f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

        vae.train_vae(x, cfg, seed=seed, on_epoch=measure)
    print(f"paper_gen0_confidence = {last['conf']:.4f}  ({n_samples} prior samples)")
    return last["conf"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2048, help="real training images per epoch")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (one epoch each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--parallel", action="store_true", help="also time the cpu preset's parallel runs")
    ap.add_argument("--paper-reference", action="store_true",
                    help="only: generation 0 with the paper's training and its classifier confidence")
    ap.add_argument("--every", type=int, default=2, help="--paper-reference: measure every this many epochs")
    ap.add_argument("--samples", type=int, default=10_000, help="--paper-reference: prior samples measured")
    a = ap.parse_args(argv)
    if a.paper_reference:
        paper_reference(a.threads, a.every, a.samples)
        return
    x, y = mnist_tensor("train", a.images, seed=0)
    compare_loops(x, y, a.batch, a.threads, a.rounds)
    if a.parallel:
        compare_parallel(x, 64, a.threads)


if __name__ == "__main__":
    main()
