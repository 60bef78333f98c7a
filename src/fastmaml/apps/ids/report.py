"""The few-shot IDS comparison as Markdown + PNG figures (and the JSON it is made from).

Tables: per held-out attack and K, F1 / detection rate (recall) / false-positive rate of
every method after a few fine-tuning steps (mean ± 95% CI over test episodes), the rule
baselines on the same query samples, and an automatic, conservative verdict of where MAML
beats (non-overlapping CIs) fine-tuning and training from scratch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fastmaml.apps.ids.metrics import METRICS
from fastmaml.apps.ids.registry import report_traffic
from fastmaml.apps.ids.report_judgement import (LABELS, budget_summary_section, evidence_section, chance_section,
                                                maml_detection_verdict, near_chance, operational_section, split_section)
from fastmaml.apps.ids.results import CompareResult, CurveSummary, EpisodeResult
from fastmaml.eval.plots import plot_curves, save_figure
from fastmaml.eval.stats import fmt
from fastmaml.fileio import atomic_write_text

ANY_RULE = {"any": "any rule (OR)"}  # a source may add the OR of its traffic kind's rules
NOTES_FILE = "notes.md"  # hand-written analysis in the output folder, embedded in report.md
STYLES = {"from scratch": {"marker": "x", "color": "tab:gray"}, "pretrained + fine-tune": {"marker": "s", "color": "tab:blue"},
          "MAML": {"marker": "o", "color": "tab:red"}, "FOMAML": {"marker": "^", "color": "tab:orange"}}


def write_report(report: CompareResult, out_dir: Path) -> None:
    """``results.json``, ``report.md``, ``f1_vs_shots.png`` and ``f1_vs_steps.png`` in ``out_dir``.

    A hand-written ``notes.md`` in ``out_dir`` (analysis, caveats) is embedded in report.md,
    so re-running the comparison keeps it.
    """
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "results.json", json.dumps(report.to_dict(), indent=1) + "\n")
    figure_shots(report, out_dir / "f1_vs_shots.png")
    figure_steps(report, out_dir / "f1_vs_steps.png")
    notes = out_dir / NOTES_FILE
    atomic_write_text(out_dir / "report.md", markdown(report, notes.read_text() if notes.is_file() else None))


# ------------------------------------------------------------------ helpers
def _rule_labels(report: CompareResult) -> dict[str, str]:
    """Rule name -> label of the report's traffic kind's rules."""
    return {**report_traffic(report).rules, **ANY_RULE}


def _figure_rule_name(report: CompareResult, rules: dict[str, Any]) -> str | None:
    """The rule drawn as the dotted reference line of F1-vs-K, when the results have it."""
    r = report_traffic(report).reference_rule
    return r if r in rules else None


def _attacks(report: CompareResult) -> list[tuple[str, dict[int, EpisodeResult]]]:
    """(attack, {K: result}) over all folds, in fold order."""
    out = []
    for fold in report.folds:
        for a, per_k in fold.results.items():
            out.append((a, per_k))
    return out


def _final(report: CompareResult) -> int:
    return int(report.config["eval"]["steps"])


def _fig_shot(report: CompareResult) -> int:
    shots = [int(k) for k in report.config["eval"]["shots"]]
    want = int(report.config["eval"].get("figure_shot", 5))
    return want if want in shots else shots[0]


def _verdict(a: CurveSummary, b: CurveSummary, step: int) -> int:
    """+1 when a's mean is higher and the 95% CIs do not overlap, -1 the reverse, 0 otherwise."""
    ma, ca, mb, cb = a.mean[step], a.ci95[step], b.mean[step], b.ci95[step]
    if ma - ca > mb + cb:
        return 1
    if mb - cb > ma + ca:
        return -1
    return 0


# ------------------------------------------------------------------ figures
def _grid(n: int):
    import matplotlib.pyplot as plt

    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def figure_shots(report: CompareResult, path: Path) -> None:
    """F1 after the final step against K, one panel per held-out attack."""
    items = _attacks(report)
    if not items:
        return
    fig, axes = _grid(len(items))
    s = _final(report)
    for ax, (attack, per_k) in zip(axes, items):
        shots = sorted(per_k)
        curves = {}
        for m in next(iter(per_k.values())).methods:
            mean = [per_k[k].methods[m]["f1"].mean[s] for k in shots]
            ci = [per_k[k].methods[m]["f1"].ci95[s] for k in shots]
            curves[LABELS[m]] = (mean, ci)
        plot_curves(ax, curves, x=shots, xlabel="K (labelled samples per class)", ylabel=f"F1 after {s} steps",
                    title=f"held out: {attack}", styles=STYLES)
        rules = per_k[shots[0]].rules
        r = _figure_rule_name(report, rules)
        if r is not None:
            ax.axhline(rules[r]["f1"].mean[0], color="k", linestyle=":", linewidth=1, label=_rule_labels(report)[r])
            ax.legend(fontsize=7)
        ax.set_xscale("log")
        ax.minorticks_off()  # log-scale minor labels (2x10^0 ...) only clutter a few integer K
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    save_figure(fig, path)


def figure_steps(report: CompareResult, path: Path) -> None:
    """F1 against fine-tuning steps at K = eval.figure_shot, one panel per held-out attack."""
    k = _fig_shot(report)
    items = _at(_attacks(report), k)
    if not items:
        return
    fig, axes = _grid(len(items))
    for ax, (attack, per_k) in zip(axes, items):
        curves = {LABELS[m]: (r["f1"].mean, r["f1"].ci95) for m, r in per_k[k].methods.items()}
        plot_curves(ax, curves, ylabel="F1", title=f"held out: {attack}, K = {k}", styles=STYLES)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------- markdown
def _folds_text(report: CompareResult) -> str:
    folds = report.folds
    skipped = report.skipped_folds or []
    everything = set((report.data_stats or {}).get("counts", {}))
    held = {a for f in [*folds, *skipped] for a in f.holdout}
    note = (f" Skipped: {', '.join(s.fold for s in skipped)} (see *Skipped folds and K*)." if skipped else "")
    if all(len(f.holdout) == 1 for f in [*folds, *skipped]) and (not everything or held >= everything):
        return "(leave-one-attack-out: one meta-training per held-out attack)." + note
    if len(folds) == 1 and not skipped:
        f = folds[0]
        return (f"(held out together: {', '.join(f.holdout)}; one meta-training on the {len(f.known)} other "
                f"attack types: {', '.join(f.known)}).")
    return "(folds: " + "; ".join(", ".join(f.holdout) for f in folds) + ")." + note


def _figure_rule(report: CompareResult) -> str:
    items = _attacks(report)
    r = _figure_rule_name(report, next(iter(items[0][1].values())).rules if items else {})
    return _rule_labels(report)[r] if r is not None else ""


def markdown(report: CompareResult, notes: str | None = None) -> str:
    """The report as Markdown; ``notes`` (Markdown) goes in its own section after the summary."""
    cfg = report.config
    e, t, m = cfg["eval"], cfg["train"], cfg["maml"]
    env = report.environment
    s_final = _final(report)
    k_fig = _fig_shot(report)
    win = report.window
    unit = report_traffic(report).unit
    lines = [
        f"# Few-shot intrusion detection: {report.source}",
        "",
        f"Command: `{report.command or '(library call)'}`  ",
        f"Wall time: {report.total_seconds:.0f} s in this invocation (data preparation {report.prep_seconds:.0f} s; "
        f"the folds took {report.fold_seconds_sum:.0f} s when they ran) on {env['processor']}, "
        f"{env['threads']} thread(s), torch {env['torch']}, Python {env['python']}.  ",
        f"Seeds: training {cfg['seeds']}, test episodes {e['seed']}, step-size tuning episodes {e['tuning_seed']}, "
        f"features {cfg['features']['seed']}.",
        "",
        *[x for n in (report.data_stats or {}).get("notes", []) for x in (n, "")],
        "## Setup",
        "",
        "* **Tasks.** Each attack type is a task family: binary episodes *benign vs that attack* with K labelled "
        f"samples per class to adapt on and {e['query']} query samples per class to score (label 1 = attack). "
        "Meta-training uses the known attack types only; the held-out ones are met only at test time "
        + _folds_text(report),
        f"* **Samples.** {f'{unit}-level features' if not win else f'windows of {win} consecutive {unit}s'} "
        f"({len(report.feature_names)} features per {unit}: {', '.join(report.feature_names)}); "
        f"model `{cfg['model']['name']}` {cfg['model']['hidden'] if cfg['model']['name'] != 'cnn' else cfg['model']['channels']}.",
        f"* **Methods** (all adapted by the same inner loop on the same {e['episodes']} fixed test episodes per "
        "(held-out attack, K)): "
        "*from scratch* = random init fine-tuned on the K shots; *pretrained + fine-tune* = the network trained on pooled "
        "episodes of the known attacks (meta-training with 0 inner steps, same data and iterations as MAML), then fine-tuned; "
        "*MAML* / *FOMAML* = second- / first-order MAML "
        f"(α = {m['inner_lr']}, {m['inner_steps']} inner steps in training, K = {cfg['train_shots']}, "
        f"Q = {cfg['train_query']} per class, meta-batch {t['meta_batch_size']}, {t['iterations']} meta-iterations, "
        f"Adam {t['meta_lr']}). The fine-tuning step size of scratch and pretrained is tuned per K on episodes of the "
        f"*known* attacks (grid {e['finetune_lrs']}, best mean F1 after {s_final} steps); MAML adapts with its α.",
        "* **Metrics** per episode on its query set (balanced: as many benign as attack samples), then mean ± 95% CI "
        "over episodes (1.96 standard errors; training seeds pooled): F1, detection rate (recall), false-positive "
        "rate (FPR). Rule baselines are scored on the very same query samples. On these balanced query sets a detector "
        "that flags everything scores F1 = 0.667 with FPR = 1, so F1 near 0.667 is no detection at all.",
        "",
    ]
    lines += report_traffic(report).data_section(report)
    lines += split_section(report.data_stats or {})
    lines += _skipped_section(report)
    lines += evidence_section(report.folds, _rule_labels(report), e.get("alert_budget_per_hour"),
                              e.get("evidence_reference", 0.0), e.get("evidence_benign_per_id", False))  # reports from before it: by frame
    lines += _summary_section(report, k_fig, s_final)
    lines += budget_summary_section(report.folds, _rule_labels(report), e.get("alert_budget_per_hour"))
    lines += operational_section(report.folds, _rule_labels(report), e.get("calibrate_fpr", 1e-4),
                                 e.get("alert_budget_per_hour"))
    if notes:
        lines += [notes.strip(), ""]
    fig_rule = _figure_rule(report)
    lines += ["## Figures", "", "![F1 against K](f1_vs_shots.png)", "",
              f"F1 after {s_final} steps against the number of labelled samples per class"
              + (f" (dotted: {fig_rule})." if fig_rule else "."), "",
              "![F1 against steps](f1_vs_steps.png)", "", f"F1 against fine-tuning steps at K = {k_fig}.", ""]
    lines += _detail_section(report)
    lines += _step_size_section(report)
    lines += ["## Config", "", "```json", json.dumps(cfg, indent=1), "```", ""]
    return "\n".join(lines)


def _skipped_section(report: CompareResult) -> list[str]:
    """Folds the data could not serve, and Ks left out of a fold (too few samples for K + Q)."""
    folds = report.skipped_folds or []
    shots = [(f.fold, k, why) for f in report.folds for k, why in (f.skipped_shots or {}).items()]
    if not folds and not shots:
        return []
    lines = ["## Skipped folds and K", ""]
    if folds:
        lines += ["Folds the data could not serve, not trained and not in the tables below:", ""]
        lines += [f"* **{s.fold}**: {s.reason}" for s in folds] + [""]
    if shots:
        lines += ["Ks left out of a fold that runs (its other Ks are reported):", ""]
        lines += [f"* {fold}, K = {k}: {why}" for fold, k, why in shots] + [""]
    return lines


def _at(items: list[tuple[str, dict[int, EpisodeResult]]], k: int) -> list[tuple[str, dict[int, EpisodeResult]]]:
    """The held-out attacks evaluated at K = ``k`` (a small attack may lack the larger Ks)."""
    return [(a, per_k) for a, per_k in items if k in per_k]


def _summary_section(report: CompareResult, k_fig: int, s_final: int) -> list[str]:
    every = _attacks(report)
    items = _at(every, k_fig)
    missing = [a for a, _ in every if a not in dict(items)]
    if not items:
        return [f"No held-out attack was evaluated at K = {k_fig} (see *Skipped folds and K*).", ""] if every else []
    methods = list(next(iter(items[0][1].values())).methods)
    rules = list(next(iter(items[0][1].values())).rules)
    labels = _rule_labels(report)
    head = [LABELS[m] for m in methods] + [labels.get(r, r) for r in rules]
    lines = [f"## Summary: F1 at K = {k_fig} after 1 and {s_final} steps", "",
             "Cells: F1 after 1 step / after " + f"{s_final} steps (mean over episodes; CIs in the tables below). "
             "Rules need no adaptation.", "",
             "| held-out attack | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for a, per_k in items:
        entry = per_k[k_fig]
        cells = [f"{entry.methods[m]['f1'].mean[1]:.3f} / {entry.methods[m]['f1'].mean[s_final]:.3f}"
                 for m in methods]
        cells += [f"{entry.rules[r]['f1'].mean[0]:.3f}" for r in rules]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines.append("")
    if missing:
        lines += [f"Not evaluated at K = {k_fig} (too few samples; see *Skipped folds and K*): "
                  f"{', '.join(missing)}.", ""]
    lines += chance_section(items, methods, k_fig, s_final)
    lines += ["## Where MAML does and does not beat fine-tuning and scratch", ""]
    if "maml" in methods:
        lines += maml_detection_verdict(items, k_fig, s_final)
    lines += _verdicts(report, every, methods, s_final)
    return lines


def _verdicts(report: CompareResult, items: list, methods: list[str], s_final: int) -> list[str]:
    if "maml" not in methods:
        return ["MAML was not among the methods run.", ""]
    out = ["A win (loss) means MAML's mean F1 is higher (lower) and the two 95% CIs do not overlap; overlapping CIs "
           "count as no clear difference (a conservative test).", ""]
    shots = [int(k) for k in report.config["eval"]["shots"]]
    for other in ("scratch", "pretrained", "fomaml"):
        if other not in methods:
            continue
        for step in (1, s_final):
            wins, losses, ties = [], [], []
            for a, per_k in items:
                for k in [k for k in shots if k in per_k]:
                    v = _verdict(per_k[k].methods["maml"]["f1"], per_k[k].methods[other]["f1"], step)
                    (wins if v > 0 else losses if v < 0 else ties).append(f"{a}@K={k}")
            n = len(wins) + len(losses) + len(ties)
            out.append(f"* MAML vs {LABELS[other]}, after {step} step{'s' if step != 1 else ''}: better in {len(wins)}/{n}, "
                       f"worse in {len(losses)}/{n}, no clear difference in {len(ties)}/{n}"
                       + (f"; worse: {', '.join(losses)}" if losses else "")
                       + (f"; no clear difference: {', '.join(ties)}" if ties and len(ties) <= 12 else "") + ".")
    k5 = int(report.config["eval"].get("figure_shot", 5))
    if "scratch" in methods and k5 in shots:
        items = _at(items, k5)  # an attack too small for K = figure_shot has no verdict there
        beat = [a for a, per_k in items
                if _verdict(per_k[k5].methods["maml"]["f1"], per_k[k5].methods["scratch"]["f1"], s_final) > 0]
        # A higher F1 between two detectors that both flag at random is no win.
        hollow = [a for a in beat if near_chance(dict(items)[a][k5].methods["maml"], s_final)]
        beat = [a for a in beat if a not in hollow]
        not_beat = [a for a, _ in items if a not in beat]
        out.append(f"* At K = {k5} after {s_final} steps MAML clearly beats training from scratch (higher F1, "
                   f"non-overlapping CIs, and MAML itself above chance) on {len(beat)} of {len(items)} held-out attacks"
                   + (f"; not on: {', '.join(not_beat)}." if not_beat else " (all of them).")
                   + (f" A higher F1 with MAML near chance is not counted: {', '.join(hollow)}." if hollow else ""))
    out.append("")
    return out


def _detail_section(report: CompareResult) -> list[str]:
    cfg = report.config
    steps = [s for s in cfg["eval"]["report_steps"] if s <= _final(report)]
    labels = _rule_labels(report)
    lines = ["## Results per held-out attack", ""]
    for fold in report.folds:
        for a, per_k in fold.results.items():
            lines += [f"### {a} (meta-trained on: {', '.join(fold.known)})", ""]
            for k in sorted(per_k):
                entry = per_k[k]
                lines += [f"**K = {k}** ({entry.episodes} episodes)", "",
                          "| method | metric | " + " | ".join(f"{s} step{'s' if s != 1 else ''}" for s in steps) + " |",
                          "|---|---|" + "---:|" * len(steps)]
                for m, r in entry.methods.items():
                    for metric in METRICS.values():  # the metrics with a label, where the results have them
                        if metric.label is None or metric.name not in r:
                            continue
                        cells = [fmt(r[metric.name].mean[s], r[metric.name].ci95[s]) for s in steps]
                        lines.append(f"| {LABELS[m] if metric.name == 'f1' else ''} | {metric.label} | "
                                     + " | ".join(cells) + " |")
                for rule, r in entry.rules.items():
                    lines.append(f"| {labels.get(rule, rule)} (rule) | F1 / detection rate / FPR | "
                                 + " / ".join(fmt(r[x].mean[0], r[x].ci95[0]) for x in ("f1", "recall", "fpr"))
                                 + " |" + " |" * (len(steps) - 1))
                lines.append("")
    return lines


def _step_size_section(report: CompareResult) -> list[str]:
    lines = ["## Fine-tuning step sizes (tuned on the known attacks) and training time", "",
             "| fold | run | step size per K | training s |", "|---|---|---|---:|"]
    for fold in report.folds:
        for run, secs in fold.train_seconds.items():
            ss = fold.step_sizes.get(run)
            lines.append(f"| {fold.fold} | {run} | {', '.join(f'K={k}: {v}' for k, v in ss.items()) if ss else '(own α)'} "
                         f"| {secs:.0f} |")
    lines += ["", "Training seconds are 0 for runs finished in an earlier invocation (loaded, not retrained).", ""]
    return lines
