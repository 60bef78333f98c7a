"""Frame-by-frame check of the short-drive judgements on ROAD's real captures: flags following states on other IDs
(states.fit_followers, sig_state) and slow signals that leapt to full scale (sig_full).

Each case fits a FeatureState on the benign frames of some captures (plus, for a held-out capture, its frames before
a cut) and counts sig_state > 0.6 and sig_full > 0.5 on the held-out capture's frames after the cut: attack frames
flagged, clean frames flagged. The last case sets the reverse light on for 5 s of a recording driving forwards
(ROAD's reverse_light_on kind, injected) with the fit on all eight files.

    python results/ids/road_real/followers_check.py DATA     (DATA: the folder of run.sh, plus fuzzing_attack_{1,2}.csv)
"""

import sys

import numpy as np

from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.readers import read_capture
from fastmaml.apps.ids.can.signals import payload_words, words_to_bytes, write_field

FILES = ["correlated_signal_attack_2", "correlated_signal_attack_2_masquerade", "correlated_signal_attack_3",
         "correlated_signal_attack_3_masquerade", "max_engine_coolant_temp_attack",
         "max_engine_coolant_temp_attack_masquerade", "reverse_light_off_attack_1",
         "reverse_light_off_attack_1_masquerade"]
# (held-out capture, cut in seconds from its start, captures left out of the fit besides it)
CASES = [("reverse_light_off_attack_1_masquerade", 16.0, []),
         ("reverse_light_off_attack_1", 10.0, ["reverse_light_off_attack_1_masquerade"]),
         ("correlated_signal_attack_3_masquerade", 0.0, ["correlated_signal_attack_3", "correlated_signal_attack_2",
                                                        "correlated_signal_attack_2_masquerade"]),
         ("correlated_signal_attack_2", 0.0, ["correlated_signal_attack_3", "correlated_signal_attack_2_masquerade",
                                              "correlated_signal_attack_3_masquerade"]),
         ("max_engine_coolant_temp_attack_masquerade", 19.0, ["max_engine_coolant_temp_attack"]),
         # as the coolant fold fits (without the correlated-signal test recordings): the coolant byte takes 7 values,
         # too few for a signal, and is judged as a coarse field (signals.find_coarse_fields)
         ("max_engine_coolant_temp_attack_masquerade", 19.0, ["max_engine_coolant_temp_attack",
                                                             "correlated_signal_attack_3",
                                                             "correlated_signal_attack_3_masquerade"]),
         ("fuzzing_attack_1", 0.0, []), ("fuzzing_attack_2", 0.0, [])]
REVERSE_LIGHT = (0xD0, 20)  # ID, big-endian bit


CHECKS = (("sig_state", 0.6), ("sig_full", 0.5))  # (column, flagged above)


def flagged(state: FeatureState, frames) -> dict[str, np.ndarray]:
    """Bool per frame for each of CHECKS, from one featurization of ``frames``."""
    fz = FrameFeaturizer(state)
    x = fz.transform(frames)
    return {column: x[:, fz.feature_names.index(column)] > threshold for column, threshold in CHECKS}


def main(data: str) -> None:
    read = {}

    def capture(name: str):
        if name not in read:
            read[name] = read_capture(f"{data}/{name}.csv")
        return read[name]

    for held, cut, left_out in CASES:
        h = capture(held)
        t = h.timestamp - h.timestamp[0]
        fit = [capture(n) for n in FILES if n != held and n not in left_out] + ([h.select(t < cut)] if cut else [])
        state = FeatureState.fit(fit, signals=True)
        y, after = h.is_attack(), t >= cut
        for column, f in flagged(state, h).items():
            print(f"{held} (cut {cut:.0f} s, {len(left_out)} more left out), {column}: attack frames flagged "
                  f"{f[y & after].sum()} of {(y & after).sum()}, clean frames flagged {f[~y & after].sum()} of "
                  f"{(~y & after).sum()}")
    state = FeatureState.fit([capture(n) for n in FILES], signals=True)
    h = capture("fuzzing_attack_1")
    t = h.timestamp - h.timestamp[0]
    rows = np.flatnonzero((h.can_id == REVERSE_LIGHT[0]) & (t >= 10) & (t < 15) & ~h.is_attack())
    lit = h.select(np.arange(len(h)))  # a copy
    lit.data[rows] = words_to_bytes(write_field(payload_words(lit.data[rows]), REVERSE_LIGHT[1], 1, 1.0))
    f = flagged(state, lit)["sig_state"]
    print(f"fuzzing_attack_1 with the reverse light set on for 5 s, fit on the eight files: {f[rows].sum()} of "
          f"{len(rows)} light frames flagged, {f.sum() - f[rows].sum()} other frames flagged")


if __name__ == "__main__":
    main(sys.argv[1])
