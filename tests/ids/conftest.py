from dataclasses import dataclass, field

import pytest
import torch

from fastmaml.apps.ids import experiment as E
from fastmaml.apps.ids.episodes import make_train_sampler


@dataclass
class TrainingSpy:
    """What meta-training saw: every sample row and attack name of every training batch."""

    rows: list[torch.Tensor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


@pytest.fixture
def training_spy(monkeypatch) -> TrainingSpy:
    """Records the batches meta-training draws, to prove held-out attacks never reach it."""
    spy = TrainingSpy()
    real = make_train_sampler

    def make(data, known, k, q, pooled=False, split="train"):
        sample = real(data, known, k, q, pooled, split)

        def wrapped(n, g):
            batch, names = sample(n, g)
            spy.rows.append(torch.cat([batch.support_x, batch.query_x], 1).reshape(-1, batch.query_x.shape[-1]))
            spy.names.extend(names)
            return batch, names

        return wrapped

    monkeypatch.setattr(E, "make_train_sampler", make)
    return spy


@pytest.fixture
def read_fast_and_precise(monkeypatch):
    """``read(reader_cls, path, chunk_size)``: a capture read by the reader's vectorized path, then again with that
    path forced to fail (line by line); returns both FrameBatches."""

    def read(reader_cls, path, chunk_size: int = 64):
        fast = reader_cls(path, chunk_size=chunk_size).read_all()

        def no_fast(self, lines):
            raise ValueError("forced")

        monkeypatch.setattr(reader_cls, "_fast", no_fast)
        return fast, reader_cls(path, chunk_size=chunk_size).read_all()

    return read
