#!/usr/bin/env bash
# The own-car flow on a long drive, with an attack kind the detector never saw: meta-train on the five physical
# masquerade kinds generated on a 50-minute clean drive, adapt with K = 5 frames of a flip (a gear or the brake flag
# set against its context) on another drive, calibrate on that drive's clean capture for <= 10 false alerts/h, judge
# beside the rules. Usage: bash results/ids/own_car_flip/run.sh WORK_DIR
set -euo pipefail
W=${1:?a work folder}; FM=${FASTMAML:-fastmaml}
mkdir -p "$W"
[ -f "$W/drive_a.log" ] || $FM ids simulate --attack none --duration 3000 --seed 7 --out "$W/drive_a.log"
[ -f "$W/drive_b.log" ] || $FM ids simulate --attack none --duration 600 --seed 3 --out "$W/drive_b.log"
[ -f "$W/flip_b.log" ] || $FM ids masquerade --capture "$W/drive_b.log" --kind flip --out "$W/flip_b.log"
dets=()
for seed in 0 1 2; do
  out="$W/maml-s$seed"
  [ -f "$out/detector/detector.json" ] || $FM ids train --preset masquerade --out "$out" \
      "source.captures=[$W/drive_a.log]" "seeds=[$seed]"
  $FM ids adapt --detector "$out/detector" --capture "$W/flip_b.log" --shots 5 --seed "$seed" \
      --clean "$W/drive_b.log" --out "$out/adapted"
  dets+=(--detector "maml-s$seed=$out/adapted")
done
$FM ids judge "${dets[@]}" --clean "$W/drive_b.log" --capture "$W/flip_b.log" --alerts-per-hour 10 \
    --out "${OUT:-results/ids/own_car_flip}"
