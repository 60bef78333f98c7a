#!/usr/bin/env bash
# Half-cheetah meta-RL further than 2 CPU cores allow, on a lent device machine (its 16 CPU cores: the RL
# application samples and runs TRPO on the CPU; the GPU is not used). The device image has no MuJoCo and no
# network, so carry Python 3.12 wheels in an ignored folder (`.wheels`, named in `carry`):
#   pip download 'gymnasium>=1.0' 'mujoco>=3.3.1' --python-version 3.12 --only-binary=:all: \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .wheels   # then drop numpy-*.whl
#   OUT=out MINUTES=7 bash benchmarks/device_rl.sh
# Trains MAML on the paper's settings (meta-batch 40, every task's curvature, 20 trajectories) within MINUTES,
# the baselines within a third of that each, and evaluates on 40 tasks x 40 trajectories; results under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT="${OUT:-runs/device_rl}"; M="${MINUTES:-7}"; ENV="${ENV_NAME:-cheetah_vel}"; THREADS="${THREADS:-$(nproc)}"
mkdir -p "$OUT"
python3 -c "import mujoco, gymnasium" 2>/dev/null || \
  python3 -m pip install -q --no-index --no-deps .wheels/*.whl || { echo "no MuJoCo and no wheels in .wheels"; exit 1; }
python3 -m fastmaml.cli rl reproduce --preset cheetah_vel --out "/tmp/rl_$ENV" env.name="$ENV" \
  train.meta_batch_size=40 trpo.hvp_tasks=null train.threads="$THREADS" train.max_minutes="$M" \
  baseline_train.max_minutes="$(python3 -c "print($M / 3)")" eval.num_tasks=40 eval.trajectories=40 \
  2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tail -40
cp /tmp/rl_$ENV/results.json "$OUT/${ENV}_results.json"; cp /tmp/rl_$ENV/results.md "$OUT/${ENV}_results.md"
cp /tmp/rl_$ENV/maml/metrics.jsonl "$OUT/${ENV}_maml_metrics.jsonl"
ls -la "$OUT"
