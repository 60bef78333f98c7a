"""Would a freeze check work on a short drive? For each signal that never sat still for more than 16 frames in the
first part of a real clean capture, the longest still run in the rest (0: it sat still to the end of the capture).

    python results/ids/road_real/still_runs.py IDS_DATA ROAD_DATA
        (IDS_DATA: shared data's ids/ folder; ROAD_DATA: the folder with ROAD's attack CSVs, see run.sh)

A freeze check flags a signal unchanged for several times its longest clean still run; a constant or maximum
masquerade on a signal that always moves would be caught. It is safe only if such signals never stop in clean
driving; this prints whether they did.
"""

import sys

import numpy as np

from fastmaml.apps.ids.can.features import FeatureState
from fastmaml.apps.ids.can.readers import read_capture
from fastmaml.apps.ids.can.signals import payload_words, signal_values

MOVING = 16  # a signal whose longest still run in the fit was at most this many frames "always moves"
ROAD = ["correlated_signal_attack_2.csv", "correlated_signal_attack_3.csv", "reverse_light_off_attack_1.csv",
        "max_engine_coolant_temp_attack.csv", "fuzzing_attack_1.csv", "fuzzing_attack_2.csv"]


def longest_still(v: np.ndarray) -> tuple[int, bool]:
    """The longest run of an unchanged value, and whether it lasted to the end of ``v``."""
    ends = np.concatenate([np.flatnonzero(np.diff(v) != 0), [len(v) - 1]])
    lengths = np.diff(np.concatenate([[-1], ends]))
    return int(lengths.max()), bool(lengths[-1] == lengths.max())


def main(ids_root: str, road_root: str) -> None:
    captures = [(f"{ids_root}/crysys-sample/S-1-1-benign.log", 0.5), (f"{ids_root}/daga/clean/V40_03.can.zip", 0.6),
                (f"{ids_root}/ciciov2024/decimal/decimal_benign.csv.zip", 0.6)] + [(f"{road_root}/{n}", 0.3) for n in ROAD]
    moving = stopped = 0
    for path, share in captures:
        frames = read_capture(path)
        frames = frames.select(~frames.is_attack())
        if frames.has_timestamps:
            t = frames.timestamp - frames.timestamp[0]
            after = t >= float(t[-1]) * share
        else:  # CICIoV2024: no timestamps, cut by frames
            after = np.arange(len(frames)) >= int(len(frames) * share)
        state = FeatureState.fit([frames.select(~after)], signals=True)
        words = payload_words(frames.data)
        print(f"{path.rsplit('/', 1)[-1]}: fitted on the first {share:.0%} ({int((~after).sum())} frames)")
        for s in state.signals:
            if not 0 < s.max_run <= MOVING:
                continue
            rows = frames.can_id == s.can_id
            rest = signal_values(words[rows], s)[after[rows]]
            if len(rest) < 2:
                continue
            run, to_end = longest_still(rest)
            moving += 1
            stopped += run > 4 * s.max_run
            print(f"    {s.name:24s} longest still run: fit {s.max_run:3.0f} frames, rest {run:5d}"
                  f"{' (to the end)' if to_end else ''}{'   <- a freeze check would flag clean driving' if run > 4 * s.max_run else ''}")
    print(f"{stopped} of {moving} always-moving signals sat still for more than 4x their fitted longest run later")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
