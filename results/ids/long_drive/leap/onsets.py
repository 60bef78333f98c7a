"""Per unpartnered masquerade occurrence after the cut: how many of its frames sig_leap puts above the rule's 0.25.

    python results/ids/long_drive/leap/onsets.py sim_clean_3000s.log [CUT_SECONDS]

The masquerades are generated as the benchmark generates them (masquerade preset: 20 occurrences of 2 s per kind,
seed 0, targets with and without partners); features fitted on the clean drive before the cut. A target whose
largest clean change over 1-256 frames is already a quarter of its range (a fast, noisy field) leaps nowhere.
"""

import sys

import numpy as np

from fastmaml.apps.ids.can import masquerade as M
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.readers import open_capture

KINDS = ["maximum", "constant", "offset", "drift", "replay"]

clean = open_capture(sys.argv[1]).read_all()
cut = float(sys.argv[2]) if len(sys.argv) > 2 else 1857.4
caps, plans = M.generate(clean, KINDS, 20, 2.0, 0, "", "all", "auto")
state = FeatureState.fit(clean.select(slice(0, int(np.searchsorted(clean.timestamp, cut)))), signals=True)
sigs = {(s.can_id, s.start): s for s in state.signals}
for kind in KINDS:
    att = caps[f"{kind}_masquerade"]
    after = att.select(slice(int(np.searchsorted(att.timestamp, cut)), len(att)))
    fz = FrameFeaturizer(state)
    leap = fz.transform(after)[:, fz.feature_names.index("sig_leap")]
    print(kind)
    for inj in plans[kind]:
        if inj["t0"] < cut or inj["partnered"]:
            continue
        rows = np.flatnonzero((after.can_id == inj["can_id"]) & (after.timestamp >= inj["t0"])
                              & (after.timestamp < inj["t1"]))
        s = sigs.get((inj["can_id"], inj["start"]))
        limits = ", ".join(f"{x:g}" for x in s.max_change) if s else "?"
        span = f"{s.lo:g}-{s.hi:g}" if s else "?"
        print(f"  0x{inj['can_id']:X}[{inj['start']}:{inj['start'] + inj['length']}] at {inj['t0']:.0f} s: "
              f"{int((leap[rows] > 0.25).sum())} of {len(rows)} frames above 0.25; clean range {span}, "
              f"largest change over 1/4/16/64/256 frames {limits}")
