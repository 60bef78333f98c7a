"""A simulated vehicle CAN bus with injected attacks that reuse legitimate IDs.

Why: in the real CICIoV2024 captures every attack frame carries an ID never seen in benign
traffic, so an ID allow-list is already a perfect detector. Here ECUs send periodic frames
on a fixed ID set with physically consistent signals (speed, RPM from speed and gear,
steering, throttle/brake, rolling counters and checksums), and attacks reuse those IDs, so
detectors must look at timing and content.

Bus: every sender (each ECU, the attacker) queues frames at its own times; ``transmit``
then puts them on one shared wire (``BusConfig``, 500 kbit/s by default). A frame occupies
the wire for its length in bits (standard/extended ID, DLC, worst-case bit stuffing, the
3-bit interframe space), frames never overlap, and when the bus becomes free the pending
frame with the lowest ID wins arbitration. Each sender stream (sender, ID) has a transmit
buffer ``tx_buffer_depth`` deep (default 1: a newer instance of a periodic message replaces
the one still waiting, as CAN drivers with one buffer per message do), so a frame that
cannot get on the bus before enough newer ones of its stream are queued is dropped. Hence a
high-priority flood delays, and when it saturates the bus starves, lower-priority IDs. The
timestamps are reception times (end of frame). ``bus=None`` gives the old ideal bus:
infinitely fast, no contention.

Determinism: the same seed gives the same drive cycle and the same frames queued by the
genuine ECUs whatever the attack (separate random streams), and the same attack frames;
what reaches the wire then depends on the attack through the bus (delays, drops).

DoS: as in the HCRL Car-Hacking data set, one frame every 0.3 ms (``DOS_PERIOD_S``, small
jitter) during each burst, ~90% of a 500 kbit/s bus by itself, so every burst saturates the bus;
lower-priority IDs only get the gaps the flood leaves (delayed by up to tens or hundreds of ms,
the attacker losing some of its own frames). Car-Hacking injects ID 0x000; here the flood uses
the highest-priority legitimate ID (0x0A0, replaying its latest genuine payload) so that, like
every attack here, it passes an ID allow-list; on this bus that ID wins arbitration against
every other genuine ID just as 0x000 would.

Labels: legitimate frames are ``"benign"``; injected frames carry the attack name. For
``suspension`` nothing is injected, so every frame sent while the victim ECU is silent is
labelled ``"suspension"`` (the anomaly is the state of the bus, detectable only over time,
so use window-level features for it). Dropped frames simply do not appear.

Not modelled: error frames and retransmissions (two senders contending with the same ID
are ordered by queueing time instead of colliding), bit-level timing and clock
synchronisation, the exact stuffing of each frame (worst case is used, so frames are ~10%
longer than typical and the bus saturates a little earlier than a real one would).
"""

from __future__ import annotations

import csv
import heapq
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastmaml.apps.ids.can.frames import BENIGN, CLASSIC_MAX, FrameBatch
from fastmaml.errors import DataError

ATTACKS: tuple[str, ...] = (
    "dos", "fuzzing", "spoof_speed", "spoof_rpm", "spoof_gear", "spoof_steering", "replay", "masquerade", "suspension",
)
DT = 0.01  # drive-cycle resolution, s

# IDs: fast, safety-relevant messages get the high priorities (low IDs), as on real buses.
ID_ENGINE, ID_STEER, ID_SPEED, ID_BRAKE, ID_WHEELS, ID_GEAR, ID_ABS = 0x0A0, 0x0B0, 0x0C8, 0x0D0, 0x110, 0x120, 0x1A0
ID_ACCEL, ID_TEMP, ID_BATT, ID_DOORS, ID_LIGHTS, ID_FUEL, ID_CLIMATE, ID_ODO, ID_AIRBAG = (
    0x260, 0x2C0, 0x320, 0x350, 0x370, 0x3E0, 0x440, 0x510, 0x5A0,
)
# (id, period s, has 4-bit counter in byte 6 + checksum in byte 7)
ECUS: tuple[tuple[int, float, bool], ...] = (
    (ID_ENGINE, 0.010, True), (ID_STEER, 0.010, True), (ID_SPEED, 0.020, True), (ID_BRAKE, 0.020, True),
    (ID_WHEELS, 0.020, False), (ID_GEAR, 0.050, True), (ID_ABS, 0.050, True), (ID_ACCEL, 0.100, False),
    (ID_TEMP, 0.100, False), (ID_BATT, 0.100, False), (ID_DOORS, 0.200, False), (ID_LIGHTS, 0.200, False),
    (ID_FUEL, 0.500, False), (ID_CLIMATE, 0.500, False), (ID_ODO, 1.000, False), (ID_AIRBAG, 1.000, True),
)
PERIODS: dict[int, float] = {i: p for i, p, _ in ECUS}
GEAR_UP_KMH = (0.0, 15.0, 30.0, 50.0, 70.0, 90.0)  # speed at which gear 1..6 engages
GEAR_RATIO = (3.6, 2.1, 1.4, 1.0, 0.8, 0.65)
FINAL_DRIVE, WHEEL_R, IDLE_RPM = 3.9, 0.31, 800.0
# DoS injection interval: the HCRL Car-Hacking data set's definition (a frame every 0.3 ms);
# the jitter is the attacker's own timing noise, small enough to keep the flood saturating.
DOS_PERIOD_S, DOS_JITTER_S = 0.0003, 0.00001


# ------------------------------------------------------------------ physics
@dataclass
class DriveCycle:
    """Vehicle state sampled every ``DT`` seconds."""

    t: np.ndarray
    speed_kmh: np.ndarray
    accel: np.ndarray  # m/s^2
    gear: np.ndarray  # 0 = neutral (stopped), 1..6
    rpm: np.ndarray
    throttle: np.ndarray  # %
    brake: np.ndarray  # %
    steering_deg: np.ndarray

    def at(self, t: np.ndarray) -> np.ndarray:
        """Sample indices for times ``t``."""
        return np.clip((t / DT).astype(np.int64), 0, len(self.t) - 1)


def gear_for_speed(speed_kmh: np.ndarray) -> np.ndarray:
    """Gear a simple automatic box selects at a speed (0 when stopped)."""
    g = np.searchsorted(np.array(GEAR_UP_KMH), speed_kmh, side="right").astype(np.int64)
    return np.where(speed_kmh < 1.0, 0, np.clip(g, 1, 6))


def rpm_for(speed_kmh: np.ndarray, gear: np.ndarray) -> np.ndarray:
    """Engine RPM from road speed and gear (idle when stopped)."""
    ratio = np.array((GEAR_RATIO[0], *GEAR_RATIO))[gear]
    wheel_rps = speed_kmh / 3.6 / (2 * np.pi * WHEEL_R)
    return np.maximum(IDLE_RPM, wheel_rps * 60.0 * ratio * FINAL_DRIVE * (gear > 0))


def drive_cycle(duration_s: float, seed: int) -> DriveCycle:
    """A smooth random driving profile: the car chases random target speeds with limited accel/jerk."""
    rng = np.random.default_rng([seed, 0])
    n = int(np.ceil(duration_s / DT)) + 1
    t = np.arange(n) * DT
    # Target speed changes every 5-20 s; stops (target 0) happen now and then.
    target = np.empty(n)
    k = 0
    while k < n:
        hold = int(rng.uniform(5, 20) / DT)
        target[k: k + hold] = 0.0 if rng.random() < 0.15 else rng.uniform(10, 125)
        k += hold
    v = np.zeros(n)  # km/h
    a = np.zeros(n)  # m/s^2
    for i in range(1, n):  # 100 steps/s, cheap enough and easier to keep physical than a vector trick
        want = np.clip(0.25 * (target[i] - v[i - 1]), -4.0, 2.5)
        a[i] = a[i - 1] + np.clip(want - a[i - 1], -3 * DT, 3 * DT) * 1.0  # jerk limit 3 m/s^3
        v[i] = max(0.0, v[i - 1] + a[i] * 3.6 * DT)
        if v[i] == 0.0:
            a[i] = max(a[i], 0.0)
    gear = gear_for_speed(v)
    rpm = rpm_for(v, gear) + rng.normal(0, 15, n)
    throttle = np.clip(a / 2.5, 0, 1) * 70 + np.clip(v / 130, 0, 1) * 20 * (a > -0.2)
    brake = np.clip(-a / 4.0, 0, 1) * 100
    # Steering: an Ornstein-Uhlenbeck walk whose spread shrinks with speed (lane changes vs parking).
    steer = np.zeros(n)
    noise = rng.normal(0, 1, n)
    for i in range(1, n):
        spread = 400.0 / (1.0 + v[i] / 10.0) + 10.0
        steer[i] = steer[i - 1] - 0.5 * steer[i - 1] * DT + spread * np.sqrt(DT) * noise[i] * 0.6
    steer = np.clip(steer, -540, 540)
    return DriveCycle(t, v, a, gear, rpm, throttle, brake, steer)


# ----------------------------------------------------------------- encoding
def checksum(data: np.ndarray, can_id: int) -> np.ndarray:
    """XOR of bytes 0..6 and the ID bytes: the byte 7 every counter-protected message carries."""
    return np.bitwise_xor.reduce(data[:, :7], axis=1) ^ np.uint8(can_id & 0xFF) ^ np.uint8((can_id >> 8) & 0xFF)


def _u16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.clip(np.round(x), 0, 65535).astype(np.int64)
    return (x >> 8).astype(np.uint8), (x & 0xFF).astype(np.uint8)


def _i16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.clip(np.round(x), -32768, 32767).astype(np.int64) & 0xFFFF
    return (x >> 8).astype(np.uint8), (x & 0xFF).astype(np.uint8)


def decode_speed(data: np.ndarray) -> np.ndarray:
    """km/h from ID 0x0C8 payloads [N, 8]."""
    return (data[:, 0].astype(np.int64) << 8 | data[:, 1]) / 100.0


def decode_rpm(data: np.ndarray) -> np.ndarray:
    """RPM from ID 0x0A0 payloads."""
    return (data[:, 0].astype(np.int64) << 8 | data[:, 1]) / 4.0


def decode_gear(data: np.ndarray) -> np.ndarray:
    """Gear from ID 0x120 payloads."""
    return data[:, 0].astype(np.int64)


def decode_steering(data: np.ndarray) -> np.ndarray:
    """Steering angle (deg) from ID 0x0B0 payloads."""
    raw = data[:, 0].astype(np.int64) << 8 | data[:, 1]
    return np.where(raw >= 32768, raw - 65536, raw) / 10.0


def encode(can_id: int, t: np.ndarray, dc: DriveCycle, rng: np.random.Generator,
           override: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Payloads [n, 8] of message ``can_id`` at times ``t`` (counter/checksum bytes left zero).

    ``override`` replaces drive-cycle signals (``speed``, ``rpm``, ``gear``, ``steering``), for spoofing.
    """
    n = len(t)
    i = dc.at(t)
    o = override or {}
    speed = o.get("speed", dc.speed_kmh[i])
    d = np.zeros((n, 8), np.uint8)
    if can_id == ID_ENGINE:
        d[:, 0], d[:, 1] = _u16(o.get("rpm", dc.rpm[i]) * 4)
        d[:, 2] = np.clip(dc.throttle[i] * 2.55, 0, 255).astype(np.uint8)
        d[:, 3] = np.clip(dc.throttle[i] * 1.8 + 20, 0, 255).astype(np.uint8)  # engine load
    elif can_id == ID_STEER:
        ang = o.get("steering", dc.steering_deg[i])
        d[:, 0], d[:, 1] = _i16(ang * 10)
        rate = np.gradient(dc.steering_deg)[i] / DT
        d[:, 2], d[:, 3] = _i16(rate)
    elif can_id == ID_SPEED:
        d[:, 0], d[:, 1] = _u16(speed * 100)
        d[:, 2] = (np.clip(np.round(dc.accel[i] * 10), -128, 127).astype(np.int64) & 0xFF).astype(np.uint8)
    elif can_id == ID_BRAKE:
        d[:, 0] = np.clip(dc.brake[i] * 2.55, 0, 255).astype(np.uint8)
        d[:, 1] = (dc.brake[i] > 1).astype(np.uint8)
    elif can_id == ID_WHEELS:
        for w in range(4):
            d[:, 2 * w], d[:, 2 * w + 1] = _u16((speed + rng.normal(0, 0.05, n)) * 100)
    elif can_id == ID_GEAR:
        d[:, 0] = o.get("gear", dc.gear[i]).astype(np.uint8)
        d[:, 1] = dc.gear[i].astype(np.uint8)
        d[:, 2] = np.clip(60 + t / 20, 0, 120).astype(np.uint8)
    elif can_id == ID_ABS:
        d[:, 0] = (dc.brake[i] > 60).astype(np.uint8)
        yaw = dc.steering_deg[i] * dc.speed_kmh[i] / 200.0
        d[:, 1], d[:, 2] = _i16(yaw * 10)
    elif can_id == ID_ACCEL:
        lat = dc.steering_deg[i] / 15.0 * (dc.speed_kmh[i] / 3.6) ** 2 / 300.0
        d[:, 0], d[:, 1] = _i16(lat * 100)
        d[:, 2], d[:, 3] = _i16(dc.accel[i] * 100)
    elif can_id == ID_TEMP:
        d[:, 0] = np.clip(50 + np.minimum(t, 300) / 300 * 40, 0, 255).astype(np.uint8)  # coolant +40 offset
        d[:, 1] = np.clip(45 + np.minimum(t, 600) / 600 * 50, 0, 255).astype(np.uint8)
    elif can_id == ID_BATT:
        d[:, 0], d[:, 1] = _u16(13800 + rng.normal(0, 40, n))
    elif can_id == ID_DOORS:
        d[:, 0] = 0  # all doors closed while driving
        d[:, 1] = 0x0F  # seat belts fastened
    elif can_id == ID_LIGHTS:
        d[:, 0] = 0x01  # low beam on
        d[:, 1] = np.where(dc.steering_deg[i] > 90, 1, np.where(dc.steering_deg[i] < -90, 2, 0)).astype(np.uint8)
    elif can_id == ID_FUEL:
        d[:, 0] = np.clip(200 - t / 60, 0, 255).astype(np.uint8)
    elif can_id == ID_CLIMATE:
        d[:, 0], d[:, 1] = 44, 3  # 22 degC set point, fan level 3
    elif can_id == ID_ODO:
        odo = 123456.7 + np.cumsum(dc.speed_kmh)[i] * DT / 3600
        x = np.round(odo * 10).astype(np.int64)
        d[:, 0], d[:, 1], d[:, 2] = (x >> 16) & 0xFF, (x >> 8) & 0xFF, x & 0xFF
    elif can_id == ID_AIRBAG:
        d[:, 0] = 0xA5  # heartbeat pattern
    else:
        raise DataError(f"can_sim: no encoder for ID 0x{can_id:X}")
    return d


def _protect(d: np.ndarray, can_id: int, counter: np.ndarray, checksum_ok: bool = True) -> np.ndarray:
    d = d.copy()
    d[:, 6] = (counter & 0x0F).astype(np.uint8)
    d[:, 7] = checksum(d, can_id)
    if not checksum_ok:
        d[:, 7] ^= 0x5A
    return d


# ---------------------------------------------------------------------- bus
IFS_BITS = 3  # interframe space: part of a frame's bus time, but after the receivers accept it


@dataclass(frozen=True)
class BusConfig:
    """Physical bus parameters used by ``transmit``.

    Attributes:
        bitrate: bit/s (500 kbit/s: the usual powertrain/chassis high-speed CAN).
        tx_buffer_depth: frames each sender stream (sender, ID) may have waiting; when a newer
            frame of the stream is queued and the buffer is full, the oldest waiting one is
            dropped. 1 = one buffer per message, overwritten by its next instance.
        max_wait_s: frames waiting longer than this are dropped too (ECU transmit timeout);
            ``inf`` relies on the buffer depth alone.
    """

    bitrate: float = 500_000.0
    tx_buffer_depth: int = 1
    max_wait_s: float = math.inf

    def __post_init__(self) -> None:
        if not self.bitrate > 0 or self.tx_buffer_depth < 1 or not self.max_wait_s > 0:
            raise DataError(f"can_sim: BusConfig needs bitrate > 0, tx_buffer_depth >= 1, max_wait_s > 0; got {self}")


@dataclass
class BusSchedule:
    """What ``transmit`` did with each queued frame (arrays in the input order)."""

    sent: np.ndarray  # bool: got on the wire
    start: np.ndarray  # float64 s: start of frame (SOF); NaN if dropped
    end: np.ndarray  # float64 s: end of frame incl. interframe space; NaN if dropped
    bits: np.ndarray  # int64 bits on the wire incl. stuffing and interframe space

    def reception_time(self, bitrate: float) -> np.ndarray:
        """When receivers accept each frame (end of frame, before the interframe space)."""
        return self.end - IFS_BITS / bitrate


@dataclass
class BusStats:
    """Summary of the bus over a simulated capture."""

    bitrate: float
    utilisation: float  # fraction of the capture the wire was busy
    queued: int
    dropped_benign: int
    dropped_attack: int
    max_delay_s: float  # longest queueing delay of a frame that was sent
    p99_delay_benign_s: float


def frame_bits(dlc: np.ndarray, is_extended: np.ndarray | bool = False) -> np.ndarray:
    """Bits a classic CAN data frame occupies on the bus, worst-case stuffing and 3-bit IFS included.

    Standard ID: 47 + 8n + floor((34 + 8n - 1) / 4); extended: 67 + 8n + floor((54 + 8n - 1) / 4)
    (n data bytes; the stuffable part is SOF..CRC). 8 bytes: 135 / 160 bits, i.e. 270 / 320 us at
    500 kbit/s. (Davis, Burns, Bril, Lukkien: Controller Area Network schedulability analysis, 2007.)
    """
    n = np.minimum(np.asarray(dlc, np.int64), CLASSIC_MAX)
    g = np.where(np.asarray(is_extended, bool), 54, 34)
    return g + 8 * n + 13 + (g + 8 * n - 1) // 4


def _drop_deadlines(ready: np.ndarray, stream: np.ndarray, depth: int) -> np.ndarray:
    """Time each frame leaves its sender's buffer unsent: when the ``depth``-th newer frame of its stream is queued."""
    n = len(ready)
    deadline = np.full(n, np.inf)
    order = np.lexsort((np.arange(n), ready, stream))
    s, r = stream[order], ready[order]
    later = np.arange(depth, n)
    same = s[later] == s[later - depth]
    deadline[order[later - depth][same]] = r[later][same]
    return deadline


def transmit(ready: np.ndarray, can_id: np.ndarray, dlc: np.ndarray, is_extended: np.ndarray | None = None,
             stream: np.ndarray | None = None, config: BusConfig | None = None) -> BusSchedule:
    """Serialize queued frames on one CAN bus with priority arbitration.

    Args:
        ready: time each frame is queued by its sender.
        can_id, dlc, is_extended: frame identity and size.
        stream: sender stream of each frame (frames of one stream share a transmit buffer);
            default: one stream per ID.
        config: bus parameters (default ``BusConfig()``).

    Whenever the bus is free (at ``end`` of the previous frame, interframe space included, or
    at the next queueing time if nothing waits), every waiting frame contends and the lowest
    ID wins; equal IDs go oldest first. A transmission is never pre-empted. A frame still
    waiting when its stream queues ``tx_buffer_depth`` newer frames, or after ``max_wait_s``,
    is dropped.
    """
    cfg = config or BusConfig()
    ready = np.asarray(ready, np.float64)
    n = len(ready)
    can_id = np.asarray(can_id, np.int64)
    ext = np.zeros(n, bool) if is_extended is None else np.asarray(is_extended, bool)
    stream = can_id if stream is None else np.asarray(stream, np.int64)
    bits = frame_bits(np.asarray(dlc), ext)
    # Extended IDs lose to a standard ID with the same 11 base bits (SRR/IDE are recessive), so
    # compare (base ID, extended, rest of the ID).
    key = np.where(ext, ((can_id >> 18) << 19) | (1 << 18) | (can_id & 0x3FFFF), can_id << 19)
    deadline = np.minimum(_drop_deadlines(ready, stream, cfg.tx_buffer_depth), ready + cfg.max_wait_s)
    start = np.full(n, np.nan)
    # The event loop is sequential by nature, but it only touches each frame twice (push/pop),
    # so plain Python lists keep it at ~1 us per frame.
    order = np.lexsort((key, ready)).tolist()
    r_l, k_l, d_l = ready.tolist(), key.tolist(), deadline.tolist()
    dur_l = (bits / cfg.bitrate).tolist()
    st_l = [math.nan] * n
    heap: list[tuple[int, float, int]] = []
    free = -math.inf  # when the wire is next free
    i = 0
    while i < n or heap:
        if not heap and r_l[order[i]] > free:
            free = r_l[order[i]]  # idle bus: the next queued frame starts the contention
        while i < n and r_l[order[i]] <= free:
            j = order[i]
            heapq.heappush(heap, (k_l[j], r_l[j], j))
            i += 1
        _, _, j = heapq.heappop(heap)
        if d_l[j] <= free:  # left the buffer (replaced or timed out) before it could win
            continue
        st_l[j] = free
        free += dur_l[j]
    start[:] = st_l
    sent = ~np.isnan(start)
    end = np.where(sent, start + bits / cfg.bitrate, np.nan)
    return BusSchedule(sent, start, end, bits)


# --------------------------------------------------------------- simulation
@dataclass
class SimResult:
    """Frames (time-sorted) plus the ground truth an evaluation or test may want."""

    frames: FrameBatch
    cycle: DriveCycle
    attack: str
    intervals: list[tuple[float, float]] = field(default_factory=list)
    target_id: int | None = None
    bus: BusStats | None = None  # None for the ideal bus


def attack_intervals(duration_s: float, seed: int, fraction: float = 0.3, n_bursts: int = 3,
                     warmup_s: float | None = None) -> list[tuple[float, float]]:
    """``n_bursts`` non-overlapping attack intervals covering about ``fraction`` of the capture after a warm-up."""
    rng = np.random.default_rng([seed, 3])
    warm = min(0.2 * duration_s, 10.0) if warmup_s is None else warmup_s
    span = duration_s - warm
    if span <= 0 or not 0 < fraction < 1 or n_bursts < 1:
        raise DataError(
            f"can_sim: need duration_s > warm-up ({warm:.1f}s), 0 < fraction < 1 and n_bursts >= 1 "
            f"(got {duration_s}, {fraction}, {n_bursts})"
        )
    length = fraction * span / n_bursts
    slot = span / n_bursts
    out = []
    for b in range(n_bursts):
        start = warm + b * slot + rng.uniform(0, slot - length)
        out.append((float(start), float(start + length)))
    return out


def _in_intervals(t: np.ndarray, intervals: list[tuple[float, float]]) -> np.ndarray:
    m = np.zeros(len(t), bool)
    for a, b in intervals:
        m |= (t >= a) & (t < b)
    return m


def _periodic_times(period: float, duration_s: float, rng: np.random.Generator,
                    phase: float | None = None) -> np.ndarray:
    phase = rng.uniform(0, period) if phase is None else phase
    k = np.arange(int((duration_s - phase) / period) + 1)
    jitter = np.clip(rng.normal(0, 0.02 * period, len(k)), -0.1 * period, 0.1 * period)
    drift = 1.0 + rng.uniform(-2e-4, 2e-4)  # ECU clock error
    t = phase + k * period * drift + jitter
    return t[(t >= 0) & (t < duration_s)]


def _make_batch(t: np.ndarray, ids: np.ndarray, data: np.ndarray, label: np.ndarray, names: list[str]) -> FrameBatch:
    n = len(t)
    return FrameBatch(
        t.astype(np.float64), ids.astype(np.uint32), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool),
        np.full(n, 8, np.uint8), np.full(n, 8, np.uint8), data.astype(np.uint8), label.astype(np.int16), names,
    )


def _benign(dc: DriveCycle, duration_s: float, seed: int) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per ID: (times, payloads, counters)."""
    out = {}
    for can_id, period, protected in ECUS:
        rng = np.random.default_rng([seed, 1, can_id])
        t = _periodic_times(period, duration_s, rng)
        d = encode(can_id, t, dc, rng)
        cnt = np.arange(len(t)) % 16
        if protected:
            d = _protect(d, can_id, cnt)
        out[can_id] = (t, d, cnt)
    return out


_SPOOF_TARGET = {"spoof_speed": ID_SPEED, "spoof_rpm": ID_ENGINE, "spoof_gear": ID_GEAR, "spoof_steering": ID_STEER}


def simulate_detailed(attack: str = "none", duration_s: float = 60.0, seed: int = 0, *, fraction: float = 0.3,
                      n_bursts: int = 3, checksum_ok: bool = True, target_id: int | None = None,
                      bus: BusConfig | None = BusConfig()) -> SimResult:
    """Simulate a capture; see ``simulate``. Returns frames plus drive cycle, attack intervals and bus summary."""
    if attack not in ("none", BENIGN, *ATTACKS):
        raise DataError(f"can_sim: unknown attack {attack!r}; choose one of none, {', '.join(ATTACKS)}")
    if duration_s <= 0:
        raise DataError(f"can_sim: duration_s must be > 0, got {duration_s}")
    dc = drive_cycle(duration_s, seed)
    legit = _benign(dc, duration_s, seed)
    names = [BENIGN] if attack in ("none", BENIGN) else [BENIGN, attack]
    if len(names) == 1:
        parts = [(t, np.full(len(t), cid), d, np.zeros(len(t), np.int64)) for cid, (t, d, _) in legit.items()]
        frames, stats = _on_the_wire(parts, names, bus, duration_s)
        return SimResult(frames, dc, attack, bus=stats)

    rng = np.random.default_rng([seed, 2, ATTACKS.index(attack)])
    ivals = attack_intervals(duration_s, seed, fraction, n_bursts)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    inj_t: list[np.ndarray] = []
    inj_id: list[np.ndarray] = []
    inj_d: list[np.ndarray] = []
    victim = target_id
    suspended: int | None = None

    def inject(t: np.ndarray, cid: np.ndarray | int, d: np.ndarray) -> None:
        inj_t.append(t)
        inj_id.append(np.broadcast_to(np.asarray(cid), t.shape).copy())
        inj_d.append(d)

    for a, b in ivals:
        if attack == "dos":
            # HCRL Car-Hacking DoS rate: one frame every 0.3 ms (jitter +-DOS_JITTER_S), which saturates
            # a 500 kbit/s bus (an 8-byte frame needs ~0.27 ms). Unlike Car-Hacking's ID 0x000 it floods
            # the highest-priority *legitimate* ID, replaying its latest genuine payload, so the ID
            # stays on the allow-list and only the rate (and the starved lower-priority IDs) betray it.
            victim = ID_ENGINE if target_id is None else target_id
            n = int((b - a) / DOS_PERIOD_S) + 2
            t = a + np.cumsum(DOS_PERIOD_S + rng.uniform(-DOS_JITTER_S, DOS_JITTER_S, n))
            while t[-1] < b:  # jitter summed over a burst can fall short of its end: keep flooding
                t = np.append(t, t[-1] + np.cumsum(DOS_PERIOD_S + rng.uniform(-DOS_JITTER_S, DOS_JITTER_S, 8)))
            t = t[t < b]
            lt, ld, _ = legit[victim]
            j = np.clip(np.searchsorted(lt, t) - 1, 0, len(lt) - 1)
            inject(t, victim, ld[j])
        elif attack == "fuzzing":
            t = np.cumsum(rng.uniform(0.001, 0.003, int((b - a) / 0.001) + 1)) + a
            t = t[t < b]
            ids = np.array([e[0] for e in ECUS])[rng.integers(0, len(ECUS), len(t))]
            inject(t, ids, rng.integers(0, 256, (len(t), 8)).astype(np.uint8))
        elif attack in _SPOOF_TARGET:
            victim = _SPOOF_TARGET[attack] if target_id is None else target_id
            lt, _, lc = legit[victim]
            period = PERIODS[victim]
            t = _periodic_times(period, b - a, rng, phase=rng.uniform(0.3, 0.7) * period) + a
            i = dc.at(t)
            ov: dict[str, np.ndarray] = {}
            if attack == "spoof_speed":  # plausible but wrong: a constant offset the driver would not notice
                ov["speed"] = np.clip(dc.speed_kmh[i] + rng.choice([-1, 1]) * rng.uniform(20, 40), 0, 250)
            elif attack == "spoof_rpm":  # RPM inconsistent with speed and gear, inside the engine's range
                ov["rpm"] = np.full(len(t), rng.uniform(3000, 5500)) + rng.normal(0, 20, len(t))
            elif attack == "spoof_gear":
                ov["gear"] = np.clip(dc.gear[i] + rng.choice([-2, 2]), 1, 6)
                same = ov["gear"] == dc.gear[i]
                ov["gear"][same] = np.where(dc.gear[i][same] > 3, 1, 6)
            else:  # steering offset big enough to matter, small enough to look like a curve
                ov["steering"] = dc.steering_deg[i] + rng.choice([-1, 1]) * rng.uniform(30, 90)
            d = encode(victim, t, dc, rng, ov)
            # The attacker sniffs the victim's counter and sends the next value (subtle attack).
            j = np.clip(np.searchsorted(lt, t) - 1, 0, len(lt) - 1)
            d = _protect(d, victim, lc[j] + 1, checksum_ok)
            inject(t, victim, d)
        elif attack == "replay":
            # Re-send a recorded slice of genuine traffic (all IDs) with its original timing.
            rec_start = rng.uniform(0, max(ivals[0][0] - (b - a), 0.0))
            for cid, (lt, ld, _) in legit.items():
                m = (lt >= rec_start) & (lt < rec_start + (b - a))
                if m.any():
                    inject(lt[m] - rec_start + a, cid, ld[m])
        elif attack == "masquerade":
            victim = ID_SPEED if target_id is None else target_id
            period = PERIODS[victim]
            t = _periodic_times(period, b - a, rng, phase=rng.uniform(0, period)) + a
            i = dc.at(t)
            ov = {"speed": dc.speed_kmh[i] * rng.uniform(0.6, 0.8)} if victim == ID_SPEED else {}
            d = encode(victim, t, dc, rng, ov)
            if victim != ID_SPEED:  # generic alteration for other victims: perturb byte 0
                d[:, 0] = (d[:, 0].astype(np.int64) + rng.integers(20, 60)).astype(np.uint8)
            lt, _, lc = legit[victim]
            j = np.clip(np.searchsorted(lt, t) - 1, 0, len(lt) - 1)
            inject(t, victim, _protect(d, victim, lc[j] + 1, checksum_ok))
        elif attack == "suspension":
            victim = ID_STEER if target_id is None else target_id
            suspended = victim

    for cid, (t, d, _) in legit.items():
        keep = np.ones(len(t), bool)
        if attack in ("masquerade", "suspension") and cid == victim:
            keep = ~_in_intervals(t, ivals)  # the victim ECU is silenced
        lab = np.zeros(int(keep.sum()), np.int64)
        parts.append((t[keep], np.full(int(keep.sum()), cid), d[keep], lab))
    if attack == "suspension":
        frames, stats = _on_the_wire(parts, names, bus, duration_s)
        frames.label[_in_intervals(frames.timestamp, ivals)] = 1
        return SimResult(frames, dc, attack, ivals, suspended, stats)
    if inj_t:
        t = np.concatenate(inj_t)
        parts.append((t, np.concatenate(inj_id), np.concatenate(inj_d), np.ones(len(t), np.int64)))
    frames, stats = _on_the_wire(parts, names, bus, duration_s)
    return SimResult(frames, dc, attack, ivals, victim, stats)


def _assemble(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], names: list[str]) -> FrameBatch:
    t = np.concatenate([p[0] for p in parts])
    order = np.argsort(t, kind="stable")
    return _make_batch(
        t[order], np.concatenate([p[1] for p in parts])[order], np.concatenate([p[2] for p in parts])[order],
        np.concatenate([p[3] for p in parts])[order], names,
    )


def _on_the_wire(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], names: list[str],
                 bus: BusConfig | None, duration_s: float) -> tuple[FrameBatch, BusStats | None]:
    """Frames as receivers see them: queued frames through ``transmit`` (or the ideal bus when ``bus`` is None).

    Genuine frames (label 0) come from the ECU owning their ID, injected ones from the attacker,
    so they fill separate transmit buffers.
    """
    queued = _assemble(parts, names)
    if bus is None:
        return queued, None
    attack = queued.label != 0
    stream = queued.can_id.astype(np.int64) * 2 + attack
    sched = transmit(queued.timestamp, queued.can_id, queued.dlc, queued.is_extended, stream, bus)
    rx = sched.reception_time(bus.bitrate)
    keep = np.flatnonzero(sched.sent & (rx < duration_s))  # a capture stops at duration_s
    keep = keep[np.argsort(rx[keep], kind="stable")]
    frames = _make_batch(rx[keep], queued.can_id[keep], queued.data[keep], queued.label[keep], names)
    delay = (sched.start - queued.timestamp)[sched.sent]
    ben_delay = (sched.start - queued.timestamp)[sched.sent & ~attack]
    busy = float(np.sum(sched.bits[sched.sent & (sched.start < duration_s)]) / bus.bitrate)
    stats = BusStats(
        bitrate=bus.bitrate, utilisation=busy / duration_s, queued=len(queued),
        dropped_benign=int(np.sum(~sched.sent & ~attack)), dropped_attack=int(np.sum(~sched.sent & attack)),
        max_delay_s=float(delay.max()) if len(delay) else 0.0,
        p99_delay_benign_s=float(np.quantile(ben_delay, 0.99)) if len(ben_delay) else 0.0,
    )
    return frames, stats


def simulate(attack: str = "none", duration_s: float = 60.0, seed: int = 0, **kw: object) -> FrameBatch:
    """Time-sorted simulated capture (~440 frames/s of benign traffic on 16 IDs) with ``attack`` injected.

    Args:
        attack: ``"none"`` or one of ``ATTACKS``.
        duration_s: capture length in seconds.
        seed: same seed, same capture.
        fraction, n_bursts: the attack is active in ``n_bursts`` intervals covering ``fraction``
            of the capture after a warm-up (so replay has something to record).
        checksum_ok: spoofing/masquerade frames carry a valid checksum (subtle) or a broken one.
        target_id: victim ID for dos/spoof/masquerade/suspension (defaults per attack; dos
            floods it at one frame every 0.3 ms, default 0x0A0, the highest-priority ID).
        bus: physical bus the frames are serialized on (``BusConfig()``: 500 kbit/s, priority
            arbitration, one-deep transmit buffers); ``None`` for an ideal bus.
    """
    return simulate_detailed(attack, duration_s, seed, **kw).frames  # type: ignore[arg-type]


# ------------------------------------------------------------------- output
def write_candump(frames: FrameBatch, path: str | Path, label_path: str | Path | None = None,
                  channel: str = "can0") -> None:
    """Write a candump ``-l`` log, and optionally an ``index,label`` side CSV the readers accept."""
    if not frames.has_timestamps and len(frames):
        raise DataError("write_candump: frames need timestamps (candump logs always carry them)")
    path = Path(path)
    with open(path, "w", encoding="ascii") as fh:
        for i in range(len(frames)):
            cid = int(frames.can_id[i])
            ident = f"{cid:08X}" if frames.is_extended[i] else f"{cid:03X}"
            n = int(frames.length[i])
            if frames.is_remote[i]:
                body = "R" + (str(int(frames.dlc[i])) if frames.dlc[i] else "")
            elif frames.is_fd[i]:
                body = "#0" + frames.data[i, :n].tobytes().hex().upper()
            else:
                body = frames.data[i, :n].tobytes().hex().upper()
            fh.write(f"({frames.timestamp[i]:.6f}) {channel} {ident}#{body}\n")
    if label_path is not None:
        labels = frames.labels()
        with open(label_path, "w", newline="", encoding="ascii") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["index", "label"])
            for i, lab in enumerate(labels):
                w.writerow([i, lab if lab is not None else "unknown"])


def write_carhacking_csv(frames: FrameBatch, path: str | Path) -> None:
    """Write an HCRL Car-Hacking-style CSV (R = benign, T = any attack; the attack name is the file's)."""
    attack = frames.is_attack()
    with open(path, "w", encoding="ascii") as fh:
        for i in range(len(frames)):
            n = int(frames.length[i])
            fields = [f"{frames.timestamp[i]:.6f}", f"{int(frames.can_id[i]):04x}", str(n)]
            fields += [f"{b:02x}" for b in frames.data[i, :n].tolist()]
            fields.append("T" if attack[i] else "R")
            fh.write(",".join(fields) + "\n")
