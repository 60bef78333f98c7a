"""sig_full on the other real clean traffic in shared data: fit on the first part of a clean capture, count the frames
of the rest it flags (none should be: nothing there leaps to full scale).

    python results/ids/road_real/full_scale_clean.py IDS_DATA     (IDS_DATA: shared data's ids/ folder)
"""

import sys

from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.readers import read_capture

CAPTURES = [("crysys-sample/S-1-1-benign.log", 0.5), ("daga/clean/V40_03.can.zip", 0.6)]  # (capture, share fitted on)


def main(root: str) -> None:
    for name, share in CAPTURES:
        frames = read_capture(f"{root}/{name}")
        t = frames.timestamp - frames.timestamp[0]
        cut = float(t[-1]) * share
        state = FeatureState.fit([frames.select(t < cut)], signals=True)
        fz = FrameFeaturizer(state)
        flagged = fz.transform(frames)[:, fz.feature_names.index("sig_full")] > 0.5
        after = t >= cut
        print(f"{name}: fitted on {cut:.0f} s ({len(state.signals)} signals); sig_full on {int(flagged[after].sum())} of "
              f"the {int(after.sum())} frames of the {float(t[-1]) - cut:.0f} s after")


if __name__ == "__main__":
    main(sys.argv[1])
