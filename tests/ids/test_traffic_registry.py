"""The traffic registry: kinds and source kinds listed once, no branch on the kind outside the kinds,
feature states that round-trip, and CAN runs that never import the Ethernet stack (dpkt)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastmaml.apps.ids import experiment as E
from fastmaml.apps.ids.can import sim as can_sim
from fastmaml.apps.ids.ethernet import zonal_sim
from fastmaml.apps.ids.registry import TRAFFIC, source_kinds
from fastmaml.errors import ConfigError

IDS = Path(E.__file__).parent


def test_every_source_kind_is_listed_once_with_its_traffic():
    listed = [k for t in TRAFFIC.values() for k in t.sources]
    assert len(listed) == len(set(listed)) == len(source_kinds())
    assert {k: t.name for k, (t, _) in source_kinds().items()} == {
        "cic": "can", "sim": "can", "captures": "can", "daga": "can", "masquerade": "can", "synthetic": "can",
        "eth_sim": "eth", "eth_captures": "eth"}
    # ethernet/traffic.py cannot import the rules (dpkt) to label them: its labels must follow them.
    from fastmaml.apps.ids.ethernet.baselines import RULES

    assert set(TRAFFIC["eth"].rules) == set(RULES)
    with pytest.raises(ConfigError, match="train_source and source must carry the same traffic"):
        E.load_ids_config("sim_tiny", ["train_source={kind: eth_sim}"])


def test_no_branch_on_the_traffic_kind_outside_the_kinds():
    kinds = {IDS / "traffic.py", IDS / "can" / "traffic.py", IDS / "ethernet" / "traffic.py"}
    branch = re.compile(r"""traffic\s*[!=]=|kind in ETH|ETH_KINDS|[!=]=\s*["'](eth|can)["']""")
    hits = [f"{p.relative_to(IDS)}:{n}" for p in IDS.rglob("*.py") if p not in kinds
            for n, line in enumerate(p.read_text().splitlines(), 1) if branch.search(line)]
    assert not hits, hits


def test_feature_states_round_trip_through_every_kind(tmp_path):
    can_sim.write_candump(can_sim.simulate("none", 3.0, 1), tmp_path / "c.log", tmp_path / "c.csv")
    zonal_sim.simulate("none", 1.0, 1, camera=False).write(tmp_path / "e.pcap", tmp_path / "e.csv")
    for name, capture, labels in (("can", "c.log", "c.csv"), ("eth", "e.pcap", "e.csv")):
        kind = TRAFFIC[name]
        state = kind.fit_state(tmp_path / capture, tmp_path / labels)
        back = kind.load_state(json.loads(json.dumps(state.to_dict())), "test")
        assert back.to_dict() == state.to_dict() and kind.feature_names(back)
    assert TRAFFIC["eth"].claims(tmp_path / "e.pcap") and not TRAFFIC["eth"].claims(tmp_path / "c.log")


# Runs `fastmaml ids` with dpkt unimportable; fails if any pcap-reading module was imported.
NO_DPKT = """
import sys
sys.modules["dpkt"] = None  # `import dpkt` now raises ImportError
from fastmaml.cli import main
out = sys.argv[1]
fast = ["train.iterations=4", "eval.episodes=2", "eval.tuning_episodes=2", "source.sim.duration_s=10"]
assert main(["ids", "compare", "--preset", "sim_tiny", "--out", out + "/cmp", *fast]) == 0
assert main(["ids", "simulate", "--attack", "dos", "--duration", "5", "--out", out + "/c.log"]) == 0
assert main(["ids", "train", "--preset", "sim_tiny", "--attacks", "fuzzing", "--out", out + "/t", *fast]) == 0
assert main(["ids", "detect", "--detector", out + "/t/detector", "--capture", out + "/c.log", "--labels",
             out + "/c_labels.csv", "--out", out + "/v.csv", "--no-progress"]) == 0
eth = sorted(m for m in sys.modules if m.startswith("fastmaml.apps.ids.ethernet."))
assert eth == ["fastmaml.apps.ids.ethernet.magic", "fastmaml.apps.ids.ethernet.traffic"], eth
assert main(["ids", "simulate", "--network", "eth", "--out", out + "/e.pcap"]) == 2  # says: install dpkt
"""


def test_can_runs_need_no_dpkt(tmp_path):
    r = subprocess.run([sys.executable, "-c", NO_DPKT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "automotive Ethernet needs dpkt" in r.stderr
    assert (tmp_path / "cmp" / "results.json").is_file() and (tmp_path / "v.csv").is_file()
