#!/usr/bin/env bash
# Issue 35, item 3: Omniglot 5-way 1-shot MAML trained in fp32 and in bf16 with the same seed and the same number of
# meta-iterations, each tested on the preset's 600 test episodes (mean +- 95% CI).
# Usage: bash results/fewshot/cpu/precision_check/run.sh OMNIGLOT_DIR [ITERATIONS] [RUNS_DIR]
set -euo pipefail
DATA=${1:?the Omniglot folder}; IT=${2:-2000}; RUNS=${3:-runs/precision_check}
FM=${FASTMAML:-fastmaml}
for p in fp32 bf16; do
  $FM fewshot train --preset omniglot_5w1s --data-root "$DATA" --precision "$p" --run-dir "$RUNS/$p" \
      train.iterations="$IT" train.threads=1 train.patience=100000 train.validate_every=500
done
