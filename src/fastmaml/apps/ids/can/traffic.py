"""CAN as a traffic kind of the IDS (:class:`~fastmaml.apps.ids.traffic.Traffic`): frames from capture logs.

Frame features with an optional signal block (:func:`~.features.frame_feature_names`), read
through :func:`~.readers.open_capture` (any supported log format); the sources (CICIoV2024, the
simulator, labelled capture folders, DAGA, generated masquerades, and the synthetic test
source) are imported on use, so a run loads only its own source's code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from fastmaml.apps.ids.can.dbc import SegmentationScore
from fastmaml.apps.ids.can.features import (IDENTITY_FEATURES, FeatureState, FrameFeaturizer, build_sample_set,
                                            frame_feature_names)
from fastmaml.apps.ids.can.readers import open_capture
from fastmaml.apps.ids.results import CompareResult
from fastmaml.apps.ids.samples import SampleSet
from fastmaml.apps.ids.traffic import ReadOptions, Rows, RowStream, Source, Traffic, count_table
from fastmaml.errors import DataError


def _source():  # imported on use, as every source module (see the module docstring)
    from fastmaml.apps.ids.can import source
    return source


def _masquerade():
    from fastmaml.apps.ids.can import masquerade
    return masquerade


def _synthetic():
    from fastmaml.apps.ids import synthetic
    return synthetic


class CanTraffic(Traffic):
    name = "can"
    description = "CAN traffic"
    unit = "frame"
    key_column = "can_id"
    key_name = "CAN ID"
    rules = {"id_allow_list": "ID allow-list", "timing": "timing rule", "payload_range": "payload range",
             "signal_range": "signal range", "plausibility": "plausibility",
             "plausibility_timing": "plausibility + timing"}
    reference_rule = "id_allow_list"
    sources = {
        "cic": Source(lambda *a: _source().prepare_cic(*a)),
        "sim": Source(lambda *a: _source().prepare_sim(*a)),
        "captures": Source(lambda *a: _source().prepare_captures(*a), file_splits=True),
        "daga": Source(lambda *a: _source().prepare_daga(*a)),
        "masquerade": Source(lambda *a: _masquerade().prepare_masquerade(*a)),
        # Separable blobs for tests: no feature state (so no detector); reports call its samples frames.
        "synthetic": Source(lambda *a: _synthetic().prepare_synthetic(*a)),
    }

    def feature_names(self, state: FeatureState) -> list[str]:
        return frame_feature_names(state)

    def load_state(self, d: dict[str, Any], where: str) -> FeatureState:
        return FeatureState.from_dict(d, where)

    def fit_state(self, capture: str | Path, labels: str | Path | None = None,
                  options: ReadOptions = ReadOptions()) -> FeatureState:
        return FeatureState.fit(_reader(capture, labels, options))

    def labelled_samples(self, state: FeatureState, capture: str | Path, labels: str | Path | None, *,
                         window: int | None, stride: int | None, label_rule: str, max_per_class: int, seed: int,
                         options: ReadOptions = ReadOptions()) -> SampleSet:
        return build_sample_set(_reader(capture, labels, options), state, window=window, stride=stride,
                                label_rule=label_rule, max_per_class=max_per_class, seed=seed, name=str(capture))

    def stream_rules(self, state: FeatureState, clean: str | Path | None, options: ReadOptions = ReadOptions()
                     ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        from fastmaml.apps.ids.can.source import _fit_rules, state_rules
        from fastmaml.apps.ids.samples import unlabelled_rows

        fitted = state_rules(state) if clean is None else _fit_rules(list(_reader(clean, None, options)), state)
        names = frame_feature_names(state)

        def apply(rule: Any) -> Callable[[np.ndarray], np.ndarray]:
            def flags(x: np.ndarray) -> np.ndarray:
                return rule.predict_samples(unlabelled_rows(x, names)).numpy().astype(bool)
            if hasattr(rule, "checks"):  # the signal rules say which of their checks a frame fails
                flags.checks = lambda x: rule.checks(names, np.asarray(x))  # type: ignore[attr-defined]
            return flags

        return {name: apply(rule) for name, rule in fitted.items()}

    def identity_columns(self) -> list[str]:
        return list(IDENTITY_FEATURES)

    def sample_keys(self, feature_names: Sequence[str]) -> Callable[[np.ndarray], np.ndarray] | None:
        if "id_scaled" not in feature_names or "is_extended" not in feature_names:
            return None
        i, e = feature_names.index("id_scaled"), feature_names.index("is_extended")

        def keys(x: np.ndarray) -> np.ndarray:  # the scaled ID back (exact for 11-bit IDs, as the rules read it)
            x = np.asarray(x, np.float64)
            return np.round(x[:, i] * np.where(x[:, e] > 0.5, 0x1FFFFFFF, 0x7FF)).astype(np.int64)

        return keys

    def deployed_rule(self, state: FeatureState) -> str:
        # Partner plausibility sees falsified values, the timing rule forged frames: beside MAML the two caught all
        # six of ROAD's real attacks at 0 false alerts/h, which MAML alone did not (results/ids/road_real). Both
        # read the signal features.
        return "plausibility_timing" if state.signals else ""

    def partners(self, state: FeatureState) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for sig in state.signals:
            for cid, _ in sig.partners:
                out.setdefault(sig.can_id, set()).add(int(cid))
        return out

    def row_stream(self, state: FeatureState, capture: str | Path, labels: str | Path | None,
                   options: ReadOptions = ReadOptions()) -> RowStream:
        reader = _reader(capture, labels, options)
        fz = FrameFeaturizer(state)

        def rows() -> Iterator[Rows]:
            n = 0
            for b in reader:
                has = bool((b.label >= 0).all())
                yield Rows(fz.transform(b), b.is_attack().astype(np.int64) if has else None,
                           np.arange(n, n + len(b)), b.timestamp, b.can_id)
                n += len(b)

        def note() -> str:
            st = reader.stats
            return f"{st.lines_skipped} malformed line(s) skipped, e.g. {st.skip_reasons[:3]}" if st.lines_skipped else ""

        return RowStream(rows(), note)

    def simulate(self, attack: str, duration_s: float, seed: int, out: Path, labels: Path) -> str:
        from fastmaml.apps.ids.can import sim

        if attack not in ("none", *sim.ATTACKS):
            raise DataError(f"unknown attack {attack!r}; valid: none, {', '.join(sim.ATTACKS)}")
        frames = sim.simulate(attack, duration_s, seed)
        sim.write_candump(frames, out, labels)
        return f"wrote {len(frames)} frames ({int(frames.is_attack().sum())} attack) to {out}, labels to {labels}"

    def data_section(self, report: CompareResult) -> list[str]:
        """Counts, and how many attack samples an ID allow-list would see (all of them: a warning)."""
        unseen = (report.data_stats or {}).get("unseen_id_fraction", {})

        def unseen_cell(a: str) -> str:
            u = unseen.get(a, {})
            return f"{100 * u['attack']:.1f}%" if "attack" in u else "n/a"

        lines = ["## Data", ""] + count_table(report, {"attack samples with a CAN ID unseen in benign traffic":
                                                       unseen_cell})
        fr = [u.get("attack") for u in unseen.values() if u]
        if fr and all(x is not None and x >= 0.999 for x in fr):
            id_feats = [f for f in ("id_known", "id_scaled") if f in report.feature_names]
            lines += [
                "**Every attack sample in this data carries a CAN ID that never occurs in benign traffic.** An ID "
                "allow-list learned from benign traffic is therefore already a (near) perfect detector here"
                + (f", and the {' / '.join(f'`{f}`' for f in id_feats)} feature(s) make every task trivially separable"
                   if id_feats else " (the ID features were dropped from the learned detectors' inputs in this run)")
                + "; this data cannot show an advantage of learned detectors, meta-learned or not. "
                + ("In CICIoV2024 this holds for all five attack types (DoS and the four spoofing attacks). Its attack "
                   "files also hold only attack frames (no benign frames around them), so timing and payload features "
                   "see each attack capture on its own; read the CICIoV2024 numbers as a sanity check."
                   if "CICIoV2024" in report.source else ""),
                "",
            ]
        elif fr:
            lo = min(x for x in fr if x is not None)
            lines += [f"Attacks reuse legitimate IDs (at most {100 * max(x for x in fr if x is not None):.1f}% and at "
                      f"least {100 * lo:.1f}% of an attack's samples carry an unseen ID), so an ID allow-list cannot "
                      "catch them.", ""]
        dbc = (report.data_stats or {}).get("dbc")
        if dbc:  # features.dbc: where the signals came from, and how the inferred ones compare
            score, skipped = dbc.get("inferred_vs_dbc"), dbc.get("skipped", [])
            lines += [f"Signals from the DBC `{dbc['path']}`: {len(dbc.get('signals', []))} used (physical in the "
                      f"clean frames) of {dbc['fields']} readable, {len(skipped)} left out"
                      + (f" ({'; '.join(skipped[:3])}{'; ...' if len(skipped) > 3 else ''})" if skipped else "")
                      + (f"; without it the {SegmentationScore(**score).summary()}." if score else "."), ""]
        return lines


def _reader(capture: str | Path, labels: str | Path | None, options: ReadOptions):
    """The capture's reader; ``columns`` imply the column-mapped CSV format."""
    o = options
    kw: dict[str, Any] = {"chunk_size": o.chunk_size, "skip_malformed": o.skip_malformed}
    fmt = o.format
    if labels is not None:
        kw["labels"] = labels
    if o.columns:
        kw["columns"] = o.columns
        fmt = "csv" if fmt == "auto" else fmt
    if o.bad_id != "error":
        kw["bad_id"] = o.bad_id
    if o.label_column != 1:  # only candump reads it; the default reaches no other reader
        kw["label_column"] = o.label_column
    try:
        return open_capture(capture, fmt, **kw)
    except TypeError:
        raise DataError(f"{capture}: this capture format carries its own labels; drop the label file option") from None


CAN = CanTraffic()
