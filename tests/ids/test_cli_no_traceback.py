"""No `fastmaml ids` path ends in a raw traceback (issue 34): every subcommand fed a missing file, wrong options or an
impossible config exits 2 with one message naming the problem; and --label-column picks the inline label column."""

import pytest

from fastmaml.cli import main


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    d = tmp_path_factory.mktemp("no_tb")
    assert main(["ids", "simulate", "--attack", "spoof_speed", "--duration", "8", "--seed", "3",
                 "--out", str(d / "cap.log")]) == 0
    assert main(["ids", "train", "--preset", "sim_tiny", "--out", str(d / "t"), "train.iterations=5",
                 "source.sim.duration_s=12"]) == 0
    (d / "bare.log").write_bytes((d / "cap.log").read_bytes())  # no bare_labels.csv beside it: no labels at all
    return d


CASES = [
    (["ids", "detect", "--detector", "{d}/t/detector", "--capture", "{d}/nope.log", "--out", "{d}/v.csv"], "not found"),
    (["ids", "detect", "--detector", "{d}/missing", "--capture", "{d}/cap.log", "--out", "{d}/v.csv"],
     "is not a detector folder"),
    (["ids", "adapt", "--detector", "{d}/t/detector", "--capture", "{d}/bare.log", "--out", "{d}/a"], "label"),
    (["ids", "adapt", "--detector", "{d}/t/detector", "--capture", "{d}/cap.log", "--labels", "{d}/cap_labels.csv",
      "--clean", "{d}/nope.log", "--out", "{d}/a"], "not found"),
    (["ids", "adapt", "--detector", "{d}/t/detector", "--capture", "{d}/cap.log", "--labels", "{d}/cap_labels.csv",
      "--shots", "0", "--out", "{d}/a"], "--shots must be >= 1"),
    (["ids", "judge", "--detector", "x={d}/t/detector", "--clean", "{d}/cap.log", "--capture", "{d}/nope.log",
      "--out", "{d}/j"], "not found"),
    (["ids", "compare", "--preset", "nonexistent", "--out", "{d}/c"], "unknown ids preset"),
    (["ids", "compare", "--preset", "sim_tiny", "train.nonsense=1", "--out", "{d}/c"], "nonsense"),
    (["ids", "train", "--preset", "sim_tiny", "--attacks", "no_such_attack", "--out", "{d}/t2"], "no_such_attack"),
    (["ids", "masquerade", "--capture", "{d}/nope.log", "--kind", "offset", "--out", "{d}/m.log"], "nope.log"),
    (["ids", "simulate", "--attack", "no_such", "--out", "{d}/s.log"], "no_such"),
    (["ids", "monitor", "--detector", "{d}/t/detector", "--bus", "nosuchinterface:can0", "--threshold", "5"],
     "nosuchinterface"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)])
def test_each_subcommand_fails_with_one_clear_line(det, capsys, argv, message):
    code = main([a.format(d=det) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and message.lower() in err.lower()


def test_label_column_picks_the_inline_label(det, capsys):
    # Labels in the *second* column after ID#DATA (the first is always False): --label-column 2 reads them.
    labels = [r.split(",")[1] for r in (det / "cap_labels.csv").read_text().splitlines()[1:]]
    lines = (det / "cap.log").read_text().splitlines()
    (det / "two.log").write_text("".join(f"{a} False\t{'1' if b != 'benign' else '0'}\n" for a, b in zip(lines, labels)))
    n_attack = sum(b != "benign" for b in labels)
    assert main(["ids", "detect", "--detector", str(det / "t" / "detector"), "--capture", str(det / "two.log"),
                 "--out", str(det / "v2.csv"), "--label-column", "2", "--no-progress"]) == 0
    rows = (det / "v2.csv").read_text().splitlines()
    assert rows[0].endswith(",label") and sum(r.endswith(",1") for r in rows[1:]) == n_attack
    capsys.readouterr()
    assert main(["ids", "adapt", "--detector", str(det / "t" / "detector"), "--capture", str(det / "two.log"),
                 "--label-column", "2", "--shots", "3", "--out", str(det / "a2")]) == 0
    assert f": {n_attack}}}" in capsys.readouterr().out  # the attack class counts every labelled frame
