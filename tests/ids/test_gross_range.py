"""A signal nothing else reflects, set far outside its clean range (ROAD's max_engine_coolant_temp kind; issue 33).

No partner says such a value is wrong, so the partner residuals and states cannot see it; a long clean drive can,
by the range it showed. The plausibility rule judges that gross range only after a long drive (a short one has not
seen the warm engine or the motorway) and must then stay quiet on clean driving it did not fit on.
"""

import numpy as np
import pytest
import torch

from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.baselines import GROSS_RANGE_MARGIN, PlausibilityRule
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.states import LONG_DRIVE_S
from fastmaml.apps.ids.samples import SampleSet
from fastmaml.errors import DataError

COOLANT_ID = sim.ID_TEMP  # byte 0: the coolant temperature, warming from 50 to 90 and staying there


@pytest.fixture(scope="module")
def long_drive() -> FeatureState:
    return FeatureState.fit(sim.simulate("none", LONG_DRIVE_S + 120.0, 3), signals=True)


def _flags(rule: PlausibilityRule, state: FeatureState, frames: FrameBatch) -> np.ndarray:
    fz = FrameFeaturizer(state)
    x = torch.from_numpy(fz.transform(frames))
    s = SampleSet(x, torch.zeros(len(x), dtype=torch.long), ["benign"], fz.feature_names, "t")
    return rule.predict_samples(s).numpy()


def test_a_full_scale_coolant_is_flagged_after_a_long_drive_and_clean_driving_is_not(long_drive):
    state = long_drive
    assert state.clean_seconds >= LONG_DRIVE_S
    rule = PlausibilityRule.for_state(state)
    assert rule.range_margin == GROSS_RANGE_MARGIN
    later = sim.simulate("none", 400.0, 11)  # another drive, cold start included
    assert _flags(rule, state, later).mean() < 0.001
    attacked = later.select(np.arange(len(later)))
    rows = np.flatnonzero(attacked.can_id == COOLANT_ID)
    attacked.data[rows, 0] = 0xFF
    assert _flags(rule, state, attacked)[rows].mean() > 0.95
    # without the range check nothing else in the rule sees it: the coolant has no partner
    assert _flags(PlausibilityRule(), state, attacked)[rows].mean() < 0.05


def test_the_gross_range_needs_a_long_drive_and_survives_a_save():
    short = FeatureState.fit(sim.simulate("none", 120.0, 3), signals=True)
    assert 100.0 < short.clean_seconds < 130.0
    rule = PlausibilityRule.for_state(short)
    assert rule.range_margin is None and "sig_range" not in dict(rule.columns)
    again = FeatureState.from_dict(short.to_dict())
    assert again.clean_seconds == short.clean_seconds
    old = short.to_dict()
    del old["clean_seconds"]  # saved before it was recorded: judged as a short drive
    assert PlausibilityRule.for_state(FeatureState.from_dict(old)).range_margin is None
    with pytest.raises(DataError, match="range_margin"):
        PlausibilityRule(range_margin=0.0)
