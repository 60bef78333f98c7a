#!/usr/bin/env bash
# ROAD's real masquerade and fabrication captures (one real vehicle, Oak Ridge's ROAD data set; the attack logs only,
# no ambient drive) through --preset captures, each masquerade held out with its fabrication twin.
# DATA: a folder holding ROAD's attack logs as labelled CSVs (Time,Id,Byte1..Byte8,Label; the layout of
# data/processed-road/attacks in github.com/bronte999/CSC429_LCCDE, the public conversion of ROAD's logs):
#   correlated_signal_attack_{2,3}.csv and *_masquerade.csv, max_engine_coolant_temp_attack.csv and *_masquerade.csv,
#   reverse_light_off_attack_1.csv and *_masquerade.csv
# Usage: bash results/ids/road_real/run.sh DATA OUT [key=value ...]   (e.g. 'methods=[maml]' 'seeds=[0]')
# EXTRA_CAPS='{path: P, attack: A}, ...' adds captures beside the eight (speedometer_captures.py's injected pair).
set -euo pipefail
DATA=${1:?folder holding the ROAD attack CSVs}; OUT=${2:?output folder}; shift 2
FM=${FASTMAML:-fastmaml}
for f in correlated_signal_attack_2 correlated_signal_attack_3 max_engine_coolant_temp_attack reverse_light_off_attack_1; do
  for g in "$f" "${f}_masquerade"; do
    [ -f "$DATA/$g.csv" ] || { echo "missing $DATA/$g.csv (see the header of $0)" >&2; exit 2; }
  done
done
# The files label frames Benign / Masquerade / Fabrication: each file's attack is named here, so that the
# correlated-signal, coolant and reverse-light masquerades are three attacks, not one.
cap() { printf '{path: %s/%s.csv, attack: %s}' "$DATA" "$1" "$2"; }
CAPS="[$(cap correlated_signal_attack_2 correlated_signal_fabrication), $(cap correlated_signal_attack_3 correlated_signal_fabrication),\
 $(cap correlated_signal_attack_2_masquerade correlated_signal_masquerade), $(cap correlated_signal_attack_3_masquerade correlated_signal_masquerade),\
 $(cap max_engine_coolant_temp_attack coolant_fabrication), $(cap max_engine_coolant_temp_attack_masquerade coolant_masquerade),\
 $(cap reverse_light_off_attack_1 reverse_light_off_fabrication), $(cap reverse_light_off_attack_1_masquerade reverse_light_off_masquerade)${EXTRA_CAPS:+, $EXTRA_CAPS}]"
# Folds: each masquerade with its fabrication twin; HOLDOUT=a,b,... instead holds those out together in one fold.
if [ -n "${HOLDOUT:-}" ]; then
  folds=(--holdout "$HOLDOUT")
else
  folds=(--holdout correlated_signal_masquerade,correlated_signal_fabrication
         --holdout coolant_masquerade,coolant_fabrication
         --holdout reverse_light_off_masquerade,reverse_light_off_fabrication)
fi
$FM ids compare --preset captures --out "$OUT" "source.captures=$CAPS" 'eval.shots=[5]' "${folds[@]}" "$@"
