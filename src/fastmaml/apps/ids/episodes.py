"""Few-shot episodes of benign-vs-attack tasks, for meta-training and for fixed test sets.

Label 1 is always the attack. Test episodes are drawn from a seed that depends only on
(seed, attack, K), so every method and every run sees the very same episodes (fingerprinted).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from fastmaml.apps.ids.families import IdsData
from fastmaml.apps.ids.samples import SampleSet
from fastmaml.errors import DataError
from fastmaml.core.batch import TaskBatch
from fastmaml.tasks.episodes import EpisodeIndices, EpisodeSampler


def _class_tensors(s: SampleSet) -> list[torch.Tensor]:
    return [s.features[s.labels == 0], s.features[s.labels == 1]]


_SIM_KINDS = ("sim", "eth_sim")  # sources whose amount of data is source.sim.duration_s


def _more_data(kind: str, cls: str) -> str:
    """How to give a source more samples of class ``cls``: the knob depends on the source kind."""
    if kind in _SIM_KINDS:
        return "give the source more data (source.sim.duration_s)"
    if kind == "synthetic":
        return "give the source more data (source.synthetic.samples)"
    if not kind:
        return "give the source more data"
    cap = "features.max_benign" if cls == "benign" else "features.max_attack"
    return f"give more or longer captures of that attack, or raise {cap} if it caps the samples"


def check_sizes(data: IdsData, names: Iterable[str], split: str, k: int, q: int, key: str, kind: str = "") -> None:
    """DataError naming the attack whose ``split`` part has fewer than K + Q samples of a class.

    ``kind``: the ``source.kind`` the attacks come from, so the message names the knob that gives
    that source more data (``""``: unknown, a generic hint).
    """
    for n in names:
        s, _ = data.families[n].part(split)
        counts = s.counts()
        for cls, c in counts.items():
            if c < k + q:
                query = "eval.query" if key.startswith("eval.") else "train_query"
                raise DataError(
                    f"{split} part of attack {n!r} has {c} {cls!r} samples but episodes need K + Q = {k} + {q}; "
                    f"lower {key} or {query}, or {_more_data(kind, cls)}"
                )


def binary_labels(batch: TaskBatch, idx: EpisodeIndices) -> TaskBatch:
    """Undo the sampler's per-episode label permutation: label 1 = the attack class (data index 1)."""
    return TaskBatch(batch.support_x, idx.classes.gather(1, batch.support_y), batch.query_x,
                     idx.classes.gather(1, batch.query_y))


def make_train_sampler(data: IdsData, known: Sequence[str], k: int, q: int, pooled: bool = False,
                       split: str = "train") -> Callable[[torch.Generator], tuple[TaskBatch, list[str]]]:
    """``sample(n, g) -> (batch, family names per task)`` over the known attacks only.

    Each task picks a known attack uniformly at random. ``pooled`` returns support = first
    2K samples, query = all 2K + 2Q samples (pretraining: plain supervised data, the same
    budget as a MAML episode).
    """
    samplers = {n: EpisodeSampler(_class_tensors(data.families[n].part(split)[0]), 2, k, q) for n in known}
    names = list(known)

    def sample(n_tasks: int, g: torch.Generator) -> tuple[TaskBatch, list[str]]:
        pick = torch.randint(len(names), (n_tasks,), generator=g)
        parts, order = [], []
        for i, name in enumerate(names):
            count = int((pick == i).sum())
            if count:
                idx = samplers[name].sample_indices(count, g)
                parts.append(binary_labels(samplers[name].gather(idx), idx))
                order += [name] * count
        batch = TaskBatch(*(torch.cat([getattr(p, a) for p in parts]) for a in
                            ("support_x", "support_y", "query_x", "query_y")))
        if pooled:
            x = torch.cat([batch.support_x, batch.query_x], 1)
            y = torch.cat([batch.support_y, batch.query_y], 1)
            batch = TaskBatch(x[:, : 2 * k], y[:, : 2 * k], x, y)
        return batch, order

    return sample


@dataclass
class Episodes:
    """Fixed episodes of one attack: binary batch, rule verdicts on its query samples, a fingerprint."""

    batch: TaskBatch
    rule_preds: dict[str, torch.Tensor]  # rule -> bool [T, 2Q]
    fingerprint: str


def fixed_episodes(data: IdsData, attack: str, split: str, k: int, q: int, n: int, seed: int) -> Episodes:
    """``n`` benign-vs-``attack`` episodes drawn from a seed that depends only on (seed, attack, K)."""
    s, rules = data.families[attack].part(split)
    sampler = EpisodeSampler(_class_tensors(s), 2, k, q)
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(attack.encode()) * 101 + k)
    idx = sampler.sample_indices(n, g)
    batch = binary_labels(sampler.gather(idx), idx)
    preds = {}
    for r, flags in rules.items():
        per_class = [flags[s.labels == 0], flags[s.labels == 1]]
        ex = idx.examples[:, :, k:]  # [T, 2, Q], query positions in the order the sampler lays them out
        out = torch.empty(ex.shape, dtype=torch.bool)
        for c in (0, 1):
            m = idx.classes == c
            out[m] = per_class[c][ex[m]]
        preds[r] = out.reshape(n, -1)
    return Episodes(batch, preds, fingerprint(batch))


def fingerprint(batch: TaskBatch) -> str:
    h = hashlib.sha1()
    for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
