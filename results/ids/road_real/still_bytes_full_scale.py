"""Still bytes of a short clean drive that reach 0xFF in other clean traffic: what a rule judging "a byte that never
moved leapt to full scale" would flag. Measured before deciding not to build it (README, "A byte-change scale a short
drive can vouch for").

    python results/ids/road_real/still_bytes_full_scale.py IDS_DATA ROAD_DATA [OTHER_DRIVE.csv ...]

IDS_DATA: shared data's ids/ folder (CrySyS, DAGA and CICIoV2024 clean captures, fitted on their first part);
ROAD_DATA: the ROAD CSVs (the clean prefixes clean_*_pre.csv are the fits, every CSV's benign frames the tests);
OTHER_DRIVE.csv: more clean captures to fit on (e.g. clean_other_drive.csv of the own-car section).
"""

import glob
import sys

import numpy as np

from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.readers import read_capture


def benign(path: str) -> FrameBatch:
    f = read_capture(path)
    return f.select(~f.is_attack())


def still_bytes(f: FrameBatch) -> dict[tuple[int, int], int]:
    """(ID, byte) -> its one value, for IDs with 200 clean frames or more (never 0xFF: that is already full scale)."""
    out = {}
    for cid in np.unique(f.can_id).tolist():
        d = f.data[f.can_id == cid, :8]
        if len(d) >= 200:
            for i in range(8):
                u = np.unique(d[:, i])
                if len(u) == 1 and u[0] != 255:
                    out[(cid, i)] = int(u[0])
    return out


def reaching_full_scale(still: dict[tuple[int, int], int], g: FrameBatch) -> list[tuple[str, int, int, int, int]]:
    """(ID, byte, still value, leaps to 0xFF, frames at 0xFF) for the still bytes that reach 0xFF in ``g``."""
    out = []
    for (cid, i), v in still.items():
        x = g.data[g.can_id == cid, i]
        at = x == 255
        if at.any():
            leaps = at & (np.concatenate([[v], x[:-1]]) != 255)
            out.append((hex(cid), i, v, int(leaps.sum()), int(at.sum())))
    return out


def main(ids_root: str, road: str, others: list[str]) -> None:
    for name, share in [("crysys-sample/S-1-1-benign.log", 0.5), ("daga/clean/V40_03.can.zip", 0.6),
                        ("ciciov2024/decimal/decimal_benign.csv.zip", 0.6)]:
        f = benign(f"{ids_root}/{name}")
        n = int(len(f) * share)
        s = still_bytes(f.select(slice(0, n)))
        hits = reaching_full_scale(s, f.select(slice(n, len(f))))
        print(f"{name}: {len(s)} still bytes in the first {share:.0%}; reaching 0xFF in the rest: {hits or 'none'}")
    tests = {p: benign(p) for p in sorted(glob.glob(f"{road}/*.csv"))}  # read once, judged against every fit
    for fit in sorted(glob.glob(f"{road}/clean_*_pre.csv")) + others:
        s = still_bytes(tests[fit] if fit in tests else benign(fit))
        hit = [(p, h) for p, g in tests.items() if p != fit and (h := reaching_full_scale(s, g))]
        print(f"{fit.split('/')[-1]}: {len(s)} still bytes; reaching 0xFF in {len(hit)} of {len(tests) - 1} captures")
        for p, h in hit:
            print(f"    {p.split('/')[-1]}: {h[:4]}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
