"""The operational evaluation: an adapted detector streamed over whole test-period captures.

Episodes score a detector on balanced samples; a vehicle sees a stream in which one frame in
hundreds or thousands is an attack. For each held-out attack whose source kept its test-period
capture (:class:`~fastmaml.apps.ids.families.Stream`), each method is adapted on the support
sets of the first few fixed test episodes (K shots per class, the method's own step size and
step count) and then judges every frame of that capture, and of clean traffic where the source
has it. Reported per method: frame detection rate and FPR on the whole stream, and for each
alert rule the false alerts per hour of benign driving, the share of attack occurrences alerted
on and the delay from an occurrence's first frame to its alert.

Thresholds: p(attack) > 0.5; the threshold flagging a share ``calibrate_fpr`` of the benign
frames before the cut; and, per alert rule, the lowest threshold at which that rule raises at
most ``alert_budget`` false alerts per hour on the benign traffic before the cut (the vehicle's
own clean driving: a deployment sets it without attack labels). Beside them, the *operating
point*: the same budget read off the clean stream after the cut itself. It is not a threshold a
deployment could set (it looks at the test period's clean traffic), but it says how many
occurrences a detector catches at a vehicle-grade alert rate, apart from how well the
calibration carries over from one stretch of driving to the next.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from fastmaml.apps.ids.alerts import ALERT_RULES, AlertRule, alert_metrics, k_of_n_alerts
from fastmaml.apps.ids.episodes import Episodes
from fastmaml.apps.ids.evidence import (Evidence, Occurrence, calibrate, count_alerts, cusum_alerts, judge,
                                        merge_alerts, rule_alarm, rule_frame_scores, traffic_seconds)
from fastmaml.apps.ids.families import Stream
from fastmaml.apps.ids.samples import key_balanced_rows, same_key_rows
from fastmaml.core.maml import MAML, Params
from fastmaml.eval.stats import mean_ci



def _p_attack(runner: MAML, params: Params, x: torch.Tensor, batch: int = 65536) -> torch.Tensor:
    out = [torch.softmax(runner.predict(params, x[i:i + batch]), -1)[:, 1] for i in range(0, len(x), batch)]
    return torch.cat(out) if out else torch.zeros(0)


def calibrated_threshold(p_benign: torch.Tensor, fpr: float) -> float:
    """The p(attack) threshold that flags a share ``fpr`` of benign frames (strictly above it flags)."""
    if not len(p_benign):
        return 0.5
    return float(torch.quantile(p_benign.double(), 1.0 - fpr, interpolation="higher")) if len(p_benign) <= 16_000_000 \
        else float(p_benign.double().kthvalue(int(len(p_benign) * (1 - fpr))).values)


def budget_threshold(p_benign: torch.Tensor, st: Stream, rule: AlertRule, per_hour: float) -> float:
    """The lowest p(attack) threshold at which ``rule`` raises at most ``per_hour`` alerts per hour on the
    benign stream ``st`` (flags strictly above it), found by bisection over the observed p values."""
    p = p_benign.double().numpy()
    if not len(p):
        return 0.5
    clock, key = st.clock.numpy(), st.key.numpy()
    hours = traffic_seconds(np.asarray(clock, np.float64) * st.clock_unit_s) / 3600.0
    allowed = int(np.floor(per_hour * hours + 1e-9))
    cand = np.unique(p)  # thresholds between observed values change nothing
    lo, hi = 0, len(cand) - 1  # cand[hi] (the largest p) flags nothing, so it always fits the budget
    while lo < hi:
        mid = (lo + hi) // 2
        if len(k_of_n_alerts(p > cand[mid], clock, key, rule)) <= allowed:
            hi = mid
        else:
            lo = mid + 1
    return float(cand[lo])


def stream_values(flags: np.ndarray, st: Stream, gap_s: float,
                  alert_rules: Sequence[AlertRule] = ALERT_RULES) -> dict[str, float]:
    """Frame rates and alert metrics of one verdict stream."""
    truth = st.attack.numpy().astype(bool)
    clock, key = st.clock.numpy(), st.key.numpy()
    out: dict[str, float] = {}
    if truth.any():
        out["frame_recall"] = float(flags[truth].mean())
    if (~truth).any():
        out["frame_fpr"] = float(flags[~truth].mean())
    for rule in alert_rules:
        m = alert_metrics(flags, truth, clock, key, rule, occurrence_gap=gap_s / st.clock_unit_s,
                          clock_unit_s=st.clock_unit_s)
        out[f"{rule.name}/false_alerts_per_hour"] = m["false_alerts_per_hour"]
        if truth.any():
            out[f"{rule.name}/occurrence_detection_rate"] = m["occurrence_detection_rate"]
            out[f"{rule.name}/median_delay_s"] = m["median_delay_s"]
    return out


def operational_values(runner: MAML, params: Params, ep: Episodes, steps: int, attack_stream: Stream,
                       benign_stream: Stream | None, n_episodes: int, gap_s: float, fit_stream: Stream | None = None,
                       calibrate_fpr: float = 1e-4, alert_budget: float | None = None,
                       alert_rules: Sequence[AlertRule] = ALERT_RULES) -> list[dict[str, float]]:
    """One dict of stream metrics per adapted detector (the first ``n_episodes`` support sets).

    Keys ``attack/...`` and ``clean/...`` judge verdicts at p(attack) > 0.5; with ``fit_stream``
    (benign training-period frames) also ``calibrated/attack/...`` and ``calibrated/clean/...`` at
    the threshold that flags ``calibrate_fpr`` of those benign frames: what a deployment can set
    from the vehicle's own clean driving, without attack labels. With ``alert_budget`` also
    ``budget-<rule>/attack/...`` (and ``clean/...``): that alert rule's metrics at the threshold where
    it raises at most ``alert_budget`` false alerts per hour on the fit stream, and
    ``oppoint-<rule>/...`` at the threshold where it does so on the clean stream (see the module doc).
    """
    rows = []
    b = ep.batch
    for i in range(min(n_episodes, b.support_x.shape[0])):
        adapted = runner.adapt(b.support_x[i], b.support_y[i], steps=steps)
        p_att = _p_attack(runner, adapted, attack_stream.x)
        p_clean = _p_attack(runner, adapted, benign_stream.x) if benign_stream is not None else None
        thresholds = {"": 0.5}
        p_fit = _p_attack(runner, adapted, fit_stream.x) if fit_stream is not None else None
        if p_fit is not None:
            thresholds["calibrated/"] = calibrated_threshold(p_fit, calibrate_fpr)
            for rule in alert_rules if alert_budget is not None else ():
                thresholds[f"budget-{rule.name}/"] = budget_threshold(p_fit, fit_stream, rule, alert_budget)
        for rule in alert_rules if alert_budget is not None and p_clean is not None else ():
            thresholds[f"oppoint-{rule.name}/"] = budget_threshold(p_clean, benign_stream, rule, alert_budget)
        row: dict[str, float] = {}
        for prefix, thr in thresholds.items():
            # A budget threshold is set for one alert rule: judge with that rule only.
            rules = [r for r in alert_rules if prefix.endswith(f"-{r.name}/")] or alert_rules
            for part, p, st in (("attack", p_att, attack_stream), ("clean", p_clean, benign_stream)):
                if p is not None:
                    row.update({f"{prefix}{part}/{k}": v
                                for k, v in stream_values((p > thr).numpy(), st, gap_s, rules).items()})
        for prefix, thr in thresholds.items():
            if prefix:
                row[f"{prefix}threshold"] = thr
        rows.append(row)
    return rows


def summarize_rows(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Mean ± 95% CI of every metric over rows (NaN rows, e.g. no delay when nothing was detected, left out)."""
    out = {}
    for k in rows[0] if rows else []:
        v = torch.tensor([r.get(k, float("nan")) for r in rows], dtype=torch.float64)
        v = v[~torch.isnan(v)]
        mean, ci = mean_ci(v) if len(v) else (torch.tensor(float("nan")), torch.tensor(float("nan")))
        out[k] = {"mean": float(mean), "ci95": float(ci), "n": int(len(v))}
    return out


# ====================================================================== evidence over time
def _log_odds(runner: MAML, params: Params, x: torch.Tensor, batch: int = 65536) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            z = runner.predict(params, x[i:i + batch])
            out.append((z[:, 1] - z[:, 0]).double())
    return torch.cat(out).numpy() if out else np.zeros(0)


def evidence_judgement(scores: dict[str, np.ndarray] | list[tuple[dict[str, np.ndarray], Evidence]], attack: Stream,
                       clean: Stream | None, fit: Stream, budget: float, ev: Evidence | None, gap_s: float,
                       partners: dict[int, set[int]], group_of: Callable[[Occurrence], str | None] | None = None
                       ) -> dict[str, float]:
    """One scorer's scores on the fit / attack / clean streams -> calibrated evidence alerts, judged.

    The threshold is set on ``fit`` (benign traffic before the cut) for ``budget`` false alerts per
    hour; the attack stream's occurrences (per attacked ID) caught, their median time to detect, and
    false alerts per hour on the attack stream's benign traffic and on the clean stream after the cut
    (out of sample). ``group_of`` names each occurrence's group (generated masquerades: whether the
    falsified signal has a partner on another ID); each group's caught rate is reported apart.
    ``scores`` may instead list several alert channels (scores, their Evidence): each gets an equal
    share of the budget and their alerts are judged together, as one IDS raising all of them.
    """
    def arrays(st: Stream) -> tuple[np.ndarray, np.ndarray]:
        return st.clock.double().numpy() * st.clock_unit_s, st.key.numpy().astype(np.int64)

    channels = scores if isinstance(scores, list) else [(scores, ev)]
    fc, fk = arrays(fit)
    ac, ak = arrays(attack)
    thresholds, cals, alerts = [], [], []
    for sc, e in channels:
        cal = calibrate(sc["fit"], fc, fk, budget / len(channels), e, bootstrap=50)
        thresholds.append(e.calibrated(cal))
        cals.append(cal)
        alerts.append(cusum_alerts(sc["attack"], ac, ak, thresholds[-1])[0])
    j = judge(merge_alerts(*alerts), attack.attack.numpy().astype(bool), ac, ak, gap_s, partners)
    out = {"threshold": cals[0].threshold, "fit_seconds": cals[0].clean_seconds,
           "extrapolated_per_hour": sum(c.extrapolated_per_hour for c in cals),
           "attack/caught_rate": j.caught_rate, "attack/median_delay_s": j.median_delay_s,
           "attack/false_alerts_per_hour": j.false_alerts_per_hour}
    for name in sorted({group_of(o) for o in j.occurrences} - {None}) if group_of is not None else ():
        occ = [o for o in j.occurrences if group_of(o) == name]
        out[f"attack/caught_rate/{name}"] = sum(o.alerted for o in occ) / len(occ)
    if clean is not None and all("clean" in sc for sc, _ in channels):
        cc, ck = arrays(clean)
        n = sum(count_alerts(sc["clean"], cc, ck, thr) for (sc, _), thr in zip(channels, thresholds))
        secs = traffic_seconds(cc)
        out["clean/false_alerts_per_hour"] = n / (secs / 3600.0) if secs > 0 else float("nan")
    return out


def rule_scores(attack: Stream, clean: Stream | None, fit: Stream, rule: str) -> dict[str, np.ndarray] | None:
    """A rule's frame scores (:func:`~fastmaml.apps.ids.evidence.rule_frame_scores`) per stream (None where the fit
    stream lacks the rule)."""
    if rule not in fit.rules or rule not in attack.rules:
        return None
    out = {"attack": rule_frame_scores(attack.rules[rule].numpy()), "fit": rule_frame_scores(fit.rules[rule].numpy())}
    if clean is not None and rule in clean.rules:
        out["clean"] = rule_frame_scores(clean.rules[rule].numpy())
    return out


def evidence_values(runner: MAML, params: Params, ep: Episodes, steps: int, attack: Stream, clean: Stream | None,
                    fit: Stream, n_episodes: int, budget: float, gap_s: float, partners: dict[int, set[int]],
                    benign_frames: int, ev: Evidence, seed: int = 0,
                    group_of: Callable[[Occurrence], str | None] | None = None, same_id: float = 0.0,
                    keys_of: Callable[[np.ndarray], np.ndarray] | None = None, union_rule: str = "",
                    benign_per_id: bool = True) -> list[dict[str, float]]:
    """Per adapted detector (first ``n_episodes`` support sets): evidence judgement after two adaptations.

    ``evidence/``: the K attack shots beside ``benign_frames`` frames of the benign traffic before the
    cut (a vehicle has clean driving in abundance; ``benign_per_id``: every CAN ID equally often,
    :func:`~fastmaml.apps.ids.samples.key_balanced_rows`), the attack shots repeated to weigh as much as the
    benign frames (the balanced loss of meta-training); ``evidence-kk/``: the episode's K/K support set.
    ``evidence+RULE/`` (with ``union_rule`` where the streams carry that rule): the first detector and the rule
    raising alerts side by side, each calibrated for half the budget, judged as one IDS. ``ev``: the detectors'
    evidence setting before calibration (the rule's takes its ``per_key``).
    """
    rows = []
    b = ep.batch
    g = torch.Generator().manual_seed(seed)
    streams = {"attack": attack, "fit": fit, **({"clean": clean} if clean is not None else {})}
    union = rule_scores(attack, clean, fit, union_rule) if union_rule else None
    for i in range(min(n_episodes, b.support_x.shape[0])):
        sx, sy = b.support_x[i], b.support_y[i]
        att = sx[sy == 1]
        reps = max(1, benign_frames // max(len(att), 1))
        n_benign = reps * len(att)
        benign = fit.x[key_balanced_rows(fit.key.numpy(), n_benign, g) if benign_per_id
                       else torch.randperm(len(fit.x), generator=g)[:n_benign]]
        if same_id > 0 and keys_of is not None and len(att):
            # Part of the benign side from the attacked IDs' own clean frames: the falsehood, not the ID, must differ.
            pick = same_key_rows(fit.key.numpy(), keys_of(att.numpy()), int(same_id * len(benign)), g)
            if len(pick):
                benign = torch.cat([benign[: len(benign) - len(pick)], fit.x[pick]])
        xs = torch.cat([benign, att.repeat(reps, *([1] * (att.dim() - 1)))])
        ys = torch.cat([torch.zeros(len(benign), dtype=torch.long), torch.ones(reps * len(att), dtype=torch.long)])
        row: dict[str, float] = {}
        for prefix, (x, y) in (("evidence/", (xs, ys)), ("evidence-kk/", (sx, sy))):
            adapted = runner.adapt(x, y, steps=steps)
            scores = {name: _log_odds(runner, adapted, st.x) for name, st in streams.items()}
            row.update({prefix + k: v for k, v in evidence_judgement(scores, attack, clean, fit, budget, ev, gap_s,
                                                                    partners, group_of).items()})
            if prefix == "evidence/" and union is not None:
                # The detector and the rule as one IDS, each at half the budget.
                row.update({f"evidence+{union_rule}/{k}": v for k, v in evidence_judgement(
                    [(scores, ev), (union, rule_alarm(per_key=ev.per_key))], attack, clean, fit, budget, None, gap_s, partners,
                    group_of).items()})
        rows.append(row)
    return rows


def evidence_rule_values(attack: Stream, clean: Stream | None, fit: Stream, budget: float, gap_s: float,
                         partners: dict[int, set[int]], group_of: Callable[[Occurrence], str | None] | None = None,
                         per_key: bool = True) -> dict[str, dict[str, float]]:
    """Each rule on the same path: +1 per flagged frame, -1/4 otherwise, summed per ID, threshold set on ``fit``."""
    out = {}
    for r in attack.rules:
        scores = rule_scores(attack, clean, fit, r)
        if scores is None:
            continue
        out[r] = {f"evidence/{k}": v for k, v in evidence_judgement(scores, attack, clean, fit, budget,
                                                                     rule_alarm(per_key=per_key), gap_s, partners,
                                                                     group_of).items()}
    return out
