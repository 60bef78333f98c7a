#!/usr/bin/env bash
# The own-car flow (README "Your own car"), 3 seeds per case, judged with MAML beside the plausibility rule and beside
# the plausibility and timing rules (what ids adapt --clean deploys by default since 2026-12-08).
# Usage: bash results/ids/own_car_union/run.sh ROAD_DATA INJ IDS_DATA RUNS
#   ROAD_DATA: the ROAD attack CSVs (results/ids/road_real/run.sh) plus the clean prefixes clean_prefix.py makes:
#     clean_coolant_pre.csv (of max_engine_coolant_temp_attack.csv), clean_reverse_pre.csv (of
#     reverse_light_off_attack_1_masquerade.csv) and clean_other_drive.csv (the benign frames of
#     max_engine_coolant_temp_attack.csv: awk -F, 'NR == 1 || $NF == "Benign"')
#   INJ: the injected speedometer pair (results/ids/road_real/speedometer_captures.py DATA/fuzzing_attack_2.csv INJ)
#   IDS_DATA: shared data's ids/ folder (the CrySyS sample)
set -euo pipefail
D=${1:?ROAD_DATA}; INJ=${2:?INJ}; IDS=${3:?IDS_DATA}; O=${4:-runs/own_car_union}
F=${FASTMAML:-fastmaml}
run_case() {  # name clean-capture adapt-capture occurrences judged-capture judged-capture
  local name=$1 clean=$2 acap=$3 occ=$4 c1=$5 c2=$6 dets=()
  mkdir -p "$O/$name"
  for S in 0 1 2; do
    local o=$O/$name/s$S
    $F ids train --preset masquerade --out "$o" "source.captures=[$clean]" source.masquerade.occurrences="$occ" \
        "seeds=[$S]" features.identity=true
    $F ids adapt --detector "$o/detector" --capture "$acap" --shots 5 --clean "$clean" --alerts-per-hour 10 \
        --seed "$S" --union none --out "$o/adapted"
    dets+=(--detector "maml-s$S=$o/adapted")
  done
  for U in plausibility plausibility_timing; do
    $F ids judge "${dets[@]}" --clean "$clean" --capture "$c1" --capture "$c2" --union "$U" --out "$O/$name/$U"
  done
}
run_case coolant "$D/clean_coolant_pre.csv" "$D/max_engine_coolant_temp_attack_masquerade.csv" 4 \
    "$D/max_engine_coolant_temp_attack_masquerade.csv" "$D/max_engine_coolant_temp_attack.csv"
run_case reverse "$D/clean_reverse_pre.csv" "$D/reverse_light_off_attack_1_masquerade.csv" 4 \
    "$D/reverse_light_off_attack_1_masquerade.csv" "$D/reverse_light_off_attack_1.csv"
run_case speedo "$D/clean_other_drive.csv" "$INJ/max_speedometer_injected_masquerade.csv" 6 \
    "$INJ/max_speedometer_injected_masquerade.csv" "$INJ/max_speedometer_injected.csv"
C="$IDS/crysys-sample"
run_case crysys "$C/S-1-1-benign.log" "$C/S-1-1-malicious-CONST-msg-mod-0x410-0.4-0.6.log" 6 \
    "$C/S-1-1-malicious-DOUBLE-msg-mod-0x110-NEG_OFFSET-0.4-0.6-0x410-NEG_OFFSET-0.4-0.6.log" \
    "$C/S-1-1-malicious-CONST-msg-mod-0x410-0.4-0.6.log"
