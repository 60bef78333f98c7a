"""A synthetic traffic source of separable blobs, for fast tests of the IDS pipeline."""

from __future__ import annotations

import torch

from fastmaml.apps.ids.config import FeatureConfig, SourceConfig
from fastmaml.apps.ids.families import IdsData, TaskFamily
from fastmaml.apps.ids.samples import BENIGN, SampleSet


def prepare_synthetic(src: SourceConfig, feat: FeatureConfig, log: object = None, workdir: object = None) -> IdsData:
    """Benign ~ U(0.25, 0.75)^8; attack i moves feature i // 2 by +0.5 (even i) or -0.5 (odd i).

    Every task is separable by one feature, and pairs of attacks share a feature with
    opposite signs, so a good initialization must learn which way to go from the support set.
    Sizes: ``source.synthetic``; the blobs are drawn with ``source.sim.train_seed``.
    """
    n_feat = 8
    g = torch.Generator().manual_seed(src.sim.train_seed)
    names = [f"f{i}" for i in range(n_feat)]
    families = {}
    for i in range(src.synthetic.attacks):
        name = f"attack{i}"
        parts = []
        for _ in ("train", "test"):
            n = src.synthetic.samples
            x = 0.25 + torch.rand(2 * n, n_feat, generator=g) * 0.5
            y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
            x[n:, (i // 2) % n_feat] += 0.5 if i % 2 == 0 else -0.5
            parts.append(SampleSet(x, y, [BENIGN, name], names, "synthetic"))
        families[name] = TaskFamily(name, parts[0], parts[1])
    return IdsData(families, names, None, None, "synthetic")
