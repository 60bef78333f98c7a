#!/usr/bin/env bash
# The engine's speed and memory rows on one CUDA GPU, one command, results under $OUT:
#   meta-iterations/s (+ peak allocated memory) of fastmaml vmap / compiled / loop and learn2learn on the
#   sinusoid MLP and the Omniglot conv net (1 and 15 queries per class), then peak memory against inner
#   steps (stored vs recomputed second order vs learn2learn) on the Omniglot net and ResNet-12.
#   OUT=out [L2L=path/to/learn2learn-source] bash benchmarks/gpu_bench.sh
# JAX rows are CPU-only here (a CUDA jaxlib is not assumed on the device). Every step is independent:
# one that fails is logged and the next runs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${L2L:+:$L2L}" PYTHONUNBUFFERED=1
OUT="${OUT:-runs/gpu_bench}"; DEVICE="${DEVICE:-cuda}"; ROUNDS="${ROUNDS:-5}"
mkdir -p "$OUT"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" \
  | tee "$OUT/device.txt"
bench() {  # name args...
  local name=$1; shift
  timeout 900 python3 benchmarks/bench_maml.py --device "$DEVICE" --rounds "$ROUNDS" --min-seconds 1 --no-jax \
    --json "$OUT/$name.json" "$@" 2>&1 | tee "$OUT/$name.md" || echo "FAILED: $name" | tee -a "$OUT/failures.txt"
}
bench sinusoid --workload sinusoid --order both
bench omniglot_q1 --workload omniglot --q-query 1 --order 2 --chunk-sizes 32
bench omniglot_q15 --workload omniglot --q-query 15 --order 2 --chunk-sizes 32
for w in omniglot_q15 resnet12; do
  timeout 900 python3 benchmarks/bench_memory.py --device "$DEVICE" --workload "$w" --steps 1 2 5 10 \
    --json "$OUT/memory_$w.json" --md "$OUT/memory_$w.md" 2>&1 | tail -30 || echo "FAILED: memory $w" | tee -a "$OUT/failures.txt"
done
ls -la "$OUT"
