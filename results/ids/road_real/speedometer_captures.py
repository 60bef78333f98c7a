"""ROAD's max_speedometer kind made on one of ROAD's real recordings, as a masquerade / fabrication pair in the
conversion's CSV layout, to run through run.sh's pipeline beside the eight real files (its own logs are not in the
public conversion). The speedometer byte of 0x0D0 (byte 5; ROAD's metadata: injection_data_str XXXXXXXXXXFFXXXX) is
0xFF over the middle 40% of the recording's benign frames: on the genuine frames (masquerade), or on forged copies
sent 1 ms after each genuine frame (fabrication).

    python results/ids/road_real/speedometer_captures.py DATA/fuzzing_attack_2.csv OUTDIR

writes OUTDIR/max_speedometer_injected.csv and OUTDIR/max_speedometer_injected_masquerade.csv. A floor, not ROAD's
own max_speedometer logs: the recording is real, the falsification is ours.
"""

import csv
import sys
from pathlib import Path

SPEEDOMETER_ID, BYTE = "0D0", 5
SPAN = (0.4, 0.8)


def main(src: str, out: str) -> None:
    with open(src, newline="") as f:
        rows = [r for r in csv.reader(f)]
    header, body = rows[0], [r for r in rows[1:] if r[-1] == "Benign"]
    t0, t1 = float(body[0][0]), float(body[-1][0])
    lo, hi = t0 + SPAN[0] * (t1 - t0), t0 + SPAN[1] * (t1 - t0)
    masq, fabr = [], []
    for r in body:
        lies = r[1].upper().lstrip("0") == SPEEDOMETER_ID.lstrip("0") and lo <= float(r[0]) < hi
        fabr.append(r)
        if not lies:
            masq.append(r)
            continue
        forged = list(r)
        forged[2 + BYTE] = "FF"
        masq.append(forged[:-1] + ["Masquerade"])
        fabr.append([f"{float(r[0]) + 0.001:.6f}"] + forged[1:-1] + ["Fabrication"])
    fabr.sort(key=lambda r: float(r[0]))
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, part in (("max_speedometer_injected.csv", fabr), ("max_speedometer_injected_masquerade.csv", masq)):
        with open(Path(out) / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(part)
        print(f"{Path(out) / name}: {len(part)} frames, {sum(r[-1] != 'Benign' for r in part)} attack frames")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
