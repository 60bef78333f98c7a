"""sig_full on the other real clean traffic in shared data: fit on the first part of a clean capture, count the frames
of the rest it flags (none should be: nothing there leaps to full scale). Signals and coarse fields (3-7 values) alike.

    python results/ids/road_real/full_scale_clean.py IDS_DATA     (IDS_DATA: shared data's ids/ folder)
"""

import sys

import numpy as np

from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.readers import read_capture

# (capture, share fitted on); CICIoV2024's benign capture has no timestamps: cut by frames
CAPTURES = [("crysys-sample/S-1-1-benign.log", 0.5), ("daga/clean/V40_03.can.zip", 0.6),
            ("ciciov2024/decimal/decimal_benign.csv.zip", 0.6)]


def main(root: str) -> None:
    for name, share in CAPTURES:
        frames = read_capture(f"{root}/{name}")
        frames = frames.select(~frames.is_attack())
        if frames.has_timestamps:
            t = frames.timestamp - frames.timestamp[0]
            cut = float(t[-1]) * share
            after = t >= cut
            fitted, rest = f"{cut:.0f} s", f"{float(t[-1]) - cut:.0f} s"
        else:
            after = np.arange(len(frames)) >= int(len(frames) * share)
            fitted, rest = f"{int((~after).sum())} frames", "rest of the capture"
        state = FeatureState.fit([frames.select(~after)], signals=True)
        fz = FrameFeaturizer(state)
        flagged = fz.transform(frames)[:, fz.feature_names.index("sig_full")] > 0.5
        print(f"{name}: fitted on {fitted} ({len(state.signals)} signals, {len(state.coarse)} coarse fields); sig_full "
              f"on {int(flagged[after].sum())} of the {int(after.sum())} frames of the {rest} after")


if __name__ == "__main__":
    main(sys.argv[1])
