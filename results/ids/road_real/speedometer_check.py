"""ROAD's max_speedometer kind, injected into ROAD's real recordings (its own logs are not in the public conversion
run.sh reads): the speedometer byte of 0x0D0 (byte 5, ROAD's metadata: injection_data_str XXXXXXXXXXFFXXXX) set to
0xFF on the genuine frames (a masquerade) over the middle 40% of a recording, frame by frame against the plausibility
rule a fold would fit: the other recordings' benign frames plus the held-out one's first 30%.

    python results/ids/road_real/speedometer_check.py DATA     (DATA: the folder of run.sh, plus fuzzing_attack_{1,2}.csv)

Prints, per recording, the injected frames flagged (and the checks that fired), its partners' frames flagged while it
lies (their residual against it moves too: true alerts when judged), and every other frame after the cut flagged. Synthetic injection on real recordings: a floor, not a measurement on ROAD's own max_speedometer logs.
"""

import sys

import numpy as np

from fastmaml.apps.ids.can.baselines import PlausibilityRule
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.readers import read_capture

RECORDINGS = ["correlated_signal_attack_2", "correlated_signal_attack_3", "max_engine_coolant_temp_attack",
              "reverse_light_off_attack_1", "fuzzing_attack_1", "fuzzing_attack_2"]
SPEEDOMETER = (0xD0, 5)  # ID, payload byte
FIT_SHARE, ATTACK = 0.3, (0.4, 0.8)  # the held-out recording's fitted share; the injected span (shares of its time)


def main(data: str) -> None:
    clean = {}
    for name in RECORDINGS:
        frames = read_capture(f"{data}/{name}.csv")
        clean[name] = frames.select(~frames.is_attack())  # fabrications' added frames and fuzzing frames left out
    for held in RECORDINGS:
        h = clean[held]
        t = h.timestamp - h.timestamp[0]
        fit = [clean[n] for n in RECORDINGS if n != held] + [h.select(t < FIT_SHARE * t[-1])]
        state = FeatureState.fit(fit, signals=True)
        rule = PlausibilityRule.for_state(state)
        attacked = h.select(np.arange(len(h)))  # a copy
        rows = (attacked.can_id == SPEEDOMETER[0]) & (t >= ATTACK[0] * t[-1]) & (t < ATTACK[1] * t[-1])
        attacked.data[rows, SPEEDOMETER[1]] = 0xFF
        fz = FrameFeaturizer(state)
        x = fz.transform(attacked)
        checks = rule.checks(fz.feature_names, x)
        flagged = np.array([bool(c) for c in checks])
        after = t >= FIT_SHARE * t[-1]
        # Its partners' frames while it lies (their residual against it moves too: true alerts when judged).
        sid = SPEEDOMETER[0]
        partners = {p[0] for s in state.signals if s.can_id == sid for p in s.partners}
        partners |= {s.can_id for s in state.signals if any(p[0] == sid for p in s.partners)}
        during = (t >= ATTACK[0] * t[-1]) & (t < ATTACK[1] * t[-1]) & np.isin(attacked.can_id, sorted(partners))
        rest = after & ~rows & ~during
        fired = sorted({c for i in np.flatnonzero(rows) for c in checks[i]})
        others = sorted({int(k) for k in attacked.can_id[rest & flagged]})
        print(f"{held}: {flagged[rows].sum()} of {rows.sum()} speedometer frames flagged ({', '.join(fired) or '-'}); "
              f"its partners' ({', '.join(f'0x{k:X}' for k in sorted(partners))}) frames flagged while it lies "
              f"{flagged[during].sum()} of {during.sum()}; other frames flagged after the cut {flagged[rest].sum()} "
              f"of {rest.sum()} (IDs {', '.join(f'0x{k:X}' for k in others) or '-'})")


if __name__ == "__main__":
    main(sys.argv[1])
