"""Captures labelled by an injection metadata file (the layout of the ROAD data set, Verma et al. 2024).

Such a folder holds candump logs and one ``capture_metadata.json`` that describes each log by its
file stem instead of labelling frames::

    {"max_speedometer_attack_1_masquerade": {"injection_id": "0xd0", "injection_data_str": "XXXXXXXXXXFFXXXX",
                                             "injection_interval": [42.0, 66.4], "modified": true, ...},
     "ambient_dyno_drive_basic_long": {"elapsed_sec": 1200.0, ...}, ...}

A frame is an attack frame when it carries ``injection_id``, lies inside ``injection_interval``
(seconds from the start of the log, or on the log's own clock) and its payload matches
``injection_data_str`` (hex, one character per nibble, ``X`` any): the masquerade variant
(``modified``) rewrote the genuine frames of that ID, the fabrication variant added frames of it.
An entry without an injection is a clean drive, unless its stem names an attack. The attack is
named after the stem without its number, with the variant (``max_speedometer_attack_1_masquerade``
-> ``max_speedometer_masquerade``, ``max_speedometer_attack_2`` -> ``max_speedometer_fabrication``),
so a type's several logs form one attack. Entries whose injection cannot be told frame by frame (no single CAN ID, as in fuzzing,
or none given, as in the physical accelerator attacks) are left out and listed.

Use: ``source.captures=[{path: road/attacks, labels: road/attacks/capture_metadata.json}]`` (a
folder: every ``.log`` in it the metadata describes) or one log with the same ``labels``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fastmaml.apps.ids.can.frames import BENIGN, FrameBatch
from fastmaml.errors import DataError

_NUMBERED = re.compile(r"^(?P<base>.*?)(?:_attack)?(?:_\d+)?(?P<masq>_masquerade)?$")


@dataclass
class Injection:
    """One log's injection, as its metadata entry describes it (``can_id`` None: a clean drive)."""

    stem: str
    can_id: int | None = None
    pattern: str = ""  # hex nibbles, X = any
    interval: tuple[float, float] | None = None
    modified: bool = False
    unusable: str = ""  # why the injection cannot be labelled frame by frame ("" = it can)

    @property
    def attack(self) -> str:
        m = _NUMBERED.match(self.stem)
        base = m.group("base") if m else self.stem
        return f"{base}_{'masquerade' if self.modified or (m and m.group('masq')) else 'fabrication'}"


def is_metadata(path: str | Path) -> bool:
    """Whether a ``labels`` file is injection metadata (a ``.json`` file) rather than per-frame labels."""
    return str(path).lower().endswith(".json")


def read_metadata(path: str | Path) -> dict[str, Injection]:
    """The metadata file's entries by log stem; DataError naming the file and entry when one is malformed."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the injection metadata ({e}); give the capture_metadata.json "
                        "that came with the logs") from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: injection metadata must be a JSON object of log stem -> entry")
    out = {}
    for stem, entry in raw.items():
        if not isinstance(entry, dict):
            raise DataError(f"{path}: entry {stem!r} is not an object")
        out[stem] = _entry(path, stem, entry)
    return out


def _entry(path: str | Path, stem: str, e: dict) -> Injection:
    where = f"{path}: entry {stem!r}"
    if "injection_id" not in e and "injection_interval" not in e:
        if "attack" in stem.lower():  # an attack whose frames the entry does not say (a physical one)
            return Injection(stem, unusable="no injection described")
        return Injection(stem)  # a clean drive
    inj = Injection(stem, modified=bool(e.get("modified", False)))
    interval = e.get("injection_interval")
    if (not isinstance(interval, (list, tuple)) or len(interval) != 2
            or not all(isinstance(x, (int, float)) for x in interval) or not interval[0] < interval[1]):
        raise DataError(f"{where}: injection_interval {interval!r} is not [start, end] in seconds with start < end")
    inj.interval = (float(interval[0]), float(interval[1]))
    cid = str(e.get("injection_id", ""))
    try:
        inj.can_id = int(cid, 16)
    except ValueError:
        inj.unusable = f"injection_id {cid!r} is not one CAN ID"
        return inj
    pattern = str(e.get("injection_data_str", "")).upper()
    if len(pattern) % 2 or len(pattern) > 16 or re.fullmatch(r"[0-9A-FX]*", pattern) is None:
        raise DataError(f"{where}: injection_data_str {pattern!r} is not up to 8 payload bytes in hex with X for "
                        "any nibble")
    inj.pattern = pattern
    return inj


def matches(data: np.ndarray, pattern: str) -> np.ndarray:
    """Bool [n]: payloads (uint8 [n, >= len(pattern)/2]) whose nibbles equal the pattern's non-X ones."""
    ok = np.ones(len(data), bool)
    for k, ch in enumerate(pattern):
        if ch == "X":
            continue
        byte = data[:, k // 2] if k // 2 < data.shape[1] else np.zeros(len(data), np.uint8)
        nibble = (byte >> 4) if k % 2 == 0 else (byte & 0x0F)
        ok &= nibble == int(ch, 16)
    return ok


def label(frames: FrameBatch, inj: Injection, source: str) -> FrameBatch:
    """``frames`` labelled by the injection (all benign for a clean drive), in place; DataError naming ``source``
    when the interval lies outside the log or selects no frame."""
    attack = np.zeros(len(frames), bool)
    if inj.can_id is not None and inj.interval is not None:
        if not frames.has_timestamps:
            raise DataError(f"{source}: the log has no timestamps, so the injection interval cannot be placed")
        t = frames.timestamp
        t0, t1 = inj.interval
        span = float(t[-1] - t[0]) if len(t) else 0.0
        if not (t[0] <= t0 <= t[-1]) and t0 <= span + 1.0:  # seconds from the start of the log
            t0, t1 = t0 + float(t[0]), t1 + float(t[0])
        inside = (t >= t0) & (t <= t1)
        if not inside.any():
            raise DataError(f"{source}: injection_interval {list(inj.interval)} lies outside the log "
                            f"({span:.1f} s); is this the metadata of these logs?")
        attack = inside & (frames.can_id == inj.can_id) & matches(frames.data, inj.pattern)
        if not attack.any():
            raise DataError(f"{source}: no frame of ID 0x{inj.can_id:X} in the injection interval matches "
                            f"{inj.pattern!r}; is this the metadata of these logs?")
    names = [BENIGN] if inj.can_id is None else [BENIGN, inj.attack]
    frames.label = attack.astype(np.int16)
    frames.label_names = names
    return frames


def logs_in(folder: str | Path, metadata: dict[str, Injection], log: Callable[[str], None]) -> list[Path]:
    """The ``.log`` files of ``folder`` the metadata describes and labels, in name order; the others listed."""
    paths = sorted(Path(folder).glob("*.log"))
    if not paths:
        raise DataError(f"{folder}: no .log files; give the folder holding the candump logs")
    keep, left = [], []
    for p in paths:
        inj = metadata.get(p.stem)
        if inj is None:
            left.append(f"{p.name} (no metadata entry)")
        elif inj.unusable:
            left.append(f"{p.name} ({inj.unusable})")
        else:
            keep.append(p)
    if left:
        log(f"{folder}: left out {len(left)} log(s) that cannot be labelled frame by frame: {', '.join(left)}")
    if not keep:
        raise DataError(f"{folder}: none of its logs can be labelled from the metadata")
    return keep


__all__ = ["Injection", "is_metadata", "label", "logs_in", "matches", "read_metadata"]
