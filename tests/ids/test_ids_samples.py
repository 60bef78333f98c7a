import pytest
import torch

from fastmaml.apps.ids.samples import SampleSet
from fastmaml.errors import DataError


def _set(n=6, names=("benign", "dos")):
    f = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    y = torch.tensor([i % len(names) for i in range(n)])
    return SampleSet(f, y, list(names), ["a", "b", "c"])


def test_by_class_subset_concat():
    s = _set(6, ("benign", "dos", "gas"))
    bc = s.by_class()
    assert set(bc) == {"benign", "dos", "gas"} and bc["dos"].shape == (2, 3)
    sub = s.subset(["gas"])
    assert sub.class_names == ["benign", "gas"] and len(sub) == 2 and bool((sub.labels == 1).all())
    other = SampleSet(torch.zeros(2, 3), torch.tensor([0, 1]), ["benign", "rpm"], ["a", "b", "c"])
    c = s.concat(other)
    assert c.class_names == ["benign", "dos", "gas", "rpm"]
    assert c.labels[-1].item() == 3 and len(c) == 8
    assert c.counts() == {"benign": 3, "dos": 2, "gas": 2, "rpm": 1}


@pytest.mark.parametrize(
    "kw",
    [
        dict(features=torch.zeros(3, 2, dtype=torch.float64)),
        dict(labels=torch.zeros(4, dtype=torch.int64)),
        dict(class_names=["dos", "benign"]),
        dict(feature_names=["x"]),
        dict(labels=torch.tensor([0, 1, 5])),
        dict(features=torch.tensor([[0.0, float("nan")]] * 3)),
    ],
)
def test_validation(kw):
    base = dict(features=torch.zeros(3, 2), labels=torch.tensor([0, 1, 0]), class_names=["benign", "dos"],
                feature_names=["x", "y"])
    base.update(kw)
    with pytest.raises(DataError):
        SampleSet(**base)


def test_concat_shape_mismatch():
    a = _set()
    b = SampleSet(torch.zeros(2, 4, 3), torch.tensor([0, 1]), ["benign", "dos"], ["a", "b", "c"])
    with pytest.raises(DataError, match="feature shapes differ"):
        a.concat(b)
