"""Report sections that judge detectors as a vehicle would: against chance, and on whole streams.

* :func:`chance_section`: per held-out attack at K = figure_shot after the last step, detection
  rate against false-positive rate. A detector detects something only when its detection rate
  exceeds its FPR with non-overlapping 95% CIs; informedness (detection rate − FPR) and MCC
  say by how much. F1 alone cannot: on balanced query sets "flag everything" scores 0.667.
* :func:`split_section`: how each attack was split (folders of captures: which files were held
  out whole), where each capture was cut and how many attack occurrences and frames fall on each side.
* :func:`operational_section`: the streamed evaluation (:mod:`fastmaml.apps.ids.operational`):
  false alerts per hour of benign driving, occurrences alerted on and the delay.
"""

from __future__ import annotations

from typing import Any

from fastmaml.apps.ids.results import CurveSummary, Curves, FoldResult, StreamMetrics, StreamResult
from fastmaml.eval.stats import fmt

LABELS = {"scratch": "from scratch", "pretrained": "pretrained + fine-tune", "maml": "MAML", "fomaml": "FOMAML"}
# Informedness below this (upper CI bound) is "near chance": the detector flags attack and
# benign samples at nearly the same rate.
NEAR_CHANCE = 0.2


def _ci(d: CurveSummary, step: int) -> tuple[float, float]:
    return d.mean[step], d.ci95[step]


def detects(r: Curves, step: int) -> bool:
    """Detection rate above FPR with non-overlapping 95% CIs."""
    (mr, cr), (mf, cf) = _ci(r["recall"], step), _ci(r["fpr"], step)
    return mr - cr > mf + cf


def near_chance(r: Curves, step: int) -> bool:
    """Informedness (detection rate − FPR) whose upper 95% bound is below NEAR_CHANCE."""
    if "informedness" not in r:
        (mr, _), (mf, _) = _ci(r["recall"], step), _ci(r["fpr"], step)
        return mr - mf < NEAR_CHANCE
    m, c = _ci(r["informedness"], step)
    return m + c < NEAR_CHANCE


def chance_section(items: list, methods: list[str], k: int, step: int) -> list[str]:
    """Detection rate vs FPR per held-out attack and method; which methods detect anything at all."""
    lines = [f"## Against chance: detection rate vs false-positive rate at K = {k} after {step} steps", "",
             "Cells: detection rate / FPR, then informedness (detection rate − FPR) ± 95% CI. **bold**: the detection "
             "rate beats the FPR with non-overlapping CIs; *(chance)*: informedness is below "
             f"{NEAR_CHANCE} even at its upper CI bound, so the detector flags attack and benign samples at "
             "nearly the same rate whatever its F1.", "",
             "| held-out attack | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    chance_all = []
    for a, per_k in items:
        cells = []
        row_chance = True
        for m in methods:
            r = per_k[k].methods[m]
            inf = (fmt(*_ci(r["informedness"], step)) if "informedness" in r
                   else f"{r['recall'].mean[step] - r['fpr'].mean[step]:.3f}")
            cell = f"{r['recall'].mean[step]:.3f} / {r['fpr'].mean[step]:.3f}, {inf}"
            if detects(r, step):
                cell = f"**{cell}**"
            if near_chance(r, step):
                cell += " *(chance)*"
            else:
                row_chance = False
            cells.append(cell)
        if row_chance:
            chance_all.append(a)
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines.append("")
    if chance_all:
        lines += [f"**Every learned method is near chance on: {', '.join(chance_all)}.** No comparison between "
                  "methods on these attacks means anything.", ""]
    return lines


def maml_detection_verdict(items: list, k: int, step: int) -> list[str]:
    """Attack by attack: does MAML's detection rate beat its FPR with non-overlapping CIs?"""
    yes = [a for a, per_k in items if "maml" in per_k[k].methods and detects(per_k[k].methods["maml"], step)]
    strong = [a for a in yes if dict(items)[a][k].methods["maml"]["recall"].mean[step] >= 0.9]
    no = [a for a, _ in items if a not in yes]
    out = [f"* MAML at K = {k} after {step} steps: detection rate above FPR (non-overlapping CIs) on {len(yes)} of "
           f"{len(items)} held-out attacks" + (f"; not on: {', '.join(no)}" if no else "") + "; detection rate ≥ 0.9 on "
           f"{len(strong)}" + (f" ({', '.join(strong)})" if strong else "") + ".", ""]
    return out


# How a folder of captures is split (source.split: by_capture, within_interval, auto), per attack.
_SPLIT_WORDS = {
    "by_capture": "whole capture files held out",
    "occurrences": "cut between two occurrences",
    "within_interval": "cut inside its injection interval (test frames come from the same injection as training "
                       "frames, so its scores are optimistic next to held-out captures)",
}


def _split_intro(sp: dict[str, Any]) -> str:
    pct = f"{100 * sp['test_fraction']:.0f}%"
    occurrences = (f"between two attack occurrences (attack frames closer than {sp['occurrence_gap_s']} s form one "
                   f"occurrence), aiming at {pct} of the occurrences after the cut")
    if sp["kind"] == "occurrences":
        return (f"Each capture is cut once in time, {occurrences} and keeping every attack on both sides; each part is "
                "featurized on its own, so no sample or per-ID history crosses the cut.")
    if sp["kind"] == "time":
        return f"Each capture is cut at {100 * (1 - sp['test_fraction']):.0f}% of its frames."
    by_file = (f"for an attack type with several capture files about {pct} of them (at least one) are held out "
               "whole as test files and the others train")
    within = f"cut once in time inside its attack frames, about {pct} of them after the cut"
    text = {"by_capture": f"Whole capture files are held out: {by_file}.",
            "within_interval": f"Each capture is {within}, so both parts hold frames of each attack.",
            "auto": f"Chosen per attack type (source.split=auto): {by_file}; an attack with one capture file is cut "
                    f"{occurrences} where it has enough occurrences, else {within}."}[sp["kind"]]
    return (text + " Features and rules are fitted on the benign frames of the training parts only, and each part is "
            "featurized on its own, so no frame or per-ID history is on both sides. Benign-only captures, if any, are "
            f"cut at {100 * (1 - sp['test_fraction']):.0f}% of their frames.")


def _per_attack(sp: dict[str, Any]) -> list[str]:
    lines = []
    for a, d in (sp.get("attacks") or {}).items():
        where = [f"{side}: {', '.join(d[key])}" for side, key in (("train", "train_files"), ("test", "test_files"),
                                                                   ("cut", "cut_files")) if d.get(key)]
        how = "; ".join(_SPLIT_WORDS.get(m, m) for m in d["method"].split("+"))
        lines.append(f"* **{a}**: {how} ({'; '.join(where)})")
    lines += [f"* **{a}**: not used, its capture could not be split: {why}"
              for a, why in (sp.get("skipped") or {}).items()]
    return lines + [""] if lines else []


def _cut_at(c: dict[str, Any]) -> str:
    if c.get("method") == "by_capture":
        return "whole file: test" if c["index"] == 0 else "whole file: train"
    return f"{c['clock']:.2f}" + (" (inside the interval)" if c.get("method") == "within_interval" else "")


def split_section(stats: dict[str, Any]) -> list[str]:
    sp = stats.get("split")
    if not sp:
        return []
    lines = ["## Train/test split", "", _split_intro(sp), "", *_per_attack(sp),
             "| capture | cut at | attack occurrences train / test | attack frames train / test | benign frames train / test |",
             "|---|---:|---|---|---:|"]
    for c in sp["cuts"]:
        occ = "; ".join(f"{a}: {v['train']} / {v['test']}" for a, v in c["occurrences"].items()) or "none"
        fr = "; ".join(f"{a}: {v['train']} / {v['test']}" for a, v in c["frames"].items() if a != "benign") or "none"
        b = c["frames"].get("benign", {"train": 0, "test": 0})
        lines.append(f"| {c['capture']} | {_cut_at(c)} | {occ} | {fr} | {b['train']} / {b['test']} |")
    lines.append("")
    return lines


def _m(d: StreamMetrics, key: str, digits: int = 3) -> str:
    v = d.get(key)
    if v is None or v.n == 0 or v.mean != v.mean:
        return "–"
    return fmt(v.mean, v.ci95, digits) if v.n > 1 and v.ci95 == v.ci95 else f"{v.mean:.{digits}f}"


def _v(d: dict[str, float | None], key: str, digits: int = 3) -> str:
    v = d.get(key)
    return "–" if v is None or v != v else f"{v:.{digits}f}"


def _streams(folds: list[FoldResult]) -> list[StreamResult]:
    """Every held-out attack's stream result, in fold order."""
    return [o for f in folds for o in (f.operational or {}).values()]


def evidence_section(folds: list[FoldResult], rule_names: dict[str, str], alert_budget: float | None,
                     reference: float = 0.0, benign_per_id: bool = False) -> list[str]:
    """The headline: attack occurrences caught at the false-alert budget, evidence accumulated per CAN ID.

    Every method and rule on one path (evidence.py): frame scores (log-odds; rules +1/-1) summed per ID
    in a CUSUM, the threshold set on the benign traffic before the cut for the budget. Cells: occurrences
    caught (per attacked ID), median time to detect, and the false alerts per hour that threshold raises
    on the clean traffic after the cut (out of sample).
    """
    ops = [o for o in _streams(folds) if any("evidence/attack/caught_rate" in m for m in o.methods.values())]
    if alert_budget is None or not ops:
        return []
    methods = list(ops[0].methods)
    rule_keys = [r for r in ops[0].rules if "evidence/attack/caught_rate" in ops[0].rules[r]]
    fit_s = next((m["evidence/fit_seconds"].mean for o in ops for m in o.methods.values()
                  if "evidence/fit_seconds" in m), float("nan"))
    clean_min = next((o.clean_minutes for o in ops if o.clean_minutes), None)
    rates = [m["evidence/extrapolated_per_hour"].mean for o in ops for m in o.methods.values()
             if "evidence/extrapolated_per_hour" in m and m["evidence/extrapolated_per_hour"].n]
    rates = [r for r in rates if r == r]
    # The detector and a rule as one IDS (eval.evidence_union), where the folds judged it.
    unions = sorted({k.split("/", 1)[0] for m in ops[0].methods.values() for k in m
                     if k.startswith("evidence+") and k.endswith("/attack/caught_rate")}) if "maml" in methods else []
    lines = [f"## Occurrences caught at ≤ {alert_budget:g} false alerts per hour (evidence per CAN ID)", "",
             "Each adapted detector's frame log-odds (a rule: +1 per flagged frame, −1/4 otherwise) are summed per CAN ID "
             "(a CUSUM, clipped per frame, reset after an alert"
             + (f"; a detector's frames add only what they score above its reference value, the {100 * reference:g}% "
                "quantile of its clipped log-odds on the clean traffic before the cut" if reference else "")
             + "); the alert threshold is set on the "
             f"{fit_s:.0f} s of benign traffic before the cut for ≤ {alert_budget:g} false alerts per hour (a "
             "generalized Pareto fit of the excursion peaks extrapolates where that traffic is too short to show the "
             "rate; verifying it would take "
             f"{3 / alert_budget * 60:.0f} minutes of clean driving without an alert). Detectors are adapted on the K "
             "attack shots beside benign frames of that same traffic"
             + (" (every CAN ID drawn equally often)" if benign_per_id else "") + "; *K/K* is the episode's own support set. Cells: "
             "occurrences caught (per attacked ID; an alert on another ID never counts), median time to detect (s), "
             "false alerts per hour on the clean traffic after the cut"
             + (f" ({clean_min:.1f} min: one alert is {60 / clean_min:.0f}/h)" if clean_min else "")
             + ". Mean ± 95% CI over the adapted detectors."
             + (f" At the detectors' thresholds the tail fit extrapolates {min(rates):.2g}–{max(rates):.2g} false "
                "alerts per hour (per method and attack, averaged over detectors): an extrapolation from "
                f"{fit_s:.0f} s, not a measurement." if rates else ""), "",
             "| held-out attack | " + " | ".join(LABELS.get(m, m) for m in methods)
             + (" | MAML, K/K support" if "maml" in methods else "")
             + "".join(f" | MAML + {rule_names.get(u[9:], u[9:])} (½ budget each)" for u in unions)
             + "".join(f" | {rule_names.get(r, r)}" for r in rule_keys) + " |",
             "|---|" + "---:|" * (len(methods) + ("maml" in methods) + len(unions) + len(rule_keys))]

    def cell(v: dict[str, Any], pre: str, per_run: bool) -> str:
        get = (lambda k, d=2: _m(v, pre + k, d)) if per_run else (lambda k, d=2: _v(v, pre + k, d))
        fa, own = get("clean/false_alerts_per_hour", 0), get("attack/false_alerts_per_hour", 0)
        if fa == "–" and own != "–":  # no clean stream: the attack capture's own benign traffic
            fa = own + "‡"
        return f"{get('attack/caught_rate')}, {get('attack/median_delay_s')} s, {fa}/h"

    for o in ops:
        cells = [cell(o.methods[m], "evidence/", True) for m in methods]
        if "maml" in methods:
            cells.append(cell(o.methods["maml"], "evidence-kk/", True))
        cells += [cell(o.methods["maml"], u + "/", True) for u in unions]
        cells += [cell(o.rules[r], "evidence/", False) for r in rule_keys]
        lines.append(f"| {o.attack} | " + " | ".join(cells) + " |")
    short = [o.attack_minutes for o in ops if o.clean_minutes is None]
    if short:
        lo, hi = min(short), max(short)
        lines += ["", "‡ No clean capture after the cut: false alerts per hour on the held-out attack capture's own "
                      "benign traffic after the cut (alerts with no attack frame nearby); that capture lasts "
                      f"{lo * 60:.0f}–{hi * 60:.0f} s after the cut: one alert there is "
                      f"{60 / hi:.0f}–{60 / max(lo, 1e-9):.0f} per hour or more, so these figures bound the rate only "
                      "loosely."]
    groups = sorted({k.rsplit("/", 1)[1] for o in ops for m in o.methods.values() for k in m
                     if k.startswith("evidence/attack/caught_rate/")})
    if groups:
        lines += ["", "Occurrences caught by the falsified signal's group (*partnered*: another ID carries a "
                      "correlated signal; *unpartnered*: nothing else on the bus reflects it), same thresholds:", "",
                  "| held-out attack | group | " + " | ".join(LABELS.get(m, m) for m in methods)
                  + "".join(f" | MAML + {rule_names.get(u[9:], u[9:])}" for u in unions)
                  + "".join(f" | {rule_names.get(r, r)}" for r in rule_keys) + " |",
                  "|---|---|" + "---:|" * (len(methods) + len(unions) + len(rule_keys))]
        for o in ops:
            for g in groups:
                key = f"evidence/attack/caught_rate/{g}"
                lines.append(f"| {o.attack} | {g} | " + " | ".join(_m(o.methods[m], key, 2) for m in methods)
                             + "".join(f" | {_m(o.methods['maml'], u + key[8:], 2)}" for u in unions)
                             + "".join(f" | {_v(o.rules[r], key, 2)}" for r in rule_keys) + " |")
    return lines + [""]


def budget_summary_section(folds: list[FoldResult], rule_names: dict[str, str],
                           alert_budget: float | None) -> list[str]:
    """One line per held-out attack: occurrences caught at the false-alert budget, by method and by rule.

    The alert rule is the most sustained one evaluated (the largest n of the ``k-of-n`` rules). Per
    method: at the deployable threshold (budget on the benign traffic before the cut) the share of
    occurrences detected, the median delay and the false alerts per hour then measured on the clean
    stream after the cut; and at the operating point (budget read off that clean stream). Rules have
    no threshold: their occurrences detected and false alerts per hour as they are.
    """
    ops = _streams(folds)
    rules_seen = sorted({k.split("/")[0][len("budget-"):] for o in ops for m in o.methods.values() for k in m
                         if k.startswith("budget-") and k.count("/") == 3})
    if alert_budget is None or not ops or not rules_seen:
        return []
    rule = max(rules_seen, key=lambda r: int(r.split("-of-")[1]))
    methods = list(ops[0].methods)
    rule_keys = list(ops[0].rules)
    lines = [f"## At a vehicle's alert budget: ≤ {alert_budget:g} false alerts per hour, alert rule {rule}", "",
             f"Per method, *deployable*: the threshold at which `{rule}` raises at most {alert_budget:g} false alerts "
             "per hour on the benign traffic before the cut; cells: occurrences detected, median delay (s), then the "
             "false alerts per hour that threshold raises on the clean traffic after the cut. *Operating point*: "
             "occurrences detected at the threshold read off that clean traffic itself (no false alert there; not "
             "settable on a vehicle). Rules: occurrences detected / false alerts per hour on the clean traffic. "
             "Mean ± 95% CI over the adapted detectors.", "",
             "| held-out attack | " + " | ".join(f"{LABELS.get(m, m)}: deployable | {LABELS.get(m, m)}: operating point"
                                                for m in methods)
             + " | " + " | ".join(rule_names.get(r, r) for r in rule_keys) + " |",
             "|---|" + "---:|" * (2 * len(methods) + len(rule_keys))]
    pre, op = f"budget-{rule}/", f"oppoint-{rule}/"
    for o in ops:
        cells = []
        for m in methods:
            v = o.methods[m]
            cells.append(f"{_m(v, f'{pre}attack/{rule}/occurrence_detection_rate', 2)}, "
                         f"{_m(v, f'{pre}attack/{rule}/median_delay_s', 2)} s, "
                         f"{_m(v, f'{pre}clean/{rule}/false_alerts_per_hour', 0)}/h")
            cells.append(_m(v, f"{op}attack/{rule}/occurrence_detection_rate", 2))
        for r in rule_keys:
            v = o.rules[r]
            cells.append(f"{_v(v, f'attack/{rule}/occurrence_detection_rate', 2)} / "
                         f"{_v(v, f'clean/{rule}/false_alerts_per_hour', 0)}/h")
        lines.append(f"| {o.attack} | " + " | ".join(cells) + " |")
    mins = next((o.clean_minutes for o in ops if o.clean_minutes), None)
    if mins:
        lines += ["", f"The clean traffic after the cut lasts {mins:.1f} minutes: one false alert there is "
                      f"{60 / mins:.0f} per hour, so a measured 0 means fewer than about {3 * 60 / mins:.0f} per hour "
                      "(95%, rule of three)."]
    return lines + [""]


def operational_section(folds: list[FoldResult], rule_names: dict[str, str], calibrate_fpr: float,
                        alert_budget: float | None = None) -> list[str]:
    ops = _streams(folds)
    if not ops:
        return []
    alert_rules = sorted({k.split("/")[-2] for o in ops for m in o.methods.values() for k in m
                          if k.startswith("attack/") and k.count("/") == 2})
    lines = ["## Judged as a vehicle would: whole test-period streams", "",
             "Each method is adapted on the K-shot support set of the first test episodes (per training seed) and then "
             "judges **every frame** of the held-out attack's capture after the cut, where attack frames are rare, and "
             "of clean traffic after the cut where the source has it. Decision thresholds: p(attack) > 0.5; "
             f"*calibrated*: the threshold that flags {calibrate_fpr:g} of the benign frames before the cut (set from "
             "the vehicle's own clean driving, no attack labels)"
             + (f"; *≤ {alert_budget:g} alerts/h*: per alert rule, the lowest threshold at which that rule raises at "
                f"most {alert_budget:g} false alerts per hour on the benign traffic before the cut (with less than "
                f"{60 / alert_budget:.0f} minutes of it, that means none), its row showing that rule's columns; "
                "*operating point*: the same budget read off the clean stream after the cut itself: not a threshold "
                "a vehicle could set, but how many occurrences the detector catches at that alert rate, apart from "
                "how well a threshold carries over from one stretch of driving to the next"
                if alert_budget is not None else "") + ". Alert rules: "
             + ", ".join(f"`{r}` = an alert when {r.split('-of-')[0]} of the last {r.split('-of-')[1]} frames of one "
                         "CAN ID are flagged, then 1 s of quiet for that ID" for r in alert_rules)
             + ". An attack occurrence counts as detected when the rule fires on it; the delay runs from its first "
             "frame. False alerts per hour count alerts with no attack frame nearby, per hour of benign driving (on the "
             "clean stream where there is one, else on the attack capture's benign periods); a vehicle needs well "
             "under one an hour.", ""]
    for o in ops:
        clean = bool(o.clean_stream)
        where = "clean" if clean else "attack"
        mins = o.clean_minutes if clean else o.attack_minutes
        lines += [f"### {o.attack}: K = {o.shots}, {o.steps} steps, {o.detectors_per_method} adapted detectors per "
                  f"method; stream: {o.stream}" + (f"; clean: {o.clean_stream}" if clean else ""), ""]
        if mins:
            lines += [f"False alerts are counted over {mins:.1f} minutes of {'clean' if clean else 'attack-capture'} "
                      f"traffic: one false alert there is {60 / mins:.0f} per hour, so 0 means fewer than about "
                      f"{3 * 60 / mins:.0f} per hour (95%, rule of three), not none.", ""]
        head = ["frame detection rate", "frame FPR"]
        for r in alert_rules:
            head += [f"{r}: occurrences detected", f"{r}: median delay s", f"{r}: false alerts/h"]
        lines += ["| detector | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
        rows = []
        for m, v in o.methods.items():
            rows.append((f"{LABELS.get(m, m)}, p > 0.5", v, "", _m))
            if any(k.startswith("calibrated/") for k in v):
                rows.append((f"{LABELS.get(m, m)}, calibrated", v, "calibrated/", _m))
            rows += [(f"{LABELS.get(m, m)}, ≤ {alert_budget:g} alerts/h for {r}", v, f"budget-{r}/", _m)
                     for r in alert_rules if any(k.startswith(f"budget-{r}/") for k in v)]
            rows += [(f"{LABELS.get(m, m)}, operating point {r}", v, f"oppoint-{r}/", _m)
                     for r in alert_rules if any(k.startswith(f"oppoint-{r}/") for k in v)]
        rows += [(f"{rule_names.get(r, r)} (rule)", v, "", lambda d, k, digits=3: _v(d, k, digits))
                 for r, v in o.rules.items()]
        for label, v, pre, f in rows:
            cells = [f(v, f"{pre}attack/frame_recall"), f(v, f"{pre}attack/frame_fpr", 5)]
            for r in alert_rules:
                cells += [f(v, f"{pre}attack/{r}/occurrence_detection_rate"), f(v, f"{pre}attack/{r}/median_delay_s"),
                          f(v, f"{pre}{where}/{r}/false_alerts_per_hour", 0)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
