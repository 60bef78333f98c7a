"""README's "Your own car" commands run as written on a small simulated capture (file names substituted, the
training shortened): the whole flow from a clean capture to judged alerts."""

import json
import re
import shlex
from pathlib import Path

from fastmaml.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
FAST = ["train.iterations=30", "train.meta_batch_size=4", "seeds=[0]", "features.max_benign=1500",
        "features.max_attack=400", "train_shots=2", "train_query=5"]


def own_car_commands() -> list[list[str]]:
    text = README.read_text()
    section = text.split("### Your own car", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip() and
            not line.lstrip().startswith("#")]


def test_own_car_flow_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["ids", "simulate", "--attack", "none", "--duration", "30", "--seed", "1", "--out", "clean.log"]) == 0
    assert main(["ids", "simulate", "--attack", "spoof_speed", "--duration", "15", "--seed", "2",
                 "--out", "attack_plain.log"]) == 0
    # The attack capture with inline labels (as the CrySyS generator writes them), so it needs no side file.
    labels = [r.split(",")[1] for r in Path("attack_plain_labels.csv").read_text().splitlines()[1:]]
    lines = Path("attack_plain.log").read_text().splitlines()
    Path("attack.log").write_text("".join(f"{a} {'1' if b != 'benign' else 'False'}\tFalse\n"
                                          for a, b in zip(lines, labels)))
    Path("drive.log").write_text(Path("attack.log").read_text())
    cmds = own_car_commands()
    assert [c[1:3] for c in cmds] == [["ids", "train"], ["ids", "adapt"], ["ids", "detect"], ["ids", "judge"]]
    for cmd in cmds:
        args = cmd[1:] + (FAST if cmd[2] == "train" else []) + (["--no-progress"] if cmd[2] == "detect" else [])
        assert main(args) == 0, cmd
    det = json.loads(Path("runs/mycar/adapted/detector.json").read_text())
    # What step 2 deploys: the detector and the plausibility and timing rules, each at half of the 10/h budget.
    ev = det["evidence"]
    assert ev["union"]["rule"] == "plausibility_timing" and det["meta"]["shots"] == 5
    assert ev["calibration"]["budget_per_hour"] == 5 and ev["union"]["calibration"]["budget_per_hour"] == 5
    assert Path("runs/mycar/verdicts.csv").read_text().startswith("frame,timestamp,can_id,p_attack,log_odds,verdict")
    judged = json.loads(Path("runs/mycar/judge/judgement.json").read_text())["results"]
    assert judged[0]["name"] == "maml" and judged[0]["captures"][0]["occurrences"] >= 1
    assert any(r["kind"] == "rule" for r in judged)
    assert [r["name"] for r in judged if r["kind"] == "union"] == ["maml + plausibility_timing"]
