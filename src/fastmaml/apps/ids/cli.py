"""``fastmaml ids ...``: simulate captures, compare few-shot detectors, train, adapt and run detectors.

    fastmaml ids simulate --attack dos --duration 60 --out dos.log --labels dos_labels.csv
    fastmaml ids compare --preset sim [--holdout dos,replay] [key=value ...] --out runs/ids/sim
    fastmaml ids train --preset sim --attacks dos,fuzzing --out runs/ids/det
    fastmaml ids adapt --detector runs/ids/det/detector --capture new.log --labels new.csv --shots 5 --out adapted
    fastmaml ids detect --detector adapted --capture traffic.log --out verdicts.csv
    fastmaml ids masquerade --capture clean.log --kind offset --out offset.log   # + offset_labels.csv
    fastmaml ids monitor --detector adapted --bus socketcan:can0 --alerts alerts.jsonl   # live bus, Ctrl-C stops

Automotive Ethernet (pcap/pcapng captures, the simulated zonal network):

    fastmaml ids simulate --network eth --attack someip_request_flood --duration 20 --out flood.pcap
    fastmaml ids compare --preset eth --out runs/ids/eth          # held out: the flooding variants
    fastmaml ids compare --preset eth --holdout each --out runs/ids/eth_loo   # leave-one-attack-out
    fastmaml ids train --preset eth --out runs/ids/eth_det       # trained on the 8 known attacks
    fastmaml ids adapt --detector runs/ids/eth_det/detector --capture flood.pcap --labels flood_labels.csv --shots 5 --out eth_adapted
    fastmaml ids detect --detector eth_adapted --capture flood.pcap --out verdicts.csv   # one row per packet, packets/s
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastmaml.apps.ids.can.masquerade import ALL_KINDS as MASQUERADE_KINDS
from fastmaml.apps.ids.can.masquerade import VARIANTS as MASQUERADE_VARIANTS
from fastmaml.apps.ids.config import PRESETS
from fastmaml.apps.ids.evidence import DETECTOR_REFERENCE
from fastmaml.apps.ids.registry import TRAFFIC
from fastmaml.cliargs import add_common, command_line, config_overrides, preset_names
from fastmaml.errors import DataError


# What the side-label reader (can/candump.py load_label_file) takes, and how a clean capture of the
# user's own car feeds the masquerade preset: said in --help of masquerade and compare, and in README.
LABELS_HELP = (
    "Labels of a candump or python-can capture: a side label file, a CSV with the header 'index,label' and one row "
    "per frame in capture order ('0,benign', '1,dos', ...; 'benign' is normal traffic, any other text names the "
    "attack), or a Car-Hacking CSV of the same frames (flag T = injected); in a config: source.captures=[{path: "
    "cap.log, labels: cap_labels.csv}]. candump lines carrying label columns after the frame (CrySyS: '(12.091016) "
    "can0 410#000ecd50c251be00 1<TAB>False', 1/True = attack, 0/False = benign) need no side file (label_column: "
    "which column, default 1); a capture with no labels at all counts as clean. A clean capture of your own car "
    "feeds the masquerade preset as: fastmaml ids compare --preset masquerade 'source.captures=[clean.log]' "
    "--out DIR."
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ids`` subcommand (called by ``fastmaml.cli``)."""
    p = sub.add_parser("ids", help="few-shot intrusion detection on in-vehicle CAN and automotive-Ethernet traffic")
    acts = p.add_subparsers(dest="action", required=True)

    s = acts.add_parser("simulate", help="write a simulated capture (candump log or pcap) + per-frame labels with one attack")
    s.add_argument("--network", choices=list(TRAFFIC), default="can",
                   help="traffic kind: can: candump log of the CAN simulator; eth: pcap of the zonal Ethernet network "
                        "(default: can)")
    s.add_argument("--attack", default="none", help="attack to inject (default: none = benign only)")
    s.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True, help="capture to write (candump log, or pcap for --network eth)")
    s.add_argument("--labels", type=Path, default=None, help="label CSV to write (default: OUT with _labels.csv)")

    m = acts.add_parser("masquerade", help="write masquerade (or fabrication) attacks generated on a clean CAN "
                                           "capture: candump log + per-frame labels + the injections",
                        description="Write masquerade (or fabrication) attacks generated on a clean CAN capture: a "
                                    "candump log, its side label file OUT_labels.csv ('index,label' rows) and the "
                                    "injections. " + LABELS_HELP)
    m.add_argument("--capture", type=Path, required=True, help="clean capture, any supported CAN format")
    m.add_argument("--format", default="auto", help="capture format (default: auto-detect)")
    m.add_argument("--kind", choices=list(MASQUERADE_KINDS), required=True, help="what false values the attacker sends")
    m.add_argument("--variant", choices=list(MASQUERADE_VARIANTS), default="masquerade",
                   help="masquerade: the genuine frames carry the false values (no frame added); fabrication: forged "
                        "frames are added beside the genuine ones (default: %(default)s)")
    m.add_argument("--occurrences", type=int, default=20, help="injection intervals (default: %(default)s)")
    m.add_argument("--duration", type=float, default=2.0, help="seconds per interval (default: %(default)s)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--targets", choices=["partnered", "all"], default="partnered",
                   help="which signals are falsified: partnered (another ID carries a correlated signal) or all (also "
                        "signals nothing else on the bus reflects; intervals alternate between the two) "
                        "(default: %(default)s)")
    m.add_argument("--dbc", type=Path, default=None,
                   help="the car's DBC file: target its signals instead of the ones inferred from the capture "
                        "(needs pip install cantools)")
    m.add_argument("--byte-order", choices=("auto", "both", "big"), default="auto",
                   help="signals without a DBC: both also finds little-endian (Intel) ones, big reads big-endian only, "
                        "auto both on a capture of 30 minutes or more (default: %(default)s)")
    m.add_argument("--out", type=Path, required=True, help="candump log to write")
    m.add_argument("--labels", type=Path, default=None, help="label CSV to write (default: OUT with _labels.csv)")

    c = acts.add_parser("compare", help="scratch vs pretrained vs MAML vs FOMAML (+ rules) on held-out attacks",
                        description="Scratch vs pretrained vs MAML vs FOMAML (+ rules) on held-out attacks. Options "
                                    "and key=value overrides may come in any order. " + LABELS_HELP)
    _common(c, "sim")
    c.add_argument("--holdout", action="append", default=None, metavar="A[,B...]",
                   help="attacks held out together in one fold; repeat for more folds; 'each' = leave-one-attack-out "
                        "(default: the source's held-out set, e.g. the flooding attacks for --preset eth; "
                        "else leave-one-attack-out)")
    c.add_argument("--out", type=Path, required=True, help="folder for runs, results.json, report.md, figures")
    c.add_argument("--no-resume", action="store_true", help="retrain and re-evaluate even when finished runs exist")

    t = acts.add_parser("train", help="meta-train a detector on given attacks and save it")
    _common(t, "sim")
    t.add_argument("--attacks", default=None, help="comma-separated attacks to train on (default: all of the source)")
    t.add_argument("--method", choices=["maml", "fomaml", "pretrained", "scratch"], default="maml",
                   help="maml / fomaml: meta-trained; pretrained: one network on all training attacks; scratch: "
                        "random init (a baseline), fine-tuning step size tuned on the attacks (default: %(default)s)")
    t.add_argument("--out", type=Path, required=True, help="folder; the detector goes to OUT/detector")

    a = acts.add_parser("adapt", help="adapt a detector to a new attack from K labelled samples per class")
    a.add_argument("--detector", type=Path, required=True, help="detector folder (from train or adapt)")
    a.add_argument("--capture", type=Path, required=True, help="labelled capture (any supported format, or pcap)")
    a.add_argument("--labels", type=Path, default=None,
                   help="side label file for candump/python-can captures; for pcaps an index/timestamp,attack CSV "
                        "(default: CAPTURE's stem + _labels.csv beside it where that exists)")
    a.add_argument("--format", default="auto", help="capture format (default: auto-detect)")
    a.add_argument("--attack", default=None, help="attack label to adapt to (default: every non-benign label)")
    a.add_argument("--shots", type=int, default=5, help="labelled samples per class, K (default: %(default)s)")
    a.add_argument("--steps", type=int, default=None, help="gradient steps (default: the detector's)")
    a.add_argument("--seed", type=int, default=0, help="which K samples are picked")
    a.add_argument("--out", type=Path, required=True, help="folder for the adapted detector")
    _reader_options(a)
    a.add_argument("--benign-frames", type=int, default=4096,
                   help="with --clean: benign frames drawn from the clean capture for the support set beside the K "
                        "attack frames (default: %(default)s); without --clean the support set is K benign + K attack "
                        "samples of --capture")
    a.add_argument("--same-id", type=float, default=0.0, metavar="SHARE",
                   help="with --clean: this share of the benign frames drawn from the attack shots' own CAN IDs (0: "
                        "uniformly), so the detector learns what is false about those IDs' frames, not that they are "
                        "those IDs (default: %(default)s)")
    a.add_argument("--benign-per-id", action=argparse.BooleanOptionalAction, default=None,
                   help="with --clean: draw the benign frames with every CAN ID of the clean capture equally often, so "
                        "a slow ID's clean frames weigh as much as a fast one's (alerts are per ID); the default with "
                        "--clean; --no-benign-per-id draws them by frame")
    _evidence_options(a)

    d = acts.add_parser("detect", help="stream a capture through a detector, one verdict per frame/window to CSV")
    d.add_argument("--detector", type=Path, required=True)
    d.add_argument("--capture", type=Path, required=True)
    d.add_argument("--labels", type=Path, default=None, help="side label file: adds ground truth and metrics "
                                                                "(default: CAPTURE_labels.csv beside it, if any)")
    d.add_argument("--format", default="auto")
    d.add_argument("--out", type=Path, required=True, help="CSV of verdicts")
    d.add_argument("--chunk-size", type=int, default=65536)
    d.add_argument("--skip-malformed", action="store_true",
                   help="skip and count malformed lines instead of failing (pcaps: malformed packets are always skipped "
                        "and counted)")
    d.add_argument("--no-progress", action="store_true")
    _reader_options(d)
    d.add_argument("--frames-per-second", type=float, default=None,
                   help="captures without timestamps (CICIoV2024): the bus rate to assume for alerts per hour")
    _evidence_options(d)
    d.add_argument("--threshold", type=float, default=None,
                   help="evidence threshold to alert at (overrides the detector's calibrated one; not saved)")
    d.add_argument("--json", type=Path, default=None,
                   help="also write the summary (alerts, occurrences caught, calibration) as JSON here")
    j = acts.add_parser("judge", help="judge adapted detectors and the rule baselines on one path: evidence per CAN "
                                      "ID, a threshold set on clean driving for a false-alert budget, occurrences "
                                      "caught and time to detect on labelled attack captures")
    j.add_argument("--detector", action="append", required=True, metavar="NAME=FOLDER",
                   help="an adapted detector (from ids adapt), repeatable: --detector maml=runs/a --detector scratch=runs/b")
    j.add_argument("--clean", type=Path, required=True, help="clean capture of the same vehicle: thresholds are set on it")
    j.add_argument("--capture", type=Path, action="append", required=True,
                   help="labelled attack capture (inline labels or a labelled format), repeatable")
    j.add_argument("--labels", type=Path, action="append", default=None,
                   help="side label file of the --capture at the same position (repeat in the same order); default: "
                        "CAPTURE's stem + _labels.csv beside it where that exists (what ids masquerade and ids "
                        "simulate write)")
    j.add_argument("--alerts-per-hour", type=float, default=10.0, help="false-alert budget (default: %(default)s/h)")
    j.add_argument("--clip", type=float, default=6.0, help="most evidence one frame adds (default: %(default)s)")
    j.add_argument("--drift", type=float, default=0.0,
                   help="subtracted from each frame's clipped log-odds (default: %(default)s)")
    j.add_argument("--reference", type=float, default=DETECTOR_REFERENCE, metavar="Q",
                   help="raise each detector's drift to this quantile of its clipped log-odds on --clean "
                        "(0: off; default: %(default)s)")
    j.add_argument("--no-per-key", action="store_true",
                   help="one reference for every CAN ID (as before per-ID references: for comparison)")
    j.add_argument("--key-scale", action="store_true",
                   help="each CAN ID's threshold scaled by its clean excursion scale (detectors; a slow ID's attack "
                        "is then not held to the sum fast IDs reach on clean driving)")
    j.add_argument("--saved-thresholds", action="store_true",
                   help="use the thresholds saved in the detectors (ids adapt --clean) instead of calibrating all here")
    j.add_argument("--no-rules", action="store_true", help="judge the detectors only")
    j.add_argument("--union", default="auto", metavar="RULE",
                   help="also judge each detector with this rule as one IDS, each at half the budget (default: "
                        "auto, the rule ids adapt deploys beside it: plausibility_timing where the detector has "
                        "signal features; none for no union)")
    j.add_argument("--format", default="auto", help="capture format (default: auto-detect)")
    j.add_argument("--out", type=Path, required=True, help="folder for judgement.json and judgement.md")

    mo = acts.add_parser("monitor", help="run a calibrated CAN detector on a live bus (python-can): evidence alerts "
                                         "as JSON lines until Ctrl-C, --duration or --max-frames")
    mo.add_argument("--detector", type=Path, required=True, help="frame-level CAN detector folder, calibrated "
                                                                 "(ids detect/adapt --clean) unless --threshold")
    mo.add_argument("--bus", required=True, metavar="INTERFACE:CHANNEL",
                    help="python-can interface and channel, e.g. socketcan:can0, pcan:PCAN_USBBUS1, virtual:test")
    mo.add_argument("--bitrate", type=int, default=None, help="bit rate to open the bus at (interfaces that set it)")
    mo.add_argument("--alerts", type=Path, default=None, help="JSON lines file, one object per alert")
    mo.add_argument("--threshold", type=float, default=None,
                    help="evidence threshold to alert at (overrides the detector's calibrated one; not saved)")
    mo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    mo.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    mo.add_argument("--batch-ms", type=float, default=50.0,
                    help="frames are scored in batches of up to this many ms (default: %(default)s)")
    mo.add_argument("--batch-frames", type=int, default=4096, help="or this many frames (default: %(default)s)")
    p.set_defaults(handler=run)


def _evidence_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clean", type=Path, default=None,
                   help="a clean capture of the same vehicle: the evidence threshold for --alerts-per-hour is set on "
                        "it and written into the detector folder" + (" (adapt: its frames also form the benign side "
                                                                      "of the support set)" if p.prog.endswith("adapt")
                                                                     else ""))
    p.add_argument("--clean-format", default="auto", help="format of --clean (default: auto-detect)")
    p.add_argument("--alerts-per-hour", type=float, default=10.0,
                   help="false-alert budget the threshold is calibrated for (default: %(default)s per hour)")
    p.add_argument("--clip", type=float, default=None,
                   help="most evidence (log-odds) one frame may add to its CAN ID's sum (default: 6, or the "
                        "detector's)")
    p.add_argument("--drift", type=float, default=None,
                   help="subtracted from each frame's clipped log-odds before summing: only frames scored above it "
                        "add evidence (default: 0, or the detector's)")
    p.add_argument("--union", default="auto", metavar="RULE",
                   help="with --clean: also raise the alerts of this rule baseline beside the detector's, each "
                        "calibrated for half the budget; ids detect and ids monitor then run both (plausibility and "
                        "timing travel with the detector folder; id_allow_list and payload_range are fitted on the same "
                        "clean capture again, so keep it for them). Default: auto, plausibility_timing (partner "
                        "plausibility and timing) where the detector has signal features, else none; a rule name "
                        "(plausibility, timing, ...) or none (the detector alone)")
    p.add_argument("--reference", type=float, default=None, metavar="Q",
                   help="raise the drift to this quantile of the clean capture's clipped log-odds (the CUSUM's "
                        f"reference value; 0: off; default: {DETECTOR_REFERENCE}, or the detector's)")
    p.add_argument("--key-scale", action="store_true", default=None,
                   help="with --clean: each CAN ID's threshold scaled by its clean excursion scale (default: the "
                        "detector's setting, else off)")


def _reader_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--column", action="append", default=None, metavar="KEY=VALUE",
                   help="column map of a labelled CSV export (implies --format csv), repeatable: e.g. --column id=Kennung "
                        "--column bytes=B1,B2,B3,B4,B5,B6,B7,B8 --column label=Klasse --column benign_values=normal; "
                        "keys: time, time_unit, id, id_base, id_bits, payload, bytes, byte_base, dlc, label, "
                        "benign_values, attack, delimiter")
    p.add_argument("--label-column", type=int, default=1,
                   help="candump lines followed by label columns (CrySyS: is_malicious, is_shifted_in_time): which "
                        "column after ID#DATA holds the label (default: %(default)s, the first)")
    p.add_argument("--bad-id", choices=["error", "skip", "keep"], default="error",
                   help="frames whose ID is out of range for its format (e.g. 11-bit 0xFFF): stop with an error "
                        "(default), skip them (side labels stay aligned) or keep them")


def _common(p: argparse.ArgumentParser, default: str) -> None:
    add_common(p, default, preset_names(PRESETS, "ids"), data_root=True)


def _split(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise DataError(f"empty attack list {text!r}; give comma-separated attack names")
    return items


def run(args: argparse.Namespace) -> None:
    """Dispatch ``fastmaml ids <action>``."""
    {"simulate": _simulate, "masquerade": _masquerade, "compare": _compare, "train": _train, "adapt": _adapt,
     "detect": _detect, "judge": _judge, "monitor": _monitor}[args.action](args)


def _simulate(args: argparse.Namespace) -> None:
    labels = args.labels or args.out.with_name(args.out.stem + "_labels.csv")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(TRAFFIC[args.network].simulate(args.attack, args.duration, args.seed, args.out, labels))


def _masquerade(args: argparse.Namespace) -> None:
    from fastmaml.apps.ids.can import masquerade as M
    from fastmaml.apps.ids.can import sim as can_sim
    from fastmaml.apps.ids.can.readers import open_capture
    from fastmaml.fileio import atomic_write_text

    clean = open_capture(args.capture, args.format).read_all()
    if clean.is_attack().any():
        raise DataError(f"{args.capture}: holds {int(clean.is_attack().sum())} attack frames; give a clean capture")
    clean.label[:] = 0
    clean.label_names = ["benign"]
    captures, plans = M.generate(clean, [args.kind], args.occurrences, args.duration, args.seed,
                                str(args.dbc or ""), args.targets, args.byte_order)
    name = M.attack_name(args.kind, args.variant)
    frames, injections = captures[name], plans[args.kind]
    labels = args.labels or args.out.with_name(args.out.stem + "_labels.csv")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    can_sim.write_candump(frames, args.out, labels)
    plan = args.out.with_name(args.out.stem + "_injections.json")
    atomic_write_text(plan, json.dumps({"capture": str(args.capture), "kind": args.kind, "variant": args.variant,
                                        "injections": injections}, indent=1) + "\n")
    print(f"wrote {len(frames)} frames ({int(frames.is_attack().sum())} {name}) to {args.out}, labels to {labels}, "
          f"the {len(injections)} injections to {plan}")


def _compare(args: argparse.Namespace) -> None:
    from fastmaml.apps.ids import experiment as E

    cfg = E.load_ids_config(args.preset, config_overrides(args, "source.data_root"))
    data = None
    folds = None
    if args.holdout:
        if any(h.strip() == "each" for h in args.holdout):
            if len(args.holdout) > 1:
                raise DataError("--holdout each (leave-one-attack-out) cannot be combined with other --holdout folds")
            data = E.prepare_data(cfg, args.out / "data")
            folds = E.leave_one_out(data)
        else:
            folds = [_split(h) for h in args.holdout]
    report = E.compare(cfg, args.out, folds=folds, resume=not args.no_resume, command=command_line(), data=data)
    print(f"report: {args.out / 'report.md'}  results: {args.out / 'results.json'}  ({report.total_seconds:.0f} s)")


def _train(args: argparse.Namespace) -> None:
    from fastmaml.apps.ids import experiment as E

    cfg = E.load_ids_config(args.preset, config_overrides(args, "source.data_root"))
    attacks = _split(args.attacks) if args.attacks else []
    path = E.meta_train_detector(cfg, attacks, args.out, method=args.method)
    print(f"detector: {path}")


def _evidence(args: argparse.Namespace, det: object) -> object:
    """The evidence setting the options ask for (None: the detector's own, or the defaults)."""
    from dataclasses import replace

    from fastmaml.apps.ids.evidence import Evidence

    key_scale = getattr(args, "key_scale", None)
    if args.clip is None and args.drift is None and args.reference is None and key_scale is None:
        return None
    base = det.alarm() or Evidence(reference=DETECTOR_REFERENCE)  # type: ignore[attr-defined]
    return replace(base, clip=base.clip if args.clip is None else args.clip,
                   drift=base.drift if args.drift is None else args.drift,
                   reference=base.reference if args.reference is None else args.reference,
                   key_scaled=base.key_scaled if key_scale is None else key_scale)


def _half(det: object) -> str:
    """What a detector's threshold was set for when a rule shares the budget with it."""
    u = det.evidence.get("union")  # type: ignore[attr-defined]
    return f", the detector's half of the budget ({u['rule']} has the other)" if u else ""


def _print_union(det: object) -> None:
    from fastmaml.apps.ids.evidence import Calibration

    u = det.evidence.get("union")  # type: ignore[attr-defined]
    if u:
        print(f"beside it, rule {u['rule']} (each at half the budget): "
              + Calibration.from_dict(u["calibration"]).summary())


def _evidence_line(e: dict, key_name: str) -> str:
    """One line: evidence alerts and, against labels, occurrences caught, delay and false alerts per hour."""
    line = (f"evidence alerts (CUSUM of log-odds per {key_name}, threshold {e['threshold']:.2f}): {e['alerts']} in "
            f"{e['seconds']:.1f} s")
    j = e.get("judgement")
    if j:
        line += (f"; attack occurrences caught {j['caught']}/{j['occurrences']}, median time to detect "
                 f"{j['median_delay_s']:.3f} s; {j['false_alerts']} false alerts "
                 f"({j['false_alerts_per_hour']:.1f} per hour of benign traffic)")
        for o in j["per_occurrence"]:
            k = f"0x{o['key']:x}" if isinstance(o["key"], int) else str(o["key"])
            line += (f"\n  {key_name} {k} {o['start']:.2f}-{o['end']:.2f} s ({o['frames']} frames): "
                     + (f"caught after {o['delay_s']:.3f} s" if o["alerted"] else "missed"))
    return line


def _side_labels(capture: Path) -> Path | None:
    """``CAPTURE_labels.csv`` beside ``capture`` where it exists (the label file ids masquerade / simulate write)."""
    side = capture.with_name(capture.stem + "_labels.csv")
    return side if side.is_file() else None


def _judge(args: argparse.Namespace) -> None:
    from fastmaml.apps.ids.detect import load_detector
    from fastmaml.apps.ids.evidence import Evidence
    from fastmaml.apps.ids.judge import judge_scorers, markdown_table, summary_table
    from fastmaml.apps.ids.traffic import ReadOptions
    from fastmaml.cliargs import command_line
    from fastmaml.fileio import atomic_write_text

    dets = {}
    for item in args.detector:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise DataError(f"--detector {item!r} is not NAME=FOLDER (e.g. --detector maml=runs/adapted)")
        dets[name] = load_detector(folder)
    if args.labels and len(args.labels) != len(args.capture):
        raise DataError(f"--labels given {len(args.labels)} time(s) for {len(args.capture)} --capture(s): give one "
                        "label file per capture, in the same order, or none (each capture's _labels.csv is found)")
    labels = args.labels or [_side_labels(c) for c in args.capture]
    results = judge_scorers(dets, args.clean, args.capture, labels=labels, alerts_per_hour=args.alerts_per_hour,
                            rules=not args.no_rules, evidence=Evidence(clip=args.clip, drift=args.drift, reference=args.reference,
                                                                       per_key=not args.no_per_key,
                                                                       key_scaled=args.key_scale),
                            options=ReadOptions(format=args.format), recalibrate=not args.saved_thresholds,
                            union=args.union if not args.no_rules else "")
    args.out.mkdir(parents=True, exist_ok=True)
    table = (["## Summary (seeds pooled)", ""] + summary_table(results) + ["", "## Every scorer", ""]
             + markdown_table(results))
    atomic_write_text(args.out / "judgement.json", json.dumps({"command": command_line(), "clean": str(args.clean),
                                                               "alerts_per_hour": args.alerts_per_hour,
                                                               "results": [r.to_dict() for r in results]},
                                                              indent=1, default=float) + "\n")
    atomic_write_text(args.out / "judgement.md", "\n".join([f"`{command_line()}`", ""] + table) + "\n")
    print("\n".join(table))
    print(f"calibration of the first scorer: {results[0].calibration.summary()}")


def _adapt(args: argparse.Namespace) -> None:
    from fastmaml.apps.ids.detect import adapt_detector, load_detector, save_detector

    det = load_detector(args.detector)
    new, info = adapt_detector(det, args.capture, args.shots, labels=args.labels or _side_labels(args.capture),
                               attack=args.attack, steps=args.steps,
                               format=args.format, seed=args.seed, columns=args.column, bad_id=args.bad_id,
                               label_column=args.label_column, clean=args.clean, clean_format=args.clean_format,
                               benign_frames=args.benign_frames, same_id=args.same_id,
                               benign_per_id=args.benign_per_id,
                               alerts_per_hour=args.alerts_per_hour, evidence=_evidence(args, det),
                               union=args.union)
    save_detector(new, args.out)
    support = (f"{info.shots} attack samples and {info.benign_support} clean frames" if args.clean
               else f"{info.shots} samples per class")
    print(f"adapted to {info.attack!r} from {support} (available: {info.available}); detector: {args.out}")
    if info.calibration is not None:
        print(f"calibrated{_half(new)}: " + info.calibration.summary())
        _print_union(new)
    if info.holdout_metrics:
        m = info.holdout_metrics
        print("on the capture's other samples: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                               for k, v in m.items()}))


def _detect(args: argparse.Namespace) -> None:
    from fastmaml.apps.ids.detect import calibrate_detector, load_detector, save_detector, stream_detect
    from fastmaml.apps.ids.evidence import Evidence

    det = load_detector(args.detector)
    if args.clean is not None:
        det, cal = calibrate_detector(det, args.clean, args.alerts_per_hour, evidence=_evidence(args, det),
                                      clean_format=args.clean_format, union=args.union)
        save_detector(det, args.detector)
        print(f"calibrated (written to {args.detector}){_half(det)}: " + cal.summary())
        _print_union(det)
    ev = det.alarm()
    if args.threshold is not None:
        ev = (_evidence(args, det) or ev or Evidence()).with_threshold(args.threshold)
    s = stream_detect(det, args.capture, args.out, labels=args.labels or _side_labels(args.capture), format=args.format,
                      chunk_size=args.chunk_size,
                      progress=not args.no_progress, skip_malformed=args.skip_malformed, columns=args.column,
                      bad_id=args.bad_id, frames_per_second=args.frames_per_second, evidence=ev,
                      label_column=args.label_column)
    print(f"{s.frames} {s.unit}, {s.samples} verdicts ({s.flagged} flagged) -> {s.out}; "
          f"{s.seconds:.2f} s, {s.frames_per_second:,.0f} {s.unit}/s")
    if s.reader_note:
        print(f"reader: {s.reader_note}")
    if s.metrics:
        print("against the capture's labels: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                           for k, v in s.metrics.items()))
    if s.evidence is not None:
        print(_evidence_line(s.evidence, s.key_name))
    elif det.window is None:
        print("evidence alerts: none (the detector is not calibrated: pass --clean CLEAN_CAPTURE or --threshold)")
    if args.json is not None:
        from dataclasses import asdict

        from fastmaml.fileio import atomic_write_text
        atomic_write_text(args.json, json.dumps(asdict(s), indent=1, default=float) + "\n")
    for rule, m in s.alerts.items():
        what = "false alerts" if s.metrics else "alerts (unlabelled capture: every alert counted)"
        # k-of-n counts of the fixed-threshold verdicts: not calibrated to any budget (the evidence line above is).
        line = (f"alert rule {rule} (per {s.key_name}, 1 s hold-off; the p > {det.threshold:g} verdicts, not "
                f"calibrated): {m['alerts']} alerts, {m['false_alerts_per_hour']:.1f} {what} per hour")
        if s.metrics and m["occurrences"]:
            line += (f"; attack occurrences alerted {m['occurrences_detected']}/{m['occurrences']}, "
                     f"median delay {m['median_delay_s']:.3f} s")
        print(line)


def _monitor(args: argparse.Namespace) -> None:
    from fastmaml.apps.ids.detect import FrameScorer, load_detector, monitor, open_bus
    from fastmaml.apps.ids.evidence import Evidence

    for name in ("duration", "max_frames", "batch_ms", "batch_frames"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            raise DataError(f"--{name.replace('_', '-')} must be > 0, got {v}")
    det = load_detector(args.detector)
    ev = det.alarm()
    if args.threshold is not None:
        ev = (ev or Evidence()).with_threshold(args.threshold)
    scorer = FrameScorer(det, ev)  # before the bus opens: a detector that cannot alert is refused first
    bus = open_bus(args.bus, args.bitrate)
    how = "--threshold" if args.threshold is not None else "calibrated"
    print(f"monitoring {args.bus}: evidence threshold {scorer.ev.threshold:.2f} per CAN ID ({how}); Ctrl-C stops"
          + (f"; alerts -> {args.alerts}" if args.alerts else ""))
    try:
        s = monitor(scorer, bus, alerts_path=args.alerts, duration_s=args.duration, max_frames=args.max_frames,
                    batch_s=args.batch_ms / 1000, batch_frames=args.batch_frames)
    finally:
        bus.shutdown()
    print(s.line())
