"""Episode sampler throughput on data of the real Omniglot shape (no real data needed).

Prints episodes/s for 5-way and 20-way 1-shot 15-query meta-batches of 32 tasks drawn from
4,800 classes (1,200 characters x 4 rotations) of 20 uint8 28x28 images, including the
uint8 -> float [0, 1] + channel-dim transform, and for an intrusion-detection-like list of
classes with up to a million rows. A MAML meta-iteration takes about 1 s on a small CPU, so
anything above a few hundred episodes/s keeps the sampler off the critical path.

Usage: python benchmarks/bench_episodes.py [--seconds 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from fastmaml.tasks.episodes import EpisodeSampler, uint8_images_to_float


def rate(sampler: EpisodeSampler, batch: int, seconds: float) -> float:
    """Episodes per second over about ``seconds`` of sampling."""
    g = torch.Generator().manual_seed(0)
    sampler.sample(batch, g)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = sampler.sample(batch, g)
        n += batch
    if b.support_x.is_cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="where the data lives and batches are built")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    omniglot = torch.randint(0, 256, (4800, 20, 28, 28), dtype=torch.uint8, device=dev)
    tf = partial(uint8_images_to_float, add_channel=True)
    print(f"device={dev} torch={torch.__version__} threads={torch.get_num_threads()} meta-batch={args.batch}")
    for n_way in (5, 20):
        s = EpisodeSampler(omniglot, n_way, 1, 15, transform=tf)
        print(f"omniglot-shape {n_way:2d}-way 1-shot 15-query: {rate(s, args.batch, args.seconds):10.0f} episodes/s")
    ids = [torch.randn(1_200_000, 9, device=dev)] + [torch.randn(n, 9, device=dev) for n in (75_000, 10_000, 55_000, 25_000, 20_000)]
    s = EpisodeSampler(ids, 2, 5, 20)
    print(f"ids-like 2-way 5-shot 20-query (1.2M-row class): {rate(s, args.batch, args.seconds):10.0f} episodes/s")
    s = EpisodeSampler(ids, 6, 10, 50)
    print(f"ids-like 6-way 10-shot 50-query:                {rate(s, args.batch, args.seconds):10.0f} episodes/s")


if __name__ == "__main__":
    main()
