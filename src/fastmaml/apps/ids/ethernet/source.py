"""Automotive Ethernet as a traffic source of the few-shot IDS experiment.

Builds the experiment's :class:`~fastmaml.apps.ids.families.IdsData` from pcap captures,
so the Ethernet source runs through the same SampleSet -> episodes -> methods -> report path
as CAN (via :func:`~fastmaml.apps.ids.families.families_from_sample_sets`):

* ``source.kind: eth_sim``: the simulated zonal network (:mod:`.zonal_sim`). The feature
  state and the rules are fitted on a benign-only capture (``source.sim.fit_seed``); every attack
  type is simulated once for the train part (``sim.train_seed``) and once, another drive,
  for the test part (``sim.test_seed``). Every capture is written as a real pcap and read
  back by :class:`~.pcap_reader.PcapReader`, so the experiment sees exactly what
  ``fastmaml ids detect`` sees. Default held-out set: the flooding variants
  :data:`~.zonal_sim.NEW_ATTACKS`, together in one fold.
* ``source.kind: eth_captures``: labelled pcap/pcapng files (``source.captures``: path +
  label CSV). Each capture is featurized in one pass; its first ``1 - test_fraction`` of
  packets is the train part, the rest the test part; the feature state is fitted on the
  benign packets of the train parts only.

Rule baselines (:mod:`.baselines`) are computed from the very per-packet stats the features
come from, and carried per sample (a window is flagged when any of its packets is).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastmaml.apps.ids.ethernet import zonal_sim
from fastmaml.apps.ids.ethernet.baselines import RULES as ETH_RULES
from fastmaml.apps.ids.ethernet.features import PACKET_FEATURES, EthFeatureState, EthFeaturizer, PacketStats
from fastmaml.apps.ids.ethernet.pcap_reader import PacketChunk, PcapReader
from fastmaml.apps.ids.ethernet.labels import read_labels
from fastmaml.apps.ids.ethernet.magic import is_pcap
from fastmaml.apps.ids.samples import window_labels
from fastmaml.apps.ids.families import IdsData, TaskFamily, cap_indices, families_from_sample_sets
from fastmaml.apps.ids.samples import BENIGN, SampleSet
from fastmaml.errors import ConfigError, DataError

#: Rule names as they appear in the report (the OR of the three is ``any``).
RULE_NAMES: tuple[str, ...] = (*ETH_RULES, "any")

SIMULATED_NOTE = (
    "**All results in this report come from simulated traffic** (fastmaml's zonal-network simulator, "
    "`fastmaml.apps.ids.ethernet.zonal_sim`), not from a real vehicle: the benign streams are strictly "
    "periodic, the attacks are what the simulator injects, and real captures will be noisier. Read the "
    "numbers as a comparison of methods on one controlled network, not as field detection rates."
)


# ----------------------------------------------------------------------------- one capture
class CaptureFeatures:
    """Per-packet features, rule flags and labels of one capture (read in one streaming pass)."""

    def __init__(self, x: np.ndarray, rules: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str],
                 novelty: dict[str, np.ndarray], source: str) -> None:
        self.x, self.rules, self.labels, self.class_names = x, rules, labels, class_names
        self.novelty, self.source = novelty, source

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, sl: slice) -> "CaptureFeatures":
        """The packets in ``sl`` (a contiguous stretch of the capture)."""
        return CaptureFeatures(self.x[sl], {k: v[sl] for k, v in self.rules.items()}, self.labels[sl],
                               self.class_names, {k: v[sl] for k, v in self.novelty.items()}, self.source)


def rule_flags(st: PacketStats) -> dict[str, np.ndarray]:
    """Bool flags of every Ethernet rule (and their OR, ``any``) for one chunk's stats."""
    out = {name: fn(st).astype(bool) for name, fn in ETH_RULES.items()}
    out["any"] = np.logical_or.reduce(list(out.values()))
    return out


def featurize_capture(pcap: str | Path, state: EthFeatureState, labels_csv: str | Path | None = None,
                      chunk_size: int = 65536) -> CaptureFeatures:
    """Stream ``pcap`` through the featurizer; labels from ``labels_csv`` (all benign without one)."""
    rd = PcapReader(pcap, chunk_size=chunk_size)
    fz = EthFeaturizer(state)
    xs: list[np.ndarray] = []
    rules: dict[str, list[np.ndarray]] = {r: [] for r in RULE_NAMES}
    nov: dict[str, list[np.ndarray]] = {"src_mac_new": [], "stream_new": []}
    idx, tss = [], []
    for c in rd.chunks():
        x, st = fz.transform_with_stats(c)
        xs.append(x)
        for r, v in rule_flags(st).items():
            rules[r].append(v)
        nov["src_mac_new"].append(st.src_mac_new)
        nov["stream_new"].append(st.stream_new)
        idx.append(c.index)
        tss.append(c.ts)
    if not xs:
        raise DataError(f"{pcap}: no packets could be read; give a capture with Ethernet traffic")
    index = np.concatenate(idx)
    if labels_csv is not None:
        labels, names = read_labels(labels_csv, index=index, ts=np.concatenate(tss))
    else:
        labels, names = np.zeros(len(index), np.int64), [BENIGN]
    return CaptureFeatures(np.concatenate(xs), {r: np.concatenate(v) for r, v in rules.items()}, labels, names,
                           {k: np.concatenate(v) for k, v in nov.items()}, str(pcap))


def to_samples(cf: CaptureFeatures, window: int | None, stride: int | None, label_rule: str,
               max_benign: int, max_attack: int, seed: int) -> tuple[SampleSet, dict[str, torch.Tensor]]:
    """Packet- or window-level SampleSet of a capture (capped per class), with every sample's rule verdict."""

    if window:
        st = stride or window
        n = (len(cf) - window) // st + 1 if len(cf) >= window else 0
        y = window_labels(cf.labels, window, st, 0, label_rule)
        # Cap before materializing [N, W, F]: a long capture's windows would not fit in memory.
        keep = cap_indices(torch.from_numpy(y), len(cf.class_names), max_benign, max_attack, seed).numpy()
        pos = keep[:, None] * st + np.arange(window)[None, :]
        x = cf.x[pos] if n else np.zeros((0, window, cf.x.shape[1]), np.float32)
        # A window is flagged when any of its packets is (the same rule as the CAN pipeline).
        rules = {r: v[pos].any(1) if n else np.zeros(0, bool) for r, v in cf.rules.items()}
        y = y[keep]
    else:
        keep = cap_indices(torch.from_numpy(cf.labels), len(cf.class_names), max_benign, max_attack, seed).numpy()
        x, y, rules = cf.x[keep], cf.labels[keep], {r: v[keep] for r, v in cf.rules.items()}
    s = SampleSet(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64)),
                  list(cf.class_names), list(PACKET_FEATURES), cf.source)
    return s, {r: torch.from_numpy(np.asarray(v, dtype=bool)) for r, v in rules.items()}


def benign_chunks(pcap: str | Path, labels_csv: str | Path | None, upto: float = 1.0) -> list[PacketChunk]:
    """The benign packets among the first ``upto`` fraction of a capture (for fitting the state; all without labels)."""
    chunks = list(PcapReader(pcap).chunks())
    if not chunks:
        raise DataError(f"{pcap}: no packets could be read; give a capture with Ethernet traffic")
    c = PacketChunk.concat(chunks) if len(chunks) > 1 else chunks[0]
    c = c.select(np.arange(int(round(len(c) * upto))))
    if labels_csv is not None:
        lab, _ = read_labels(labels_csv, index=c.index, ts=c.ts)
        c = c.select(lab == 0)
    return [c]


# ----------------------------------------------------------------------------- IdsData
def _merge(parts: Sequence[tuple[SampleSet, dict[str, torch.Tensor]]], names: list[str]
           ) -> tuple[SampleSet, dict[str, torch.Tensor]]:
    """Concatenate sample sets whose class lists differ, relabelled to the common ``names``."""
    xs, ys, rules = [], [], {r: [] for r in RULE_NAMES}
    for s, rl in parts:
        remap = torch.tensor([names.index(c) for c in s.class_names], dtype=torch.long)
        xs.append(s.features)
        ys.append(remap[s.labels])
        for r in RULE_NAMES:
            rules[r].append(rl[r])
    return (SampleSet(torch.cat(xs), torch.cat(ys), names, list(PACKET_FEATURES), "; ".join(p[0].source for p in parts)),
            {r: torch.cat(v) for r, v in rules.items()})


def _cap_with_rules(s: SampleSet, rules: dict[str, torch.Tensor], max_benign: int, max_attack: int, seed: int
                    ) -> tuple[SampleSet, dict[str, torch.Tensor]]:

    keep = cap_indices(s.labels, len(s.class_names), max_benign, max_attack, seed)
    return s.select(keep), {r: v[keep] for r, v in rules.items()}


def _novelty(cf: CaptureFeatures, attack_code: int) -> dict[str, float]:
    m = cf.labels == attack_code
    if not m.any():
        return {}
    return {k: float(v[m].mean()) for k, v in cf.novelty.items()}


def prepare_eth(src: Any, feat: Any, log: Callable[[str], None], workdir: Path | None = None) -> Any:
    """IdsData for ``source.kind`` ``eth_sim`` or ``eth_captures`` (``src``/``feat``: the experiment configs)."""
    if src.kind == "eth_sim":
        return _prepare_sim(src, feat, log, workdir)
    if src.kind != "eth_captures":
        raise ConfigError(f"source.kind {src.kind!r} is not an Ethernet source; use eth_sim or eth_captures")
    if not src.captures:
        raise ConfigError("source.kind=eth_captures needs source.captures: a list of {path: x.pcap, labels: x.csv}")
    specs = []
    for c in src.captures:
        p = Path(c.path)
        if not p.is_file():
            raise DataError(f"capture {p} not found; check source.captures[].path")
        if not is_pcap(p):
            raise DataError(f"{p} is not a pcap/pcapng file; source.kind=eth_captures reads Ethernet pcaps "
                            "(use source.kind=captures for CAN logs)")
        if not c.labels:
            raise ConfigError(f"capture {p} has no label file; give source.captures[].labels (index/timestamp,attack CSV)")
        specs.append((p, Path(c.labels)))
    log("fitting Ethernet features on the benign packets of the train parts")
    benign: list[PacketChunk] = []
    for p, lab in specs:
        benign += benign_chunks(p, lab, 1 - src.test_fraction)
    state = EthFeatureState.fit(benign)
    parts: dict[str, list[tuple[SampleSet, dict[str, torch.Tensor]]]] = {"train": [], "test": []}
    names = [BENIGN]
    novelty: dict[str, dict[str, float]] = {}
    for p, lab in specs:
        log(f"featurizing {p}")
        cf = featurize_capture(p, state, lab)
        names += [n for n in cf.class_names if n not in names]
        for n in cf.class_names[1:]:
            novelty.setdefault(n, _novelty(cf, cf.class_names.index(n)))
        cut = int(round(len(cf) * (1 - src.test_fraction)))
        for split, sl in (("train", slice(0, cut)), ("test", slice(cut, len(cf)))):
            # Per-capture cap (memory); the per-family cap below is the one that counts.
            parts[split].append(to_samples(cf.rows(sl), feat.window, feat.stride, feat.label_rule,
                                           feat.max_benign, feat.max_attack, feat.seed))
    train, train_rules = _merge(parts["train"], names)
    test, test_rules = _merge(parts["test"], names)
    attacks = [n for n in names[1:] if not src.attacks or n in src.attacks]
    missing = [a for a in src.attacks if a not in names]
    if missing or not attacks:
        raise DataError(f"attack(s) {missing or src.attacks} not found in the captures; labels present: {names[1:]}")
    for name, part in (("train", train), ("test", test)):
        counts = part.counts()
        empty = [a for a in attacks if counts.get(a, 0) == 0]
        if empty:
            raise DataError(f"the {name} part (test_fraction={src.test_fraction}) holds no packet of {empty}; "
                            "attacks must occur in both the first and the last part of the captures")
    fams = families_from_sample_sets(train, test, train_rules, test_rules, attacks)
    for f in fams.values():
        f.train, f.train_rules = _cap_with_rules(f.train, f.train_rules, feat.max_benign, feat.max_attack, feat.seed)
        f.test, f.test_rules = _cap_with_rules(f.test, f.test_rules, feat.max_benign, feat.max_attack, feat.seed)
    source = "Ethernet captures " + ", ".join(str(p) for p, _ in specs)
    return IdsData(fams, list(PACKET_FEATURES), feat.window, state.to_dict(), source,
                   {"novelty": {a: novelty.get(a, {}) for a in attacks}, "counts": _counts(fams)})


def _counts(families: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    return {n: {"train": f.train.counts(), "test": f.test.counts()} for n, f in families.items()}


def _prepare_sim(src: Any, feat: Any, log: Callable[[str], None], workdir: Path | None) -> Any:

    attacks = list(src.attacks) or list(zonal_sim.ATTACKS)
    bad = [a for a in attacks if a not in zonal_sim.ATTACKS]
    if bad:
        raise DataError(f"unknown zonal-network attack(s) {bad}; valid attacks: {list(zonal_sim.ATTACKS)}")
    if not src.eth_sim.camera and "avtp_replay" in attacks:
        raise ConfigError("avtp_replay replays camera frames; set source.eth_sim.camera=true or drop avtp_replay "
                          "from source.attacks")
    D = float(src.sim.duration_s)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        d = Path(tmp)

        def capture(attack: str, seed: int) -> tuple[Path, Path]:
            # Through a real pcap file: the experiment reads what `fastmaml ids detect` would read.
            pcap, lab = d / f"{attack}-{seed}.pcap", d / f"{attack}-{seed}.csv"
            zonal_sim.simulate(attack, D, seed, camera=src.eth_sim.camera).write(pcap, lab)
            return pcap, lab

        log(f"simulating a benign zonal-network capture ({D:.0f} s) to fit features and rules")
        fit_pcap, fit_lab = capture("none", src.sim.fit_seed)
        state = EthFeatureState.fit(benign_chunks(fit_pcap, fit_lab))
        fit_pcap.unlink()
        families = {}
        novelty = {}
        for a in attacks:
            log(f"simulating {a} ({D:.0f} s train + test captures)")
            sets = {}
            for split, seed in (("train", src.sim.train_seed), ("test", src.sim.test_seed)):
                pcap, lab = capture(a, seed)
                cf = featurize_capture(pcap, state, lab)
                pcap.unlink()  # ~3 MB per simulated second: keep at most one on disk
                if a not in cf.class_names:
                    raise DataError(f"simulated {a} capture ({D:.0f} s) holds no attack packet; raise "
                                    "source.sim.duration_s")
                if split == "test":
                    novelty[a] = _novelty(cf, cf.class_names.index(a))
                sets[split] = to_samples(cf, feat.window, feat.stride, feat.label_rule, feat.max_benign,
                                         feat.max_attack, feat.seed)
            families[a] = TaskFamily(a, sets["train"][0], sets["test"][0], sets["train"][1], sets["test"][1])
    held = [a for a in zonal_sim.NEW_ATTACKS if a in families]
    default = [held] if held and len(held) < len(families) else None
    return IdsData(families, list(PACKET_FEATURES), feat.window, state.to_dict(),
                   "simulated zonal automotive-Ethernet network",
                   {"novelty": novelty, "counts": _counts(families), "notes": [SIMULATED_NOTE]},
                   default_holdout=default)
