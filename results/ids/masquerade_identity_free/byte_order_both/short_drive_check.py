"""Do signal partners fitted on the start of DAGA's clean drive hold for the rest of it? Per byte order.

    python results/ids/masquerade_identity_free/byte_order_both/short_drive_check.py DATA

(DATA: the shared data folder holding ids/daga/clean/V40_03.can.zip.) Fits the signal features on the first 67 s
(91 s) of the clean capture, streams the partner-plausibility rule over the rest of it — clean driving, so every
alert is false — with its threshold calibrated on the fitted part for 10 false alerts per hour.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from fastmaml.apps.ids.can.baselines import PlausibilityRule
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.readers import read_capture
from fastmaml.apps.ids.evidence import calibrate, cusum_alerts, rule_alarm, rule_frame_scores
from fastmaml.apps.ids.samples import SampleSet


def flags(state: FeatureState, part) -> np.ndarray:
    fz = FrameFeaturizer(state)
    x = torch.from_numpy(fz.transform(part))
    s = SampleSet(x, torch.zeros(len(x), dtype=torch.long), ["benign", "attack"], fz.feature_names, "")
    return PlausibilityRule.for_state(state).predict_samples(s).numpy()


def main(data: Path) -> None:
    b = read_capture(data / "ids" / "daga" / "clean" / "V40_03.can.zip", "daga")
    t = b.timestamp - b.timestamp[0]
    for cut_s in (67.0, 91.0):
        k = int(np.searchsorted(t, cut_s))
        fit, rest = b.select(slice(0, k)), b.select(slice(k, len(b)))
        for order in ("big", "both"):
            state = FeatureState.fit([fit], signals=True, byte_order=order)
            cal = calibrate(rule_frame_scores(flags(state, fit)), fit.timestamp, fit.can_id.astype(np.int64), 10.0,
                            rule_alarm())
            f = flags(state, rest)
            alerts = cusum_alerts(rule_frame_scores(f), rest.timestamp, rest.can_id.astype(np.int64),
                                  rule_alarm().calibrated(cal))[0]
            ids, n = np.unique(rest.can_id[f], return_counts=True)
            print(f"fitted on {cut_s:.0f} s, {order}: {sum(bool(s.partners) for s in state.signals)} partnered signals; "
                  f"the next {t[-1] - cut_s:.0f} s of clean driving: {len(alerts.index)} alerts, "
                  f"{int(f.sum())} frames flagged {dict(zip([hex(i) for i in ids.tolist()], n.tolist()))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
