"""Share of clean frames each column flags after the cut of a long clean drive, the columns fitted before it.

    python results/ids/long_drive/clean_columns.py CAPTURE [CUT_SECONDS]

Columns that judge a value against clean driving must stay quiet on the clean driving that follows the part they
were fitted on; any frame they flag there is a false alert in the making. Prints, per column, the share of the frames
after the cut above 0 and above 0.25, and the most it reaches.
"""

import sys
import time

import numpy as np

from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.readers import open_capture

COLUMNS = ["delta_ratio", "delta2_ratio", "xid_residual", "sig_range", "sig_edge", "sig_jump", "sig_stuck",
           "sig_residual", "sig_state", "sig_leap"]

frames = open_capture(sys.argv[1]).read_all()
cut = int(np.searchsorted(frames.timestamp, float(sys.argv[2]) if len(sys.argv) > 2 else 1800.0))
fit, after = frames.select(slice(0, cut)), frames.select(slice(cut, len(frames)))
t0 = time.time()
state = FeatureState.fit(fit, signals=True)
fz = FrameFeaturizer(state)
x = fz.transform(after)
print(f"fitted on {len(fit)} frames ({fit.timestamp[-1] - fit.timestamp[0]:.0f} s) in {time.time() - t0:.1f} s; "
      f"{len(after)} frames after the cut ({after.timestamp[-1] - after.timestamp[0]:.0f} s)")
print(f"{'column':14s} {'> 0':>8s} {'> 0.25':>8s} {'max':>6s}")
for c in COLUMNS:
    if c not in fz.feature_names:
        print(f"{c:14s} {'(none)':>8s}")
        continue
    v = x[:, fz.feature_names.index(c)]
    print(f"{c:14s} {np.mean(v > 0):8.4f} {np.mean(v > 0.25):8.4f} {v.max():6.2f}")
