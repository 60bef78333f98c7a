#!/usr/bin/env bash
# The CrySyS sample as an engineer's own car (issue 33): meta-train on masquerades generated on the car's 30 s clean
# trace, adapt with K = 5 attack frames of the CONST file (benign side: the clean trace), calibrate the evidence
# threshold on the clean trace for <= 10 false alerts/h, judge on the DOUBLE and CONST files beside the rules.
# Usage: bash results/ids/crysys/run.sh DATA_ROOT RUNS_DIR   (DATA_ROOT holds ids/crysys-sample)
# IDENTITY=false trains without the ID and raw payload-byte columns (features.identity; default true, the own-car flow's).
set -euo pipefail
DATA=${1:?data root (the folder holding ids/crysys-sample)}; RUNS=${2:-runs/ids/crysys}
D="$DATA/ids/crysys-sample"
CLEAN="$D/S-1-1-benign.log"; CONST="$D/S-1-1-malicious-CONST-msg-mod-0x410-0.4-0.6.log"
DOUBLE="$D/S-1-1-malicious-DOUBLE-msg-mod-0x110-NEG_OFFSET-0.4-0.6-0x410-NEG_OFFSET-0.4-0.6.log"
FM=${FASTMAML:-fastmaml}
dets=()
for seed in 0 1 2; do
  for m in maml fomaml pretrained scratch; do
    out="$RUNS/$m-s$seed"
    [ -f "$out/detector/detector.json" ] || $FM ids train --preset masquerade --method "$m" --out "$out" \
        "source.captures=[$CLEAN]" source.masquerade_occurrences=6 "seeds=[$seed]" "features.identity=${IDENTITY:-true}"
    # K = 5 attack frames of the CONST file; the benign side from the clean trace (4,096 frames).
    # Every CAN ID of the clean trace drawn equally often on the benign side (the default, --benign-per-id) ...
    $FM ids adapt --detector "$out/detector" --capture "$CONST" --shots 5 --seed "$seed" --clean "$CLEAN" \
        --out "$out/adapted"
    dets+=(--detector "$m-s$seed=$out/adapted")
    # ... and drawn by frame, as before it (a 10 Hz ID is then 1.7% of the benign side).
    $FM ids adapt --detector "$out/detector" --capture "$CONST" --shots 5 --seed "$seed" --clean "$CLEAN" \
        --no-benign-per-id --out "$out/adapted_by_frame"
    dets+=(--detector "$m-by-frame-s$seed=$out/adapted_by_frame")
    # The protocol the issue found trigger-happy: K = 5 benign + 5 attack frames of the CONST file.
    $FM ids adapt --detector "$out/detector" --capture "$CONST" --shots 5 --seed "$seed" --out "$out/adapted_kk"
    dets+=(--detector "$m-kk-s$seed=$out/adapted_kk")
  done
  dets+=(--detector "maml-unadapted-s$seed=$RUNS/maml-s$seed/detector")
done
$FM ids judge "${dets[@]}" --clean "$CLEAN" --capture "$DOUBLE" --capture "$CONST" --alerts-per-hour 10 \
    --out "${OUT:-results/ids/crysys}"
