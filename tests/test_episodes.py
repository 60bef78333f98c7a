import time
from functools import partial

import pytest
import torch

from fastmaml.errors import DataError
from fastmaml.tasks.batch import TaskBatch
from fastmaml.tasks.episodes import EpisodeSampler, sample_distinct, uint8_images_to_float


def ident_data(c: int = 30, n: int = 20) -> torch.Tensor:
    """[C, n, 2] where example (class i, index j) has features (i, j): lets tests decode the batch."""
    ci = torch.arange(c).view(c, 1).expand(c, n)
    ji = torch.arange(n).view(1, n).expand(c, n)
    return torch.stack([ci, ji], dim=-1)


def g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- TaskBatch


def make_batch(t=2, s=5, q=10, f=(1, 4, 4)) -> TaskBatch:
    return TaskBatch(torch.zeros(t, s, *f), torch.zeros(t, s, dtype=torch.long), torch.zeros(t, q, *f), torch.zeros(t, q, dtype=torch.long))


def test_taskbatch_basics():
    b = make_batch().validate()
    assert b.num_tasks == 2
    moved = b.to("cpu")
    assert moved.support_x.shape == b.support_x.shape and moved.query_y.dtype == torch.long
    assert b.task(1).num_tasks == 1


@pytest.mark.parametrize(
    "mutate, msg",
    [
        (lambda b: setattr(b, "query_x", b.query_x[:1]), "leading dim"),
        (lambda b: setattr(b, "support_y", b.support_y[:, :3]), "support_y has 3 labels"),
        (lambda b: setattr(b, "query_y", b.query_y[:, :3]), "query_y has 3 labels"),
        (lambda b: setattr(b, "query_x", torch.zeros(2, 10, 1, 5, 5)), "feature shapes"),
        (lambda b: (setattr(b, "support_x", b.support_x[:, :0]), setattr(b, "support_y", b.support_y[:, :0])), "empty support"),
    ],
)
def test_taskbatch_validate_errors(mutate, msg):
    b = make_batch()
    mutate(b)
    with pytest.raises(DataError, match=msg):
        b.validate()


# ---------------------------------------------------------------------------- sample_distinct


@pytest.mark.parametrize("high, m", [(20, 16), (20, 20), (10**6, 16), (50, 3), (10**9, 100)])
def test_sample_distinct_rows_are_distinct_and_in_range(high, m):
    out = sample_distinct(torch.full((64,), high), m, g())
    assert out.shape == (64, m)
    assert int(out.min()) >= 0 and int(out.max()) < high
    for row in out:
        assert row.unique().numel() == m


def test_sample_distinct_is_roughly_uniform():
    # Large range path: bucket counts of 40,000 draws over 10 buckets of a 10**6 range.
    out = sample_distinct(torch.full((4000,), 10**6), 10, g(3))
    counts = torch.bincount(out.flatten() // 10**5, minlength=10).float()
    assert (counts - 4000).abs().max() < 300  # ~5 sigma
    # Small range path: each of 5 values equally likely at position 0.
    first = sample_distinct(torch.full((5000,), 5), 5, g(4))[:, 0]
    assert (torch.bincount(first, minlength=5).float() - 1000).abs().max() < 160


def test_sample_distinct_does_not_scale_with_range():
    highs = torch.full((160,), 10**6)
    t = time.perf_counter()
    for _ in range(20):
        sample_distinct(highs, 20, g())
    assert time.perf_counter() - t < 1.0  # O(class size) would touch 3.2e9 values


# ---------------------------------------------------------------------------- sampler


def test_shapes_labels_and_dtypes():
    s = EpisodeSampler(ident_data(), n_way=5, k_shot=2, q_query=3)
    b = s.sample(8, g()).validate()
    assert b.support_x.shape == (8, 10, 2) and b.query_x.shape == (8, 15, 2)
    assert b.support_y.dtype == torch.int64 and b.query_y.dtype == torch.int64
    for t in range(8):
        assert torch.bincount(b.support_y[t], minlength=5).tolist() == [2] * 5
        assert torch.bincount(b.query_y[t], minlength=5).tolist() == [3] * 5


def test_classes_distinct_labels_consistent_and_no_repeats():
    s = EpisodeSampler(ident_data(), n_way=5, k_shot=3, q_query=7)
    b = s.sample(50, g(1))
    for t in range(50):
        x = torch.cat([b.support_x[t], b.query_x[t]])
        y = torch.cat([b.support_y[t], b.query_y[t]])
        # Each label maps to exactly one source class, and classes differ between labels.
        classes = [x[y == lab, 0].unique() for lab in range(5)]
        assert all(c.numel() == 1 for c in classes)
        assert torch.cat(classes).unique().numel() == 5
        # No example (class, index) appears twice in the episode (support and query disjoint).
        keys = x[:, 0] * 1000 + x[:, 1]
        assert keys.unique().numel() == keys.numel() == 50


def test_deterministic_for_seed_and_varies_across_seeds():
    s = EpisodeSampler(ident_data(), 5, 1, 5)
    a, b, c = s.sample(4, g(7)), s.sample(4, g(7)), s.sample(4, g(8))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.support_x, c.support_x)


def test_label_permutation_varies_with_fixed_classes():
    s = EpisodeSampler(ident_data(), 3, 1, 1)
    b = s.sample(200, g(2), classes=[4, 9, 17])
    # Which class gets label 0 must vary: all 3 appear, roughly uniformly.
    cls_of_label0 = b.support_x[:, 0, 0]  # support is grouped by label, label 0 first
    assert set(cls_of_label0.tolist()) == {4, 9, 17}
    counts = torch.bincount(cls_of_label0)[[4, 9, 17]]
    assert int(counts.min()) > 40
    assert set(b.query_x[..., 0].unique().tolist()) == {4, 9, 17}


def test_class_pool_is_respected():
    s = EpisodeSampler(ident_data(), 2, 1, 1, classes=[0, 5, 6])
    b = s.sample(100, g())
    assert set(b.support_x[..., 0].unique().tolist()) <= {0, 5, 6}


def test_shuffle_examples_keeps_label_pairing():
    s = EpisodeSampler(ident_data(), 5, 4, 4, shuffle_examples=True)
    b = s.sample(10, g())
    assert not all(torch.equal(b.support_y[t], b.support_y[t].sort().values) for t in range(10))
    for t in range(10):
        for lab in range(5):
            assert b.support_x[t][b.support_y[t] == lab, 0].unique().numel() == 1


def test_varying_class_sizes_list_input_with_huge_class():
    big = torch.arange(1_000_000, dtype=torch.float32).view(-1, 1) * 10  # class 0: values 0, 10, 20, ...
    classes = [big, torch.arange(40, dtype=torch.float32).view(-1, 1) * 10 + 1, torch.full((7, 1), 2.0) + torch.arange(7).view(-1, 1) * 10]
    s = EpisodeSampler(classes, n_way=2, k_shot=2, q_query=5)
    t0 = time.perf_counter()
    for i in range(20):
        b = s.sample(32, g(i)).validate()
    assert time.perf_counter() - t0 < 2.0
    assert b.support_x.shape == (32, 4, 1) and b.query_x.shape == (32, 10, 1)
    x = torch.cat([b.support_x, b.query_x], 1)[..., 0]
    assert set((x % 10).unique().tolist()) <= {0.0, 1.0, 2.0}
    for t in range(32):
        assert x[t].unique().numel() == 14  # no repeats
    # Binary "benign vs attack" episodes with fixed classes.
    b = s.sample(16, g(), classes=[0, 2])
    assert set((torch.cat([b.support_x, b.query_x], 1) % 10).unique().tolist()) == {0.0, 2.0}


def test_transform_and_device():
    data = torch.randint(0, 256, (10, 20, 28, 28), dtype=torch.uint8)
    s = EpisodeSampler(data, 5, 1, 15, transform=partial(uint8_images_to_float, add_channel=True), device="cpu")
    b = s.sample(3, g()).validate()
    assert b.support_x.shape == (3, 5, 1, 28, 28) and b.query_x.shape == (3, 75, 1, 28, 28)
    assert b.support_x.dtype == torch.float32 and 0.0 <= float(b.support_x.min()) and float(b.support_x.max()) <= 1.0


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(n_way=31, k_shot=1, q_query=1), "need 31 classes but only 30"),
        (dict(n_way=5, k_shot=15, q_query=6), "class 0 has 20 examples"),
        (dict(n_way=5, k_shot=0, q_query=1), "k_shot >= 1"),
        (dict(n_way=2, k_shot=1, q_query=1, classes=[3]), "only 1 are available"),
        (dict(n_way=2, k_shot=1, q_query=1, classes=[3, 30]), "out of range"),
    ],
)
def test_errors(kwargs, msg):
    with pytest.raises(DataError, match=msg):
        EpisodeSampler(ident_data(), **kwargs)


def test_error_names_small_class_in_list():
    data = [torch.zeros(50, 3), torch.zeros(4, 3), torch.zeros(30, 3)]
    with pytest.raises(DataError, match="class 1 has 4 examples"):
        EpisodeSampler(data, 2, 5, 5)
    s = EpisodeSampler(data, 2, 5, 5, classes=[0, 2])
    with pytest.raises(DataError, match="class 1 has 4"):
        s.sample(2, g(), classes=[0, 1])
    with pytest.raises(DataError, match="features"):
        EpisodeSampler([torch.zeros(5, 3), torch.zeros(5, 4)], 2, 1, 1)


def test_non_contiguous_input_and_index_decoding():
    data = ident_data(30, 40)[:, ::2]  # non-contiguous view: example j of class i has index 2j
    s = EpisodeSampler(data, 4, 2, 3)
    idx = s.sample_indices(6, g(5))
    b = s.gather(idx)
    for t in range(6):
        for lab in range(4):
            xs = b.support_x[t][b.support_y[t] == lab]
            assert xs[:, 0].unique().tolist() == [int(idx.classes[t, lab])]
            assert (xs[:, 1] // 2).tolist() == idx.examples[t, lab, :2].tolist()
