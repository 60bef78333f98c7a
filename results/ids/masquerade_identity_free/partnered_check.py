"""Frame check of DAGA's partnered masquerade test occurrences: is the falsified signal's partner residual judged?

    python results/ids/masquerade_identity_free/partnered_check.py DATA/ids/daga/clean/V40_03.can.zip

Generates the masquerade preset's attacks (`targets: all`) on DAGA's clean drive, fits the features on the 91.32 s
before the preset's cut, and prints for each partnered occurrence after the cut the peak of `sig_residual` on its
frames (0: not judged) beside the largest value on the clean frames of its ID after the cut. The plausibility rule
flags a frame above log2(3)/4 = 0.40.
"""

import sys

import numpy as np

from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer, frame_feature_names
from fastmaml.apps.ids.can.masquerade import generate
from fastmaml.apps.ids.can.readers import read_capture

CUT_S = 91.32  # the preset's cut (results: copies_judged/report.md, "Train/test split")


def main(path: str) -> None:
    clean = read_capture(path)
    clean = clean.select(~clean.is_attack())
    captures, plans = generate(clean, targets="all")
    state = FeatureState.fit(clean.select(slice(0, int(np.searchsorted(clean.timestamp, CUT_S)))), signals=True)
    col = frame_feature_names(state).index("sig_residual")
    after = clean.select(slice(int(np.searchsorted(clean.timestamp, CUT_S)), len(clean)))
    clean_res = FrameFeaturizer(state).transform(after)[:, col]
    judged = 0
    shown = 0
    for kind in ("maximum", "constant", "offset", "drift", "replay"):
        b = captures[f"{kind}_masquerade"]
        b = b.select(slice(int(np.searchsorted(b.timestamp, CUT_S)), len(b)))
        res = FrameFeaturizer(state).transform(b)[:, col]
        for inj in plans[kind]:
            if inj["t0"] < CUT_S or not inj["partnered"]:
                continue
            rows = b.is_attack() & (b.timestamp >= inj["t0"]) & (b.timestamp < inj["t1"]) & (b.can_id == inj["can_id"])
            peak, top = res[rows].max(), clean_res[after.can_id == inj["can_id"]].max()
            judged += peak > 0
            shown += 1
            print(f"{kind:8s} 0x{inj['can_id']:X} bits {inj['start']}+{inj['length']} at {inj['t0']:.1f} s: "
                  f"peak {peak:.2f} (clean frames of the ID after the cut: at most {top:.2f})")
    print(f"judged on {judged} of {shown} partnered occurrences")


if __name__ == "__main__":
    main(sys.argv[1])
