"""A simulated folder in the ROAD data set's layout: long ambient drives and attack logs described by metadata.

    python results/ids/road_like/make_folder.py OUT_DIR [--copies N --minutes M --drives D]

OUT_DIR/ambient: three 15-minute clean drives (``--drives``, ``--minutes``); OUT_DIR/attacks: per attack type three 2-minute logs with one
10-second injection each, as masquerades (the genuine frames rewritten) and fabrications (frames added half a period
after the genuine ones):

* ``max_speedometer``: the vehicle-speed message's low byte set to 0xFF (the wheel speeds on another ID disagree);
* ``gear``: the gear message's first byte set to 5 while its second copy says otherwise (a state against its
  context, the reverse-light kind);
* ``max_coolant``: the coolant temperature set to full scale, 0xFF (a signal nothing else on the bus reflects,
  ROAD's max_engine_coolant_temp kind);
* ``correlated_signal``: the two front wheel speeds set to 0 while the rear ones and the vehicle speed go on
  (ROAD's kind: wheel speeds that cannot all be true).

``--intel`` sends the vehicle speed (0x0C8) and the four wheel speeds (0x110) little-endian (low byte first), as many
cars do: the speedometer attack then writes the low byte at byte 0. ``--copies N`` puts N simulated vehicles on one bus (IDs + 0..N-1; 16 IDs and ~440 frames/s each), the scale of a
real bus (ROAD's car: about 100 IDs): a check that the captures preset reads, fits and calibrates hours of it.

Each folder has a capture_metadata.json as ROAD's: injection ID, payload pattern (X = any nibble), interval in
seconds from the start of the log, modified (masquerade) or not.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.frames import FrameBatch

# attack type: (ID, {byte: value}, ROAD-style payload pattern)
ATTACKS = {"max_speedometer": (0x0C8, {1: 0xFF}, "XXFFXXXXXXXXXXXX"), "gear": (0x120, {0: 0x05}, "05XXXXXXXXXXXXXX"),
           "max_coolant": (0x2C0, {0: 0xFF}, "FFXXXXXXXXXXXXXX"),
           "correlated_signal": (0x110, {0: 0, 1: 0, 2: 0, 3: 0}, "00000000XXXXXXXX")}


def write_log(path: Path, b: FrameBatch, start: float) -> None:
    with open(path, "w") as fh:
        for k in range(len(b)):
            fh.write(f"({b.timestamp[k] + start:.6f}) can0 {int(b.can_id[k]):03X}#"
                     f"{b.data[k, :b.length[k]].tobytes().hex().upper()}\n")


def inject(b: FrameBatch, can_id: int, values: dict[int, int], t0: float, t1: float, masquerade: bool) -> FrameBatch:
    rows = np.flatnonzero((b.can_id == can_id) & (b.timestamp >= t0) & (b.timestamp <= t1))
    if masquerade:
        out = b.select(np.arange(len(b)))
        for byte, value in values.items():
            out.data[rows, byte] = value
        return out
    added = b.select(rows)
    for byte, value in values.items():
        added.data[:, byte] = value
    added.timestamp = added.timestamp + 0.5 * float(np.median(np.diff(b.timestamp[b.can_id == can_id])))
    both = FrameBatch.concat([b, added])
    return both.select(np.argsort(both.timestamp, kind="stable"))


INTEL = {0x0C8: [(0, 1)], 0x110: [(0, 1), (2, 3), (4, 5), (6, 7)]}  # --intel: 16-bit signals' byte pairs swapped
INTEL_ATTACKS = {**ATTACKS, "max_speedometer": (0x0C8, {0: 0xFF}, "FFXXXXXXXXXXXXXX")}  # its low byte is byte 0 now


def to_intel(b: FrameBatch) -> FrameBatch:
    """``b`` with the INTEL signals sent little-endian."""
    for can_id, pairs in INTEL.items():
        rows = b.can_id == can_id
        for hi, lo in pairs:
            b.data[rows, hi], b.data[rows, lo] = b.data[rows, lo], b.data[rows, hi].copy()
    return b


def bus(seconds: float, seed: int, copies: int = 1, intel: bool = False) -> FrameBatch:
    """``copies`` simulated vehicles' traffic on one bus (copy c's IDs + c, its own drive)."""
    if copies == 1:
        b = sim.simulate("none", seconds, seed)
    else:
        parts = []
        for c in range(copies):
            b = sim.simulate("none", seconds, seed * 31 + c)
            b.can_id = b.can_id + c
            parts.append(b)
        both = FrameBatch.concat(parts)
        b = both.select(np.argsort(both.timestamp, kind="stable"))
    return to_intel(b) if intel else b


def main(out: Path, copies: int = 1, minutes: float = 15.0, drives: int = 3, intel: bool = False) -> None:
    (out / "ambient").mkdir(parents=True, exist_ok=True)
    (out / "attacks").mkdir(parents=True, exist_ok=True)
    meta = {}
    for k in range(1, drives + 1):
        stem = f"ambient_drive_{k}"
        write_log(out / "ambient" / f"{stem}.log", bus(60.0 * minutes, 20 + k, copies, intel), 1000.0 * k)
        meta[stem] = {"elapsed_sec": 60.0 * minutes, "on_dyno": False}
    (out / "ambient" / "capture_metadata.json").write_text(json.dumps(meta, indent=1))
    meta, rng, seed = {}, np.random.default_rng(0), 100
    for name, (can_id, values, pattern) in (INTEL_ATTACKS if intel else ATTACKS).items():
        for k in range(1, 4):
            for masquerade in (True, False):
                seed += 1
                t0 = float(rng.uniform(30.0, 90.0))
                b = inject(bus(120.0, seed, copies, intel), can_id, values, t0, t0 + 10.0, masquerade)
                stem = f"{name}_attack_{k}" + ("_masquerade" if masquerade else "")
                write_log(out / "attacks" / f"{stem}.log", b, 50_000.0 + seed)
                meta[stem] = {"injection_id": hex(can_id), "injection_data_str": pattern,
                              "injection_interval": [t0, t0 + 10.0], "modified": masquerade, "elapsed_sec": 120.0}
    (out / "attacks" / "capture_metadata.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--copies", type=int, default=1, help="simulated vehicles on one bus (16 IDs each)")
    ap.add_argument("--minutes", type=float, default=15.0, help="length of each ambient drive")
    ap.add_argument("--drives", type=int, default=3, help="ambient drives")
    ap.add_argument("--intel", action="store_true", help="vehicle and wheel speeds little-endian")
    a = ap.parse_args()
    main(a.out, a.copies, a.minutes, a.drives, a.intel)
