"""Masquerade targets with and without a cross-ID partner (issue 33 item 5): intervals alternate between the two
groups, each injection records its group, and 'partnered' keeps the earlier benchmark's draws."""

import pytest

from fastmaml.apps.ids.can import masquerade as M
from fastmaml.apps.ids.can import sim as can_sim
from fastmaml.errors import DataError


@pytest.fixture(scope="module")
def clean():
    frames = can_sim.simulate("none", 40.0, 3)
    frames.label[:] = 0
    return frames


def test_all_targets_alternate_between_partnered_and_unpartnered_signals(clean):
    targets = M.target_signals(clean, targets="all")
    groups = {bool(t.partners) for t in targets}
    if groups != {True, False}:
        pytest.skip("the simulated bus lacks one of the two groups")
    plans = M.plan(clean, "offset", targets, 8, 1.0, seed=0)
    assert [p.partnered for p in plans] == [True, False] * 4
    by_key = {(t.can_id, t.start): t for t in targets}
    assert all(bool(by_key[(p.can_id, p.start)].partners) == p.partnered for p in plans)
    captures, plan_dicts = M.generate(clean, ["offset"], 8, 1.0, 0, targets="all")
    assert [p["partnered"] for p in plan_dicts["offset"]] == [True, False] * 4
    assert captures["offset_masquerade"].is_attack().sum() > 0


def test_partnered_targets_only_have_partners_and_unknown_choice_is_an_error(clean):
    assert all(t.partners for t in M.target_signals(clean))
    plans = M.plan(clean, "offset", M.target_signals(clean), 6, 1.0, seed=0)
    assert all(p.partnered for p in plans)
    with pytest.raises(DataError, match="masquerade targets 'some' unknown"):
        M.target_signals(clean, targets="some")
