"""Rough edges a new user hit with the CrySyS sample and the README (issue 34)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fastmaml.apps.ids.can.candump import CandumpReader
from fastmaml.apps.ids.can.readers import open_capture
from fastmaml.apps.ids.can.source import read_labelled
from fastmaml.apps.ids.can.traffic import CAN
from fastmaml.apps.ids.config import CaptureSpec, SourceConfig
from fastmaml.apps.ids.traffic import ReadOptions
from fastmaml.errors import DataError

# The shared data layout next to the project's checkout, unless FASTMAML_DATA_ROOT says otherwise.
DATA_ROOT = Path(os.environ.get("FASTMAML_DATA_ROOT") or Path(__file__).resolve().parents[2].parent / "shared" / "data")
CRYSYS = DATA_ROOT / "ids" / "crysys-sample"


def _crysys_style(path: Path, attack_rows: set[int], n: int = 40, second: str = "False") -> Path:
    """A candump log with CrySyS label columns: ``(ts) can0 ID#DATA <is_malicious>\\t<is_shifted_in_time>``."""
    lines = []
    for i in range(n):
        bad = i in attack_rows
        flag = ("1" if i % 2 else "True") if bad else ("0" if i % 3 == 0 else "False")
        lines.append(f"({i * 0.01:.6f}) can0 {0x110 + (i % 3) * 0x100:03X}#00{i % 256:02x}cd50c251be00 {flag}\t{second}")
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------ 1. inline CrySyS label columns
def test_inline_label_columns_read_with_labels(tmp_path, read_fast_and_precise):
    path = _crysys_style(tmp_path / "S-1-1-malicious-CONST.log", {5, 6, 7, 20})
    fast, precise = read_fast_and_precise(CandumpReader, path, chunk_size=16)
    for b in (fast, precise):
        assert b.label_names == ["benign", "s-1-1-malicious-const"]  # named after the file, as Car-Hacking files
        assert np.flatnonzero(b.is_attack()).tolist() == [5, 6, 7, 20]
        assert (b.label >= 0).all()
    # auto-detected as candump, no side label file needed
    assert open_capture(path).read_all().is_attack().sum() == 4


def test_label_column_picks_the_second_column(tmp_path):
    path = tmp_path / "two.log"
    path.write_text("(0.000000) can0 110#00 False 1\n(0.010000) can0 110#01 1 0\n(0.020000) can0 110#02 1 True\n")
    assert open_capture(path).read_all().is_attack().tolist() == [False, True, True]
    assert open_capture(path, label_column=2).read_all().is_attack().tolist() == [True, False, True]
    spec = CaptureSpec(path=str(path), label_column=2)
    assert read_labelled(spec, SourceConfig(kind="captures"), lambda m: None).is_attack().tolist() == [True, False, True]


def test_plain_log_and_direction_flag_stay_unlabelled(tmp_path):
    path = tmp_path / "plain.log"
    path.write_text("(0.000000) can0 110#00 R\n(0.010000) can0 110#01 T\n(0.020000) can0 110#02 \n")
    b = open_capture(path).read_all()
    assert len(b) == 3 and (b.label == -1).all()


@pytest.mark.parametrize("chunk_size", [1000, 1])
def test_bad_inline_label_names_file_and_line(tmp_path, chunk_size):
    path = _crysys_style(tmp_path / "bad.log", {3})
    lines = path.read_text().splitlines()
    lines[9] = lines[9].rsplit(" ", 1)[0] + " maybe\tFalse"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad\.log:10: bad label 'maybe'"):
        CandumpReader(path, chunk_size=chunk_size).read_all()


def test_inline_labels_reach_samples_and_streams_without_a_label_file(tmp_path):
    path = _crysys_style(tmp_path / "attack.log", set(range(10, 30)), n=200)
    state = CAN.fit_state(path)
    s = CAN.labelled_samples(state, path, None, window=None, stride=None, label_rule="any", max_per_class=1000,
                             seed=0)
    assert s.counts()["attack"] == 20
    truth = np.concatenate([r.truth for r in CAN.row_stream(state, path, None).rows])
    assert truth.sum() == 20
    two = tmp_path / "two.log"
    two.write_text("(0.000000) can0 110#00 0 1\n(0.010000) can0 110#01 1 0\n")
    truth = next(CAN.row_stream(state, two, None, ReadOptions(label_column=2)).rows).truth
    assert truth.tolist() == [1, 0]


@pytest.mark.skipif(not CRYSYS.is_dir(), reason=f"CrySyS sample not found under {CRYSYS} (set FASTMAML_DATA_ROOT)")
@pytest.mark.parametrize("name,attacks", [
    ("S-1-1-malicious-CONST-msg-mod-0x410-0.4-0.6.log", 60),
    ("S-1-1-malicious-DOUBLE-msg-mod-0x110-NEG_OFFSET-0.4-0.6-0x410-NEG_OFFSET-0.4-0.6.log", 661),
    ("S-1-1-benign.log", 0),
])
def test_real_crysys_files(name, attacks):
    b = open_capture(CRYSYS / name).read_all()
    assert len(b) == 17935 and int(b.is_attack().sum()) == attacks
    if attacks:
        assert (b.label >= 0).all() and b.label_names[0] == "benign"


# ------------------------------------------------------------ 2. train --preset masquerade without --attacks
@pytest.fixture(scope="module")
def clean_log(tmp_path_factory) -> Path:
    """A clean simulated drive as a candump log, no label file beside it."""
    from fastmaml.cli import main

    d = tmp_path_factory.mktemp("clean")
    assert main(["ids", "simulate", "--attack", "none", "--duration", "30", "--out", str(d / "clean.log")]) == 0
    (d / "clean_labels.csv").unlink()
    return d / "clean.log"


TINY_MASQUERADE = ["source.masquerade.occurrences=6", "source.masquerade.duration_s=1", "train.iterations=2",
                   "train.checkpoint_every=2", "features.max_benign=500", "features.max_attack=200"]


def test_train_masquerade_without_attacks_trains_on_all(clean_log, tmp_path, capsys):
    import json

    from fastmaml.cli import main

    assert main(["ids", "train", "--preset", "masquerade", "--out", str(tmp_path / "det"),
                 f"source.captures=[{{path: {clean_log}}}]", *TINY_MASQUERADE]) == 0
    meta = json.loads((tmp_path / "det" / "detector" / "detector.json").read_text())["meta"]
    assert len(meta["trained_on"]) == 10  # five kinds x two variants: every attack the source has


def test_train_with_no_attack_left_says_what_to_pass(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from fastmaml.apps.ids import experiment as E

    monkeypatch.setattr(E, "prepare_data", lambda cfg, d: SimpleNamespace(attacks=[], default_holdout=None,
                                                                          source="an empty source"))
    with pytest.raises(DataError, match="no attack to train on; pass --attacks"):
        E.meta_train_detector(E.load_ids_config("sim_tiny"), [], tmp_path)


# ------------------------------------------------------------ 3. options and key=value overrides in any order
@pytest.mark.parametrize("argv,overrides", [
    (["ids", "compare", "--preset", "sim", "--out", "d", "a.b=1"], ["a.b=1"]),
    (["ids", "compare", "a.b=1", "--out", "d", "c=2", "--holdout", "dos", "a.b=3"], ["a.b=1", "c=2", "a.b=3"]),
    (["ids", "train", "--out", "d", "x=1", "--attacks", "dos", "y=2"], ["x=1", "y=2"]),
    (["sinusoid", "reproduce", "--preset", "paper", "--out", "d", "train.iterations=5"], ["train.iterations=5"]),
])
def test_overrides_after_options_are_taken_in_order(argv, overrides):
    from fastmaml.cli import build_parser
    from fastmaml.cliargs import parse_args

    args = parse_args(build_parser(), argv)
    assert args.overrides == overrides


@pytest.mark.parametrize("argv", [["ids", "compare", "a=1", "--out", "d", "stray"], ["ids", "simulate", "--out", "d", "a=1"],
                                  ["ids", "compare", "--out", "d", "--bogus"]])
def test_words_that_are_no_override_still_fail(argv, capsys):
    from fastmaml.cli import main

    with pytest.raises(SystemExit):
        main(argv)
    assert "unrecognized arguments" in capsys.readouterr().err


# ------------------------------------------------------------ 4. a clean capture needs no label file
def _candump_drive(path: Path, bursts: list[float], seed: int, duration: float = 10.0, labelled: bool = True) -> Path:
    """Periodic frames on three IDs, plus spoofed 0x200 frames in 0.2 s bursts; CrySyS-style labels if ``labelled``."""
    rng = np.random.default_rng(seed)
    rows = []
    for cid, period in ((0x100, 0.01), (0x200, 0.02), (0x300, 0.05)):
        for n, t in enumerate(np.arange(rng.uniform(0, period), duration, period)):
            rows.append((t, cid, bytes([n % 256, cid & 0xFF, 7, 0, 0, 0, 0, 0]), False))
    for b in bursts:
        rows += [(b + k * 0.01 + 1e-4, 0x200, bytes(rng.integers(0, 256, 8).tolist()), True) for k in range(20)]
    rows.sort(key=lambda r: r[0])
    with open(path, "w") as fh:
        for t, cid, data, bad in rows:
            fh.write(f"({t:.6f}) can0 {cid:03X}#{data.hex()}" + (f" {int(bad)}\tFalse" if labelled else " ") + "\n")
    return path


TINY_COMPARE = ["train.iterations=2", "train.meta_batch_size=2", "train.checkpoint_every=2", "train.log_every=2",
                "train_shots=2", "train_query=5", "seeds=[0]", "methods=[scratch, maml]", "model.hidden=[8]",
                "eval.shots=[2]", "eval.query=8", "eval.episodes=2", "eval.steps=1", "eval.report_steps=[0, 1]",
                "eval.tuning_episodes=2", "eval.finetune_lrs=[0.1]", "eval.operational_episodes=0",
                "features.max_benign=300", "features.max_attack=200"]


def test_clean_capture_in_a_captures_folder_needs_no_label_file(tmp_path):
    from fastmaml.apps.ids import experiment as E

    spoof = _candump_drive(tmp_path / "spoof.log", [1.0, 3.0, 5.0, 7.0], 1)
    clean = _candump_drive(tmp_path / "clean.log", [], 2, labelled=False)
    cfg = E.load_ids_config("captures", [*TINY_COMPARE, f"source.captures=[{{path: {spoof}}}, {{path: {clean}}}]"])
    logs: list[str] = []
    data = E.prepare_data(cfg, log=logs.append)
    said = [m for m in logs if "no label file" in m]
    assert len(said) == 1 and "clean.log" in said[0] and "count as benign" in said[0]
    assert data.attacks == ["spoof"]  # named after its file (inline labels, item 1)
    cut = next(c for c in data.stats["split"]["cuts"] if c["capture"].endswith("clean.log"))
    assert cut["frames"]["benign"]["train"] > 0 and "spoof" not in cut["frames"]


# ------------------------------------------------------------ 5. a small fold shrinks its query set first
def test_small_fold_shrinks_the_query_set_and_says_so(tmp_path):
    import json

    from fastmaml.apps.ids import experiment as E

    cfg = E.load_ids_config("tiny", ["source.synthetic.samples=12", "eval.shots=[5]", "eval.query=10",
                                     "methods=[scratch, maml]", "train.iterations=2", "train.checkpoint_every=2",
                                     "eval.episodes=2", "eval.tuning_episodes=2", "eval.operational_episodes=0"])
    report = E.compare(cfg, tmp_path, folds=[["attack0"]])
    fold = report.folds[0]
    assert fold.query == 7 and fold.query_shrunk_from == 10 and 5 in fold.results["attack0"]
    assert not report.skipped_folds
    assert "query set shrunk to Q = 7 per class" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["folds"][0]["query"] == 7


# ------------------------------------------------------------ 6. the captures preset uses the signal features
def test_captures_preset_has_signal_features_without_the_long_drive_columns(tmp_path):
    from fastmaml.apps.ids import experiment as E

    spoof = _candump_drive(tmp_path / "spoof.log", [1.0, 3.0, 5.0, 7.0], 1)
    cfg = E.load_ids_config("captures", [*TINY_COMPARE, f"source.captures=[{{path: {spoof}}}]"])
    assert cfg.features.signals
    logs: list[str] = []
    data = E.prepare_data(cfg, log=logs.append)
    assert {"sig_jump", "sig_residual", "sig_has_partner"} <= set(data.feature_names)
    assert not {"sig_range", "sig_edge", "sig_stuck", "sig_leap"} & set(data.feature_names)
    assert any("sig_range, sig_edge, sig_stuck, sig_leap left out" in n for n in data.stats["notes"])
    # A column the user drops already is dropped once, without an error.
    cfg = E.load_ids_config("captures", [*TINY_COMPARE, f"source.captures=[{{path: {spoof}}}]",
                                         "features.drop=[sig_stuck, id_known]"])
    names = E.prepare_data(cfg, log=logs.append).feature_names
    assert not {"sig_range", "sig_edge", "sig_stuck", "sig_leap", "id_known"} & set(names) and "sig_jump" in names


# ------------------------------------------------------------ 7. the --occurrences hint
def test_too_short_capture_names_the_key_the_option_and_the_number_that_fits(clean_log, tmp_path, capsys):
    from fastmaml.apps.ids.can import masquerade as M
    from fastmaml.cli import main

    out = tmp_path / "max.log"
    assert main(["ids", "masquerade", "--capture", str(clean_log), "--kind", "maximum", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    fits = int(err.split("source.masquerade.occurrences=")[1].split()[0])
    assert "20 intervals of 2.0 s do not fit" in err and f"--occurrences {fits})" in err and 1 <= fits < 20
    # The number given fits, one more does not.
    assert main(["ids", "masquerade", "--capture", str(clean_log), "--kind", "maximum", "--occurrences", str(fits),
                 "--out", str(out)]) == 0
    assert main(["ids", "masquerade", "--capture", str(clean_log), "--kind", "maximum", "--occurrences",
                 str(fits + 1), "--out", str(out)]) == 2
    clean = open_capture(clean_log).read_all()
    with pytest.raises(DataError, match=r"not even one fits: set source\.masquerade\.occurrences=1 \(fastmaml ids "
                                        r"masquerade: --occurrences 1\) and source\.masquerade\.duration_s="):
        M.plan(clean, "maximum", M.target_signals(clean), 3, 60.0, 0)


# ------------------------------------------------------------ 8. label format and the clean-capture override, documented
def _help(*args: str) -> str:
    import contextlib
    import io

    from fastmaml.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main([*args, "--help"])
    return " ".join(buf.getvalue().split())


@pytest.mark.parametrize("action", ["masquerade", "compare"])
def test_help_states_the_label_format_and_the_clean_capture_override(action):
    text = _help("ids", action)
    assert "'index,label'" in text and "'0,benign'" in text and "1/True = attack" in text
    assert "--preset masquerade 'source.captures=[clean.log]'" in text


def test_readme_states_the_label_format_and_the_clean_capture_override():
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert "`index,label`" in readme and "`0,benign`" in readme and "`1`/`True` = attack" in readme
    assert "fastmaml ids compare --preset masquerade 'source.captures=[clean.log]' --out" in readme


def test_clean_capture_feeds_the_masquerade_preset_as_written(clean_log, tmp_path, monkeypatch):
    import json

    from fastmaml.cli import main

    monkeypatch.chdir(clean_log.parent)  # the README's relative path, exactly
    out = tmp_path / "mycar"
    assert main(["ids", "compare", "--preset", "masquerade", "source.captures=[clean.log]", "--out", str(out),
                 *TINY_MASQUERADE, *TINY_COMPARE, "methods=[maml]",
                 "source.attacks=[offset_masquerade, offset_fabrication, maximum_masquerade, maximum_fabrication]"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["source"]["captures"][0]["path"] == "clean.log"
    assert "clean.log" in res["source"] and sorted(f["fold"] for f in res["folds"]) == [
        "maximum_masquerade+maximum_fabrication", "offset_masquerade+offset_fabrication"]
