#!/usr/bin/env bash
# The Omniglot column of the MAML paper's Table 1 on one GPU, each row under a fixed
# training-time budget (minutes), then the 600-episode test. Writes results JSON to $OUT.
#   OUT=out DATA=path/to/omniglot bash benchmarks/gpu_omniglot.sh [minutes_5w1s]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1 FASTMAML_CACHE_DIR=/tmp/fastmaml-cache
DATA="${DATA:-data/omniglot}"; OUT="${OUT:-runs/gpu}"; M="${1:-2}"; DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"no GPU\")"
# --device "$DEVICE" end to end on the sinusoid workload first (fast; catches device bugs early)
python3 -m fastmaml.cli sinusoid train --device "$DEVICE" --run-dir /tmp/sin_cuda train.iterations=300 train.progress=false || exit 1
run() {  # name preset minutes [overrides...]
  local name=$1 preset=$2 minutes=$3; shift 3
  python3 -m fastmaml.cli fewshot train --preset "$preset" --device "$DEVICE" --data-root "$DATA" --run-dir "/tmp/runs/$name" \
    train.max_minutes="$minutes" train.progress=false ${EXTRA:-} "$@" && cp "/tmp/runs/$name/results.json" "$OUT/$name.json"
}
run omniglot_5w1s_maml omniglot_5w1s "$M"
run omniglot_5w1s_fomaml omniglot_5w1s_fo "$M"
run omniglot_5w5s_maml omniglot_5w5s 1.25
run omniglot_20w1s_maml omniglot_20w1s 1.5
ls -la "$OUT"
