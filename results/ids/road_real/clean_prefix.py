"""The clean driving at the start of a labelled CSV capture (Time,Id,Byte1..Byte8,Label): every frame up to 0.5 s
before its first attack frame, as a capture of its own, for `train_source={kind: masquerade, ...}`.

    python results/ids/road_real/clean_prefix.py DATA/max_engine_coolant_temp_attack.csv clean_coolant_pre.csv
"""

import csv
import sys


def main(src: str, dst: str, margin_s: float = 0.5) -> None:
    with open(src, newline="") as fh:
        rows = list(csv.reader(fh))
    head, body = rows[0], rows[1:]
    label = head.index("Label")
    attack_times = [float(r[0]) for r in body if r[label] != "Benign"]
    if not attack_times:
        sys.exit(f"{src}: no attack frame; the whole file is clean already")
    cut = min(attack_times) - margin_s
    keep = [r for r in body if float(r[0]) < cut]
    with open(dst, "w", newline="") as fh:
        csv.writer(fh).writerows([head] + keep)
    print(f"{dst}: {len(keep)} frames, {float(keep[-1][0]) - float(keep[0][0]):.1f} s of clean driving")


if __name__ == "__main__":
    main(*sys.argv[1:3])
