"""A labelled CSV export in a layout the project has never seen, through compare, train, adapt and detect."""

import csv

import pytest

from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.cli import main

BYTES = [f"Nutzdaten{i}" for i in range(1, 9)]


def _export(path, frames: FrameBatch) -> None:
    """German bench export: ';'-separated, decimal IDs, one column per byte, time in ms, class names."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["Zeitstempel_ms", "Kennung", *BYTES, "Klasse"])
        names = frames.labels()
        for k in range(len(frames)):
            w.writerow([f"{1000 * frames.timestamp[k]:.3f}", int(frames.can_id[k]), *frames.data[k, :8].tolist(),
                        "normal" if names[k] == "benign" else f"Angriff_{names[k]}"])


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    d = tmp_path_factory.mktemp("csv")
    parts = []
    for k, attack in enumerate(("dos", "fuzzing")):
        att = sim.simulate(attack, 30.0, 1 + k, n_bursts=4, fraction=0.2)
        clean = sim.simulate("none", 10.0, 20 + k)
        clean.timestamp = clean.timestamp + 30.0
        parts.append((attack, FrameBatch.concat([att, clean])))
    for attack, frames in parts:
        _export(d / f"{attack}.csv", frames)
    return d


COLUMNS = {"time": "Zeitstempel_ms", "time_unit": "ms", "id": "Kennung", "id_base": "dec", "bytes": BYTES,
           "label": "Klasse", "benign_values": ["normal"]}
FLAGS = [x for k, v in COLUMNS.items() for x in ("--column", f"{k}={','.join(v) if isinstance(v, list) else v}")]


def _captures(d):
    cols = "{" + ", ".join(f"{k}: [{', '.join(v)}]" if isinstance(v, list) else f"{k}: {v}"
                           for k, v in COLUMNS.items()) + "}"
    return "source.captures=[" + ", ".join(f"{{path: {d}/{a}.csv, format: csv, columns: {cols}}}"
                                           for a in ("dos", "fuzzing")) + "]"


TINY = ["train.iterations=30", "train.meta_batch_size=4", "eval.episodes=4", "eval.shots=[5]", "eval.query=10",
        "eval.steps=2", "eval.report_steps=[0, 2]", "eval.tuning_episodes=4", "eval.finetune_lrs=[0.1]",
        "seeds=[0]", "methods=[scratch, maml]", "eval.operational_episodes=1", "train_query=5"]


def test_unseen_csv_layout_runs_compare_train_adapt_detect(export, tmp_path, capsys):
    d = export
    assert main(["ids", "compare", "--preset", "captures", "--out", str(tmp_path / "cmp"), _captures(d), *TINY]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    # Classes come from the export's own label values, lower-cased.
    assert "angriff_dos" in report and "angriff_fuzzing" in report and "## Train/test split" in report
    assert main(["ids", "train", "--preset", "captures", "--attacks", "angriff_fuzzing", "--out", str(tmp_path / "t"),
                 _captures(d), *TINY]) == 0
    assert main(["ids", "adapt", "--detector", str(tmp_path / "t" / "detector"), "--capture", str(d / "dos.csv"),
                 "--shots", "5", "--out", str(tmp_path / "a"), *FLAGS]) == 0
    assert "adapted to 'angriff_dos'" in capsys.readouterr().out
    assert main(["ids", "detect", "--detector", str(tmp_path / "a"), "--capture", str(d / "dos.csv"),
                 "--out", str(tmp_path / "v.csv"), "--no-progress", *FLAGS]) == 0
    out = capsys.readouterr().out
    assert "against the capture's labels" in out and "alert rule 1-of-1" in out
    rows = list(csv.DictReader(open(tmp_path / "v.csv")))
    assert set(rows[0]) == {"frame", "timestamp", "can_id", "p_attack", "log_odds", "verdict", "label"}
    # Timestamps were read in ms and converted to seconds; labels came from 'Klasse'.
    assert float(rows[-1]["timestamp"]) == pytest.approx(40.0, abs=0.1)
    assert 0 < sum(int(r["label"]) for r in rows) < len(rows)


def test_unseen_layout_without_a_map_says_which_key_to_set(export, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("Zeit;Kennung;Daten;Klasse\n0.1;100;0011;normal\n")
    code = main(["ids", "compare", "--preset", "captures", "--out", str(tmp_path / "c"),
                 f"source.captures=[{{path: {bad}, format: csv}}]", *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:1: cannot find the CAN identifier column in the header ['Zeit', 'Kennung', 'Daten', 'Klasse']" in err
    assert "columns: {id: <column name>}" in err and "--column id=<column name>" in err
